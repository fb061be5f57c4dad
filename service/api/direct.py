"""`DirectRoute`: an APIRoute whose endpoint takes only the `Request` and returns a `Response`,
called as it is.

FastAPI's per-request handler solves dependencies, opens an exit stack and serialises the return
value even for such an endpoint; on the tiny model that was 15 % of the event loop's time per
request (docs/benchmarks.md). The route is still a FastAPI route: it is matched, documented in
/openapi.json (from `openapi_extra`) and its exceptions reach the app's handlers as before.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.applications import Starlette
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

ExceptionHandler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

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


class DirectLane:
    """ASGI middleware, the innermost one: a POST that a DirectRoute matches is answered here,
    its exceptions through the app's own handlers, instead of passing Starlette's exception
    layer, FastAPI's exit-stack layer and the router's walk over every route (on the tiny model
    ~18 % of the event loop's time per request, docs/benchmarks.md). Everything else goes on
    to the app, so a request gets the same answer either way."""

    def __init__(self, app: ASGIApp, routes: Sequence[DirectRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    await self._answer(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(route: DirectRoute, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await route.get_route_handler()(request)
        except Exception as exc:
            handler = _handler_for(request.app, exc)
            if handler is None:
                raise  # the edge's catch-all: a 500 without a traceback, counted
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(app: Starlette, exc: Exception) -> ExceptionHandler | None:
    """The app's handler for `exc`, looked up as Starlette's exception layer does (the nearest
    class in its MRO with a handler)."""
    handlers: Mapping[Any, ExceptionHandler] = app.exception_handlers
    return next((handlers[kind] for kind in type(exc).__mro__ if kind in handlers), None)
