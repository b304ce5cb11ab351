"""TLS on every connection kind: the caller's `ssl.SSLContext` over `MemoryBIO` (ferroloop's
TlsProtocol: the standard library's SSLProtocol state machine, record plumbing in Rust) carried
by the loop's stream transport.

A certificate authority and certificates are generated per module (trustme). Tests that pin
down behaviour run on the standard loop and on ferroloop (fixture `any_loop`) with the same
assertions, so a difference between the two fails on ferroloop only; the load tests (50 MB each
way, 500 concurrent connections) run on ferroloop (fixture `loop`)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
import warnings
from asyncio import sslproto, trsock
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops
from tls_helpers import HOSTNAME, Echo, Pki, Recorder, record_errors, run

trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the certificates")

pytestmark = pytest.mark.timeout(60)

HANDSHAKE_TIMEOUT = 0.3
SHUTDOWN_TIMEOUT = 0.3


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def client_hello(pki: Pki) -> bytes:
    """The first flight of a TLS client, for peers that speak raw bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): an abrupt close the peer sees as ECONNRESET."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def count_ssl_connection_lost(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Every SSLProtocol.connection_lost call (the raw transport reporting to the TLS layer)."""
    calls: list[BaseException | None] = []
    original = sslproto.SSLProtocol.connection_lost

    def counting(self: sslproto.SSLProtocol, exc: BaseException | None) -> None:
        calls.append(exc)
        original(self, exc)

    monkeypatch.setattr(sslproto.SSLProtocol, "connection_lost", counting)
    return calls


# -- verification ---------------------------------------------------------------------------


def test_verified_connection_checks_the_hostname(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    errors = record_errors(any_loop)

    async def scenario() -> None:
        server = await any_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            transport, protocol = await any_loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            ssl_object = transport.get_extra_info("ssl_object")
            assert ssl_object.server_hostname == HOSTNAME
            assert ("DNS", HOSTNAME) in transport.get_extra_info("peercert")["subjectAltName"]
            transport.write(b"over TLS")
            assert await protocol.receive(8) == b"over TLS"
            transport.close()
            assert await protocol.lost is None

    run(any_loop, scenario())
    assert errors == []


def test_hostname_defaults_to_the_host_argument(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def scenario() -> None:
        server = await any_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            # The certificate names 127.0.0.1 too: the host doubles as the name to check.
            transport, _ = await any_loop.create_connection(
                Recorder, "127.0.0.1", server.sockets[0].getsockname()[1], ssl=pki.client_context()
            )
            assert transport.get_extra_info("ssl_object").server_hostname == "127.0.0.1"
            transport.close()

    run(any_loop, scenario())


def test_wrong_hostname_is_refused(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    errors = record_errors(any_loop)
    made: list[Recorder] = []

    async def scenario() -> None:
        def server_protocol() -> Recorder:
            made.append(Recorder())
            return made[-1]

        server = await any_loop.create_server(server_protocol, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            with pytest.raises(ssl.SSLCertVerificationError) as raised:
                await any_loop.create_connection(
                    Recorder,
                    *server.sockets[0].getsockname(),
                    ssl=pki.client_context(),
                    server_hostname="wrong.example",
                )
            assert "Hostname mismatch" in raised.value.verify_message
            await asyncio.sleep(0.05)  # the server side sees the client's alert

    run(any_loop, scenario())
    assert [p.calls for p in made] == [[]]  # the handshake never completed on the server
    assert errors == []


@pytest.mark.parametrize("client", ["other authority", "ssl=True"])
def test_untrusted_certificate_is_refused(any_loop: asyncio.AbstractEventLoop, pki: Pki, client: str) -> None:
    errors = record_errors(any_loop)
    if client == "ssl=True":
        client_ssl: ssl.SSLContext | bool = True  # the default context: the system's roots
    else:
        client_ssl = ssl.create_default_context()
        pki.inner_authority.configure_trust(client_ssl)

    async def scenario() -> None:
        server = await any_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            with pytest.raises(ssl.SSLCertVerificationError) as raised:
                await any_loop.create_connection(
                    Recorder, *server.sockets[0].getsockname(), ssl=client_ssl, server_hostname=HOSTNAME
                )
            assert raised.value.verify_code == 20  # unable to get local issuer certificate
            await asyncio.sleep(0.05)

    run(any_loop, scenario())
    assert errors == []


def test_alpn_is_negotiated(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def scenario() -> None:
        accepted: asyncio.Future[asyncio.Transport] = any_loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                accepted.set_result(transport)

        server = await any_loop.create_server(Server, "127.0.0.1", 0, ssl=pki.server_context(alpn=["h2", "http/1.1"]))
        async with server:
            transport, _ = await any_loop.create_connection(
                Recorder,
                *server.sockets[0].getsockname(),
                ssl=pki.client_context(alpn=["http/1.1", "spdy/3"]),
                server_hostname=HOSTNAME,
            )
            server_transport = await accepted
            for side in (transport, server_transport):
                assert side.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            transport.close()
            server_transport.close()

    run(any_loop, scenario())


def test_mutual_tls_and_extra_info(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    client_context = pki.client_context(with_cert=True)
    server_context = pki.server_context(require_client_cert=True)

    async def scenario() -> None:
        accepted: asyncio.Future[asyncio.Transport] = any_loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                accepted.set_result(transport)

        server = await any_loop.create_server(Server, "127.0.0.1", 0, ssl=server_context)
        async with server:
            address = server.sockets[0].getsockname()
            transport, _ = await any_loop.create_connection(
                Recorder, *address, ssl=client_context, server_hostname=HOSTNAME
            )
            server_transport = await accepted
            sides = ((transport, client_context, HOSTNAME), (server_transport, server_context, "client.example"))
            for side, context, peer_name in sides:
                ssl_object = side.get_extra_info("ssl_object")
                assert isinstance(ssl_object, ssl.SSLObject)
                assert side.get_extra_info("sslcontext") is context
                peercert = side.get_extra_info("peercert")
                assert peercert == ssl_object.getpeercert()
                assert ("DNS", peer_name) in peercert["subjectAltName"]
                cipher = side.get_extra_info("cipher")
                assert cipher == ssl_object.cipher() and len(cipher) == 3
                assert side.get_extra_info("compression") == ssl_object.compression()
                # The underlying socket's keys come through the TLS layer.
                sock = side.get_extra_info("socket")
                assert isinstance(sock, trsock.TransportSocket)
                assert side.get_extra_info("sockname") == sock.getsockname()
                assert side.get_extra_info("peername") == sock.getpeername()
                assert side.get_extra_info("no such key", "default") == "default"
            assert transport.get_extra_info("peername") == address
            assert server_transport.get_extra_info("sockname") == address
            transport.close()
            server_transport.close()

    run(any_loop, scenario())


# -- timeouts and abrupt closes -------------------------------------------------------------


def test_stalled_client_handshake_times_out_on_the_server(pki: Pki) -> None:
    """A client that sends half a ClientHello and stalls: the server aborts after
    ssl_handshake_timeout; the application protocol is created but never called."""
    hello = client_hello(pki)

    def snippet(event_loop: asyncio.AbstractEventLoop) -> tuple[Any, ...]:
        errors = record_errors(event_loop)
        made: list[Recorder] = []

        def server_protocol() -> Recorder:
            made.append(Recorder())
            return made[-1]

        async def scenario() -> tuple[bytes, float]:
            server = await event_loop.create_server(
                server_protocol, "127.0.0.1", 0, ssl=pki.server_context(), ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
            async with server:
                with socket.create_connection(server.sockets[0].getsockname()) as client:
                    client.setblocking(False)
                    await event_loop.sock_sendall(client, hello[: len(hello) // 2])
                    started = time.monotonic()
                    answer = await event_loop.sock_recv(client, 1024)
                    return answer, time.monotonic() - started

        answer, waited = run(event_loop, scenario())
        assert HANDSHAKE_TIMEOUT * 0.9 <= waited < HANDSHAKE_TIMEOUT + 1.0
        return answer, [p.calls for p in made], errors

    stdlib, ferro = on_both_loops(snippet)
    assert stdlib == (b"", [[]], [])  # the server closed the connection, nothing reported
    assert ferro == stdlib


def test_client_handshake_timeout(
    any_loop: asyncio.AbstractEventLoop, count_ssl_connection_lost: list[BaseException | None]
) -> None:
    async def scenario() -> float:
        with socket.create_server(("127.0.0.1", 0)) as silent_server:  # accepts, never answers
            started = time.monotonic()
            with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer than 0.3 seconds"):
                await any_loop.create_connection(
                    Recorder,
                    *silent_server.getsockname(),
                    ssl=ssl.create_default_context(),
                    server_hostname=HOSTNAME,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                )
            return time.monotonic() - started

    waited = run(any_loop, scenario())
    assert HANDSHAKE_TIMEOUT * 0.9 <= waited < HANDSHAKE_TIMEOUT + 1.0
    assert [type(e) for e in count_ssl_connection_lost] == [ConnectionAbortedError]


def test_close_performs_the_tls_shutdown(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    errors = record_errors(any_loop)

    async def scenario() -> None:
        served: list[Recorder] = []

        def server_protocol() -> Recorder:
            served.append(Recorder())
            return served[-1]

        server = await any_loop.create_server(server_protocol, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            transport, protocol = await any_loop.create_connection(
                Recorder,
                *server.sockets[0].getsockname(),
                ssl=pki.client_context(),
                server_hostname=HOSTNAME,
                ssl_shutdown_timeout=5,
            )
            transport.write(b"last words")
            started = time.monotonic()
            transport.close()
            assert transport.is_closing()
            assert await protocol.lost is None
            assert await served[0].lost is None
            # A clean close_notify exchange, not the shutdown timeout.
            assert time.monotonic() - started < 1.0
            # The server got the data, then the close_notify as end of stream.
            assert served[0].data == b"last words"
            assert served[0].calls == ["connection_made", "data_received", "eof_received", "connection_lost"]
            # and the closing side sees the peer's close_notify as end of stream too.
            assert protocol.calls == ["connection_made", "eof_received", "connection_lost"]

    run(any_loop, scenario())
    assert errors == []


def test_abort_skips_the_tls_shutdown(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    errors = record_errors(any_loop)

    async def scenario() -> None:
        served: list[Recorder] = []

        def server_protocol() -> Recorder:
            served.append(Recorder())
            return served[-1]

        server = await any_loop.create_server(server_protocol, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            transport, protocol = await any_loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            transport.write(b"x" * 1000)
            await served[0].receive(1000)
            assert served[0].transport is not None
            served[0].transport.write(b"ack")
            # Everything the server sent (TLS 1.3 session tickets too) is read: a close with
            # unread bytes would be a TCP reset instead of a FIN.
            await protocol.receive(3)
            transport.abort()
            assert transport.is_closing()
            assert await protocol.lost is None
            # No close_notify came: the server sees the bare end of the TCP stream.
            assert await served[0].lost is None
            transport.write(b"after abort")  # dropped, as on any closed transport
            assert transport.get_extra_info("socket") is None
            assert protocol.calls == ["connection_made", "data_received", "connection_lost"]
            assert served[0].calls == ["connection_made", "data_received", "eof_received", "connection_lost"]

    run(any_loop, scenario())
    assert errors == []


@pytest.fixture
def stalled_tls_peer(pki: Pki) -> Iterator[tuple[str, int]]:
    """A TLS server (a thread with a blocking socket) that completes the handshake and then
    never reads again, so it never answers a close_notify."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    release = threading.Event()

    def serve() -> None:
        with listener:
            sock, _ = listener.accept()
            with pki.server_context().wrap_socket(sock, server_side=True):
                release.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()
    release.set()
    thread.join(10)


def test_close_gives_up_after_the_shutdown_timeout(
    any_loop: asyncio.AbstractEventLoop, pki: Pki, stalled_tls_peer: tuple[str, int]
) -> None:
    async def scenario() -> tuple[Recorder, float]:
        transport, protocol = await any_loop.create_connection(
            Recorder,
            *stalled_tls_peer,
            ssl=pki.client_context(),
            server_hostname=HOSTNAME,
            ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        started = time.monotonic()
        transport.close()
        await protocol.lost
        return protocol, time.monotonic() - started

    protocol, waited = run(any_loop, scenario())
    assert SHUTDOWN_TIMEOUT * 0.9 <= waited < SHUTDOWN_TIMEOUT + 1.0
    assert protocol.calls == ["connection_made", "connection_lost"]
    [lost_with] = protocol.lost_with
    assert isinstance(lost_with, TimeoutError) and str(lost_with) == "SSL shutdown timed out"


def test_abrupt_close_during_the_client_handshake(
    any_loop: asyncio.AbstractEventLoop, count_ssl_connection_lost: list[BaseException | None]
) -> None:
    """The server resets the connection after the ClientHello: create_connection raises the
    error, which the TLS layer saw once."""

    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)

            async def reset_after_hello() -> None:
                peer, _ = await any_loop.sock_accept(listener)
                assert await any_loop.sock_recv(peer, 4096)
                reset(peer)

            resetting = asyncio.ensure_future(reset_after_hello())
            with pytest.raises(ConnectionResetError) as raised:
                await any_loop.create_connection(
                    Recorder, *listener.getsockname(), ssl=ssl.create_default_context(), server_hostname=HOSTNAME
                )
            await resetting
            await asyncio.sleep(0.01)
            assert count_ssl_connection_lost == [raised.value]

    run(any_loop, scenario())


def test_abrupt_close_during_the_server_handshake(
    any_loop: asyncio.AbstractEventLoop, pki: Pki, count_ssl_connection_lost: list[BaseException | None]
) -> None:
    errors = record_errors(any_loop)
    made: list[Recorder] = []
    hello = client_hello(pki)

    def server_protocol() -> Recorder:
        made.append(Recorder())
        return made[-1]

    async def scenario() -> None:
        server = await any_loop.create_server(server_protocol, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            client = socket.create_connection(server.sockets[0].getsockname())
            client.setblocking(False)
            await any_loop.sock_sendall(client, hello[: len(hello) // 2])
            await asyncio.sleep(0.05)
            reset(client)
            for _ in range(100):
                if count_ssl_connection_lost:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # time for a second, wrong, report

    run(any_loop, scenario())
    assert [type(e) for e in count_ssl_connection_lost] == [ConnectionResetError]
    assert [p.calls for p in made] == [[]]
    assert errors == []


def test_abrupt_close_during_the_shutdown(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    """The peer answers our close_notify with a reset: connection_lost(ConnectionResetError),
    once."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            sock, _ = listener.accept()
            tls = pki.server_context().wrap_socket(sock, server_side=True)
            assert tls.recv(1) == b""  # the client's close_notify
            reset(tls)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def scenario() -> Recorder:
        transport, protocol = await any_loop.create_connection(
            Recorder,
            *listener.getsockname(),
            ssl=pki.client_context(),
            server_hostname=HOSTNAME,
            ssl_shutdown_timeout=5,
        )
        transport.close()
        await protocol.lost
        await asyncio.sleep(0.05)
        return protocol

    protocol = run(any_loop, scenario())
    thread.join(10)
    assert protocol.calls == ["connection_made", "connection_lost"]
    assert [type(e) for e in protocol.lost_with] == [ConnectionResetError]


# -- flow control ---------------------------------------------------------------------------


def test_pause_reading_stops_decrypting(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def scenario() -> None:
        served: asyncio.Future[Recorder] = any_loop.create_future()

        def server_protocol() -> Recorder:
            protocol = Recorder()
            served.set_result(protocol)
            return protocol

        server = await any_loop.create_server(server_protocol, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            transport, sender = await any_loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            receiver = await served
            await receiver.made.wait()  # made at accept time, connected after the handshake
            assert receiver.transport is not None
            receiver.transport.pause_reading()
            assert not receiver.transport.is_reading()
            payload = os.urandom(100_000)
            transport.write(payload)
            await asyncio.sleep(0.2)
            assert receiver.calls == ["connection_made"]  # no data_received while paused
            receiver.transport.resume_reading()
            assert receiver.transport.is_reading()
            assert await receiver.receive(len(payload)) == payload
            transport.close()
            assert await sender.lost is None and await receiver.lost is None

    run(any_loop, scenario())


def test_write_flow_control_reaches_the_protocol(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    """A reader that pauses: the TLS layer stops reading its socket (so TCP fills up), the
    writer's raw transport pauses the TLS layer, which pauses the writing application; all of
    it resumes when the reader does, and every byte arrives."""
    chunk = 64 * 1024
    limit = 64 << 20  # had the paused reader kept reading its socket, no pause would come

    async def scenario() -> None:
        served: asyncio.Future[Recorder] = any_loop.create_future()

        def server_protocol() -> Recorder:
            protocol = Recorder()
            served.set_result(protocol)
            return protocol

        server = await any_loop.create_server(server_protocol, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            transport, writer = await any_loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            receiver = await served
            await receiver.made.wait()  # made at accept time, connected after the handshake
            assert receiver.transport is not None
            receiver.transport.pause_reading()
            sent = hashlib.sha256()
            total = 0
            while not writer.paused.is_set() and total < limit:
                data = (total // chunk).to_bytes(4, "big") * (chunk // 4)
                transport.write(data)
                sent.update(data)
                total += len(data)
                await asyncio.sleep(0)
            assert writer.paused.is_set(), f"no pause_writing after {total} bytes"
            assert transport.get_write_buffer_size() > 0
            assert receiver.calls == ["connection_made"]
            receiver.transport.resume_reading()
            await writer.resumed.wait()
            assert await receiver.receive(total) and len(receiver.data) == total
            assert hashlib.sha256(receiver.data).digest() == sent.digest()
            assert writer.calls == ["connection_made", "pause_writing", "resume_writing"]
            transport.close()
            assert await writer.lost is None and await receiver.lost is None

    run(any_loop, scenario())


# -- load -----------------------------------------------------------------------------------


def test_50_mb_each_way_every_byte_checked(loop: ferroloop.Loop, pki: Pki) -> None:
    size = 50 * 1000 * 1000
    to_server = os.urandom(size)
    to_client = os.urandom(size)
    piece = 256 * 1024

    async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(data), piece):
            writer.write(view[start : start + piece])
            await writer.drain()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sending = asyncio.ensure_future(send(writer, to_client))
        received = await reader.readexactly(size)
        await sending
        assert received == to_server
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            reader, writer = await asyncio.open_connection(
                *server.sockets[0].getsockname(), ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            sending = asyncio.ensure_future(send(writer, to_server))
            received = await reader.readexactly(size)
            await sending
            assert received == to_client
            assert await reader.readexactly(2) == b"ok"
            writer.close()
            await writer.wait_closed()

    run(loop, scenario(), timeout=40)


def test_500_concurrent_connections(loop: ferroloop.Loop, pki: Pki) -> None:
    count = 500
    open_now = 0
    most_open = 0
    all_open = asyncio.Event()
    # One context for all clients, as a real client has: building one loads the system's
    # trust store, which costs more than a handshake.
    client_context = pki.client_context()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most_open
        open_now += 1
        most_open = max(most_open, open_now)
        if open_now == count:
            all_open.set()
        try:
            await echo_stream(reader, writer)
        finally:
            open_now -= 1

    async def client(address: tuple[str, int], number: int) -> None:
        reader, writer = await asyncio.open_connection(*address, ssl=client_context, server_hostname=HOSTNAME)
        message = f"client {number}\n".encode()
        writer.write(message)
        assert await reader.readline() == message
        await all_open.wait()  # every connection is up at once before any closes
        writer.close()
        await writer.wait_closed()

    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=pki.server_context(), backlog=count)
        async with server:
            address = server.sockets[0].getsockname()
            await asyncio.gather(*(client(address, n) for n in range(count)))
        assert most_open == count

    run(loop, scenario(), timeout=45)


# -- start_tls, TLS over TLS, streams --------------------------------------------------------


def test_tls_over_tls(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    """An HTTPS proxy's shape: a TLS connection to the proxy, then a second TLS session with
    another party inside it (start_tls on a TLS transport); each layer verifies its own peer."""
    inner_server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.inner.configure_cert(inner_server_context)
    inner_client_context = ssl.create_default_context()
    pki.inner_authority.configure_trust(inner_client_context)

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"CONNECT inner.example\n"
        writer.write(b"200 tunnel\n")
        await writer.start_tls(inner_server_context)  # the server side: start_server's writer
        await echo_stream(reader, writer)

    async def scenario() -> None:
        server = await asyncio.start_server(tunnel, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            outer, protocol = await any_loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            outer.write(b"CONNECT inner.example\n")
            assert await protocol.receive(11) == b"200 tunnel\n"
            protocol.data.clear()
            inner = await any_loop.start_tls(outer, protocol, inner_client_context, server_hostname="inner.example")
            assert inner is not None and inner.get_protocol() is protocol
            outer_tls = outer.get_extra_info("ssl_object")
            inner_tls = inner.get_extra_info("ssl_object")
            assert inner_tls is not outer_tls
            assert (outer_tls.server_hostname, inner_tls.server_hostname) == (HOSTNAME, "inner.example")
            assert ("DNS", "inner.example") in inner.get_extra_info("peercert")["subjectAltName"]
            payload = os.urandom(300_000)
            inner.write(payload)
            assert await protocol.receive(len(payload)) == payload
            inner.close()
            assert await protocol.lost is None
            assert protocol.calls.count("connection_lost") == 1

    run(any_loop, scenario())


def test_start_tls_on_a_plain_connection_with_timeouts(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    """loop.start_tls on both ends of a plain TCP connection (client and server side)."""

    async def scenario() -> None:
        upgraded: asyncio.Future[asyncio.Transport] = any_loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                assert data == b"STARTTLS\n"
                self.transport.write(b"GO\n")

                async def upgrade() -> None:
                    tls = await any_loop.start_tls(
                        self.transport,
                        echo,
                        pki.server_context(),
                        server_side=True,
                        ssl_handshake_timeout=5,
                        ssl_shutdown_timeout=5,
                    )
                    assert tls is not None
                    echo.connection_made(tls)
                    upgraded.set_result(tls)

                echo = Echo()
                self.upgrading = asyncio.ensure_future(upgrade())  # keep the task alive

        server = await any_loop.create_server(Server, "127.0.0.1", 0)
        async with server:
            plain, protocol = await any_loop.create_connection(Recorder, *server.sockets[0].getsockname())
            plain.write(b"STARTTLS\n")
            assert await protocol.receive(3) == b"GO\n"
            protocol.data.clear()
            tls = await any_loop.start_tls(
                plain,
                protocol,
                pki.client_context(),
                server_hostname=HOSTNAME,
                ssl_handshake_timeout=5,
                ssl_shutdown_timeout=5,
            )
            assert tls is not None
            server_tls = await upgraded
            tls.write(b"ping")
            assert await protocol.receive(4) == b"ping"
            assert plain.is_closing() is False  # the plain transport carries the TLS one
            tls.close()
            assert await protocol.lost is None
            assert plain.is_closing() and server_tls.get_extra_info("ssl_object") is not None

    run(any_loop, scenario())


def test_streams_over_tls_on_unix_sockets(any_loop: asyncio.AbstractEventLoop, pki: Pki, tmp_path: Path) -> None:
    path = str(tmp_path / "tls.sock")

    async def scenario() -> None:
        server = await asyncio.start_unix_server(echo_stream, path, ssl=pki.server_context())
        async with server:
            reader, writer = await asyncio.open_unix_connection(
                path, ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            assert writer.get_extra_info("peername") == path
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            writer.write(b"unix and tls\n")
            assert await reader.readline() == b"unix and tls\n"
            writer.close()
            await writer.wait_closed()

    run(any_loop, scenario())


def test_stream_writer_start_tls_and_refused_streams(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readline() == b"STARTTLS\n":
            writer.write(b"GO\n")
            await writer.start_tls(pki.server_context())
        await echo_stream(reader, writer)

    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server:
            address = server.sockets[0].getsockname()
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"GO\n"
            await writer.start_tls(pki.client_context(), server_hostname=HOSTNAME, ssl_handshake_timeout=5)
            assert writer.get_extra_info("ssl_object").server_hostname == HOSTNAME
            writer.write(b"now private\n")
            assert await reader.readline() == b"now private\n"
            writer.close()
            await writer.wait_closed()

        tls_server = await asyncio.start_server(echo_stream, "127.0.0.1", 0, ssl=pki.server_context())
        async with tls_server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(
                    *tls_server.sockets[0].getsockname(), ssl=pki.client_context(), server_hostname="wrong.example"
                )

    run(any_loop, scenario())


def test_connect_accepted_socket_with_tls(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            connecting = asyncio.ensure_future(
                any_loop.create_connection(
                    Recorder, *listener.getsockname(), ssl=pki.client_context(), server_hostname=HOSTNAME
                )
            )
            accepted, _ = await any_loop.sock_accept(listener)
            server_transport, _ = await any_loop.connect_accepted_socket(
                Echo, accepted, ssl=pki.server_context(), ssl_handshake_timeout=5
            )
            transport, protocol = await connecting
            transport.write(b"accepted elsewhere")
            assert await protocol.receive(18) == b"accepted elsewhere"
            transport.close()
            assert await protocol.lost is None
            server_transport.close()

    run(any_loop, scenario())


# -- argument checks --------------------------------------------------------------------------


ArgumentCheck = Callable[[asyncio.AbstractEventLoop, tuple[str, int], str, ssl.SSLContext], Coroutine[Any, Any, Any]]


async def _start_tls_on_plain(
    event_loop: asyncio.AbstractEventLoop, address: tuple[str, int], context: Any, **kwargs: Any
) -> Any:
    transport, protocol = await event_loop.create_connection(asyncio.Protocol, *address)
    try:
        return await event_loop.start_tls(transport, protocol, context, **kwargs)
    finally:
        transport.close()


async def _start_tls_on_datagram(event_loop: asyncio.AbstractEventLoop, context: Any) -> Any:
    transport, protocol = await event_loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        return await event_loop.start_tls(transport, protocol, context)  # type: ignore[arg-type]
    finally:
        transport.close()


ARGUMENT_CHECKS: dict[str, ArgumentCheck] = {
    "create_connection server_hostname without ssl": lambda lp, addr, path, ctx: lp.create_connection(
        asyncio.Protocol, *addr, server_hostname=HOSTNAME
    ),
    "create_connection handshake timeout without ssl": lambda lp, addr, path, ctx: lp.create_connection(
        asyncio.Protocol, *addr, ssl_handshake_timeout=1
    ),
    "create_connection shutdown timeout without ssl": lambda lp, addr, path, ctx: lp.create_connection(
        asyncio.Protocol, *addr, ssl_shutdown_timeout=1
    ),
    "create_connection ssl without any hostname": lambda lp, addr, path, ctx: lp.create_connection(
        asyncio.Protocol, sock=socket.create_connection(addr), ssl=ctx
    ),
    "create_connection zero handshake timeout": lambda lp, addr, path, ctx: lp.create_connection(
        asyncio.Protocol, *addr, ssl=ctx, server_hostname=HOSTNAME, ssl_handshake_timeout=0
    ),
    "create_connection negative handshake timeout": lambda lp, addr, path, ctx: lp.create_connection(
        asyncio.Protocol, *addr, ssl=ctx, server_hostname=HOSTNAME, ssl_handshake_timeout=-1
    ),
    "create_connection zero shutdown timeout": lambda lp, addr, path, ctx: lp.create_connection(
        asyncio.Protocol, *addr, ssl=ctx, server_hostname=HOSTNAME, ssl_shutdown_timeout=0
    ),
    "create_server handshake timeout without ssl": lambda lp, addr, path, ctx: lp.create_server(
        asyncio.Protocol, "127.0.0.1", 0, ssl_handshake_timeout=1
    ),
    "create_server shutdown timeout without ssl": lambda lp, addr, path, ctx: lp.create_server(
        asyncio.Protocol, "127.0.0.1", 0, ssl_shutdown_timeout=1
    ),
    "create_unix_connection server_hostname without ssl": lambda lp, addr, path, ctx: lp.create_unix_connection(
        asyncio.Protocol, path, server_hostname=HOSTNAME
    ),
    "create_unix_connection ssl without server_hostname": lambda lp, addr, path, ctx: lp.create_unix_connection(
        asyncio.Protocol, path, ssl=ctx
    ),
    "create_unix_connection handshake timeout without ssl": lambda lp, addr, path, ctx: lp.create_unix_connection(
        asyncio.Protocol, path, ssl_handshake_timeout=1
    ),
    "create_unix_server handshake timeout without ssl": lambda lp, addr, path, ctx: lp.create_unix_server(
        asyncio.Protocol, path + ".2", ssl_handshake_timeout=1
    ),
    "connect_accepted_socket handshake timeout without ssl": lambda lp, addr, path, ctx: lp.connect_accepted_socket(
        asyncio.Protocol, socket.create_connection(addr), ssl_handshake_timeout=1
    ),
    "connect_accepted_socket shutdown timeout without ssl": lambda lp, addr, path, ctx: lp.connect_accepted_socket(
        asyncio.Protocol, socket.create_connection(addr), ssl_shutdown_timeout=1
    ),
    "open_connection server_hostname without ssl": lambda lp, addr, path, ctx: asyncio.open_connection(
        *addr, server_hostname=HOSTNAME
    ),
    "start_tls with a non-context": lambda lp, addr, path, ctx: _start_tls_on_plain(lp, addr, "not a context"),
    "start_tls zero handshake timeout": lambda lp, addr, path, ctx: _start_tls_on_plain(
        lp, addr, ctx, server_hostname=HOSTNAME, ssl_handshake_timeout=0
    ),
    "start_tls negative shutdown timeout": lambda lp, addr, path, ctx: _start_tls_on_plain(
        lp, addr, ctx, server_hostname=HOSTNAME, ssl_shutdown_timeout=-5
    ),
    "start_tls on a datagram transport": lambda lp, addr, path, ctx: _start_tls_on_datagram(lp, ctx),
}


def test_argument_checks_match_the_stdlib(pki: Pki, tmp_path: Path) -> None:
    def snippet(event_loop: asyncio.AbstractEventLoop) -> dict[str, tuple[str, str]]:
        outcomes: dict[str, tuple[str, str]] = {}
        with socket.create_server(("127.0.0.1", 0)) as tcp_listener, socket.socket(socket.AF_UNIX) as unix_listener:
            path = str(tmp_path / f"{type(event_loop).__name__}.sock")
            unix_listener.bind(path)
            unix_listener.listen()
            for name, check in ARGUMENT_CHECKS.items():
                with warnings.catch_warnings():
                    # The stdlib leaves a socket it connected to the collector when the TLS
                    # layer refuses its arguments; so would any loop that borrows its code.
                    warnings.simplefilter("ignore", ResourceWarning)
                    try:
                        result = run(
                            event_loop, check(event_loop, tcp_listener.getsockname(), path, pki.client_context())
                        )
                    except Exception as exc:  # noqa: BLE001 - compared across loops
                        # The datagram transport's repr is in the message: its class differs.
                        message = str(exc).split(" <")[0]
                        outcomes[name] = (type(exc).__name__, message)
                    else:
                        outcomes[name] = ("ok", type(result).__name__)
                        if isinstance(result, asyncio.AbstractServer):
                            result.close()
                    gc.collect()
        return outcomes

    stdlib, ferro = on_both_loops(snippet)
    assert all(kind != "ok" for kind, _ in stdlib.values()), stdlib
    assert ferro == stdlib
