"""A generated corpus of bad classify requests (docs/security.md): nothing here is committed as a
binary; every body is built by this script, deterministically.

`corpus()` returns `BadInput`s: truncations of real JPEG/PNG/WebP files at many offsets, random
bytes, decompression bombs (real and header-only), wrong formats, giant and tiny dimensions, odd
modes (some of which are converted and classified: `may_succeed`), animated images, bad base64
and JSON, bad multipart bodies and wrong content types. `python -m tests.badinputs OUT_DIR`
writes them out for manual fuzzing with curl.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"
JSON = "application/json"
BOUNDARY = "corpus-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
TRUNCATION_OFFSETS = 24
PNG_TRAILER_BYTES = 12


@dataclass(frozen=True)
class BadInput:
    name: str
    content_type: str | None
    body: bytes
    may_succeed: bool = False  # a deliberately converted odd input: 200 is a right answer
    raw_image: bytes | None = None  # the image alone, for routes that wrap it (v2 BYTES)
    headers: tuple[tuple[str, str], ...] = ()  # more request headers (v2 cases)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "LA": 2}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(pixels[..., i]) for i in range(2)])
    if channels == 1:
        return Image.fromarray(pixels[..., 0], "L")
    return Image.fromarray(pixels, "RGB" if mode == "RGB" else "RGBA").convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height` with one tiny IDAT: a header-only bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_zero_bomb(side: int) -> bytes:
    """A real, fully valid greyscale PNG of zeros (`side`^2 pixels compress to almost nothing)."""
    row = b"\x00" + b"\x00" * side
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_with_dimensions(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 frame header is rewritten to claim `width` x `height`."""
    data = bytearray(encode(noise(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_canvas(width: int, height: int) -> bytes:
    """A WebP whose VP8X extended header claims a `width` x `height` canvas."""
    flags = b"\x00\x00\x00\x00"
    dims = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + flags + dims
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def animated(fmt: str) -> bytes:
    frames = [noise(20, 20, seed=i) for i in range(3)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """(field name, filename or None for a text field, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: image/png\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _truncations() -> list[BadInput]:
    cases = []
    sources = {
        PNG: encode(noise(40, 32), "PNG"),
        JPEG: encode(noise(40, 32), "JPEG", quality=90),
        WEBP: encode(noise(40, 32), "WEBP", quality=80),
    }
    for media, data in sources.items():
        offsets = np.unique(np.linspace(1, len(data) - 1, TRUNCATION_OFFSETS).astype(int))
        for offset in offsets:
            cut = data[: int(offset)]
            # A JPEG cut late still decodes (Pillow pads missing scan data), and a PNG cut in
            # its 12-byte IEND chunk has every pixel: 200 is a right answer for those.
            whole = media == JPEG or offset > len(data) - PNG_TRAILER_BYTES
            cases.append(BadInput(f"truncated-{media}-{offset}", media, cut, whole, cut))
    return cases


def _random_bytes() -> list[BadInput]:
    rng = np.random.default_rng(1234)
    cases = []
    prefixes = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP"]
    for index in range(32):
        length = int(rng.integers(1, 4096))
        body = prefixes[index % len(prefixes)] + rng.bytes(length)
        media = [PNG, JPEG, WEBP, "application/octet-stream"][index % 4]
        cases.append(BadInput(f"random-{index}", media, body, raw_image=body))
    return cases


def _bombs_and_dimensions() -> list[BadInput]:
    header_bombs = {
        "png-header-100kx100k": png_header_only(100_000, 100_000),
        "png-header-2^31": png_header_only(2**31 - 1, 2**31 - 1),
        "png-header-0x0": png_header_only(0, 0),
        "png-header-1x60M": png_header_only(1, 60_000_000),
        "png-header-60Mx1": png_header_only(60_000_000, 1),
        "jpeg-sof-65000x65000": jpeg_with_dimensions(65_000, 65_000),
        "jpeg-sof-0x0": jpeg_with_dimensions(0, 0),
        "webp-canvas-16kx16k": webp_canvas(16_383, 16_383),
        "png-zero-bomb-7000": png_zero_bomb(7_000),  # 49 M pixels, about 50 kB
        "png-strip-1x4000": encode(noise(1, 4000, "L"), "PNG"),
        "png-strip-4000x2": encode(noise(4000, 2, "L"), "PNG"),
        "png-1x1": encode(noise(1, 1), "PNG"),
        "png-7x7": encode(noise(7, 7), "PNG"),
        "jpeg-2x2": encode(noise(2, 2), "JPEG"),
        "webp-3x3": encode(noise(3, 3), "WEBP"),
    }
    media = {"png": PNG, "jpeg": JPEG, "webp": WEBP}
    return [
        BadInput(f"dims-{name}", media[name.split("-")[0]], data, raw_image=data)
        for name, data in header_bombs.items()
    ]


def _formats_and_modes() -> list[BadInput]:
    image = noise(24, 24)
    wrong = {
        "gif": encode(image.convert("P"), "GIF"),
        "bmp": encode(image, "BMP"),
        "tiff": encode(image, "TIFF"),
        "ico": encode(image, "ICO"),
        "tga": encode(image, "TGA"),
        "ppm": encode(image, "PPM"),
        "pcx": encode(image, "PCX"),
        "eps-text": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "html": b"<html><script>alert(1)</script></html>",
        "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "zip": b"PK\x03\x04" + b"\x00" * 60,
        "gzip-png": zlib.compress(encode(image, "PNG")),
        "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94.",
        "npy": b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
    }
    cases = [BadInput(f"format-{k}", PNG, v, raw_image=v) for k, v in wrong.items()]
    cases += [BadInput(f"format-{k}-as-jpeg", JPEG, v, raw_image=v) for k, v in wrong.items()]
    grey16 = Image.fromarray((np.arange(24 * 24).reshape(24, 24) * 100).astype(np.uint16))
    palette_alpha = image.convert("P")
    palette_alpha.info["transparency"] = 0
    odd = {
        "png-la": encode(noise(24, 24, "LA"), "PNG"),
        "png-rgba": encode(noise(24, 24, "RGBA"), "PNG"),
        "png-16bit-grey": encode(grey16, "PNG"),
        "png-1bit": encode(image.convert("1"), "PNG"),
        "png-palette": encode(image.convert("P"), "PNG"),
        "png-palette-alpha": encode(palette_alpha, "PNG"),
        "jpeg-cmyk": encode(noise(24, 24, "CMYK"), "JPEG"),
        "jpeg-grey": encode(noise(24, 24, "L"), "JPEG"),
        "webp-rgba": encode(noise(24, 24, "RGBA"), "WEBP"),
        "webp-lossless": encode(image, "WEBP", lossless=True),
        "jpeg-progressive": encode(image, "JPEG", progressive=True),
        "jpeg-bad-exif": encode(image, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"),
    }
    cases += [
        BadInput(f"mode-{k}", JPEG if "jpeg" in k else WEBP if "webp" in k else PNG, v, True, v)
        for k, v in odd.items()
    ]
    for fmt, media in (("PNG", PNG), ("WEBP", WEBP), ("GIF", PNG)):
        data = animated(fmt)
        cases.append(BadInput(f"animated-{fmt.lower()}", media, data, raw_image=data))
    return cases


def _json_bodies() -> list[BadInput]:
    good = base64.b64encode(encode(noise(24, 24), "PNG")).decode()
    bodies: dict[str, bytes] = {
        "empty": b"",
        "null": b"null",
        "array": b"[]",
        "string": b'"x"',
        "no-images": b"{}",
        "images-null": b'{"images": null}',
        "images-string": b'{"images": "abc"}',
        "images-empty": b'{"images": []}',
        "images-number": b'{"images": [1]}',
        "images-object": b'{"images": [{"a": 1}]}',
        "bad-base64-chars": b'{"images": ["!!!not base64!!!"]}',
        "bad-base64-padding": b'{"images": ["abc"]}',
        "base64-garbage": json.dumps(
            {"images": [base64.b64encode(b"\x00" * 50).decode()]}
        ).encode(),
        "base64-empty": b'{"images": [""]}',
        "base64-url-alphabet": json.dumps(
            {"images": [good.replace("+", "-").replace("/", "_")]}
        ).encode(),
        "good-then-bad": json.dumps({"images": [good, "%%%"]}).encode(),
        "truncated-json": b'{"images": ["' + good[:40].encode(),
        "not-utf8": b'{"images": ["\xff\xfe"]}',
        "deep-nesting": b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "huge-number": b'{"images": [1' + b"0" * 5000 + b"]}",
        "nan": b'{"images": NaN}',
        "extra-keys": json.dumps({"images": [good], "__class__": "os.system"}).encode(),
        "too-many-images": json.dumps({"images": [good] * 300}).encode(),
    }
    return [
        BadInput(f"json-{k}", JSON, v, may_succeed=k == "extra-keys") for k, v in bodies.items()
    ]


def _multipart_bodies() -> list[BadInput]:
    png = encode(noise(24, 24), "PNG")
    bodies: list[tuple[str, str | None, bytes]] = [
        ("no-file-part", MULTIPART, multipart([("other", "a.png", png)])),
        ("text-file-field", MULTIPART, multipart([("file", None, b"hello")])),
        ("empty-file", MULTIPART, multipart([("file", "a.png", b"")])),
        ("garbage-file", MULTIPART, multipart([("file", "a.png", b"\x00garbage")])),
        ("good-then-garbage", MULTIPART, multipart([("file", "a", png), ("file", "b", b"xx")])),
        ("no-boundary-param", "multipart/form-data", multipart([("file", "a.png", png)])),
        ("wrong-boundary", "multipart/form-data; boundary=other", multipart([("file", "a", png)])),
        ("unterminated", MULTIPART, multipart([("file", "a.png", png)])[:-20]),
        ("only-boundary", MULTIPART, f"--{BOUNDARY}--\r\n".encode()),
        ("empty-body", MULTIPART, b""),
        ("garbage-body", MULTIPART, b"\x00\x01\x02 not multipart at all"),
        ("too-many-files", MULTIPART, multipart([("file", f"{i}", png) for i in range(300)])),
        ("too-many-fields", MULTIPART, multipart([(f"f{i}", None, b"x") for i in range(100)])),
        ("traversal-filename", MULTIPART, multipart([("file", "../../../etc/passwd", png)])),
        ("header-no-disposition", MULTIPART, f"--{BOUNDARY}\r\n\r\nabc\r\n--{BOUNDARY}--".encode()),
        ("long-header", MULTIPART, f"--{BOUNDARY}\r\nX: {'a' * 20000}\r\n\r\nx".encode()),
        ("boundary-too-long", "multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300),
    ]
    return [
        BadInput(f"multipart-{n}", t, b, may_succeed=n == "traversal-filename")
        for n, t, b in bodies
    ]


def _content_types() -> list[BadInput]:
    png = encode(noise(24, 24), "PNG")
    types = [
        None,
        "",
        "text/plain",
        "text/html",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/mixed; boundary=x",
        "image/gif",
        "image/svg+xml",
        "image/tiff",
        "image",
        "image/",
        ";;;",
        "application/json; charset=utf-16",
        "IMAGE/PNG",
        "image/png; q=0.5",
    ]
    # A correct image under an upper-case or parameterised media type may be served, and so may
    # one sent with no media type or as curl's default form type (recognised by its first bytes).
    sniffed = ("", "application/x-www-form-urlencoded")

    def may_succeed(content_type: str | None) -> bool:
        media = (content_type or "").split(";")[0].strip().lower()
        return media in sniffed or "png" in media

    return [
        BadInput(f"content-type-{i}-{t!r}", t, png, may_succeed=may_succeed(t))
        for i, t in enumerate(types)
    ]


def _v2_json(**tensor: object) -> bytes:
    base: dict[str, object] = {"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32"}
    base.update(tensor)
    return json.dumps({"inputs": [base]}).encode()


def v2_corpus() -> list[BadInput]:
    """Bad bodies for POST /v2/models/<m>/infer (JSON, binary extension, compression)."""
    zeros = b"\x00" * (64 * 1024 * 1024)
    gzip_bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = gzip_bomb.compress(zeros) + gzip_bomb.flush()
    head = _v2_json(parameters={"binary_data_size": 1024}, data=None)
    bodies: list[tuple[str, bytes, tuple[tuple[str, str], ...]]] = [
        ("gzip-bomb-64MiB", bomb, (("content-encoding", "gzip"),)),
        ("gzip-garbage", b"\x1f\x8b garbage", (("content-encoding", "gzip"),)),
        ("deflate-truncated", zlib.compress(_v2_json())[:-6], (("content-encoding", "deflate"),)),
        ("brotli", b"\x00", (("content-encoding", "br"),)),
        ("header-length-past-body", head, (("inference-header-content-length", "99999"),)),
        ("header-length-negative", head, (("inference-header-content-length", "-1"),)),
        ("header-length-text", head, (("inference-header-content-length", "ten"),)),
        (
            "binary-size-past-body",
            head + b"\x00" * 10,
            (("inference-header-content-length", str(len(head))),),
        ),
        ("shape-overflow", _v2_json(shape=[2**62, 2**62, 16, 16], data=[0.0]), ()),
        ("shape-negative", _v2_json(shape=[-1, 1, 16, 16], data=[0.0]), ()),
        ("shape-wrong", _v2_json(shape=[1, 3, 16, 16], data=[0.0] * 768), ()),
        ("data-short", _v2_json(data=[0.0] * 10), ()),
        ("data-strings", _v2_json(data=["a"] * 256), ()),
        ("data-nan", _v2_json(data=[float("nan")] * 256), ()),
        ("data-nested-deep", b'{"inputs": [{"data": ' + b"[" * 3000 + b"]" * 3000 + b"}]}", ()),
        ("datatype-unknown", _v2_json(datatype="FP128", data=[0.0] * 256), ()),
        ("datatype-int", _v2_json(datatype="INT64", data=[0] * 256), ()),
        ("bytes-empty", _v2_json(name="image", datatype="BYTES", shape=[0], data=[]), ()),
        ("bytes-not-base64", _v2_json(name="image", datatype="BYTES", shape=[1], data=["%%"]), ()),
        (
            "two-inputs",
            json.dumps(
                {"inputs": [json.loads(_v2_json(data=[0.0] * 256))["inputs"][0]] * 2}
            ).encode(),
            (),
        ),
        (
            "unknown-output",
            json.dumps(
                {
                    "inputs": json.loads(_v2_json(data=[0.0] * 256))["inputs"],
                    "outputs": [{"name": "../../etc/passwd"}],
                }
            ).encode(),
            (),
        ),
        (
            "classification-negative",
            json.dumps(
                {
                    "inputs": json.loads(_v2_json(data=[0.0] * 256))["inputs"],
                    "outputs": [{"name": "logits", "parameters": {"classification": -5}}],
                }
            ).encode(),
            (),
        ),
        ("no-inputs", b'{"inputs": []}', ()),
        ("not-json", b"\xff\xfe\x00", ()),
    ]
    return [BadInput(f"v2-{name}", JSON, body, headers=headers) for name, body, headers in bodies]


def corpus() -> list[BadInput]:
    return [
        *_truncations(),
        *_random_bytes(),
        *_bombs_and_dimensions(),
        *_formats_and_modes(),
        *_json_bodies(),
        *_multipart_bodies(),
        *_content_types(),
    ]


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "badinputs")
    out.mkdir(parents=True, exist_ok=True)
    for index, case in enumerate(corpus()):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case.name)
        (out / f"{index:03d}-{safe}.bin").write_bytes(case.body)
    print(f"wrote {len(corpus())} bodies to {out}")  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1:])
