"""The classify pipeline: lease a version, decode off the loop, batch, postprocess off the loop.

Routers call `Classifier.classify` once; it knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.batching import Item, Reservation
from service.cpus import cpu_count
from service.errors import BadRequest, ClientDisconnected, InvalidOption
from service.manager import LoadedVersion, ModelManager
from service.metrics import Metrics
from service.postprocess import build_result, required_outputs
from service.preprocess import ALLOWED_FORMATS, DECODE_ERRORS, decode, preprocess_many
from service.runtime import Outputs
from service.schemas import ClassifyOptions, ClassifyResponse, ImageResult, Timing
from service.settings import Settings

logger = logging.getLogger(__name__)
WaitDisconnect = Callable[[], Awaitable[None]]
WARM_UP_SIDE = 16  # above the smallest side allowed
# Images this small decode in tens of microseconds, less than the hop to a pool thread and
# back costs; they are decoded on the event loop. The header's size bounds the work, so a
# small file that decompresses to a big image still goes to the pool.
INLINE_MAX_BYTES = 4096
INLINE_MAX_PIXELS = 64 * 64
INLINE_MAX_IMAGES = 4
WATCH_DISCONNECT_AFTER_S = 0.01


def decodes_inline(images: list[bytes]) -> bool:
    """True when every image is small both encoded and by its header's width x height."""
    if len(images) > INLINE_MAX_IMAGES:
        return False
    for data in images:
        if len(data) > INLINE_MAX_BYTES:
            return False
        size = png_size(data) or _header_size(data)
        if size is None or size[0] * size[1] > INLINE_MAX_PIXELS:
            return False  # undecodable or a bomb header: the pool path reports it
    return True


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (always the first), without Pillow."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _header_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as opened:
            width, height = opened.size
    except (*DECODE_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    return width, height


def warm_decoders() -> None:
    """Decode a tiny image of every accepted format once: the first real request would
    otherwise pay Pillow's lazy plugin imports and decoder setup (60-400 ms, docs/benchmarks.md)."""
    pixels = Image.new("RGB", (WARM_UP_SIDE, WARM_UP_SIDE), (128, 64, 32))
    for fmt in ALLOWED_FORMATS:
        buffer = io.BytesIO()
        pixels.save(buffer, format=fmt)
        try:
            decode(buffer.getvalue(), color_mode="RGB", max_pixels=WARM_UP_SIDE**2)
        except BadRequest as err:  # a Pillow built without this codec: requests will say so
            logger.warning("decoder warm-up: %s: %s", fmt, err.message)


class Classifier:
    def __init__(self, settings: Settings, manager: ModelManager, metrics: Metrics) -> None:
        self._settings = settings
        self._manager = manager
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(
            settings.effective_decode_threads, thread_name_prefix="preprocess"
        )
        self._pool.submit(warm_decoders)  # queued first: runs before any request's decoding
        # Request bodies are inflated and parsed here, one core short of them all: a burst of
        # small gzip bodies that each inflate to megabytes would otherwise take every core,
        # and health probes would wait behind them (docs/security.md).
        self.body_pool = ThreadPoolExecutor(
            max(1, cpu_count() - 1), thread_name_prefix="request-body"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.body_pool.shutdown(wait=True)

    async def classify(
        self,
        model: str,
        version: int | None,
        images: list[bytes],
        options: ClassifyOptions,
        *,
        deadline: float | None,
        wait_disconnect: WaitDisconnect | None = None,
    ) -> ClassifyResponse:
        """Classify `images` (encoded bytes) in order; `deadline` is a time.monotonic() value."""
        if not images:
            raise InvalidOption("no image in the request", model=model)
        if len(images) > self._settings.max_images_per_request:
            raise InvalidOption(
                f"{len(images)} images, at most {self._settings.max_images_per_request} "
                "per request",
                model=model,
            )
        async with self._manager.lease(model, version) as loaded:
            meta = loaded.metadata
            outputs = required_outputs(meta, options, len(images))  # errors before decoding
            loop = asyncio.get_running_loop()
            # Hopeless under load: refused before decoding; admitted: counted as work ahead.
            with loaded.batcher.admission(len(images), deadline) as reservation:
                started = time.perf_counter()
                tensors = await self.preprocess(loaded, images)
                decode_s = time.perf_counter() - started
                items = await self.run(
                    loaded,
                    tensors,
                    outputs,
                    deadline=deadline,
                    wait_disconnect=wait_disconnect,
                    reservation=reservation,
                )
            raw = [item.future.result() for item in items]
            if options.feature_maps or options.cam:  # PNG encoding: off the event loop
                results = await loop.run_in_executor(
                    self._pool, self._postprocess, loaded, raw, options
                )
            else:  # softmax + top-k of a few logits costs less than a thread hop
                results = self._postprocess(loaded, raw, options)
            for result in results:  # every image: the top-1 is first whatever top_k asked
                top = result.predictions[0]
                loaded.predictions.record(top.index, top.probability)
            return ClassifyResponse(
                model=meta.name,
                version=meta.version,
                results=results,
                timing_ms=Timing(
                    decode=round(decode_s * 1000, 3),
                    queue=round(max(i.queue_s for i in items) * 1000, 3),
                    compute=round(max(i.compute_s for i in items) * 1000, 3),
                ),
            )

    async def preprocess(
        self, loaded: LoadedVersion, images: list[bytes]
    ) -> list[npt.NDArray[np.float32]]:
        """Decode and preprocess encoded images (C, H, W) each, in the pool unless they are
        tiny (`decodes_inline`); timed per request."""
        meta = loaded.metadata
        started = time.perf_counter()

        def work() -> list[npt.NDArray[np.float32]]:
            return preprocess_many(
                images,
                meta,
                max_pixels=self._settings.max_image_pixels,
                min_side=self._settings.min_image_side,
                jpeg_draft=self._settings.jpeg_draft,
                max_decode_bytes=self._settings.max_decode_bytes,
            )

        if decodes_inline(images):
            tensors = work()
        else:
            tensors = await asyncio.get_running_loop().run_in_executor(self._pool, work)
        self._metrics.observe_preprocess(loaded.ref.model, time.perf_counter() - started)
        return tensors

    async def run(
        self,
        loaded: LoadedVersion,
        tensors: list[npt.NDArray[np.float32]],
        outputs: frozenset[str],
        *,
        deadline: float | None,
        wait_disconnect: WaitDisconnect | None = None,
        reservation: Reservation | None = None,
    ) -> list[Item]:
        """Submit preprocessed rows (C, H, W) to the version's batcher (the one inference path
        shared by the native and v2 routes) and wait; each item's `future` holds its outputs."""
        items = loaded.batcher.submit(tensors, outputs, deadline, reservation)
        await self._wait(items, wait_disconnect, loaded.ref.model)
        return items

    @staticmethod
    async def _wait(items: list[Item], wait_disconnect: WaitDisconnect | None, model: str) -> None:
        """Until every item has its outputs; a client gone first cancels them (dropped before
        compute). One image waits on its own future (a gather around one costs more).

        The disconnect watcher (a task reading the connection) starts only after
        `WATCH_DISCONNECT_AFTER_S`: most answers come sooner, and a task per request cost the
        tiny-model path more than its compute. A request still queued then is watched."""
        gathered: asyncio.Future[Any] = (
            items[0].future if len(items) == 1 else asyncio.gather(*(i.future for i in items))
        )
        if wait_disconnect is None:
            await gathered
            return
        loop = asyncio.get_running_loop()
        watchers: list[asyncio.Future[None]] = []
        disconnected = False

        def on_disconnect(watcher: asyncio.Future[None]) -> None:
            nonlocal disconnected
            if not watcher.cancelled() and watcher.exception() is None:
                disconnected = True
                gathered.cancel()

        def watch() -> None:
            watcher = asyncio.ensure_future(wait_disconnect())
            watcher.add_done_callback(on_disconnect)
            watchers.append(watcher)

        timer = loop.call_later(WATCH_DISCONNECT_AFTER_S, watch)
        try:
            await gathered
        except asyncio.CancelledError:
            if disconnected:
                raise ClientDisconnected(
                    "client disconnected before its answer", model=model
                ) from None
            raise
        finally:
            timer.cancel()
            for watcher in watchers:
                watcher.cancel()

    @staticmethod
    def _postprocess(
        loaded: LoadedVersion, raw: list[Outputs], options: ClassifyOptions
    ) -> list[ImageResult]:
        return [build_result(loaded.metadata, out, options, loaded.cam_weights) for out in raw]
