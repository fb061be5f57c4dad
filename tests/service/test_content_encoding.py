"""Content-Encoding of request bodies (service/api/inputs.py): gzip and deflate undone on every
route that reads a whole body (native classify, v2 infer), within the body limit."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.inputs import decompress
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.settings import Settings
from tests.service.server import threaded_server
from tests.service.tiny_model import random_png

LIMIT = 64 * 1024
PACK = {"gzip": gzip.compress, "deflate": zlib.compress, "identity": bytes}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity", " GZIP "])
def test_decompress_request_bodies(encoding: str) -> None:
    body = b'{"inputs": []}' * 10
    assert decompress(PACK[encoding.strip().lower()](body), encoding, limit=1000) == body


def test_decompress_refuses_bombs_garbage_and_unknown_encodings() -> None:
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b"\0" * 100_000), "gzip", limit=1000)
    with pytest.raises(BadRequest, match="not valid gzip"):
        decompress(b"plain text", "gzip", limit=1000)
    with pytest.raises(BadRequest, match="truncated"):
        decompress(gzip.compress(b"x" * 100)[:-12], "gzip", limit=1000)
    with pytest.raises(UnsupportedMediaType):
        decompress(b"", "br", limit=1000)


@pytest.mark.parametrize(
    "trailer",
    [b"JUNK" * 1000, b"\0", gzip.compress(b"second member")],
    ids=["junk", "one-byte", "second-member"],
)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_data_after_the_compressed_stream_is_refused(encoding: str, trailer: bytes) -> None:
    """One stream per body: nothing after its end is ignored, nor decoded as more body."""
    with pytest.raises(BadRequest, match="after the end of the"):
        decompress(PACK[encoding](b"body") + trailer, encoding, limit=1000)


@pytest.fixture(scope="module")
def client(tiny_repo: Path) -> Iterator[httpx.Client]:
    settings = Settings(
        model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu", max_body_bytes=LIMIT
    )
    with threaded_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_image_is_classified_as_the_plain_one(
    client: httpx.Client, encoding: str
) -> None:
    image = random_png(3)
    plain = client.post("/v1/classify", content=image, headers={"content-type": "image/png"})
    packed = client.post(
        "/v1/classify",
        content=PACK[encoding](image),
        headers={"content-type": "image/png", "content-encoding": encoding},
    )
    assert packed.status_code == 200, packed.text
    assert packed.json()["results"] == plain.json()["results"]


@pytest.mark.parametrize("path", ["/v1/classify", "/v2/models/tiny-cnn/infer"])
def test_a_gzip_body_with_trailing_data_is_400(client: httpx.Client, path: str) -> None:
    image = random_png(5)
    response = client.post(
        path,
        content=gzip.compress(image) + b"JUNK" * 1000,
        headers={"content-type": "image/png", "content-encoding": "gzip"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert message.startswith("4000 bytes after the end of the gzip data")


def test_unknown_or_unusable_encodings_are_415_and_bombs_413(client: httpx.Client) -> None:
    image = random_png(4)
    brotli = client.post(
        "/v1/classify",
        content=image,
        headers={"content-type": "image/png", "content-encoding": "br"},
    )
    assert (brotli.status_code, brotli.json()["error"]["code"]) == (415, "unsupported_media_type")
    multipart = client.post(
        "/v1/classify",
        files=[("file", ("a.png", image, "image/png"))],
        headers={"content-encoding": "gzip"},
    )
    assert multipart.status_code == 415
    bomb = client.post(
        "/v1/classify",
        content=gzip.compress(b"\0" * (LIMIT * 4)),
        headers={"content-type": "image/png", "content-encoding": "gzip"},
    )
    assert (bomb.status_code, bomb.json()["error"]["code"]) == (413, "payload_too_large")
