"""How convserve's defaults were chosen: the same load against convserve with one setting
changed at a time, beside the ceiling measured in the same run.

    /tmp/convserve-bench/bin/python bench/tune.py --model resnet18 --concurrency 16 \\
        --variant INSTANCES=2,INTRA_OP_THREADS=1 --variant MAX_BATCH_SIZE=4

Each `--variant` is comma-separated CONVSERVE_* settings without the prefix; the defaults
always run first. Prints req/s, its ratio to the defaults and to the ceiling, p50/p99, batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.compare import PLANS, ceiling, stop, target_for  # noqa: E402
from bench.load import closed_loop, start_service  # noqa: E402
from bench.models import BENCH_REPOSITORY, INT8_SUFFIX, ensure_models, image_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--concurrency", default="16")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--variant", action="append", default=[], help="e.g. INSTANCES=2")
    parser.add_argument("--no-ceiling", action="store_true")
    args = parser.parse_args()
    repository = ensure_models(BENCH_REPOSITORY)
    image = image_for(args.model)
    ceil_ips = float("nan")
    if not args.no_ceiling:
        plan = PLANS[args.model.removesuffix(INT8_SUFFIX)]  # an int8 file: its float32 model's
        ceil = ceiling(args.model, plan.batches, repository, phone=False)
        ceil_ips = ceil["best"]["images_per_s"]
        print(f"ceiling {ceil_ips:.1f} img/s: {json.dumps(ceil['best'])}")
    levels = [int(c) for c in args.concurrency.split(",")]
    base: dict[int, float] = {}
    print(
        f"{'variant':<44} {'c':>3} {'req/s':>8} {'xdef':>6} {'xceil':>6} "
        f"{'p50':>8} {'p99':>8} {'batch':>6} load"
    )
    for variant in ["", *args.variant]:
        env = {
            "CONVSERVE_MODEL_REPOSITORY": str(repository),
            "CONVSERVE_MODELS": args.model,
            "CONVSERVE_DEFAULT_MODEL": args.model,
        }
        for pair in filter(None, variant.split(",")):
            key, _, value = pair.partition("=")
            env[f"CONVSERVE_{key.strip().upper()}"] = value.strip()
        process, url, _ = start_service(env)
        try:
            target = target_for("convserve", url, args.model, image)
            asyncio.run(closed_loop(target, max(levels), 2.0))
            for level in levels:
                result = asyncio.run(
                    closed_loop(target, level, args.duration, batch_url=url, batch_model=args.model)
                )
                s = result.summary()
                base.setdefault(level, s["rps"])
                print(
                    f"{variant or 'defaults':<44} {level:>3} {s['rps']:8.1f} "
                    f"{s['rps'] / base[level]:6.2f} {s['rps'] / ceil_ips:6.2f} "
                    f"{s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s['mean_batch']:6.2f} "
                    f"{os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        finally:
            stop(process)


if __name__ == "__main__":
    main()
