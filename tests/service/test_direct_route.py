"""DirectRoute: endpoints called as they are, and only those FastAPI would have nothing to solve."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, Request, Response

from service.api import classify
from service.api.direct import DirectRoute


def test_the_classify_routes_are_direct() -> None:
    """Their answers, errors and /openapi.json entries are tested over HTTP in test_api.py."""
    paths = {r.path for r in classify.router.routes if isinstance(r, DirectRoute)}
    assert paths == {
        "/v1/models/{model}/classify",
        "/v1/models/{model}/versions/{version}/classify",
        "/v1/classify",
    }


@pytest.mark.parametrize("kind", ["query", "dependency", "no_request"])
def test_refuses_endpoints_with_anything_to_solve(kind: str) -> None:
    router = APIRouter(route_class=DirectRoute)

    async def query(request: Request, top_k: int = 5) -> Response:
        return Response()

    async def dependency(request: Request, value: int = Depends(lambda: 1)) -> Response:
        return Response()

    async def no_request() -> Response:
        return Response()

    endpoint = {"query": query, "dependency": dependency, "no_request": no_request}[kind]
    with pytest.raises(TypeError, match="takes only the Request"):
        router.add_api_route("/x", endpoint, methods=["POST"])
