"""get_write_buffer_limits reports what set_write_buffer_limits computed, as asyncio's
transports do: ints beyond 64 bits and floats come back as they were, not clamped or rounded,
while flow control compares the buffer size with them exactly."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

HUGE = 2**64 + 5
CASES: list[tuple[dict[str, Any], tuple[Any, Any]]] = [
    ({"high": HUGE}, (HUGE // 4, HUGE)),
    ({"low": 2**70}, (2**70, 2**72)),
    ({"low": 2**62}, (2**62, 2**64)),
    ({"high": 10**30, "low": 10**29}, (10**29, 10**30)),
    ({"high": 1.5}, (0.0, 1.5)),
    ({"high": 2**63 - 1}, ((2**63 - 1) // 4, 2**63 - 1)),
    ({}, (16384, 65536)),
]


async def open_transport(kind: str) -> tuple[asyncio.WriteTransport, list[str], Any]:
    loop = asyncio.get_running_loop()
    calls: list[str] = []

    class Flow(asyncio.Protocol):
        def pause_writing(self) -> None:
            calls.append("pause_writing")

    if kind == "socket":
        ours, peer = socket.socketpair()
        stream, _ = await loop.connect_accepted_socket(Flow, ours)
        return stream, calls, peer
    read_fd, write_fd = os.pipe()
    pipe, _ = await loop.connect_write_pipe(Flow, os.fdopen(write_fd, "wb", 0))
    return pipe, calls, os.fdopen(read_fd, "rb", 0)


@pytest.mark.parametrize("kind", ["socket", "pipe"])
@pytest.mark.parametrize(("limits", "reported"), CASES, ids=[str(c[0]) for c in CASES])
def test_limits_reported_as_set(
    any_loop: asyncio.AbstractEventLoop, kind: str, limits: dict[str, Any], reported: tuple[Any, Any]
) -> None:
    async def scenario() -> tuple[Any, list[str]]:
        transport, calls, peer = await open_transport(kind)
        transport.set_write_buffer_limits(**limits)
        got = transport.get_write_buffer_limits()
        transport.write(b"x" * (8 << 20))  # far more than the kernel takes; the peer never reads
        transport.abort()
        peer.close()
        return got, calls

    got, calls = any_loop.run_until_complete(scenario())
    assert got == reported
    assert [type(mark) for mark in got] == [type(mark) for mark in reported]
    # 8 MiB buffered pauses a writer only when the high mark is below that.
    assert calls == (["pause_writing"] if reported[1] < (8 << 20) else [])
