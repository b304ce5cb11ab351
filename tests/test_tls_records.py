"""TLS record plumbing: ferroloop's TLS transports decrypt and encrypt in Rust
(`ferroloop._tls.TlsProtocol`, `src/tls_records.rs`) around the standard library's
SSLProtocol state machine. These tests drive that data path through its edge cases — records
split across reads, mixed buffer types, a failing application, the peer's close_notify, a
custom `SSLObject` class, a BufferedProtocol application — with the same assertions on the
standard loop (fixture `any_loop`), on real TLS connections over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import ssl
import threading
from asyncio import sslproto
from typing import Any

import pytest

import ferroloop
from ferroloop._tls import TlsProtocol
from tls_helpers import HOSTNAME, Echo, Pki, Recorder, record_errors, run

pytestmark = pytest.mark.timeout(60)


async def tls_pair(
    event_loop: asyncio.AbstractEventLoop,
    pki: Pki,
    client_protocol: type[Recorder] = Recorder,
    server_protocol: type[Recorder] = Recorder,
    client_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, asyncio.Transport, Any, Any]:
    """A TLS server and one client connected to it, handshake done on both sides."""
    served: asyncio.Future[Any] = event_loop.create_future()

    def make_server_protocol() -> Any:
        protocol = server_protocol()
        served.set_result(protocol)
        return protocol

    server = await event_loop.create_server(make_server_protocol, "127.0.0.1", 0, ssl=pki.server_context())
    transport, client = await event_loop.create_connection(
        client_protocol,
        *server.sockets[0].getsockname(),
        ssl=client_context or pki.client_context(),
        server_hostname=HOSTNAME,
    )
    server_side = await served
    await server_side.made.wait()
    return server, transport, client, server_side


def test_ferroloop_tls_transports_use_its_record_plumbing(loop: ferroloop.Loop, pki: Pki) -> None:
    async def scenario() -> None:
        server, transport, _client, server_side = await tls_pair(loop, pki)
        async with server:
            for tls_transport in (transport, server_side.transport):
                protocol = tls_transport._ssl_protocol
                assert type(protocol) is TlsProtocol
                assert isinstance(protocol, sslproto.SSLProtocol)
            # start_tls too, on both ends of a plain connection upgraded in place.
            upgraded: asyncio.Future[asyncio.StreamWriter] = loop.create_future()

            async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await writer.start_tls(pki.server_context())
                upgraded.set_result(writer)
                writer.write(await reader.readexactly(5))

            plain_server = await asyncio.start_server(upgrade, "127.0.0.1", 0)
            async with plain_server:
                reader, writer = await asyncio.open_connection(*plain_server.sockets[0].getsockname())
                await writer.start_tls(pki.client_context(), server_hostname=HOSTNAME)
                writer.write(b"hello")
                assert await reader.readexactly(5) == b"hello"
                for stream_writer in (writer, await upgraded):
                    assert type(stream_writer.transport._ssl_protocol) is TlsProtocol
                writer.close()
            transport.close()

    run(loop, scenario())


class FragmentingProxy:
    """A TCP proxy on a thread that forwards every byte, in pieces of 1 to 7 bytes: TLS
    records reach the other side split at every possible place."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        inbound, _ = self.listener.accept()
        outbound = socket.create_connection(self.target)
        for sock in (inbound, outbound):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [
            threading.Thread(target=self._pump, args=pair, daemon=True)
            for pair in ((inbound, outbound), (outbound, inbound))
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        inbound.close()
        outbound.close()
        self.listener.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        pieces = random.Random(7)
        try:
            while data := source.recv(65536):
                view = memoryview(data)
                while view:
                    size = pieces.randint(1, 7)
                    sink.sendall(view[:size])
                    view = view[size:]
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_records_split_at_every_place_arrive_intact(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    payload = os.urandom(300_000)

    async def scenario() -> None:
        server = await any_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            proxy = FragmentingProxy(server.sockets[0].getsockname())
            transport, client = await any_loop.create_connection(
                Recorder, *proxy.address, ssl=pki.client_context(), server_hostname=HOSTNAME
            )
            sizes = random.Random(3)
            view = memoryview(payload)
            while view:
                size = sizes.randint(1, 40_000)
                transport.write(view[:size])
                view = view[size:]
            assert await client.receive(len(payload)) == payload
            transport.close()
            assert await client.lost is None

    run(any_loop, scenario(), timeout=40)


def test_writelines_of_mixed_buffers(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    chunks: list[Any] = [
        b"head:",
        bytearray(b"array:"),
        memoryview(b"..view:")[2:],
        b"",
        os.urandom(70_000),
        memoryview(bytearray(b"tail")),
    ]
    expected = b"".join(bytes(chunk) for chunk in chunks)

    async def scenario() -> None:
        server, transport, _client, receiver = await tls_pair(any_loop, pki)
        async with server:
            transport.writelines(chunks)
            transport.write(bytearray(b"!"))
            assert await receiver.receive(len(expected) + 1) == expected + b"!"
            assert transport.get_write_buffer_size() == 0
            transport.close()

    run(any_loop, scenario())


class FailingReceiver(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        raise ZeroDivisionError("application bug")


def test_exception_in_data_received_goes_to_the_handler(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    def scenario_on(event_loop: asyncio.AbstractEventLoop) -> tuple[str, str, list[str]]:
        errors = record_errors(event_loop)

        async def scenario() -> tuple[str, str, list[str]]:
            server, transport, client, receiver = await tls_pair(event_loop, pki, server_protocol=FailingReceiver)
            async with server:
                transport.write(b"boom")
                lost_with = await receiver.lost
                await client.lost  # the failing side is closed, the peer sees it
                # The loop goes on serving: another connection on the same server works.
                _, second, other_client, other_receiver = await tls_pair(event_loop, pki)
                second.write(b"fine")
                assert await other_receiver.receive(4) == b"fine"
                second.close()
                await other_client.lost
                return (
                    type(lost_with).__name__,
                    errors[0]["message"],
                    [type(error["exception"]).__name__ for error in errors],
                )

        return run(event_loop, scenario())

    lost, message, reported = scenario_on(any_loop)
    assert (lost, message, reported) == ("ZeroDivisionError", "Fatal error on SSL protocol", ["ZeroDivisionError"])


def test_peer_close_notify_reaches_eof_received_once(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def scenario() -> list[str]:
        server, transport, client, receiver = await tls_pair(any_loop, pki)
        async with server:
            transport.write(b"last words")
            transport.close()  # data, then close_notify, in that order
            assert await receiver.lost is None
            assert await client.lost is None
            assert bytes(receiver.data) == b"last words"
            return receiver.calls

    calls = run(any_loop, scenario())
    assert calls[0] == "connection_made" and calls[-2:] == ["eof_received", "connection_lost"]
    assert set(calls[1:-2]) == {"data_received"}


class ShoutingSSLObject(ssl.SSLObject):
    """An `SSLContext.sslobject_class` that changes what it reads: the loop must read through
    it exactly as asyncio does, and write through its `write`."""

    writes = 0

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        data = super().read(len, buffer)
        return data.upper() if buffer is None else data

    def write(self, data: Any) -> int:
        type(self).writes += 1
        return super().write(data)


def test_custom_sslobject_class_is_honoured(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    ShoutingSSLObject.writes = 0
    context = pki.client_context()
    context.sslobject_class = ShoutingSSLObject
    payload = bytes(random.Random(5).choices(b"abcdefghijklmnopqrstuvwxyz", k=50_000))

    async def scenario() -> bytes:
        server = await any_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            transport, client = await any_loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), ssl=context, server_hostname=HOSTNAME
            )
            transport.write(payload)
            received = await client.receive(len(payload))
            transport.close()
            await client.lost
            return received

    assert run(any_loop, scenario()) == payload.upper()
    assert ShoutingSSLObject.writes >= 1


class SmallBufferReceiver(asyncio.BufferedProtocol):
    """A BufferedProtocol with a 1,000-byte buffer: TLS hands it plaintext in many pieces."""

    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.received = hashlib.sha256()
        self.count = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.expected = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.received.update(self.buffer[:nbytes])
        self.count += nbytes
        if self.count >= self.expected and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


def test_buffered_protocol_application(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    payload = os.urandom(1_000_000)

    async def scenario() -> None:
        server = await any_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        async with server:
            transport, client = await any_loop.create_connection(
                SmallBufferReceiver,
                *server.sockets[0].getsockname(),
                ssl=pki.client_context(),
                server_hostname=HOSTNAME,
            )
            client.expected = len(payload)
            transport.write(payload)
            await client.done
            assert client.count == len(payload)
            assert client.received.digest() == hashlib.sha256(payload).digest()
            transport.close()

    run(any_loop, scenario())


def test_write_after_close_is_dropped_quietly(any_loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def scenario() -> None:
        errors = record_errors(any_loop)
        server, transport, client, receiver = await tls_pair(any_loop, pki)
        async with server:
            transport.write(b"before")
            transport.close()
            transport.write(b"after")  # the standard library drops it (and warns past 5)
            await client.lost
            await receiver.lost
            assert bytes(receiver.data) == b"before"
        assert errors == []

    run(any_loop, scenario())


class ReplyThenClose(Recorder):
    """Answers the first data with a reply, then closes (or aborts) inside data_received."""

    abort = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(b"reply:" + data)
        if self.abort:
            self.transport.abort()
        else:
            self.transport.close()


class ReplyThenAbort(ReplyThenClose):
    abort = True


@pytest.mark.parametrize("server_protocol", [ReplyThenClose, ReplyThenAbort])
def test_closing_inside_data_received(
    any_loop: asyncio.AbstractEventLoop, pki: Pki, server_protocol: type[ReplyThenClose]
) -> None:
    """The read path goes on after data_received returns (pending writes, flow control):
    closing or aborting from inside it must end the connection the standard library's way."""

    async def scenario() -> tuple[bytes, str, list[str]]:
        errors = record_errors(any_loop)
        server, transport, client, receiver = await tls_pair(any_loop, pki, server_protocol=server_protocol)
        async with server:
            transport.write(b"ping")
            lost = await client.lost
            await receiver.lost
            return bytes(client.data), type(lost).__name__, [e["message"] for e in errors]

    received, lost, errors = run(any_loop, scenario())
    assert errors == []
    if server_protocol.abort:
        assert received in (b"", b"reply:ping")  # abort drops what is unsent
    else:
        assert (received, lost) == (b"reply:ping", "NoneType")
