"""The benchmark: convserve against the raw runtime and the servers users would otherwise pick,
all in one run, on one machine, on the same model files and the same images.

    /tmp/convserve-bench/bin/python bench/compare.py        # ~40 min on 2 cores; see below
    /tmp/convserve-bench/bin/python bench/compare.py --models resnet18,resnet18-phone \
        --systems naive,convserve,convserve-int8 --duration 1 --no-docs --output /tmp/b.json

Per case (`--models`: lenet5-fashion, resnet18, resnet50 on the 640x427 photo, resnet18-phone
on a 4000x3000 JPEG): (1) ceiling, `bench/ceiling.py` (ORT in-process, best batch and thread
layout; for the ResNets also on the int8 file); (2) HTTP floor, `POST /noop` on the naive app
(same FastAPI/uvicorn stack); (3) naive, `bench/servers/naive.py`; (4) LitServe and (5)
PyTriton with their batching on; (6) convserve with its defaults; for the ResNets also
"convserve-int8", the same serving the `<resnet>-int8` export (the others serve float32); for the
HTTP-bound LeNet also "convserve-workers", the defaults with one worker process per core
(`CONVSERVE_WORKERS`, not the default). resnet18-phone runs naive and convserve at c=16 only.

`--rounds` rounds (default 2): in each, every system runs its concurrency levels in turn (closed
loop, after a warm-up), so a slow minute on a shared host falls on all of them; the ceiling is
measured again after each round and a round whose ceilings before and after differ by more
than 15 % is flagged. In the last round, an open loop at 3x convserve's best throughput. Then
the cost of JPEG draft decoding on both photos (`bench/preprocess.py --draft-cost`). Writes
docs/bench/results.json, the results into docs/benchmarks.md (between the `results` markers,
`bench/report.py`) and docs/images/bench-<case>.png.

Duration: ~40 min on 2 cores with the defaults (servers starting and stopping and the ceilings
between rounds are a good part of it); one case at `--duration 1 --rounds 2`, 3-5 min.
Setup of the benchmark-only venv: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.load import (  # noqa: E402
    CHILD_ENV,
    SERVICE_PYTHON,
    Target,
    closed_loop,
    open_loop,
    single_request,
    start_service,
    wait_ready,
)
from bench.models import (  # noqa: E402
    BENCH_REPOSITORY,
    LENET,
    RESNETS,
    ensure_models,
    image_for,
    int8_name,
)

RESULTS_JSON = REPO_ROOT / "docs" / "bench" / "results.json"
OVERLOAD_FACTOR = 3.0
GROUP_EXIT_S = 30  # a stopped server's children get this long to exit before SIGKILL
SETTLE_MAX_S = 15  # then the machine this long to fall below SETTLED_BUSY_CORES
SETTLED_BUSY_CORES = 0.25
SYSTEMS = (
    "floor",
    "naive",
    "litserve",
    "pytriton",
    "convserve",
    "convserve-workers",
    "convserve-int8",
)
CONVSERVE_SYSTEMS = ("convserve", "convserve-workers", "convserve-int8")
ROUNDS = 2
CEILING_DRIFT = 0.15  # a round whose ceilings before and after differ more is flagged


@dataclass(frozen=True)
class Plan:
    """What one benchmark case gets: the model, its concurrency levels, seconds per level, the
    ceiling's batch sizes, and which systems it runs (None: all that apply)."""

    model: str
    levels: tuple[int, ...]
    duration_s: float
    batches: str
    systems: tuple[str, ...] | None = None
    phone: bool = False  # send the 4000x3000 photo instead of the 640x427 one

    def runs(self, system: str) -> bool:
        if self.systems is not None:
            return system in self.systems
        if system == "convserve-workers":  # one worker per core: for the HTTP-bound model
            return self.model == LENET
        if system == "convserve-int8":
            return self.model in RESNETS
        return True


PLANS = {
    LENET: Plan(LENET, (1, 4, 16, 64), 5.0, "1,32"),
    "resnet18": Plan("resnet18", (1, 4, 16, 64), 6.0, "1,4,8,16"),
    # ~100 ms per image on 2 cores: c=64 would need minutes per point to see the queue drain.
    "resnet50": Plan("resnet50", (1, 4, 16), 8.0, "1,4,8"),
    # A phone camera's photo: decoding dominates; convserve drafts it (DCT-scaled), naive not.
    "resnet18-phone": Plan(
        "resnet18", (16,), 8.0, "1,4,8", systems=("naive", "convserve"), phone=True
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def server(name: str, model: str, repository: Path, batch: int, delay_ms: float) -> Iterator[str]:
    """Start one comparison server in its own process group; yields its base URL."""
    port = free_port()
    script = {"naive": "naive", "litserve": "lit", "pytriton": "triton"}[name]
    python = SERVICE_PYTHON if name == "naive" else Path(sys.executable)
    command = [str(python), f"bench/servers/{script}.py", "--repository", str(repository)]
    command += ["--model", model, "--port", str(port), "--max-batch-size", str(batch)]
    command += ["--batch-timeout-ms", str(delay_ms)]
    log = open(f"/tmp/convserve-bench-{name}.log", "wb")  # noqa: SIM115
    env = {**os.environ, **CHILD_ENV}
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    ready = {"naive": "/ready", "litserve": "/health", "pytriton": "/v2/models/model/ready"}
    try:
        if not wait_ready(base_url + ready[name], time.monotonic() + 180):
            raise RuntimeError(f"{name} did not become ready; see {log.name}")
        yield base_url
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (LitServe and Triton start children), then SIGKILL;
    return once every process of the group is gone and the CPU has settled, so the next system
    does not start beside a server still shutting down (Triton's takes seconds)."""
    group = process.pid
    try:
        os.killpg(group, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
    started = time.monotonic()
    deadline = started + GROUP_EXIT_S
    while group_alive(group):
        if time.monotonic() > deadline:
            os.killpg(group, signal.SIGKILL)
            deadline = math.inf
        time.sleep(0.1)
    exited = time.monotonic()
    settle()
    print(
        f"  stopped: group gone in {exited - started:.1f} s, "
        f"machine settled {time.monotonic() - exited:.1f} s later",
        flush=True,
    )


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def busy_cores(window_s: float = 0.5) -> float:
    """Cores' worth of CPU busy over `window_s` (from /proc/stat: every process, not only ours)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(window_s)
    busy1, total1 = sample()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(1, total1 - total0)


def settle() -> None:
    """Wait (up to SETTLE_MAX_S) until the machine is nearly idle before the next system."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline and busy_cores() > SETTLED_BUSY_CORES:
        pass


def triton_body(image: bytes) -> tuple[bytes, dict[str, str]]:
    """KServe v2 binary-tensor request: JSON header, then the BYTES element (length-prefixed)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(image)},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + struct.pack("<I", len(image)) + image, headers


def target_for(system: str, base_url: str, model: str, image: bytes) -> Target:
    kind = "image/png" if model == LENET else "image/jpeg"
    if system == "floor":
        return Target.of(base_url, "/noop", image, {"Content-Type": kind})
    if system == "naive":
        return Target.of(base_url, "/predict", image, {"Content-Type": kind})
    if system == "litserve":
        body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
        return Target.of(base_url, "/predict", body, {"Content-Type": "application/json"})
    if system == "pytriton":
        body, headers = triton_body(image)
        return Target.of(base_url, "/v2/models/model/infer", body, headers)
    return Target.of(base_url, f"/v1/models/{model}/classify", image, {"Content-Type": kind})


def sweep(
    system: str,
    target: Target,
    plan: Plan,
    batch_url: str | None,
    log: Callable[[str], None],
    served: str = "",
) -> list[dict[str, Any]]:
    """Warm-up (untimed), then each concurrency level; one summary dict per level."""
    warmup_s = min(2.0, plan.duration_s / 2)
    asyncio.run(closed_loop(target, max(plan.levels), warmup_s))
    rows = []
    for level in plan.levels:
        result = asyncio.run(
            closed_loop(
                target,
                level,
                plan.duration_s,
                batch_url=batch_url,
                batch_model=served or plan.model,
            )
        )
        row = {"system": system, "concurrency": level, **result.summary()}
        row["load_average"] = load_average()
        rows.append(row)
        log(
            f"  {system:>9} c={level:<3} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:8.2f}  "
            f"p99 {row['p99_ms']:8.2f} ms  err {row['errors']}  batch {row['mean_batch']:.2f}  "
            f"client cpu {row['client_cpu_share']:.0%}  load {row['load_average'][0]}"
        )
    return rows


def ceiling(
    model: str, batches: str, repository: Path, phone: bool, layout: str | None = None
) -> dict[str, Any]:
    """`bench/ceiling.py` in the service's environment: every layout, or only `layout`."""
    command = ["bench/ceiling.py", "--model", model, "--batches", batches]
    command += ["--repository", str(repository)]
    command += ["--layout", layout] if layout else []
    command += ["--phone"] if phone else []
    return run_json(command)


def run_json(command: list[str]) -> dict[str, Any]:
    """A bench script in the service's environment; the JSON object of its last line."""
    output = subprocess.run(
        [str(SERVICE_PYTHON), *command],
        cwd=REPO_ROOT,
        env={**os.environ, **CHILD_ENV},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def ceilings(
    files: dict[str, str], plan: Plan, repository: Path, first: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """One check between rounds: each model file's ceiling in the layout and batch size that
    were best in the first, full measurement (`first`), by ceiling key."""
    return {
        key: ceiling(
            model,
            str(first[key]["best"]["batch"]),
            repository,
            plan.phone,
            first[key]["layout"],
        )
        for key, model in files.items()
    }


def differ(before: float, after: float) -> bool:
    """Whether two ceilings differ by more than CEILING_DRIFT (relative to the lower)."""
    return max(before, after) / min(before, after) - 1 > CEILING_DRIFT


def run_convserve(
    system: str,
    plan: Plan,
    repository: Path,
    image: bytes,
    log: Callable[[str], None],
    first_round: bool,
    last_round: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One convserve variant's sweep; for plain convserve also the first request after ready
    (first round) and the open loop at OVERLOAD_FACTOR x its best (last round)."""
    served = int8_name(plan.model) if system == "convserve-int8" else plan.model
    env = {
        "CONVSERVE_MODEL_REPOSITORY": str(repository),
        "CONVSERVE_MODELS": served,
        "CONVSERVE_DEFAULT_MODEL": served,
    }
    if system == "convserve-workers":
        env["CONVSERVE_WORKERS"] = str(os.cpu_count() or 1)
    extra: dict[str, Any] = {}
    process, url, _ = start_service(env)
    try:
        target = target_for("convserve", url, served, image)
        if system == "convserve" and first_round:
            status, first_s = asyncio.run(single_request(target))
            log(f"  convserve first request after ready: {status} in {first_s * 1000:.1f} ms")
            extra["first_request_ms"] = first_s * 1000
        rows = sweep(system, target, plan, url, log, served)
        if system == "convserve" and last_round and 1 in plan.levels:
            extra |= overload(target, plan, url, rows, log)
    finally:
        stop(process)
    return rows, extra


def overload(
    target: Target, plan: Plan, url: str, rows: list[dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    """Open loop at OVERLOAD_FACTOR x the best closed-loop throughput of `rows`. Each request
    says how long it can wait: the unloaded p99 of `rows` (c=1). What the queue would make wait
    longer is refused at once (503) by the batcher."""
    capacity = max(r["rps"] for r in rows)
    rate = OVERLOAD_FACTOR * capacity
    budget_ms = math.ceil(next(r["p99_ms"] for r in rows if r["concurrency"] == 1))
    headers = {**target.headers, "X-Request-Timeout-Ms": str(budget_ms)}
    patient = dataclasses.replace(target, headers=headers)
    result = asyncio.run(
        open_loop(patient, rate, plan.duration_s, batch_url=url, batch_model=plan.model)
    )
    over = {"rate_per_s": rate, "capacity_rps": capacity, **result.summary()}
    over["timeout_header_ms"] = budget_ms
    over["load_average"] = load_average()
    log(
        f"  overload {rate:.0f}/s: {over['requests']} ok (p99 "
        f"{over['p99_ms']:.1f} ms), {over['overloaded_503']} x 503 (p99 "
        f"{over['overloaded_p99_ms']:.1f} ms), {over['errors']} errors"
    )
    return {"overload": over}


def run_model(
    name: str,
    plan: Plan,
    repository: Path,
    systems: tuple[str, ...],
    rounds: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """`rounds` rounds; in each, every system runs all its levels in turn (A B C A B C), so a
    slow minute on a shared host falls on all of them. The in-process ceiling is measured before
    the first round (every layout) and after each (the best layout again); a round whose
    ceilings before and after differ by more than CEILING_DRIFT is flagged."""
    image = image_for(plan.model, plan.phone)
    chosen = [s for s in systems if plan.runs(s)]
    files = {"float32": plan.model}
    if "convserve-int8" in chosen:
        files["int8"] = int8_name(plan.model)
    log(f"{name}: ceiling ({', '.join(files.values())})")
    first = {
        key: ceiling(model, plan.batches, repository, plan.phone) for key, model in files.items()
    }
    for key, c in first.items():
        best = c["best"]
        log(
            f"  {key} ceiling {best['images_per_s']:.1f} img/s (batch {best['batch']}, "
            f"{c['layout']}); batch-1 compute {c['batch1_compute_ms']:.2f} ms, "
            f"decode+preprocess {c['decode_preprocess_ms']:.2f} ms"
        )
    checks = [first]
    rows: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    settings = service_settings()
    batch, delay_ms = settings["max_batch_size"], settings["max_queue_delay_ms"]
    for index in range(rounds):
        log(f"{name}: round {index + 1} of {rounds}")
        for system in chosen:
            if system in CONVSERVE_SYSTEMS:
                found, more = run_convserve(
                    system, plan, repository, image, log, index == 0, index == rounds - 1
                )
                extra |= more
            elif system == "floor":
                continue  # measured on the naive app's server, before naive
            else:
                found = []
                with server(system, plan.model, repository, batch, delay_ms) as url:
                    if system == "naive" and "floor" in chosen:
                        floor = target_for("floor", url, plan.model, image)
                        found += sweep("floor", floor, plan, None, log)
                    found += sweep(
                        system, target_for(system, url, plan.model, image), plan, None, log
                    )
            rows += [{**row, "round": index} for row in found]
        checks.append(ceilings(files, plan, repository, first))
        before, after = checks[-2], checks[-1]
        ips = {
            key: (before[key]["best"]["images_per_s"], after[key]["best"]["images_per_s"])
            for key in files
        }
        flagged = any(differ(*pair) for pair in ips.values())
        changes = {key: b / a - 1 for key, (a, b) in ips.items()}
        flags.append({"round": index, "ceiling_change": changes, "flagged": flagged})
        log(
            f"  ceilings after round {index + 1}: "
            + ", ".join(
                f"{key} {a:.1f} -> {b:.1f} img/s ({changes[key]:+.0%})"
                for key, (a, b) in ips.items()
            )
            + (f"  FLAGGED: ceiling moved more than {CEILING_DRIFT:.0%}" if flagged else "")
        )
    return {
        "case": name,
        "model": plan.model,
        "image": "4000x3000 JPEG"
        if plan.phone
        else ("28x28 PNG" if plan.model == LENET else "640x427 JPEG"),
        "levels": list(plan.levels),
        "ceilings": checks,
        "rounds": flags,
        "rows": rows,
        **extra,
    }


def service_settings() -> dict[str, Any]:
    from service.settings import Settings

    settings = Settings()
    return {
        "max_batch_size": settings.max_batch_size,
        "max_queue_delay_ms": settings.max_queue_delay_ms,
        "max_queue_size": settings.max_queue_size,
        "instances": settings.effective_instances,
        "instances_auto": not settings.instances,
        "intra_op_threads": settings.effective_intra_op_threads,
        "solo_threads": settings.solo_threads,
        "decode_threads": settings.effective_decode_threads,
    }


def draft_costs() -> dict[str, Any]:
    """`bench/preprocess.py --draft-cost`: exact against draft decoding of both photos."""
    return run_json(["bench/preprocess.py", "--draft-cost"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(PLANS), help="Comma-separated models.")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="Comma-separated systems.")
    parser.add_argument("--duration", type=float, help="Seconds per level (default: per model).")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="Rounds per case (default 2).")
    parser.add_argument("--output", type=Path, default=RESULTS_JSON)
    parser.add_argument("--no-docs", action="store_true", help="Write the JSON only.")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    systems = tuple(s for s in args.systems.split(",") if s)
    repository = ensure_models(BENCH_REPOSITORY)
    started = time.time()

    def log(line: str) -> None:
        print(line, flush=True)

    models = []
    for name in args.models.split(","):
        plan = PLANS[name]
        if args.duration:
            plan = dataclasses.replace(plan, duration_s=args.duration)
        models.append(run_model(name, plan, repository, systems, args.rounds, log))
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "duration_s": round(time.time() - started),
        "cores": os.cpu_count(),
        "settings": service_settings(),
        "rounds": args.rounds,
        "ceiling_drift_limit": CEILING_DRIFT,
        "models": models,
        "draft_decode": draft_costs(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.output}")
    if not args.no_docs:
        from bench.report import write_docs

        write_docs(results)


if __name__ == "__main__":
    main()
