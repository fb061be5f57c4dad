"""The classify request that asks a model for everything it exports: every class, its last
feature map at every channel as raw float16, and the CAM, for several PNG images at once."""

from __future__ import annotations

import httpx

from service.metadata import ModelMetadata


def classify_everything(
    url: str, model: str, meta: ModelMetadata, files: list[bytes]
) -> httpx.Response:
    layer = meta.feature_maps[-1]
    return httpx.post(
        f"{url}/v1/models/{model}/classify",
        params={
            "top_k": meta.num_classes,
            "feature_maps": layer.layer,
            "map_format": "float16",
            "channels": layer.shape[0],
            "cam": "true",
        },
        files=[("file", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)],
        timeout=60,
    )
