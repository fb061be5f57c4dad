"""Pretrained torchvision weights: a state-dict file or a weights name → weights, labels and the
preprocessing they were trained with.

`--weights` is either a file (a state dict exactly as torchvision publishes it, e.g.
`resnet50-11ad3fa6.pth`, read with `torch.load(weights_only=True)`, so nothing but tensors and
plain containers is unpickled) or a torchvision weights name (`ResNet50_Weights.IMAGENET1K_V2`,
`IMAGENET1K_V2`, `DEFAULT`), which resolves through torchvision's own metadata to its file in the
torch hub cache (`$TORCH_HOME/hub/checkpoints/`). Nothing is downloaded unless asked.

Labels and preprocessing come from the weights entry (`meta["categories"]`, and the resize, crop,
interpolation, mean and std of `weights.transforms()`); a file is matched to its entry by file
name, else the architecture's default entry is assumed and a log line says so.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from training.artifacts import sha256_of
from training.checkpoint import describe_load_error
from training.data.transforms import Interpolation, Preprocessing
from training.errors import UserError
from training.imagenet import IMAGENET_MEAN, IMAGENET_STD, RESIZE_RATIO
from training.labels import resolve_labels
from training.models.adapt import AUX_HEAD_MODELS
from training.registry import build_model, get_spec

logger = logging.getLogger(__name__)
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
DEFAULT_IMAGE_SIZE = 224
MISMATCHES_SHOWN = 3
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.[a-z]+$")
# Builder options torchvision sets when it loads pretrained weights into these architectures:
# their weights expect inputs re-normalised inside the model (`transform_input`).
PRETRAINED_ARCH_KWARGS = {name: {"transform_input": True} for name in AUX_HEAD_MODELS}
# Keys of auxiliary heads in GoogLeNet / Inception v3 files; the served model has no aux heads.
AUX_HEAD_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
# DenseNet files use the pre-0.3 key names (`norm.1` for `norm1`), as torchvision's own loader
# knows: `...denselayerN.norm.1.weight` → `...denselayerN.norm1.weight`.
DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_INTERPOLATIONS = {"nearest", "bilinear", "bicubic"}


@dataclass(frozen=True)
class Pretrained:
    """Everything an export or a fine-tune takes from pretrained weights."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    labels: list[str]  # the weights' classes (empty when their entry names none, no --labels)
    preprocessing: Preprocessing
    source: dict[str, Any]  # metadata.json `source`: kind, name, file, sha256
    arch_kwargs: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return head_classes(self.state_dict) or len(self.labels)


def weights_enum(arch: str) -> type[WeightsEnum] | None:
    """torchvision's weights enum of `arch` (ResNet50_Weights for resnet50), if it has one."""
    try:
        return torchvision.models.get_model_weights(arch)  # type: ignore[no-any-return]
    except (ValueError, KeyError):
        return None


def hub_path(entry: WeightsEnum) -> Path:
    """Where torch hub keeps the file of `entry`: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(entry.url).path).name


def looks_like_file(text: str) -> bool:
    return Path(text).exists() or "/" in text or text.lower().endswith(WEIGHT_FILE_SUFFIXES)


def resolve_entry(arch: str, name: str) -> WeightsEnum:
    """`ResNet50_Weights.IMAGENET1K_V2`, `IMAGENET1K_V2` or `DEFAULT` → that entry of `arch`."""
    enum = weights_enum(arch)
    if enum is None:
        raise UserError(
            f"{arch} has no torchvision weights to name; pass a weights file (--weights PATH)"
        )
    prefix, _, member = name.rpartition(".")
    if prefix and prefix != enum.__name__:
        raise UserError(f"weights {name} are not {arch}'s ({enum.__name__}.<name>)")
    try:
        return enum[member]
    except KeyError:
        choices = ", ".join(f"{enum.__name__}.{e.name}" for e in enum)
        raise UserError(
            f"--weights {name}: no such file, and not a weights name of {arch} ({choices})"
        ) from None


def published_hash(entry: WeightsEnum) -> str | None:
    """The sha256 prefix torchvision puts in its file names (`resnet50-11ad3fa6.pth`)."""
    found = HASH_IN_NAME.search(Path(urlparse(entry.url).path).name)
    return found[1] if found else None


def is_published_file(entry: WeightsEnum, sha256: str) -> bool:
    """True when a file with this sha256 is `entry`'s published file (its name's hash)."""
    prefix = published_hash(entry)
    return prefix is not None and sha256.startswith(prefix)


def entry_for_file(arch: str, path: Path) -> WeightsEnum | None:
    """The weights entry of `arch` whose published file name is `path`'s name."""
    enum = weights_enum(arch)
    if enum is None:
        return None
    return next((e for e in enum if Path(urlparse(e.url).path).name == path.name), None)


def fetch(entry: WeightsEnum, download: bool) -> Path:
    """The hub-cache file of `entry`; downloaded (hash-checked) only when `download`."""
    path = hub_path(entry)
    if path.is_file():
        return path
    if not download:
        raise UserError(
            f"weights {entry} are not in the torch hub cache: put {entry.url} at {path} "
            "(or pass --download)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", entry.url, path)
    try:
        torch.hub.download_url_to_file(entry.url, str(path), published_hash(entry), progress=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"cannot download {entry.url}: {err}") from err
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict (names → tensors) from `path`, read with `weights_only=True`."""
    if path.is_dir():
        raise UserError(f"weights {path} is a folder, not a state-dict file")
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises many types on bad files
        reason = describe_load_error(err)
        advice = "; save model.state_dict() alone" if "pickled" in reason else ""
        raise UserError(f"{path} is not a readable state-dict file ({reason}){advice}") from err
    if isinstance(content, dict) and {"arch", "model", "labels"} <= content.keys():
        raise UserError(f"{path} is a convserve training checkpoint: pass it as --checkpoint")
    if not isinstance(content, dict) or not content:
        raise UserError(f"{path} holds {type(content).__name__}, not a state dict")
    nested = [k for k, v in content.items() if is_state_dict(v)]
    if len(nested) == 1 and not is_state_dict(content):  # {"state_dict": ..., "epoch": ...}
        logger.info("%s: the state dict under its key %r", path.name, nested[0])
        content = content[nested[0]]
    state: dict[str, torch.Tensor] = content
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(
            f"{path} is not a plain state dict: {', '.join(not_tensors[:MISMATCHES_SHOWN])} "
            "hold no tensors (a training checkpoint? save model.state_dict() alone)"
        )
    return state


def is_state_dict(value: object) -> bool:
    """A non-empty dict of tensors by name."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def head_classes(state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the last 2-D weight in the file: the classifier head's class count."""
    matrices = [t for k, t in state.items() if k.endswith("weight") and t.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def normalise_keys(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's keys as the model names them: aux heads dropped, DenseNet's legacy names.
    A shallow copy of the file's own dict, so the module versions torch saved beside the keys
    (MNASNet's builder reads them) go with it."""
    out = copy.copy(state)
    for key in list(out):
        if arch in AUX_HEAD_MODELS and key.startswith(AUX_HEAD_PREFIXES):
            del out[key]
        elif arch.startswith("densenet") and DENSENET_LEGACY_KEY.search(key):
            out[DENSENET_LEGACY_KEY.sub(r"\1\2", key)] = out.pop(key)
    return out


def shape_mismatches(
    model: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> list[str]:
    """`key (file's shape) vs (model's shape)` for each tensor that both hold under another
    shape; keys starting with a `skip` prefix are not compared."""
    return [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in model.state_dict().items()
        if not k.startswith(skip) and k in state and state[k].shape != v.shape
    ]


def fit_errors(
    model: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> list[str]:
    """Why `state` does not fit `model` (missing, unexpected keys, shapes); empty: it fits.
    Keys starting with a `skip` prefix are not compared (a head that a fine-tune replaces)."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in state.items() if not k.startswith(skip)}
    problems = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = shape_mismatches(model, state, skip)
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = (
                f" (+{len(items) - MISMATCHES_SHOWN} more)" if len(items) > MISMATCHES_SHOWN else ""
            )
            problems.append(f"{what}: {', '.join(items[:MISMATCHES_SHOWN])}{more}")
    return problems


def entry_preprocessing(entry: WeightsEnum | None) -> Preprocessing:
    """The eval preprocessing of `entry`'s transforms (ImageNet 256/224 bilinear without one)."""
    if entry is None:
        size = DEFAULT_IMAGE_SIZE
        resize = round(size * RESIZE_RATIO)
        return Preprocessing("RGB", resize, size, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    transform = entry.transforms()
    crop = _first(getattr(transform, "crop_size", DEFAULT_IMAGE_SIZE))
    resize = _first(getattr(transform, "resize_size", None) or crop)
    mode = getattr(transform, "interpolation", None)
    interpolation = str(getattr(mode, "value", "bilinear"))
    if interpolation not in _INTERPOLATIONS:
        raise UserError(f"weights {entry} resize with {interpolation}; the service cannot")
    return Preprocessing(
        "RGB",
        resize,
        crop,
        tuple(float(v) for v in getattr(transform, "mean", IMAGENET_MEAN)),
        tuple(float(v) for v in getattr(transform, "std", IMAGENET_STD)),
        cast(Interpolation, interpolation),
    )


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


def load_pretrained(
    arch: str, weights: str, labels: str | None = None, download: bool = False
) -> Pretrained:
    """Resolve `weights` (file or name) for `arch`: the state dict, labels and preprocessing.
    Whether the labels fit the weights' head is checked once the weights fit `arch`
    (`build_pretrained`): a wrong --arch is named as such, not as a label count."""
    get_spec(arch)  # an unknown --arch is the first thing to say
    if looks_like_file(weights):
        path = Path(weights).expanduser()
        state = read_state_dict(path)
        entry = entry_for_file(arch, path)
        if entry is None:
            enum = weights_enum(arch)
            entry = None if enum is None else enum["DEFAULT"]
            logger.info(
                "%s matches no torchvision weights file name of %s: assuming the preprocessing "
                "of %s%s",
                path.name,
                arch,
                entry or "ImageNet 256/224 bilinear",
                "" if labels else " and its labels",
            )
        else:
            logger.info("%s has the published file name of %s", path.name, entry)
    else:
        entry = resolve_entry(arch, weights)
        path = fetch(entry, download)
        state = read_state_dict(path)
    sha256 = sha256_of(path)
    # The name is recorded only for the published file itself: its sha256 starts with the hash
    # in torchvision's file name. Another file (retrained, or just renamed) keeps the entry's
    # preprocessing and labels, but is not called by the entry's name.
    name = None
    if entry is not None and path.name == hub_path(entry).name:
        if is_published_file(entry, sha256):
            name = str(entry)
        else:
            logger.warning(
                "%s is named as %s's file but its sha256 %s does not start with %s: not the "
                "published weights; using that entry's preprocessing and labels",
                path.name,
                entry,
                sha256[:12],
                published_hash(entry),
            )
    state = normalise_keys(arch, state)
    if labels is not None:
        label_list = resolve_labels(labels)
    else:
        categories = None if entry is None else entry.meta.get("categories")
        label_list = list(categories or [])
    return Pretrained(
        arch=arch,
        state_dict=state,
        labels=label_list,
        preprocessing=entry_preprocessing(entry),
        source={"kind": "weights", "name": name, "file": path.name, "sha256": sha256},
        arch_kwargs=dict(PRETRAINED_ARCH_KWARGS.get(arch, {})),
    )


def build_pretrained(pretrained: Pretrained) -> nn.Module:
    """The torchvision network of `pretrained.arch` with every weight from the file (eval)."""
    classes = head_classes(pretrained.state_dict)
    pre = pretrained.preprocessing
    model = build_model(
        pretrained.arch,
        num_classes=pretrained.num_classes or 1,  # no head and no labels: refused below
        in_channels=pre.channels,
        image_size=pre.center_crop,
        **pretrained.arch_kwargs,
    )
    load_fitting(model, pretrained)
    if not pretrained.labels:
        raise UserError(
            f"weights {pretrained.source['file']} come with no class names: "
            "pass --labels imagenet|FILE"
        )
    if classes is not None and classes != len(pretrained.labels):
        raise UserError(
            f"{pretrained.source['file']} has a {classes}-class head but "
            f"{len(pretrained.labels)} labels: pass --labels FILE with {classes} labels"
        )
    return model.eval()


def head_path(model: nn.Module) -> str:
    """Module path of the classifier head: the last nn.Linear (fc, classifier.6, ...)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no linear classifier head to replace")
    return str(linears[-1])


# Sequential children that hold a network's whole trunk, one stage per child.
TRUNKS = ("features", "trunk_output", "layers")


def backbone_blocks(model: nn.Module, head: str) -> list[list[str]]:
    """The model's blocks that hold weights, input to output, without the head, each as the
    module paths it spans: its top-level children, a trunk Sequential counted block by block
    (`TRUNKS`: EfficientNet's, ConvNeXt's, VGG's and DenseNet's `features`, RegNet's
    `trunk_output`, MNASNet's `layers`; ResNet's `layer1`… stay one block each). A
    part with weights but no conv or linear layer (a norm: ResNet's `bn1`, DenseNet's `norm5`,
    ConvNeXt's head LayerNorm) belongs to the block before it."""
    parts = []
    head_root = head.split(".", 1)[0]
    for name, child in model.named_children():
        if name == head_root and head != name:
            parts += [
                (f"{name}.{n}", m) for n, m in child.named_children() if f"{name}.{n}" != head
            ]
        elif isinstance(child, nn.Sequential) and name in TRUNKS:
            parts += [(f"{name}.{n}", m) for n, m in child.named_children()]
        elif name != head:
            parts.append((name, child))
    blocks: list[list[str]] = []
    for path, module in parts:
        if not any(True for _ in module.parameters()):
            continue
        computes = any(isinstance(m, nn.Conv2d | nn.Linear) for m in module.modules())
        if computes or not blocks:
            blocks.append([path])
        else:
            blocks[-1].append(path)
    return blocks


def freeze(model: nn.Module, head: str, trainable_blocks: int | None) -> int:
    """Only the head and the last `trainable_blocks` backbone blocks train (None: all);
    returns the number of trainable parameters."""
    if trainable_blocks is not None:
        blocks = backbone_blocks(model, head)
        keep = blocks[len(blocks) - trainable_blocks :] if trainable_blocks else []
        trainable = (head, *(path for block in keep for path in block))
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(tuple(f"{t}." for t in trainable))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_fitting(model: nn.Module, pretrained: Pretrained, head: str | None = None) -> None:
    """Load the file into `model`; one UserError naming the first mismatches when it does not
    fit. With `head` (a module path), that module keeps its own (new) weights."""
    skip = () if head is None else (f"{head}.",)
    state = copy.copy(pretrained.state_dict)  # with the module versions torch saved
    for key in [k for k in state if k.startswith(skip)]:
        del state[key]
    for key, value in model.state_dict().items():
        # BatchNorm's step counter, absent from files saved before PyTorch 0.4.1 (DenseNet's
        # published weights) and from hand-trimmed ones: torch itself starts it at 0 for them.
        if key.endswith(".num_batches_tracked") and key not in state and not key.startswith(skip):
            state[key] = torch.zeros_like(value)
    problems = fit_errors(model, state, skip)
    if problems:
        raise UserError(
            f"weights {pretrained.source['file']} do not fit {pretrained.arch}: "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=head is None)
