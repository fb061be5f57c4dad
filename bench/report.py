"""Turn docs/bench/results.json into the table in docs/benchmarks.md and the plots.

    python bench/report.py            # re-render from the last results.json

Every ratio is to a figure of the same run: the ceiling (ORT in-process), the HTTP floor, or
another system at the same concurrency.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
RESULTS_JSON = DOCS / "bench" / "results.json"
BENCHMARKS_MD = DOCS / "benchmarks.md"
IMAGES = DOCS / "images"
START, END = "<!-- results:start -->", "<!-- results:end -->"
RIVALS = ("naive", "litserve", "pytriton")
WORKERS_SYSTEM = "convserve-workers"  # one worker process per core (bench/compare.py)
# Throughput targets against the ceiling (ResNets) or the HTTP floor (LeNet), c >= 16.
TARGETS = {"resnet50": ("ceiling", 0.95), "resnet18": ("ceiling", 0.85)}
FLOOR_TARGET = 0.6


def fmt(value: float, digits: int = 1) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def by(rows: list[dict[str, Any]], system: str) -> dict[int, dict[str, Any]]:
    return {r["concurrency"]: r for r in rows if r["system"] == system}


def model_table(entry: dict[str, Any]) -> list[str]:
    rows = entry["rows"]
    ceil = entry["ceiling"]
    best = ceil["best"]
    lines = [
        f"### {entry['model']}",
        "",
        f"Ceiling (ORT in-process, batch {best['batch']}, {best['sessions']} session(s) x "
        f"{best['threads']} thread(s)): **{best['images_per_s']:.1f} img/s**; batch-1 compute "
        f"{ceil['batch1_compute_ms']:.2f} ms; decode + preprocessing of the benchmark image "
        f"{ceil['decode_preprocess_ms']:.2f} ms.",
        "",
        "| system | c | req/s | × ceiling | p50 ms | p90 ms | p99 ms | errors | batch | "
        "client CPU | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {fmt(r['rps'])} | "
            f"{r['rps'] / best['images_per_s']:.2f} | {fmt(r['p50_ms'], 2)} | "
            f"{fmt(r['p90_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {r['errors']} | "
            f"{fmt(r['mean_batch'], 2)} | {r['client_cpu_share']:.0%} | {r['load_average'][0]} |"
        )
    over = entry.get("overload")
    if over:
        lines += [
            "",
            f"Open loop at {over['rate_per_s']:.0f} req/s (3x convserve's best "
            f"{over['capacity_rps']:.1f}): {over['requests']} answered 200 at "
            f"{fmt(over['rps'])} req/s, p50 {fmt(over['p50_ms'], 2)} / p99 "
            f"{fmt(over['p99_ms'], 2)} ms; {over['overloaded_503']} answered 503 (p99 "
            f"{fmt(over['overloaded_p99_ms'], 2)} ms); {over['errors']} other answers "
            f"(by status: {over.get('statuses', '–')}; 504 = deadline passed before compute); "
            f"mean batch {fmt(over['mean_batch'], 2)}; requests carried X-Request-Timeout-Ms "
            f"{over.get('timeout_header_ms', '–')}.",
        ]
    return [*lines, ""]


def verdicts(entry: dict[str, Any]) -> list[str]:
    """The benchmark's targets for one model, each met or missed with the figures."""
    model, rows, ceil = entry["model"], entry["rows"], entry["ceiling"]
    conv = by(rows, "convserve")
    if not conv:
        return []
    out = []

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    floor = by(rows, "floor")
    for level, r in sorted(conv.items()):
        if level < 16:
            continue
        if model in TARGETS:
            goal = TARGETS[model][1]
            ratio = r["rps"] / ceil["best"]["images_per_s"]
        elif level in floor:
            goal, ratio = FLOOR_TARGET, r["rps"] / floor[level]["rps"]
        else:
            continue
        base = "ceiling" if model in TARGETS else "HTTP floor"
        out.append(
            f"- c={level}: throughput {ratio:.2f} × {base} (target ≥ {goal}): {mark(ratio >= goal)}"
        )
    workers = by(rows, WORKERS_SYSTEM)
    if workers and floor:
        ratios = ", ".join(
            f"c={c}: {workers[c]['rps'] / floor[c]['rps']:.2f} × HTTP floor, "
            f"{workers[c]['rps'] / conv[c]['rps']:.2f} × one worker"
            for c in sorted(workers)
            if c in floor and c in conv and c >= 16
        )
        out.append(f"- {WORKERS_SYSTEM} (CONVSERVE_WORKERS = cores, not the default): {ratios}")
    for rival in RIVALS:
        other = by(rows, rival)
        if not other:
            continue
        worse_rps = [c for c in conv if c in other and conv[c]["rps"] <= other[c]["rps"]]
        worse_p99 = [
            c
            for c in (16, 64)
            if c in conv and c in other and conv[c]["p99_ms"] >= other[c]["p99_ms"]
        ]
        ratios = ", ".join(
            f"c={c}: {conv[c]['rps'] / other[c]['rps']:.2f}×" for c in sorted(conv) if c in other
        )
        out.append(
            f"- vs {rival}: throughput {ratios} ({mark(not worse_rps)}); p99 at 16/64 "
            f"{mark(not worse_p99)}" + (f" (behind at c={worse_p99})" if worse_p99 else "")
        )
    if 1 in conv:
        budget = ceil["batch1_compute_ms"] + ceil["decode_preprocess_ms"]
        p50 = conv[1]["p50_ms"]
        out.append(
            f"- c=1: p50 {p50:.2f} ms vs batch-1 compute + decode {budget:.2f} ms: "
            f"+{p50 - budget:.2f} ms (target ≤ +1 ms): {mark(p50 - budget <= 1.0)}"
        )
    over = entry.get("overload")
    if over and 1 in conv:
        limit = 2 * conv[1]["p99_ms"]
        out.append(
            f"- overload 3x: accepted p99 {fmt(over['p99_ms'], 1)} ms vs 2 × unloaded p99 "
            f"{limit:.1f} ms: {mark(over['p99_ms'] <= limit)}; 503s: {over['overloaded_503']}, "
            f"p99 {fmt(over['overloaded_p99_ms'], 1)} ms"
        )
    return [f"**{model}**", "", *out, ""]


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    solo = f" + a {s['solo_threads']}-thread solo session" if s.get("solo_threads") else ""
    lines = [
        f"Run of {results['date']}, {results['cores']} cores, {results['duration_s']} s in all. "
        f"convserve defaults: max batch {s['max_batch_size']}, queue delay "
        f"{s['max_queue_delay_ms']} ms, {s['instances']} instance(s) x {s['intra_op_threads']} "
        f"intra-op thread(s){solo}, {s['decode_threads']} decode thread(s), queue "
        f"{s['max_queue_size']}.",
        "",
        "#### Targets",
        "",
    ]
    for entry in results["models"]:
        lines += verdicts(entry)
    lines += ["#### Results", ""]
    for entry in results["models"]:
        lines += model_table(entry)
        lines += [f"![{entry['model']}](images/bench-{entry['model']}.png)", ""]
    return "\n".join(lines)


def plot(entry: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    systems = dict.fromkeys(r["system"] for r in entry["rows"])
    for index, system in enumerate(systems):
        pts = sorted(by(entry["rows"], system).items())
        xs = [c for c, _ in pts]
        style = {"marker": "o", "label": system, "color": f"C{index}"}  # same colour both sides
        left.plot(xs, [r["rps"] for _, r in pts], **style)
        if system != "floor":
            right.plot(xs, [r["p99_ms"] for _, r in pts], **style)
    left.axhline(entry["ceiling"]["best"]["images_per_s"], color="k", ls="--", label="ceiling")
    for ax, title in ((left, "throughput (req/s)"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(f"{entry['model']}: {title}")
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / f"bench-{entry['model']}.png", dpi=90)
    plt.close(fig)


def write_docs(results: dict[str, Any]) -> None:
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else f"{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    BENCHMARKS_MD.write_text(f"{head}{START}\n{render(results)}\n{END}{tail}")
    for entry in results["models"]:
        plot(entry)
    print(f"wrote {BENCHMARKS_MD} and {IMAGES}/bench-*.png")


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_JSON
    write_docs(json.loads(path.read_text()))


if __name__ == "__main__":
    main()
