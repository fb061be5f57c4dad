"""`DirectRoute`: an APIRoute whose endpoint takes only the `Request` and returns a `Response`,
called as it is.

FastAPI's per-request handler solves dependencies, opens an exit stack and serialises the return
value even for such an endpoint; on the tiny model that was 15 % of the event loop's time per
request (docs/benchmarks.md). The route is still a FastAPI route: it is matched, documented in
/openapi.json (from `openapi_extra`) and its exceptions reach the app's handlers as before.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        declared = (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.dependencies,
        )
        if any(declared) or dependant.request_param_name is None:
            raise TypeError(
                f"{path}: a DirectRoute endpoint takes only the Request (it reads and validates "
                "its own parameters), nothing FastAPI would have to solve"
            )

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint
