"""Shared fixtures for ferroloop's behaviour tests.

The standard library's loop is the specification: tests that pin down an edge case run the
same snippet on `asyncio.new_event_loop()` (fixture `stdlib_loop`, or `any_loop` which runs a
test on both) and assert ferroloop does what asyncio does.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable, Iterator

import pytest

import ferroloop


@pytest.fixture
def loop() -> Iterator[ferroloop.Loop]:
    """A fresh ferroloop loop, closed (and unset as the current loop) afterwards."""
    event_loop = ferroloop.new_event_loop()
    try:
        yield event_loop
    finally:
        if event_loop.is_running():  # a failed test left it running: nothing sane to do
            event_loop.stop()
        else:
            event_loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def stdlib_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The standard library's loop, to compare ferroloop with."""
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.close()
        asyncio.set_event_loop(None)


LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def any_loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """Runs the test on the standard loop and on ferroloop: the same assertions hold for both."""
    event_loop = LOOP_FACTORIES[request.param]()
    try:
        yield event_loop
    finally:
        event_loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A non-blocking TCP listener on loopback, with room for many pending connections."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected non-blocking Unix stream sockets (`socket.socketpair()`)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected non-blocking TCP sockets over loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setblocking(False)
    server.setblocking(False)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


@pytest.fixture(autouse=True)
def _collect_garbage_between_tests() -> Iterator[None]:
    # Loops and sockets a test drops must not warn during a later, unrelated test.
    yield
    gc.collect()


@pytest.fixture(scope="module")
def pki() -> object:
    """A certificate authority and certificates for the TLS tests (`tls_helpers.Pki`)."""
    pytest.importorskip("trustme", reason="trustme (test extra) makes the certificates")
    from tls_helpers import make_pki

    return make_pki()
