"""Where a request's CPU goes: convserve under a closed loop, each of its threads' CPU time
(`/proc/<pid>/task/*/stat`, user + system) divided by the requests answered.

    .venv/bin/python bench/threads.py --model resnet18 --concurrency 16
    .venv/bin/python bench/threads.py --model resnet18 --phone    # the 4000x3000 JPEG
    .venv/bin/python bench/threads.py --model resnet18 --naive --rounds 2

`--naive`: the naive app (bench/servers/naive.py) under the same load after each convserve
measurement, its process's CPU per request in all, and for both the cores kept busy (req/s x
core-ms): a server that spends the same per request but keeps fewer cores busy loses time
between its stages, not in them.

Threads are named by what they run: the event loop (the main thread), the instance threads
(`ort-<model>-<n>`, each running its session's `run`; with one intra-op thread that is all of
the compute), the decode pool (`preprocess_<n>`), and ORT's own pool threads (not Python threads:
a session with more than one intra-op thread, such as the solo session: "native thread"). Names
come from the Python threads' `name` through py-spy when it is installed (the benchmark venv).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.compare import server, stop, target_for  # noqa: E402
from bench.load import Target, closed_loop, start_service  # noqa: E402
from bench.models import BENCH_REPOSITORY, ensure_models, image_for  # noqa: E402

THREAD_LINE = re.compile(r'Thread (?:0x[0-9a-fA-F]+ )?(\d+) \(\w+\): "([^"]+)"')


def cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by tid."""
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        times[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return times


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by tid, from `py-spy dump` when py-spy is on the PATH."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {pid: "event loop"}
    dump = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    names = {int(tid): name for tid, name in THREAD_LINE.findall(dump)}
    return {**names, pid: "event loop"}


def naive_pid(url: str) -> int:
    """The naive app's process, found by the port `bench.compare.server` gave it."""
    port = url.rsplit(":", 1)[1]
    found = subprocess.run(
        ["pgrep", "-f", f"bench/servers/naive.py .*--port {port}( |$)"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if len(found) != 1:
        raise RuntimeError(f"naive app on port {port}: processes {found}")
    return int(found[0])


def measure(
    target: Target, pid: int, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[int, float]]:
    """The closed loop's summary and each thread's CPU seconds over it, after a warm-up."""
    asyncio.run(closed_loop(target, args.concurrency, 2.0))
    before = cpu_seconds(pid)
    result = asyncio.run(closed_loop(target, args.concurrency, args.duration)).summary()
    after = cpu_seconds(pid)
    return result, {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}


def report(system: str, args: argparse.Namespace, result: dict[str, Any], total_ms: float) -> None:
    """One system's line: req/s, core-ms per request, and the cores that kept busy."""
    print(
        f"{system:<9} {args.model}{' (4000x3000)' if args.phone else ''} c={args.concurrency}: "
        f"{result['rps']:.1f} req/s, {total_ms:.3f} core-ms per request, "
        f"{result['rps'] * total_ms / 1000:.2f} cores busy"
    )


def measure_convserve(args: argparse.Namespace, repository: Path, image: bytes) -> None:
    env = {
        "CONVSERVE_MODEL_REPOSITORY": str(repository),
        "CONVSERVE_MODELS": args.model,
        "CONVSERVE_DEFAULT_MODEL": args.model,
    }
    process, url, _ = start_service(env)
    try:
        target = target_for("convserve", url, args.model, image)
        result, used = measure(target, process.pid, args)
        names = thread_names(process.pid)
    finally:
        stop(process)
    per_request: dict[str, float] = collections.Counter()
    for tid, seconds in used.items():
        per_request[names.get(tid, f"native thread {tid}")] += seconds / result["requests"] * 1000
    report("convserve", args, result, sum(per_request.values()))
    for name, ms in sorted(per_request.items(), key=lambda item: -item[1]):
        if ms >= 0.0005:
            print(f"  {name:<28} {ms:8.3f} ms")


def measure_naive(args: argparse.Namespace, repository: Path, image: bytes) -> None:
    with server("naive", args.model, repository, 1, 0.0) as url:
        target = target_for("naive", url, args.model, image)
        result, used = measure(target, naive_pid(url), args)
    report("naive", args, result, sum(used.values()) / result["requests"] * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--phone", action="store_true", help="send the 4000x3000 photo")
    parser.add_argument("--naive", action="store_true", help="the naive app too, alternating")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    repository = ensure_models(BENCH_REPOSITORY)
    image = image_for(args.model, args.phone)
    for _ in range(args.rounds):
        measure_convserve(args, repository, image)
        if args.naive:
            measure_naive(args, repository, image)


if __name__ == "__main__":
    main()
