"""`DirectRoute`: an APIRoute whose endpoint takes only the `Request` and returns a `Response`,
called as it is.

FastAPI's per-request handler solves dependencies and serialises the return value even for such
an endpoint; on the tiny model that was 15 % of the event loop's time per request
(docs/benchmarks.md). The route is still a FastAPI route: the router matches it, /openapi.json
documents it (from `openapi_extra`) and its exceptions reach the app's exception handlers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        parameters = list(inspect.signature(endpoint, eval_str=True).parameters.values())
        takes_request = len(parameters) == 1 and parameters[0].annotation is Request
        if not takes_request or kwargs.get("dependencies"):
            raise TypeError(
                f"{path}: a DirectRoute endpoint takes only the Request (it reads and validates "
                "its own parameters), nothing FastAPI would have to solve"
            )
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint
