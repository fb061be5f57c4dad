"""`GET /`: the CNN explorer page, and its static files from the package (service/static).

The page is plain HTML, CSS and ES modules built only on the public native routes. Files are
served from a fixed folder and a fixed list of suffixes (no directory listing, no scripts or
dotfiles), each answer with a strict Content-Security-Policy: no inline script, no CDN, no
request beyond this origin.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from service.errors import NotFound

STATIC_DIR = Path(str(importlib.resources.files("service") / "static"))
INDEX_FILE = "index.html"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Revalidate each load: the page changes with the package, and If-None-Match keeps it cheap.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def static_path(name: str, root: Path = STATIC_DIR) -> Path:
    """The file `name` under `root` if it is one the page may serve; NotFound otherwise."""
    parts = Path(name).parts
    if not parts or "\0" in name or any(p.startswith(".") or p in {"..", "/"} for p in parts):
        raise NotFound(f"no static file {name!r}")
    path = (root / name).resolve()
    if (
        path.suffix not in MEDIA_TYPES
        or not path.is_relative_to(root.resolve())
        or not path.is_file()
    ):
        raise NotFound(f"no static file {name!r}")
    return path


def _file(request: Request, path: Path) -> Response:
    """The file, or 304 when the client's copy (If-None-Match) is current: the ETag is the
    file's modification time and size, as the browser revalidates each load (no-cache)."""
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {**SECURITY_HEADERS, "ETag": etag}
    wanted = request.headers.get("if-none-match", "")
    if etag in (tag.strip().removeprefix("W/") for tag in wanted.split(",")) or wanted == "*":
        return Response(status_code=304, headers=headers)
    return FileResponse(
        path, media_type=MEDIA_TYPES[path.suffix], headers=headers, stat_result=stat
    )


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    """The explorer page: upload, top-5, latency, layer-by-layer feature maps, CAM."""
    return _file(request, static_path(INDEX_FILE))


@router.api_route("/static/{name:path}", methods=["GET", "HEAD"])
async def static_file(request: Request, name: str) -> Response:
    return _file(request, static_path(name))
