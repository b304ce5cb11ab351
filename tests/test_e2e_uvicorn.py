"""uvicorn serving a small ASGI app inside a ferroloop loop, hit by httpx's async client: both
of uvicorn's HTTP protocol implementations (h11 and httptools), keep-alive, a streamed response,
a large request body and uvicorn's graceful shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import ferroloop

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is in the `test` extra")
httpx = pytest.importorskip("httpx", reason="httpx is in the `test` extra")

pytestmark = pytest.mark.timeout(60)

STREAM_PIECE = bytes(range(256)) * 1024  # 256 KiB
STREAM_PIECES = 24  # 6 MiB


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """A small ASGI app: /hello, /echo (returns the body's size and digest), /stream."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await websocket_echo(receive, send)
        return
    assert scope["type"] == "http"
    # Every request is handled on the loop the test started: prove it from inside the app.
    loop_class = type(asyncio.get_running_loop())
    loop_name = f"{loop_class.__module__}.{loop_class.__qualname__}"
    headers = [(b"content-type", b"application/octet-stream"), (b"x-loop", loop_name.encode())]
    if scope["path"] == "/hello":
        client_port = str(scope["client"][1]).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*headers, (b"x-client-port", client_port)]}
        )
        await send({"type": "http.response.body", "body": b"hello"})
    elif scope["path"] == "/echo":
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": f"{size} {digest.hexdigest()}".encode()})
    elif scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(STREAM_PIECES):
            await send({"type": "http.response.body", "body": STREAM_PIECE, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


async def websocket_echo(receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            await send({"type": "websocket.send", "text": message["text"]})


def serve_and_call(
    loop: ferroloop.Loop,
    http: str,
    client_part: Callable[[str], Awaitable[None]],
    ws: str = "none",
) -> None:
    """Run uvicorn on loopback inside `loop` (uvicorn's loop="none": use the running loop),
    run `client_part(base_url)`, then shut uvicorn down the way a signal would."""

    async def main() -> None:
        assert type(asyncio.get_running_loop()) is ferroloop.Loop
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="none",
            http=http,
            ws=ws,
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            await client_part(f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)
        assert not server.servers[0].is_serving()

    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    loop.run_until_complete(asyncio.wait_for(main(), 50))


@pytest.fixture(params=["h11", "httptools"])
def http_impl(request: pytest.FixtureRequest) -> str:
    if request.param == "httptools":
        pytest.importorskip("httptools", reason="uvicorn's httptools protocol needs httptools")
    return str(request.param)


def test_keep_alive_requests(loop: ferroloop.Loop, http_impl: str) -> None:
    async def client_part(base: str) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            ports = set()
            for _ in range(20):
                response = await client.get(f"{base}/hello")
                assert response.status_code == 200
                assert response.content == b"hello"
                assert response.headers["x-loop"] == "ferroloop._loop.Loop"
                ports.add(response.headers["x-client-port"])
            assert len(ports) == 1, f"keep-alive should reuse one connection, got {ports}"
            assert (await client.get(f"{base}/missing")).status_code == 404

    serve_and_call(loop, http_impl, client_part)


def test_large_request_body(loop: ferroloop.Loop, http_impl: str) -> None:
    body = bytes(range(256)) * 16384  # 4 MiB

    async def client_part(base: str) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(f"{base}/echo", content=body)
            assert response.status_code == 200
            assert response.text == f"{len(body)} {hashlib.sha256(body).hexdigest()}"

    serve_and_call(loop, http_impl, client_part)


def test_streamed_response(loop: ferroloop.Loop, http_impl: str) -> None:
    async def client_part(base: str) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            async with client.stream("GET", f"{base}/stream") as response:
                assert response.status_code == 200
                digest = hashlib.sha256()
                size = 0
                async for piece in response.aiter_bytes():
                    digest.update(piece)
                    size += len(piece)
                    await asyncio.sleep(0)
        assert size == len(STREAM_PIECE) * STREAM_PIECES
        assert digest.hexdigest() == hashlib.sha256(STREAM_PIECE * STREAM_PIECES).hexdigest()

    serve_and_call(loop, http_impl, client_part)


def test_concurrent_clients(loop: ferroloop.Loop, http_impl: str) -> None:
    async def client_part(base: str) -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50), trust_env=False) as client:

            async def one(n: int) -> None:
                body = n.to_bytes(2, "big") * (n * 37 + 1)
                response = await client.post(f"{base}/echo", content=body)
                assert response.text == f"{len(body)} {hashlib.sha256(body).hexdigest()}"

            await asyncio.gather(*(one(n) for n in range(300)))

    serve_and_call(loop, http_impl, client_part)


def test_websocket_through_uvicorn(loop: ferroloop.Loop, http_impl: str) -> None:
    """uvicorn's websockets protocol (it takes the connection over from the HTTP protocol
    with transport.set_protocol) against the websockets client."""
    websockets_client = pytest.importorskip("websockets.asyncio.client", reason="websockets is in the `test` extra")
    ws_impl = "websockets-sansio" if "websockets-sansio" in uvicorn.config.WS_PROTOCOLS else "websockets"

    async def client_part(base: str) -> None:
        url = base.replace("http://", "ws://") + "/ws"
        async with websockets_client.connect(url, proxy=None, max_size=4 << 20) as ws:
            await ws.send("over uvicorn")
            assert await ws.recv() == "over uvicorn"
            big = bytes(range(256)) * 4096  # 1 MiB
            await ws.send(big)
            assert await ws.recv() == big

    serve_and_call(loop, http_impl, client_part, ws=ws_impl)
