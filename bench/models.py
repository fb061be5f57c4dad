"""Benchmark models and inputs: random-weight ResNets exported by our own `training.export`.

    python bench/models.py                 # writes bench/results/models/{resnet18,resnet50}/1
    python bench/models.py --fp16          # the same in float16, bench/results/models-fp16/

The ResNets go through `training.export.stage_and_publish` (the ONNX export, the ORT-vs-PyTorch
parity check on real photos, metadata.json) exactly as a trained checkpoint would; only the
weights are random, which changes nothing for speed. `lenet5-fashion` is copied from models/.
Nothing here is committed: bench/results/ is ignored by git.
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_REPOSITORY = REPO_ROOT / "bench" / "results" / "models"
FP16_REPOSITORY = REPO_ROOT / "bench" / "results" / "models-fp16"  # `training.export --fp16`
RESNETS = ("resnet18", "resnet50")
LENET = "lenet5-fashion"
IMAGE_SIZE = 224
PHOTOS = ("china.jpg", "flower.jpg")  # scikit-learn's sample photos (640x427 JPEGs)
NUM_CLASSES = 1000

logger = logging.getLogger(__name__)


def photo_path(name: str = PHOTOS[0]) -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / name


def photo_bytes() -> bytes:
    """A real JPEG photo, sent as the raw body to the ResNets."""
    return photo_path().read_bytes()


def fashion_png() -> bytes:
    """A 28x28 Fashion-MNIST test image as PNG (random pixels without the dataset)."""
    try:
        from training.data.idx import load_fashion_mnist

        pixels = load_fashion_mnist(train=False)[0][0]
    except (ImportError, FileNotFoundError):
        pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_for(model: str) -> bytes:
    return fashion_png() if model == LENET else photo_bytes()


def _parity_samples(pre: object) -> object:
    """(N, 3, 224, 224) real photos through training's eval transform (crops of both photos)."""
    import torch

    from training.data.transforms import eval_transform

    transform = eval_transform(pre)  # type: ignore[arg-type]
    images = []
    for name in PHOTOS:
        photo = Image.open(photo_path(name)).convert("RGB")
        width, height = photo.size
        images.append(transform(photo))
        images.append(transform(photo.crop((0, 0, width // 2 + 64, height // 2 + 64))))
    return torch.stack(images)


def export_resnet(arch: str, repository: Path, force: bool = False, fp16: bool = False) -> Path:
    import torch

    from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
    from training.export import ExportSpec, resolve_layers, stage_and_publish
    from training.registry import build_model

    target = repository / arch / "1"
    if target.is_dir() and not force:
        return target
    torch.manual_seed(0)
    model = build_model(arch, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE).eval()
    pre = Preprocessing("RGB", 256, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    spec = ExportSpec(
        name=arch,
        version=1,
        arch=arch,
        labels=[f"class-{i}" for i in range(NUM_CLASSES)],
        preprocessing=pre,
        layers=resolve_layers(model, arch, "none"),  # logits only: what the benchmark asks for
        training={"note": "random weights, benchmark only"},
        precision="float16" if fp16 else "float32",
    )
    return stage_and_publish(model, spec, _parity_samples(pre), repository, force=True)  # type: ignore[arg-type]


def ensure_models(
    repository: Path = BENCH_REPOSITORY, force: bool = False, fp16: bool = False
) -> Path:
    """The benchmark repository with lenet5-fashion (linked) and both ResNets; its root."""
    repository.mkdir(parents=True, exist_ok=True)
    lenet = repository / LENET
    if lenet.is_symlink():  # the service refuses folders resolving outside its repository
        lenet.unlink()
    if not lenet.exists():
        shutil.copytree(REPO_ROOT / "models" / LENET, lenet)
    for arch in RESNETS:
        logger.info("%s: %s", arch, export_resnet(arch, repository, force, fp16))
    return repository


def onnx_path(model: str, repository: Path = BENCH_REPOSITORY) -> Path:
    versions = sorted((repository / model).glob("[0-9]*"), key=lambda p: int(p.name))
    return versions[-1] / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, help="default: models/ or models-fp16/")
    parser.add_argument("--force", action="store_true", help="Re-export existing versions.")
    parser.add_argument("--fp16", action="store_true", help="Export the ResNets with --fp16.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    default = FP16_REPOSITORY if args.fp16 else BENCH_REPOSITORY
    ensure_models(args.repository or default, args.force, args.fp16)


if __name__ == "__main__":
    main()
