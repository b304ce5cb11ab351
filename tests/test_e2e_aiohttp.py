"""aiohttp's server and client, end to end over loopback, on ferroloop: several requests on one
kept-alive connection, a large body streamed in both directions, concurrent requests, and a
websocket — the transport paths a real HTTP stack leans on (flow control, pause_reading,
write_eof-free keep-alive, close with buffered data)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import ferroloop

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is in the `test` extra")
from aiohttp import web  # noqa: E402

pytestmark = pytest.mark.timeout(60)

CHUNK = bytes(range(256)) * 256  # 64 KiB
BIG_CHUNKS = 128  # 8 MiB in all: far more than the socket buffers hold
BIG_DIGEST = hashlib.sha256(CHUNK * BIG_CHUNKS).hexdigest()


def make_app(peers: list[object]) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        # The client's address tells which connection carried the request (keep-alive check).
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text=f"hello {request.query.get('n', '?')}")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    async def upload(request: web.Request) -> web.Response:
        # Read the body as a stream, so the server pauses reading while the handler is slow.
        digest = hashlib.sha256()
        size = 0
        async for piece in request.content.iter_chunked(10_000):
            digest.update(piece)
            size += len(piece)
            if size % (1 << 20) < 10_000:
                await asyncio.sleep(0.001)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        for _ in range(BIG_CHUNKS):
            await response.write(CHUNK)  # drains: exercises pause_writing/resume_writing
        await response.write_eof()
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 << 20)
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data[::-1])
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    app = web.Application(client_max_size=16 << 20)
    app.router.add_get("/hello", hello)
    app.router.add_post("/echo", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/ws", websocket)
    return app


def run_with_server(
    loop: ferroloop.Loop,
    client_part: Callable[[str, list[object]], Awaitable[None]],
    server_tls: ssl.SSLContext | None = None,
) -> None:
    """Serve the app on loopback inside `loop`, run `client_part(base_url, peers)`, clean up."""

    async def main() -> None:
        assert type(asyncio.get_running_loop()) is ferroloop.Loop
        peers: list[object] = []
        runner = web.AppRunner(make_app(peers))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        try:
            host, port = runner.addresses[0][:2]
            scheme = "https" if server_tls else "http"
            await client_part(f"{scheme}://{host}:{port}", peers)
        finally:
            await runner.cleanup()

    loop.run_until_complete(asyncio.wait_for(main(), 50))


def test_keep_alive_serves_many_requests_on_one_connection(loop: ferroloop.Loop) -> None:
    async def client_part(base: str, peers: list[object]) -> None:
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in range(20):
                async with session.get(f"{base}/hello", params={"n": str(n)}) as response:
                    assert response.status == 200
                    assert await response.text() == f"hello {n}"
        assert len(peers) == 20
        assert len(set(peers)) == 1, f"keep-alive should reuse one connection, got {set(peers)}"

    run_with_server(loop, client_part)


def test_echo_bodies_of_many_sizes(loop: ferroloop.Loop) -> None:
    async def client_part(base: str, peers: list[object]) -> None:
        async with aiohttp.ClientSession() as session:
            for size in (0, 1, 1000, 65_535, 65_536, 65_537, 1 << 20, 3_000_001):
                body = (bytes(range(251)) * (size // 251 + 1))[:size]
                async with session.post(f"{base}/echo", data=body) as response:
                    assert response.status == 200
                    assert await response.read() == body, f"size {size}"

    run_with_server(loop, client_part)


def test_streamed_large_download(loop: ferroloop.Loop) -> None:
    async def client_part(base: str, peers: list[object]) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/download") as response:
                assert response.status == 200
                digest = hashlib.sha256()
                size = 0
                async for piece in response.content.iter_chunked(50_000):
                    digest.update(piece)
                    size += len(piece)
                    if size % (1 << 20) < 50_000:
                        await asyncio.sleep(0.001)  # a slow reader: the server must wait
        assert size == len(CHUNK) * BIG_CHUNKS
        assert digest.hexdigest() == BIG_DIGEST

    run_with_server(loop, client_part)


def test_streamed_large_upload(loop: ferroloop.Loop) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(BIG_CHUNKS):
            yield CHUNK

    async def client_part(base: str, peers: list[object]) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/upload", data=body()) as response:
                assert response.status == 200
                assert await response.json() == {
                    "size": len(CHUNK) * BIG_CHUNKS,
                    "sha256": BIG_DIGEST,
                }

    run_with_server(loop, client_part)


def test_concurrent_requests(loop: ferroloop.Loop) -> None:
    async def client_part(base: str, peers: list[object]) -> None:
        connector = aiohttp.TCPConnector(limit=20)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(n: int) -> None:
                body = n.to_bytes(4, "big") * (n * 100 + 1)
                async with session.post(f"{base}/echo", data=body) as response:
                    assert await response.read() == body

            await asyncio.gather(*(one(n) for n in range(200)))

    run_with_server(loop, client_part)


def test_websocket_echo_through_aiohttp(loop: ferroloop.Loop) -> None:
    async def client_part(base: str, peers: list[object]) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{base}/ws", max_msg_size=4 << 20) as ws:
                await ws.send_str("ferroloop")
                assert await ws.receive_str() == "poolorref"
                big = bytes(range(256)) * 4096  # 1 MiB
                await ws.send_bytes(big)
                assert await ws.receive_bytes() == big

    run_with_server(loop, client_part)


def test_https_keep_alive_and_large_bodies(loop: ferroloop.Loop) -> None:
    """TLS (asyncio's SSLProtocol over ferroloop's stream transport) under aiohttp."""
    trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the certificates")
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)

    async def client_part(base: str, peers: list[object]) -> None:
        connector = aiohttp.TCPConnector(limit=1, ssl=client_tls)
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in range(10):
                async with session.get(f"{base}/hello", params={"n": str(n)}) as response:
                    assert await response.text() == f"hello {n}"
            body = (bytes(range(256)) * 8192)[:2_000_003]
            async with session.post(f"{base}/echo", data=body) as response:
                assert await response.read() == body
            async with session.get(f"{base}/download") as response:
                digest = hashlib.sha256()
                async for piece in response.content.iter_chunked(1 << 16):
                    digest.update(piece)
                assert digest.hexdigest() == BIG_DIGEST
        assert len(set(peers)) == 1, "keep-alive over TLS should reuse one connection"

    run_with_server(loop, client_part, server_tls=server_tls)
