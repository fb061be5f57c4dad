"""LitServe serving the same model with its batching on (`max_batch_size`, `batch_timeout`).

LitServe parses a body as JSON or as a form, never as raw bytes, and its API servers pickle the
parsed payload to the inference worker (an uploaded form file does not pickle), so the image goes
the way LitServe's own examples send images: JSON `{"image": "<base64 of the same bytes>"}`.
"""

from __future__ import annotations

import base64
from typing import Any

import litserve as ls
import numpy as np

from bench.servers.common import Model, parser, version_dir


class ConvApi(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, version: Any, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._version, self._threads = version, threads

    def setup(self, device: str) -> None:
        self.model = Model(self._version, self._threads)

    def decode_request(self, request: dict[str, str]) -> np.ndarray:
        return self.model.tensor(base64.b64decode(request["image"]))

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:  # unbatched path (a batch of one)
            return self.model.run(x[None])[0]
        return self.model.run(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return self.model.answer(output)


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    api = ConvApi(
        version_dir(args.repository, args.model),
        args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=args.port, host="127.0.0.1", log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
