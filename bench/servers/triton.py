"""PyTriton serving the same model with Triton's dynamic batching on.

Input `image`: BYTES, one encoded image per request; the infer function decodes with the same
code and runs ORT on the batch Triton assembled. The client posts the KServe v2 binary-tensor
request (`Inference-Header-Content-Length`), so the image travels as raw bytes.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.servers.common import Model, parser, version_dir


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    model = Model(version_dir(args.repository, args.model), args.threads)

    @batch  # type: ignore[misc]
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        tensors = np.stack([model.tensor(bytes(row[0])) for row in image])
        return {"logits": model.run(tensors)}

    config = TritonConfig(
        http_port=args.port, http_address="127.0.0.1", allow_grpc=False, allow_metrics=False
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="model",
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=int(
                        timedelta(milliseconds=args.batch_timeout_ms).total_seconds() * 1e6
                    )
                ),
            ),
        )
        triton.serve()


if __name__ == "__main__":
    main()
