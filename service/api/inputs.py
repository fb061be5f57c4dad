"""Reading request bodies (classify: raw image, multipart `file` parts, or JSON base64), size-
limited and inflated; and watching for the client's disconnect once the body is read."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import zlib
from concurrent.futures import Executor

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.api.edge import declared_length, declared_too_large
from service.errors import (
    BadRequest,
    InvalidImage,
    InvalidOption,
    PayloadTooLarge,
    SchemaError,
    UnsupportedMediaType,
    describe_validation,
)
from service.jsonbounds import holds_more_values
from service.schemas import JsonImages

RAW_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream"}
)
MULTIPART = "multipart/form-data"
JSON = "application/json"
FILE_FIELD = "file"
# A body with no media type, or with curl's default for `--data-binary`, is taken as a raw image
# when its first bytes are one (`curl --data-binary @photo.jpg URL` works); anything else is 415.
SNIFFED_TYPES = frozenset({"", "application/x-www-form-urlencoded"})
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG
WEBP_SIGNATURE = (b"RIFF", b"WEBP")  # bytes 0-3 and 8-11
# zlib's wbits: gzip framing, and zlib framing (what HTTP calls "deflate").
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
DATA_URL_PREFIX = re.compile(r"^\s*data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)
# JSON bodies above this are parsed and base64-decoded in a worker thread (a hop costs more than
# parsing a few small images).
THREAD_BODY_BYTES = 256 * 1024
# A JSON images body holds one array value per image, and a data URL's prefix one comma more;
# the object around them a few (holds_more_values).
JSON_VALUES_PER_IMAGE = 2
JSON_ENVELOPE_VALUES = 16


def _check_declared_length(request: Request, limit: int) -> None:
    too_large = declared_too_large(declared_length(request.scope), limit)
    if too_large is not None:
        raise too_large


async def _read(request: Request, limit: int, executor: Executor | None) -> bytes:
    """The body, at most `limit` bytes as sent and as its Content-Encoding inflates it."""
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    encoding = request.headers.get("content-encoding")
    if encoding is None:
        return body
    # Inflating up to `limit` bytes takes tens of milliseconds: never on the event loop.
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, decompress, body, encoding, limit)


async def read_body(request: Request, limit: int, executor: Executor | None = None) -> bytes:
    """The whole body, refused with 413 past `limit` bytes (declared, as sent or inflated); a
    compressed one is inflated in `executor` (None: the event loop's default). The edge stops
    any body at CONVSERVE_MAX_BODY_BYTES as it streams (service/api/edge.py); a smaller `limit`
    is checked on the body read."""
    _check_declared_length(request, limit)
    return await _read(request, limit, executor)


async def wait_disconnect(request: Request) -> None:
    """Return when the client has gone away; for after the body is read (the request's
    messages are then only its disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo `Content-Encoding` gzip / deflate (e.g. tritonclient's request compression), at
    most `limit` bytes out (413 above: a small body must not inflate without bound). The body
    is one gzip member or zlib stream: anything after its end (a second member, junk) is 400."""
    name = encoding.strip().lower()
    if name == "identity":
        return body
    if name not in DECODERS:
        raise UnsupportedMediaType(f"Content-Encoding {name!r}: send gzip, deflate or identity")
    decoder = zlib.decompressobj(DECODERS[name])
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"body is not valid {name} data: {err}") from err
    if len(out) > limit or decoder.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    if not decoder.eof:
        raise BadRequest(f"truncated {name} body")
    if decoder.unused_data:
        raise BadRequest(
            f"{len(decoder.unused_data)} bytes after the end of the {name} data: send one "
            f"{name} stream"
        )
    return out


async def read_images(
    request: Request, *, max_body_bytes: int, max_images: int, executor: Executor | None = None
) -> list[bytes]:
    """Encoded images of a classify request, in request order; compressed and large JSON
    bodies are inflated and parsed in `executor` (None: the event loop's default)."""
    _check_declared_length(request, max_body_bytes)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == MULTIPART:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":  # the parts are parsed as they stream in
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} on a multipart body")
        return await _multipart(request, max_images)
    if media == JSON:
        body = await _read(request, max_body_bytes, executor)
        if len(body) > THREAD_BODY_BYTES:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, _json_images, body, max_images)
        return _json_images(body, max_images)
    if media in RAW_IMAGE_TYPES:
        return [await _read(request, max_body_bytes, executor)]
    if media in SNIFFED_TYPES:
        body = await _read(request, max_body_bytes, executor)
        if is_image_signature(body):
            return [body]
    raise UnsupportedMediaType(
        f"unsupported content type {media or '(none)'!r}: send image/jpeg, image/png, image/webp,"
        " multipart/form-data with 'file' parts, or application/json {'images': [base64]}"
    )


def is_image_signature(data: bytes) -> bool:
    """True when `data` starts as a JPEG, PNG or WebP file does."""
    riff, webp = WEBP_SIGNATURE
    return data.startswith(IMAGE_SIGNATURES) or (data.startswith(riff) and data[8:12] == webp)


async def _multipart(request: Request, max_images: int) -> list[bytes]:
    """The `file` parts, parsed as the body streams in (bounded by the edge's body limit)."""
    parser = MultiPartParser(request.headers, request.stream(), max_files=max_images, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        if err.message.startswith("Too many files"):  # the same answer as a JSON body gets
            raise InvalidOption(
                f"more than {max_images} images, at most {max_images} per request"
            ) from err
        raise BadRequest(f"malformed multipart body: {err.message}") from err
    try:
        parts = form.getlist(FILE_FIELD)
        if not parts:
            names = list(dict.fromkeys(form.keys()))  # the client's: a few, shortened
            sent = ", ".join(repr(name[:40]) for name in names[:5]) or "none"
            sent += ", …" if len(names) > 5 else ""
            raise BadRequest(
                f"multipart body has no '{FILE_FIELD}' part (its parts: {sent}): send each "
                f"image as a file part named '{FILE_FIELD}'"
            )
        images = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise BadRequest(f"'{FILE_FIELD}' parts must be files, not text fields")
            images.append(await part.read())
        return images
    finally:
        await form.close()


def _json_images(body: bytes, max_images: int) -> list[bytes]:
    """The images of a JSON body; their count is checked before it is parsed (an upper bound,
    from its bytes) and before any is decoded."""
    values = JSON_VALUES_PER_IMAGE * max_images + JSON_ENVELOPE_VALUES
    if holds_more_values(body, values):
        raise InvalidOption(
            f"JSON body holds more than {values} array values (commas and brackets): more than "
            f"{max_images} images or nesting they cannot need, at most {max_images} images per "
            "request"
        )
    try:
        payload = JsonImages.model_validate_json(body)
    except ValidationError as err:
        raise SchemaError(
            f"JSON body must be {{'images': [base64, ...]}}: {describe_validation(err.errors())}"
        ) from err
    if len(payload.images) > max_images:
        raise InvalidOption(f"{len(payload.images)} images, at most {max_images} per request")
    images = []
    for index, text in enumerate(payload.images):
        try:
            images.append(decode_base64(text))
        except (binascii.Error, ValueError) as err:
            raise InvalidImage(f"image {index}: invalid base64: {err}") from err
    return images


def decode_base64(text: str) -> bytes:
    """Standard-alphabet base64 as clients write it: line breaks (`base64`, MIME), a
    `data:image/...;base64,` prefix (a browser's FileReader) and missing padding are accepted;
    any other character is refused."""
    compact = "".join(DATA_URL_PREFIX.sub("", text, count=1).split())
    return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
