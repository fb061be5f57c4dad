"""Turn docs/bench/results.json into the results section of docs/benchmarks.md and the plots.

    python bench/report.py                      # re-render from the last results.json
    python bench/report.py results.json --docs /tmp/benchmarks.md    # into another copy

Each (system, concurrency) is measured once per round; the tables give the median over rounds
and the range (min–max). Every ratio is to figures of the same run: the in-process ceiling (the
median of its measurements before the first round and after each), or another system at the same
concurrency (medians). A round whose ceilings before and after differ by more than the run's
limit is flagged (⚑ on the ranges it contributes to).

The targets:

- int8 served: convserve serving `<resnet>-int8`, best median req/s over c >= 16 (and at c=16),
  at least INT8_GOALS x the float32 ceiling and x naive, LitServe and PyTriton serving float32
  at the same concurrency;
- decode-bound: convserve serving float32, best over c >= 16, at least DECODE_BOUND_GOAL x
  `ceiling x compute / (compute + decode)`, where compute = the ceiling's core-ms per image
  (1000 x its sessions x threads / its images/s: best batch and layout) and decode = the decode +
  preprocessing of the case's image in one thread as convserve does it (ms = core-ms): the most
  a server can answer when every image is decoded and computed on the same cores;
- LeNet: convserve ahead of naive, LitServe and PyTriton at c = 4, 16 and 64 (defaults);
- 4000x3000 photo: convserve at c=16 at least PHONE_GOAL x naive (which decodes exactly).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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
INT8_SYSTEM = "convserve-int8"
INT8_GOALS = {"resnet18": 1.8, "resnet50": 2.0}
DECODE_BOUND_GOAL = 0.95
LENET = "lenet5-fashion"
LENET_LEVELS = (4, 16, 64)
PHONE_GOAL = 3.0
PHONE_LEVEL = 16
HIGH = 16  # the throughput targets look at c >= HIGH
FLAG = "⚑"


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def median(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def summarize(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (system, concurrency), in the order measured: medians over rounds, the
    req/s range, errors summed, and whether a flagged round is among them."""
    flagged = {r["round"] for r in entry["rounds"] if r["flagged"]}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in entry["rows"]:
        groups.setdefault((row["system"], row["concurrency"]), []).append(row)
    out = []
    for (system, level), rows in groups.items():
        rps = [r["rps"] for r in rows]
        out.append(
            {
                "system": system,
                "concurrency": level,
                "rounds": len(rows),
                "rps": median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms": median([r["p50_ms"] for r in rows]),
                "p99_ms": median([r["p99_ms"] for r in rows]),
                "errors": sum(r["errors"] for r in rows),
                "mean_batch": median([r["mean_batch"] for r in rows]),
                "client_cpu_share": median([r["client_cpu_share"] for r in rows]),
                "flagged": any(r["round"] in flagged for r in rows),
            }
        )
    return out


def by(summary: list[dict[str, Any]], system: str) -> dict[int, dict[str, Any]]:
    return {r["concurrency"]: r for r in summary if r["system"] == system}


def ceiling(entry: dict[str, Any], key: str = "float32") -> dict[str, Any] | None:
    """A model file's ceiling over the run's measurements: median images/s, compute and decode
    ms, the layout and batch of the first (full) measurement, and the decode-bound limit."""
    checks = [c[key] for c in entry["ceilings"] if key in c]
    if not checks:
        return None
    first = checks[0]["best"]
    ips = median([c["best"]["images_per_s"] for c in checks])
    compute = 1000 * first["sessions"] * first["threads"] / ips
    decode = median([c["decode_preprocess_ms"] for c in checks])
    return {
        "images_per_s": ips,
        "min": min(c["best"]["images_per_s"] for c in checks),
        "max": max(c["best"]["images_per_s"] for c in checks),
        "measurements": len(checks),
        "batch": first["batch"],
        "layout": checks[0]["layout"],
        "batch1_compute_ms": median([c["batch1_compute_ms"] for c in checks]),
        "decode_ms": decode,
        "compute_core_ms": compute,
        "decode_bound": ips * compute / (compute + decode),
    }


def best_high(levels: dict[int, dict[str, Any]]) -> int | None:
    """The concurrency >= HIGH with the highest median req/s."""
    high = [c for c in levels if c >= HIGH]
    return max(high, key=lambda c: levels[c]["rps"]) if high else None


def int8_targets(entry: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    goal = INT8_GOALS.get(entry["case"])
    int8 = by(summary, INT8_SYSTEM)
    ceil = ceiling(entry)
    best = best_high(int8)
    if goal is None or best is None or ceil is None:
        return []
    shown = sorted({best, HIGH} & set(int8))

    def ratios(base: dict[int, float]) -> str:
        parts = [
            f"c={c}: {int8[c]['rps'] / base[c]:.2f}× ({mark(int8[c]['rps'] / base[c] >= goal)})"
            for c in shown
            if c in base
        ]
        return "; ".join(parts)

    out = [
        f"- int8 served (best c={best}: {int8[best]['rps']:.1f} req/s) vs float32 ceiling "
        f"{ceil['images_per_s']:.1f} img/s, target ≥ {goal}×: "
        + ratios(dict.fromkeys(shown, ceil["images_per_s"]))
    ]
    for rival in RIVALS:
        other = by(summary, rival)
        if other:
            out.append(
                f"- int8 served vs {rival} serving float32, target ≥ {goal}×: "
                + ratios({c: r["rps"] for c, r in other.items()})
            )
    return out


def decode_bound_target(entry: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    conv = by(summary, "convserve")
    ceil = ceiling(entry)
    best = best_high(conv)
    if entry["model"] == LENET or best is None or ceil is None:
        return []
    limit = ceil["decode_bound"]
    shown = sorted({best, HIGH} & set(conv))
    ratios = {c: conv[c]["rps"] / limit for c in shown}
    parts = [f"c={c}: {r:.2f}× ({mark(r >= DECODE_BOUND_GOAL)})" for c, r in ratios.items()]
    return [
        f"- float32 served vs decode-bound limit {limit:.1f} req/s (ceiling "
        f"{ceil['images_per_s']:.1f} × compute {ceil['compute_core_ms']:.1f} / (compute + "
        f"decode {ceil['decode_ms']:.1f} core-ms)), target ≥ {DECODE_BOUND_GOAL}×: "
        + "; ".join(parts)
    ]


def lenet_target(entry: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    conv = by(summary, "convserve")
    if entry["model"] != LENET or not conv:
        return []
    out = []
    for rival in RIVALS:
        other = by(summary, rival)
        levels = [c for c in LENET_LEVELS if c in conv and c in other]
        if not levels:
            continue
        ratios = [conv[c]["rps"] / other[c]["rps"] for c in levels]
        listed = ", ".join(f"c={c}: {r:.2f}×" for c, r in zip(levels, ratios, strict=True))
        out.append(f"- vs {rival}, ahead at c=4, 16, 64: {listed} ({mark(min(ratios) > 1)})")
    return out


def phone_target(entry: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    conv, naive = by(summary, "convserve"), by(summary, "naive")
    if entry["image"] != "4000x3000 JPEG" or PHONE_LEVEL not in conv or PHONE_LEVEL not in naive:
        return []
    ratio = conv[PHONE_LEVEL]["rps"] / naive[PHONE_LEVEL]["rps"]
    return [
        f"- 4000x3000 JPEG at c={PHONE_LEVEL}: {conv[PHONE_LEVEL]['rps']:.1f} vs naive "
        f"{naive[PHONE_LEVEL]['rps']:.1f} req/s = {ratio:.2f}× (target ≥ {PHONE_GOAL}×): "
        f"{mark(ratio >= PHONE_GOAL)}"
    ]


def other_checks(entry: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    """Latency and overload checks, and the workers variant, beside the targets."""
    conv = by(summary, "convserve")
    ceil = ceiling(entry)
    out = []
    floor, workers = by(summary, "floor"), by(summary, WORKERS_SYSTEM)
    if workers and floor:
        ratios = ", ".join(
            f"c={c}: {workers[c]['rps'] / floor[c]['rps']:.2f} × HTTP floor, "
            f"{workers[c]['rps'] / conv[c]['rps']:.2f} × one worker"
            for c in sorted(workers)
            if c in floor and c in conv and c >= HIGH
        )
        out.append(f"- {WORKERS_SYSTEM} (CONVSERVE_WORKERS = cores, not the default): {ratios}")
    for rival in RIVALS:
        other = by(summary, rival)
        behind = [c for c in (16, 64) if c in conv and c in other]
        if behind:
            worse = [c for c in behind if conv[c]["p99_ms"] >= other[c]["p99_ms"]]
            out.append(
                f"- p99 vs {rival} at c={', '.join(map(str, behind))}: {mark(not worse)}"
                + (f" (behind at c={worse})" if worse else "")
            )
    if 1 in conv and ceil is not None:
        budget = ceil["batch1_compute_ms"] + ceil["decode_ms"]
        p50 = conv[1]["p50_ms"]
        out.append(
            f"- c=1: p50 {p50:.2f} ms vs batch-1 compute + decode {budget:.2f} ms: "
            f"+{p50 - budget:.2f} ms (≤ +1 ms): {mark(p50 - budget <= 1.0)}"
        )
    over = entry.get("overload")
    if over and 1 in conv:
        limit = 2 * conv[1]["p99_ms"]
        out.append(
            f"- overload 3x (last round): accepted p99 {fmt(over['p99_ms'])} ms vs 2 × unloaded "
            f"p99 {limit:.1f} ms: {mark(over['p99_ms'] <= limit)}; 503s: "
            f"{over['overloaded_503']}, p99 {fmt(over['overloaded_p99_ms'])} ms"
        )
    return out


def verdicts(entry: dict[str, Any]) -> list[str]:
    summary = summarize(entry)
    targets = [
        *int8_targets(entry, summary),
        *decode_bound_target(entry, summary),
        *lenet_target(entry, summary),
        *phone_target(entry, summary),
    ]
    others = other_checks(entry, summary)
    if not targets and not others:
        return []
    return [f"**{title(entry)}**", "", *targets, *others, ""]


def title(entry: dict[str, Any]) -> str:
    return f"{entry['case']} ({entry['image']})"


def ceiling_lines(entry: dict[str, Any]) -> list[str]:
    lines = []
    for key in ("float32", "int8"):
        c = ceiling(entry, key)
        if c is None:
            continue
        lines.append(
            f"Ceiling {key} (ORT in-process, batch {c['batch']}, sessions x threads "
            f"{c['layout']}): **{c['images_per_s']:.1f} img/s** (median of {c['measurements']}, "
            f"{c['min']:.1f}–{c['max']:.1f}); batch-1 compute {c['batch1_compute_ms']:.2f} ms; "
            f"decode + preprocessing {c['decode_ms']:.2f} ms; decode-bound limit "
            f"{c['decode_bound']:.1f} req/s."
        )
    checks = []
    for r in entry["rounds"]:
        drift = ", ".join(f"{k} {v:+.0%}" for k, v in r["ceiling_change"].items())
        checks.append(
            f"round {r['round'] + 1}: {drift}" + (f" **{FLAG} flagged**" if r["flagged"] else "")
        )
    lines.append("Ceiling change over each round (before → after): " + "; ".join(checks) + ".")
    return [line for text in lines for line in (text, "")]


def model_table(entry: dict[str, Any]) -> list[str]:
    ceil = ceiling(entry)
    base = ceil["images_per_s"] if ceil else math.nan
    lines = [
        f"### {title(entry)}",
        "",
        *ceiling_lines(entry),
        "| system | c | req/s | range | × fp32 ceiling | p50 ms | p99 ms | errors | batch | "
        "client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summarize(entry):
        flag = f" {FLAG}" if r["flagged"] else ""
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {fmt(r['rps'])} | "
            f"{fmt(r['rps_min'])}–{fmt(r['rps_max'])}{flag} | {r['rps'] / base:.2f} | "
            f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {r['errors']} | "
            f"{fmt(r['mean_batch'], 2)} | {r['client_cpu_share']:.0%} |"
        )
    over = entry.get("overload")
    if over:
        lines += [
            "",
            f"Open loop at {over['rate_per_s']:.0f} req/s (3x convserve's best "
            f"{over['capacity_rps']:.1f}, last round): {over['requests']} answered 200 at "
            f"{fmt(over['rps'])} req/s, p50 {fmt(over['p50_ms'], 2)} / p99 "
            f"{fmt(over['p99_ms'], 2)} ms; {over['overloaded_503']} answered 503 (p99 "
            f"{fmt(over['overloaded_p99_ms'], 2)} ms); {over['errors']} other answers "
            f"(by status: {over.get('statuses', '–')}; 504 = deadline passed before compute); "
            f"mean batch {fmt(over['mean_batch'], 2)}; requests carried X-Request-Timeout-Ms "
            f"{over.get('timeout_header_ms', '–')}.",
        ]
    if "first_request_ms" in entry:
        lines += ["", f"convserve's first request after ready: {entry['first_request_ms']:.1f} ms."]
    return [*lines, ""]


def draft_table(costs: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "#### JPEG draft decoding",
        "",
        "Exact against draft decoding (`DRAFT_MIN_RATIO` "
        f"{next(iter(costs.values()))['draft_min_ratio']}) through a ResNet's preprocessing: "
        "|difference| of the model input in 8-bit levels, median decode + preprocessing ms.",
        "",
        "| image | DCT scale | max levels | mean levels | exact ms | draft ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in costs.items():
        lines.append(
            f"| {name} | 1/{c['scale']} | {c['max_levels']:.1f} | {c['mean_levels']:.3f} | "
            f"{c['exact_ms']:.1f} | {c['draft_ms']:.1f} |"
        )
    return [*lines, ""]


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    solo = f" + a {s['solo_threads']}-thread solo session" if s.get("solo_threads") else ""
    tiny = (
        " (1 for a model computing a batch of one in < 0.5 ms)" if s.get("instances_auto") else ""
    )
    lines = [
        f"Run of {results['date']}, {results['cores']} cores, {results['duration_s']} s in all, "
        f"{results['rounds']} rounds (rounds flagged {FLAG} when a ceiling moved more than "
        f"{results['ceiling_drift_limit']:.0%} over them). convserve defaults: max batch "
        f"{s['max_batch_size']}, queue delay {s['max_queue_delay_ms']} ms, {s['instances']} "
        f"instance(s){tiny} x {s['intra_op_threads']} intra-op thread(s){solo}, "
        f"{s['decode_threads']} "
        f"decode thread(s), queue {s['max_queue_size']}.",
        "",
        "#### Targets",
        "",
    ]
    for entry in results["models"]:
        lines += verdicts(entry)
    lines += ["#### Results", ""]
    for entry in results["models"]:
        lines += model_table(entry)
        if len(entry["levels"]) > 1:
            lines += [f"![{entry['case']}](images/bench-{entry['case']}.png)", ""]
    if results.get("draft_decode"):
        lines += draft_table(results["draft_decode"])
    return "\n".join(lines)


def plot(entry: dict[str, Any], images: Path) -> None:
    """Median req/s and p99 per system against concurrency, req/s with its range over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(entry)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    systems = dict.fromkeys(r["system"] for r in summary)
    for index, system in enumerate(systems):
        pts = sorted(by(summary, system).items())
        xs = [c for c, _ in pts]
        style = {"marker": "o", "label": system, "color": f"C{index}"}  # same colour both sides
        spread = [
            [r["rps"] - r["rps_min"] for _, r in pts],
            [r["rps_max"] - r["rps"] for _, r in pts],
        ]
        left.errorbar(xs, [r["rps"] for _, r in pts], yerr=spread, capsize=3, **style)
        if system != "floor":
            right.plot(xs, [r["p99_ms"] for _, r in pts], **style)
    ceil = ceiling(entry)
    if ceil is not None:
        left.axhline(ceil["images_per_s"], color="k", ls="--", label="fp32 ceiling")
    for ax, name in ((left, "throughput (req/s)"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(f"{entry['case']}: {name}")
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.tight_layout()
    images.mkdir(parents=True, exist_ok=True)
    fig.savefig(images / f"bench-{entry['case']}.png", dpi=90)
    plt.close(fig)


def write_docs(results: dict[str, Any], markdown: Path = BENCHMARKS_MD) -> None:
    """The results section of `markdown` (between the markers) and, beside it, the plots."""
    text = markdown.read_text() if markdown.exists() else f"{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    markdown.write_text(f"{head}{START}\n{render(results)}\n{END}{tail}")
    images = markdown.parent / "images"
    for entry in results["models"]:
        if len(entry["levels"]) > 1:
            plot(entry, images)
    print(f"wrote {markdown} and {images}/bench-*.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="?", default=RESULTS_JSON)
    parser.add_argument("--docs", type=Path, default=BENCHMARKS_MD, help="the page to update")
    args = parser.parse_args()
    write_docs(json.loads(args.results.read_text()), args.docs)


if __name__ == "__main__":
    main()
