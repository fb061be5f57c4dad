"""Per architecture: export time, model.onnx size, parity figure and served latency of
`training.export --weights` models.

    python bench/pretrained.py                       # the eight seed architectures
    python bench/pretrained.py --archs resnet18 efficientnet_b0 --requests 30

Each state dict is a torchvision model with random weights saved under its published file name
(nothing is downloaded; speed does not depend on the weight values). The exported models are
served by the real service (`python -m service`, default settings) and china.jpg is sent one
request at a time (c=1); the table gives the median and the range of the latencies. Results go
to bench/results/pretrained/ (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
import torchvision

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.service.server import ServiceProcess  # noqa: E402
from training.pretrained import weights_enum  # noqa: E402

OUT = REPO_ROOT / "bench" / "results" / "pretrained"
ARCHS = ("alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "resnet152",
         "efficientnet_b0", "convnext_tiny")  # fmt: skip
WARMUP_REQUESTS = 3


def china_jpg() -> bytes:
    from sklearn.datasets import images

    return (Path(images.__file__).parent / "china.jpg").read_bytes()


def export(arch: str, weights_dir: Path, repository: Path) -> dict[str, object]:
    entry = weights_enum(arch).DEFAULT  # type: ignore[union-attr]
    path = weights_dir / Path(entry.url).name
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(arch).state_dict(), path)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "training.export", "--arch", arch, "--weights", str(path),
         "--name", arch, "--repository", str(repository), "--force"],
        check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    export_s = time.perf_counter() - started
    path.unlink()
    folder = repository / arch / "1"
    meta = json.loads((folder / "metadata.json").read_text())
    return {
        "arch": arch,
        "weights": str(entry),
        "export_s": round(export_s, 1),
        "onnx_mb": round((folder / "model.onnx").stat().st_size / 2**20, 1),
        "parity": meta["export"]["parity_max_abs_diff"],
        "feature_maps": len(meta["feature_maps"]),
        "cam": "cam" in meta,
    }


def latencies(base_url: str, name: str, body: bytes, requests: int) -> list[float]:
    url = f"{base_url}/v1/models/{name}/classify"
    headers = {"Content-Type": "image/jpeg"}
    with httpx.Client(timeout=120) as client:
        for _ in range(WARMUP_REQUESTS):
            client.post(url, content=body, headers=headers).raise_for_status()
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            client.post(url, content=body, headers=headers).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--requests", type=int, default=20, help="timed requests per model")
    parser.add_argument(
        "--reuse", action="store_true", help="serve the models of the last run, no export"
    )
    args = parser.parse_args()
    repository, weights_dir = OUT / "models", OUT / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    exports = OUT / "exports.json"
    if args.reuse:
        done = {row["arch"]: row for row in json.loads(exports.read_text())}
        rows = [done[arch] for arch in args.archs]
    else:
        rows = [export(arch, weights_dir, repository) for arch in args.archs]
        exports.write_text(json.dumps(rows, indent=2) + "\n")
    body = china_jpg()
    for row in rows:  # one model per service: the latency of that model alone
        alone = OUT / "serve" / str(row["arch"])
        alone.mkdir(parents=True, exist_ok=True)
        if not (alone / str(row["arch"])).exists():  # hard links: the service refuses symlinks
            shutil.copytree(repository / str(row["arch"]), alone / str(row["arch"]),
                            copy_function=os.link)  # fmt: skip
        with ServiceProcess(OUT / "service.log", model_repository=alone,
                            default_model=row["arch"]) as service:  # fmt: skip
            times = latencies(service.base_url, str(row["arch"]), body, args.requests)
        row["c1_median_ms"] = round(statistics.median(times), 1)
        row["c1_range_ms"] = [round(min(times), 1), round(max(times), 1)]
    (OUT / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}")
    print("| arch | weights | export s | model.onnx MB | parity | maps | CAM | c=1 ms (range) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["c1_range_ms"]  # type: ignore[misc]
        print(
            f"| {r['arch']} | {r['weights']} | {r['export_s']} | {r['onnx_mb']} | "
            f"{r['parity']:.1e} | {r['feature_maps']} | {'yes' if r['cam'] else 'no'} | "
            f"{r['c1_median_ms']} ({low}–{high}) |"
        )


if __name__ == "__main__":
    main()
