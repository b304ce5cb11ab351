"""DNS: getaddrinfo/getnameinfo give the socket module's answers and never block the loop."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops, outcome

pytestmark = pytest.mark.timeout(30)  # a lost wake-up must fail fast, not hang the suite

LOOKUP_DELAY = 0.2


def test_getaddrinfo_matches_the_socket_module(loop: ferroloop.Loop) -> None:
    for args, kwargs in [
        (("127.0.0.1", 80), {}),
        (("localhost", "http"), {"type": socket.SOCK_STREAM}),
        (("::1", 443), {"family": socket.AF_INET6}),
        ((None, 0), {"flags": socket.AI_PASSIVE, "proto": socket.IPPROTO_TCP}),
    ]:
        try:
            expected = socket.getaddrinfo(*args, **kwargs)
        except socket.gaierror:
            continue  # e.g. no IPv6 on this machine: nothing to compare
        assert loop.run_until_complete(loop.getaddrinfo(*args, **kwargs)) == expected


def test_getnameinfo_matches_the_socket_module(loop: ferroloop.Loop) -> None:
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    expected = socket.getnameinfo(("127.0.0.1", 8080), flags)
    assert loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 8080), flags)) == expected


def test_lookup_errors_match_the_stdlib() -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        run = event_loop.run_until_complete
        return [
            outcome(lambda: run(event_loop.getaddrinfo("not-an-ip", 80, flags=socket.AI_NUMERICHOST))),
            outcome(lambda: run(event_loop.getaddrinfo(123, 80))),
            outcome(lambda: run(event_loop.getaddrinfo("127.0.0.1", 80, family="inet"))),
            outcome(lambda: run(event_loop.getnameinfo("127.0.0.1"))),
            outcome(lambda: run(event_loop.getnameinfo(("127.0.0.1", "port")))),
        ]

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours[0] == ("raised", socket.gaierror)


def test_getaddrinfo_does_not_block_the_loop(loop: ferroloop.Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def slow_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        time.sleep(LOOKUP_DELAY)  # a slow resolver
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    ticks = loop.run_until_complete(count_ticks_during(loop.getaddrinfo("127.0.0.1", 80)))
    assert ticks >= 5


def test_getnameinfo_does_not_block_the_loop(loop: ferroloop.Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    real_getnameinfo = socket.getnameinfo

    def slow_getnameinfo(*args: Any, **kwargs: Any) -> Any:
        time.sleep(LOOKUP_DELAY)
        return real_getnameinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getnameinfo", slow_getnameinfo)
    lookup = loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    ticks = loop.run_until_complete(count_ticks_during(lookup))
    assert ticks >= 5


async def count_ticks_during(lookup: Any) -> int:
    """How many 10 ms ticks the loop ran while `lookup` was in progress."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.ensure_future(ticker())
    start = time.monotonic()
    await lookup
    assert time.monotonic() - start >= LOOKUP_DELAY
    tick_task.cancel()
    return ticks


def test_concurrent_lookups_run_in_parallel(loop: ferroloop.Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def slow_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        time.sleep(LOOKUP_DELAY)
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)

    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(loop.getaddrinfo("127.0.0.1", port) for port in range(4)))
        return time.monotonic() - start

    assert loop.run_until_complete(main()) < LOOKUP_DELAY * 3
