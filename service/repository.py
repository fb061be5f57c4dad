"""Model repository scanning and validation (docs/repository.md); no ORT session here.

A version is trusted only after: valid names, every path resolving inside the repository root,
metadata validated by `ModelMetadata`, an ONNX file without external data, cam weights loaded
with `allow_pickle=False`. Anything else raises `RepositoryError`, reported and skipped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from pydantic import ValidationError

from service.errors import RepositoryError, describe_validation
from service.metadata import (
    METADATA_FILENAME,
    MODEL_FILENAME,
    ModelMetadata,
    is_valid_name,
    parse_version,
)

logger = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class VersionRef:
    model: str
    version: int
    path: Path


@dataclass(frozen=True)
class VersionFiles:
    """A validated version: everything the runtime needs, read into memory."""

    ref: VersionRef
    metadata: ModelMetadata
    onnx_bytes: bytes
    cam_weights: npt.NDArray[np.float32] | None


def inside(root: Path, path: Path) -> Path:
    """`path` resolved (symlinks followed); RepositoryError unless it stays under `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise RepositoryError(f"{path} resolves outside the repository ({resolved})")
    return resolved


def scan(root: Path, only: list[str] | None = None) -> tuple[list[VersionRef], list[str]]:
    """Every model/version folder under `root` (or only the named models) and the problems seen.

    Folders whose names are not valid model names or integers are reported and skipped, and so
    are ONNX files outside a version folder (`<model>/model.onnx`), which would otherwise go
    unnoticed.
    """
    refs: list[VersionRef] = []
    problems: list[str] = []
    if not root.is_dir():
        return refs, [f"model repository {root} is not a folder"]
    wanted = set(only) if only else None
    for model_dir in sorted(root.iterdir()):
        name = model_dir.name
        if name.startswith("."):
            continue
        if not model_dir.is_dir():
            if wanted is None and _is_onnx_file(model_dir):
                stem = model_dir.stem.lower()
                model = stem if is_valid_name(stem) else "<name>"
                problems.append(misplaced_onnx(name, f"{model}/1/{MODEL_FILENAME}"))
            continue
        if wanted is not None and name not in wanted:
            continue
        if not is_valid_name(name):
            problems.append(f"{name!r}: invalid model name, skipped")
            continue
        for version_dir in sorted(model_dir.iterdir()):
            if version_dir.name.startswith("."):
                continue
            if not version_dir.is_dir():
                if _is_onnx_file(version_dir):
                    where = f"{name}/{version_dir.name}"
                    problems.append(misplaced_onnx(where, f"{name}/1/{MODEL_FILENAME}"))
                continue
            version = parse_version(version_dir.name)
            if version is None:
                problems.append(f"{name}/{version_dir.name}: not an integer version, skipped")
                continue
            refs.append(VersionRef(name, version, version_dir))
    return refs, problems


def _is_onnx_file(path: Path) -> bool:
    return path.suffix.lower() == ".onnx" and path.is_file()


def misplaced_onnx(where: str, target: str) -> str:
    """The problem of an ONNX file outside any version folder, saying where it belongs."""
    return (
        f"{where}: an ONNX file outside a version folder is not served; move it to {target} "
        f"with a {METADATA_FILENAME} beside it (docs/repository.md)"
    )


def fingerprint(ref: VersionRef) -> Fingerprint:
    """(file, size, mtime_ns) of every file of a version: a change means reload."""
    entries: list[tuple[str, int, int]] = []
    for path in sorted(ref.path.rglob("*")):
        if path.is_file():
            stat = path.stat()
            entries.append((str(path.relative_to(ref.path)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def load_version(root: Path, ref: VersionRef) -> VersionFiles:
    """Read and validate one version; RepositoryError says what is wrong, prefixed once with
    `<model>/<version>: `."""
    try:
        return _load_version(root, ref)
    except RepositoryError as err:
        raise RepositoryError(f"{ref.model}/{ref.version}: {err}") from err


def _load_version(root: Path, ref: VersionRef) -> VersionFiles:
    version_dir = inside(root, ref.path)
    metadata_path = inside(root, version_dir / METADATA_FILENAME)
    model_path = inside(root, version_dir / MODEL_FILENAME)
    try:
        metadata = ModelMetadata.model_validate_json(metadata_path.read_bytes())
    except FileNotFoundError as err:
        present = f" beside {MODEL_FILENAME}" if model_path.is_file() else ""
        raise RepositoryError(
            f"{METADATA_FILENAME} is missing{present}: a version folder needs {MODEL_FILENAME} "
            f"and {METADATA_FILENAME} (docs/repository.md)"
        ) from err
    except ValidationError as err:
        raise RepositoryError(f"invalid {METADATA_FILENAME}: {describe_metadata(err)}") from err
    except OSError as err:
        raise RepositoryError(f"cannot read {METADATA_FILENAME}: {err}") from err
    if metadata.name != ref.model or metadata.version != ref.version:
        raise RepositoryError(f"metadata names {metadata.name}/{metadata.version}, not its folder")
    try:
        onnx_bytes = model_path.read_bytes()
    except FileNotFoundError as err:
        raise RepositoryError(f"{MODEL_FILENAME} is missing") from err
    except OSError as err:
        raise RepositoryError(f"cannot read {MODEL_FILENAME}: {err}") from err
    # The checksum first: a half-copied file is named as such, and bytes that are not the
    # recorded model are never parsed.
    if hashlib.sha256(onnx_bytes).hexdigest() != metadata.export.sha256:
        raise RepositoryError(f"{MODEL_FILENAME} does not match metadata sha256")
    check_onnx(onnx_bytes)
    for image in metadata.filters:
        inside(root, version_dir / image.file)
    cam_weights = None
    if metadata.cam is not None:
        cam_weights = _load_cam_weights(inside(root, version_dir / metadata.cam.weights), metadata)
    return VersionFiles(ref, metadata, onnx_bytes, cam_weights)


def describe_metadata(err: ValidationError) -> str:
    """Each problem of a metadata.json as `field.path: message`, without the values it holds
    or pydantic's help URLs (`describe_validation`); JSON syntax errors say where they are."""
    errors = err.errors(include_url=False, include_input=False)
    return describe_validation(errors, root="(top level)")


def check_onnx(data: bytes) -> None:
    """Refuse unparsable models and any tensor stored as external data."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises several unrelated types
        raise RepositoryError(f"{MODEL_FILENAME} is not an ONNX model: {err}") from err
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise RepositoryError(
                    f"tensor {tensor.name!r} uses external data, which is refused"
                )


def _load_cam_weights(path: Path, metadata: ModelMetadata) -> npt.NDArray[np.float32]:
    assert metadata.cam is not None
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RepositoryError(f"cam weights {path.name}: {err}") from err
    channels = next(
        fm.shape[0] for fm in metadata.feature_maps if fm.output == metadata.cam.feature_map
    )
    if weights.shape != (metadata.num_classes, channels):
        raise RepositoryError(
            f"cam weights {path.name} have shape {weights.shape}, "
            f"need ({metadata.num_classes}, {channels})"
        )
    return np.ascontiguousarray(weights, dtype=np.float32)
