"""Naive baseline: a minimal FastAPI app calling `session.run` once per request (no batching).

Also serves `POST /noop`, which reads the body and answers a small JSON: the HTTP floor of
this stack (FastAPI on uvicorn with convserve's loop and HTTP parser).
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from bench.servers.common import Model, parser, version_dir


def build(model: Model) -> FastAPI:
    app = FastAPI()

    @app.post("/noop")
    async def noop(request: Request) -> dict[str, Any]:
        await request.body()
        return {"predictions": []}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        data = await request.body()

        def work() -> dict[str, Any]:
            return model.answer(model.run(model.tensor(data)[None])[0])

        return await run_in_threadpool(work)

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    model = Model(version_dir(args.repository, args.model), args.threads)
    uvicorn.run(
        build(model),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
