"""Many requests arriving at a server at once: every connection is opened first, then every
request written in one go, then the answers read. Threads or an async client would send them
only as fast as the client gets CPU time, which on shared cores is no burst at all."""

from __future__ import annotations

import asyncio


async def _burst(base_url: str, path: str, body: bytes, count: int) -> list[tuple[int, str]]:
    host, port = base_url.removeprefix("http://").split(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(count)]
    for _, writer in connections:
        writer.write(request)
    await asyncio.gather(*(writer.drain() for _, writer in connections))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, str]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        await reader.read()  # the body, up to the server's close
        writer.close()
        await writer.wait_closed()
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
        return int(head[0].split()[1]), headers.get("retry-after", "")

    return await asyncio.gather(*(answer(reader, writer) for reader, writer in connections))


def burst(base_url: str, path: str, png: bytes, count: int) -> list[tuple[int, str]]:
    """(status, Retry-After) of `count` POSTs of the PNG `png` to `path`, arriving at once."""
    return asyncio.run(_burst(base_url, path, png, count))
