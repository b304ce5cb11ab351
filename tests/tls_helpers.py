"""What the TLS tests share: a certificate authority with certificates made per module
(trustme), a recording protocol, an echo protocol."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the certificates")

HOSTNAME = "localhost"  # the name in the server certificate (with 127.0.0.1)


@dataclass(frozen=True)
class Pki:
    authority: Any  # trustme.CA
    server: Any  # trustme.LeafCert for HOSTNAME and 127.0.0.1
    client: Any  # trustme.LeafCert for mutual TLS
    inner: Any  # trustme.LeafCert for "inner.example", from another authority
    inner_authority: Any

    def server_context(self, *, alpn: list[str] | None = None, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        if alpn:
            context.set_alpn_protocols(alpn)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.authority.configure_trust(context)
        return context

    def client_context(self, *, alpn: list[str] | None = None, with_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.authority.configure_trust(context)
        if alpn:
            context.set_alpn_protocols(alpn)
        if with_cert:
            self.client.configure_cert(context)
        return context


def make_pki() -> Pki:
    # ECDSA keys: handshakes are several times cheaper than with RSA, which the load tests feel.
    ecdsa = trustme.KeyType.ECDSA
    authority = trustme.CA(key_type=ecdsa)
    inner_authority = trustme.CA(key_type=ecdsa)
    return Pki(
        authority=authority,
        server=authority.issue_cert(HOSTNAME, "127.0.0.1", key_type=ecdsa),
        client=authority.issue_cert("client.example", key_type=ecdsa),
        inner=inner_authority.issue_cert("inner.example", key_type=ecdsa),
        inner_authority=inner_authority,
    )


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, timeout))


def record_errors(event_loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """What reaches the loop's exception handler (the standard loop reports nothing for
    the TLS failures below: they are OSErrors, logged only in debug mode)."""
    errors: list[dict[str, Any]] = []
    # Debug mode (python -X dev) reports more of them, on both loops: not what is tested.
    event_loop.set_debug(False)
    event_loop.set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


class Recorder(asyncio.Protocol):
    """Records protocol calls; `lost` resolves with connection_lost's argument."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost_with: list[BaseException | None] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self.data_arrived = asyncio.Event()
        self.made = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.made.set()

    def data_received(self, data: bytes) -> None:
        self.calls.append("data_received")
        self.data += data
        self.data_arrived.set()

    def eof_received(self) -> None:
        self.calls.append("eof_received")

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")
        self.paused.set()

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        self.lost_with.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)

    async def receive(self, size: int) -> bytes:
        while len(self.data) < size:
            self.data_arrived.clear()
            await self.data_arrived.wait()
        return bytes(self.data)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
