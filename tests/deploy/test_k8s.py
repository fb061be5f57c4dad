"""deploy/k8s: every manifest against its schema, the kustomizations render, and the
manifests agree with each other, the Dockerfile and the service's settings."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev extra
import kubernetes_validate  # type: ignore[import-untyped]  # ships no py.typed
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy.dockerfile import parse_dockerfile
from tests.deploy.kustomize import Resource, key, pod_containers, pod_spec, render

K8S = REPO_ROOT / "deploy/k8s"
SCHEMAS = REPO_ROOT / "deploy/schemas"
KUSTOMIZATIONS = ["overlays/cpu", "overlays/gpu", "kserve", "training"]
# Oldest Kubernetes the manifests target, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Custom resources: schema files vendored in deploy/schemas (see its README.md).
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime_v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice_v1beta1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob_v1.json",
}
# Settings of docs/service.md, for when service.settings cannot be imported.
DOCUMENTED_SETTINGS = {
    "MODEL_REPOSITORY", "DEFAULT_MODEL", "HOST", "PORT", "API_KEY", "ADMIN_KEY",
    "MAX_BODY_BYTES", "MAX_IMAGE_PIXELS", "MAX_BATCH_SIZE", "MAX_QUEUE_DELAY_MS",
    "MAX_QUEUE_SIZE", "INSTANCES", "INTRA_OP_THREADS", "PROVIDERS", "REQUEST_TIMEOUT_MS",
    "MODEL_POLL_SECONDS", "LOG_FORMAT",
}  # fmt: skip


@cache
def rendered(folder: str) -> dict[tuple[str, str], Resource]:
    return {key(resource): resource for resource in render(K8S / folder)}


def only(folder: str, kind: str, name: str = "convserve") -> Resource:
    return copy.deepcopy(rendered(folder)[(kind, name)])


def all_resources() -> list[tuple[str, Resource]]:
    return [(folder, r) for folder in KUSTOMIZATIONS for r in rendered(folder).values()]


@cache
def crd_validator(file_name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / file_name).read_text())
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft7Validator
    )
    return validator_class(schema)


def validate(resource: Resource, k8s_version: str) -> None:
    crd = CRD_SCHEMAS.get((resource["apiVersion"], resource["kind"]))
    if crd is None:
        kubernetes_validate.validate(resource, k8s_version, strict=True)
    else:
        crd_validator(crd).validate(resource)


def every_manifest_file() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_every_manifest_file_is_rendered_by_some_kustomization() -> None:
    """No manifest is dead: each is a resource or a patch of a kustomization that is tested."""
    used: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        document = yaml.safe_load(kustomization.read_text())
        for entry in document.get("resources", []):
            used.add((kustomization.parent / entry).resolve())
        for entry in document.get("patches", []):
            used.add((kustomization.parent / entry["path"]).resolve())
    assert set(every_manifest_file()) <= used


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_rendered_resources_match_their_schemas(folder: str, k8s_version: str) -> None:
    for resource in rendered(folder).values():
        validate(resource, k8s_version)


@pytest.mark.parametrize(
    ("folder", "kind", "path", "typo"),
    [
        ("overlays/cpu", "Deployment", ["spec", "template", "spec"], "terminationGracePeriod"),
        ("overlays/cpu", "ServiceMonitor", ["spec", "endpoints", 0], "intervall"),
        ("kserve", "InferenceService", ["spec", "predictor", "model"], "storageURI"),
        ("kserve", "ServingRuntime", ["spec"], "protocolVersion"),
        ("training", "PyTorchJob", ["spec", "pytorchReplicaSpecs", "Worker"], "replica"),
        ("overlays/cpu", "PrometheusRule", ["spec", "groups", 0], "rule"),
    ],
)
def test_schemas_reject_a_misspelt_field(
    folder: str, kind: str, path: list[str | int], typo: str
) -> None:
    """Guards the validation above: the schemas in use refuse unknown fields."""
    (resource,) = [copy.deepcopy(r) for k, r in rendered(folder).items() if k[0] == kind]
    node: Any = resource
    for step in path:
        node = node[step]
    node[typo] = 1
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(resource, K8S_VERSIONS[-1])


@pytest.mark.parametrize("folder", [*KUSTOMIZATIONS, "base", "namespace"])
def test_python_render_matches_kubectl_kustomize(folder: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # No registry CI reaches ships a kustomize this recent (Debian's kubernetes-client is
        # 1.20); the Python render above runs everywhere and this pins it to the real thing.
        pytest.skip("kubectl is not installed: compared the Python kustomize render only")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / folder)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    real = {key(d): d for d in yaml.safe_load_all(done.stdout) if d}
    assert real == {key(r): r for r in render(K8S / folder)}


def convserve_container(folder: str) -> dict[str, Any]:
    (container,) = pod_containers(only(folder, "Deployment"))
    return container


def app_uid() -> int:
    user = parse_dockerfile(REPO_ROOT / "Dockerfile").stage("service").all("USER")[0]
    return int(user.arguments.split(":")[0])


@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu"])
def test_deployment_probes_security_and_draining(folder: str) -> None:
    deployment = only(folder, "Deployment")
    pod = pod_spec(deployment)
    assert pod is not None
    container = convserve_container(folder)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = only(folder, "ConfigMap", "convserve-config")["data"]
    assert ports["http"] == int(config["CONVSERVE_PORT"])
    assert config["CONVSERVE_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health/live"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == app_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The only writable path is an emptyDir at /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp": "tmp"}

    # preStop sleep + the longest request (timeout or queue) must fit in the grace period.
    sleep_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= sleep_s + 30
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gpu_is_requested_only_by_the_gpu_overlay() -> None:
    gpu = convserve_container("overlays/gpu")["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"
    assert convserve_container("overlays/gpu")["image"].endswith(":gpu")
    cpu = convserve_container("overlays/cpu")
    assert "nvidia.com/gpu" not in json.dumps(cpu["resources"])
    assert cpu["image"].endswith(":cpu")
    assert only("overlays/gpu", "ConfigMap", "convserve-config")["data"]["CONVSERVE_PROVIDERS"] in {
        "cuda",
        "auto",
    }


@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu"])
def test_selectors_and_references_agree(folder: str) -> None:
    deployment = only(folder, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = only(folder, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in convserve_container(folder)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    pdb = only(folder, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = only(folder, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert "convserve_queue_depth" in metrics
    monitor = only(folder, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    (config_ref,) = [e for e in convserve_container(folder)["envFrom"] if "configMapRef" in e]
    assert ("ConfigMap", config_ref["configMapRef"]["name"]) in rendered(folder)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in {
        name for kind, name in rendered(folder) if kind == "ServiceAccount"
    }
    namespaces = {r["metadata"].get("namespace") for r in rendered(folder).values()}
    assert namespaces == {None, "convserve"}


def settings_fields() -> set[str]:
    try:
        from service.settings import Settings
    except ImportError:
        return DOCUMENTED_SETTINGS
    return {name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu"])
def test_configmap_holds_valid_service_settings(folder: str) -> None:
    data = only(folder, "ConfigMap", "convserve-config")["data"]
    fields = settings_fields()
    for name in data:
        assert name.startswith("CONVSERVE_"), name
        assert name.removeprefix("CONVSERVE_") in fields, f"{name} is not a setting"
    assert "CONVSERVE_API_KEY" not in data, "secrets belong in the convserve-secrets Secret"
    try:
        from service.settings import Settings
    except ImportError:
        return
    values = {name.removeprefix("CONVSERVE_").lower(): value for name, value in data.items()}
    Settings.model_validate(values)  # the values parse as the service will parse them


def test_prometheus_rule_matches_the_compose_rules_file() -> None:
    rules = yaml.safe_load((REPO_ROOT / "deploy/prometheus/rules/convserve.yml").read_text())
    assert only("overlays/cpu", "PrometheusRule")["spec"]["groups"] == rules["groups"]


def test_kserve_runtime_speaks_v2_for_the_inference_service() -> None:
    runtime = only("kserve", "ServingRuntime")
    service = only("kserve", "InferenceService", "lenet5-fashion")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    assert "v2" in runtime["spec"]["protocolVersions"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in container["env"]}
    # KServe's storage initializer downloads storageUri into /mnt/models.
    assert env["CONVSERVE_MODEL_REPOSITORY"] == "/mnt/models"
    assert container["ports"][0]["containerPort"] == int(env["CONVSERVE_PORT"])
    assert env["CONVSERVE_HOST"] == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        assert re.fullmatch(r"/v2/health/(ready|live)", container[probe]["httpGet"]["path"])
    assert container["securityContext"]["runAsUser"] == app_uid()


def test_pytorchjob_runs_torchrun_on_the_training_image() -> None:
    job = only("training", "PyTorchJob", "convserve-train-resnet18")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    assert specs["Master"]["replicas"] == 1
    for spec in specs.values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator finds the container by this name
        assert container["command"][:3] == ["torchrun", "-m", "training.train"]
        assert container["image"].startswith("convserve-train")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["template"]["spec"]["securityContext"]["runAsUser"] == app_uid()
    stages = {s.name for s in parse_dockerfile(REPO_ROOT / "Dockerfile").stages}
    assert "train" in stages


def test_pytorchjob_arguments_parse_with_the_training_cli() -> None:
    """The job's `torchrun -m training.train ARGS` must be a valid training command line."""
    pytest.importorskip("torch", reason="the train extra (torch) is not installed")
    from training.train import config_from_args, get_args_parser

    job = only("training", "PyTorchJob", "convserve-train-resnet18")
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    config = config_from_args(get_args_parser().parse_args(container["command"][3:]))
    assert config.arch == "resnet18"
    assert str(config.out).startswith("/runs/")


def restricted_violations(pod: dict[str, Any], containers: list[dict[str, Any]]) -> list[str]:
    """What the `restricted` Pod Security Standard would refuse (the checks that apply here)."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for container in containers:
        context = container.get("securityContext", {})
        name = container["name"]
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile") or {}
        if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop")
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']}: hostPath")
    return problems


def owned_pods() -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    pods = []
    for folder in ("overlays/cpu", "overlays/gpu"):
        deployment = only(folder, "Deployment")
        pod = pod_spec(deployment)
        assert pod is not None
        pods.append((folder, pod, pod_containers(deployment)))
    job = only("training", "PyTorchJob", "convserve-train-resnet18")
    for role, spec in job["spec"]["pytorchReplicaSpecs"].items():
        pods.append((role, spec["template"]["spec"], spec["template"]["spec"]["containers"]))
    runtime = only("kserve", "ServingRuntime")
    pods.append(("ServingRuntime", {}, runtime["spec"]["containers"]))
    return pods


def test_own_pods_meet_the_restricted_pod_security_standard() -> None:
    for where, pod, containers in owned_pods():
        assert restricted_violations(pod, containers) == [], where


def test_the_restricted_check_can_fail() -> None:
    _, pod, containers = owned_pods()[0]
    broken = copy.deepcopy(containers)
    broken[0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert restricted_violations(pod, broken) == ["convserve: allowPrivilegeEscalation"]


def test_namespace_reports_anything_short_of_restricted() -> None:
    labels = only("overlays/cpu", "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce"] in {"baseline", "restricted"}


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((REPO_ROOT / "deploy/prometheus/adapter-values.yaml").read_text())
    assert values["rules"]["default"] is False
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


def adapter_metric_name(rule: dict[str, Any]) -> str:
    series = re.match(r"^(\w+)", rule["seriesQuery"])
    assert series
    name = rule.get("name", {})
    if not name:
        return series.group(1)
    assert re.search(name["matches"], series.group(1)), rule
    return str(name["as"])


@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu"])
def test_hpa_custom_metrics_are_served_by_the_adapter(folder: str) -> None:
    hpa = only(folder, "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    served = {adapter_metric_name(rule) for rule in adapter_rules()}
    assert wanted <= served
    for rule in adapter_rules():
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
