"""Benchmark models and inputs: random-weight ResNets exported by our own `training.export`.

    python bench/models.py                 # writes bench/results/models/{resnet18,resnet50}/1
    python bench/models.py --fp16          # the same in float16, bench/results/models-fp16/

The ResNets go through `training.export.stage_and_publish` (the ONNX export, the ORT-vs-PyTorch
parity check on real photos, metadata.json) exactly as a trained checkpoint would; only the
weights are random, which changes nothing for speed. `lenet5-fashion` is copied from models/.
Beside each ResNet, `<arch>-int8` is the same network (same seed, same weights) through
`training.export --int8`'s quantization (`training.export.quantize_staged`): calibrated on
INT8_CALIBRATION crops of the sample photos, compared on INT8_GATE_IMAGES others. Its accuracy
gate is told to accept the loss: top-1 agreement of random weights (near-uniform logits) says
nothing about a trained network's, and speed does not depend on it (`bench/int8.py` compares the
speed of any two version folders).
Nothing here is committed: bench/results/ is ignored by git.
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_REPOSITORY = REPO_ROOT / "bench" / "results" / "models"
FP16_REPOSITORY = REPO_ROOT / "bench" / "results" / "models-fp16"  # `training.export --fp16`
RESNETS = ("resnet18", "resnet50")
LENET = "lenet5-fashion"
IMAGE_SIZE = 224
PHOTOS = ("china.jpg", "flower.jpg")  # scikit-learn's sample photos (640x427 JPEGs)
PHONE_SIZE = (4000, 3000)  # a phone camera's 12 MP photo: china.jpg upscaled
PHONE_QUALITY = 90
PHONE_PHOTO = REPO_ROOT / "bench" / "results" / "china-4000x3000-q90.jpg"
NUM_CLASSES = 1000
INT8_SUFFIX = "-int8"  # resnet18-int8: the int8 export of resnet18's network
INT8_CALIBRATION = 64  # random weights: calibration quality does not change speed
INT8_GATE_IMAGES = 32

logger = logging.getLogger(__name__)


def photo_path(name: str = PHOTOS[0]) -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / name


def photo_bytes() -> bytes:
    """A real JPEG photo, sent as the raw body to the ResNets."""
    return photo_path().read_bytes()


def phone_photo() -> bytes:
    """china.jpg upscaled to PHONE_SIZE (bicubic), JPEG quality PHONE_QUALITY; made once, cached
    as PHONE_PHOTO."""
    if not PHONE_PHOTO.exists():
        PHONE_PHOTO.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(photo_path()) as china:
            upscaled = china.resize(PHONE_SIZE, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        upscaled.save(buffer, format="JPEG", quality=PHONE_QUALITY)
        PHONE_PHOTO.write_bytes(buffer.getvalue())
    return PHONE_PHOTO.read_bytes()


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


def image_for(model: str, phone: bool = False) -> bytes:
    """What the benchmark sends to `model`; `phone`: the 4000x3000 photo instead of the 640x427."""
    if model == LENET:
        return fashion_png()
    return phone_photo() if phone else photo_bytes()


def _parity_samples(pre: object) -> Any:
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


def int8_name(model: str) -> str:
    return model + INT8_SUFFIX


def export_resnet(
    arch: str, repository: Path, force: bool = False, fp16: bool = False, int8: bool = False
) -> Path:
    """`<repository>/<arch>/1` (or `<arch>-int8/1` with `int8`), exported unless it exists."""
    import torch

    from training.data.transforms import Preprocessing, eval_transform
    from training.export import ExportSpec, quantize_staged, resolve_layers, stage_and_publish
    from training.imagenet import IMAGENET_MEAN, IMAGENET_STD
    from training.registry import build_model

    name = int8_name(arch) if int8 else arch
    target = repository / name / "1"
    if target.is_dir() and not force:
        return target
    torch.manual_seed(0)
    model = build_model(arch, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE).eval()
    pre = Preprocessing("RGB", 256, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    spec = ExportSpec(
        name=name,
        version=1,
        arch=arch,
        labels=[f"class-{i}" for i in range(NUM_CLASSES)],
        preprocessing=pre,
        layers=resolve_layers(model, arch, "none"),  # logits only: what the benchmark asks for
        training={"note": "random weights, benchmark only"},
        precision="float16" if fp16 else "float32",
    )
    samples = _parity_samples(pre)
    after_write = None
    if int8:
        from training.data.photos import PHOTO_NAMES, sample_photo
        from training.export_int8 import photo_split, plan_from_sets

        transform = eval_transform(pre)
        photos = [sample_photo(photo) for photo in PHOTO_NAMES]
        plan = plan_from_sets(
            *photo_split(photos, INT8_CALIBRATION, INT8_GATE_IMAGES),
            lambda image: transform(image).numpy(),
            accept_accuracy_loss=True,
        )

        def after_write(folder: Path, metadata: dict[str, object]) -> None:
            quantize_staged(folder, metadata, plan, samples)

    return stage_and_publish(model, spec, samples, repository, True, after_write)


def ensure_models(
    repository: Path = BENCH_REPOSITORY, force: bool = False, fp16: bool = False
) -> Path:
    """The benchmark repository with lenet5-fashion (copied), both ResNets and, unless `fp16`,
    their int8 exports; its root."""
    repository.mkdir(parents=True, exist_ok=True)
    lenet = repository / LENET
    if lenet.is_symlink():  # the service refuses folders resolving outside its repository
        lenet.unlink()
    if not lenet.exists():
        shutil.copytree(REPO_ROOT / "models" / LENET, lenet)
    for arch in RESNETS:
        logger.info("%s: %s", arch, export_resnet(arch, repository, force, fp16))
        if not fp16:
            logger.info("%s: %s", arch, export_resnet(arch, repository, force, int8=True))
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
