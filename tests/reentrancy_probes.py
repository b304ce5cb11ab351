"""Re-entrancy probes, one child interpreter per loop: Python code that re-enters a transport or
the loop while ferroloop's Rust is in the middle of an operation on it (closing a transport
from inside its own write path, comparisons and iterators that write and close, protocols that
abort from their callbacks, a callback that runs or closes its own loop).

`python reentrancy_probes.py LOOP` prints one JSON object: per probe, the protocol's callbacks,
what the provoking calls raised and what reached the exception handler, by type name. A Rust
panic would show as `PanicException`; an abort as the child's death by a signal.
tests/test_reentrancy.py compares the two loops.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import ferroloop

Probe = Callable[[asyncio.Transport, "Probing"], Any]


def describe(exc: BaseException | None) -> Any:
    return None if exc is None else type(exc).__name__


class Probing(asyncio.Protocol):
    """Records its callbacks; `hooks` maps a callback name to what it does to the transport."""

    def __init__(self, hooks: dict[str, Callable[[asyncio.Transport], Any]]) -> None:
        self.hooks = hooks
        self.calls: list[Any] = []
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def _run(self, name: str) -> None:
        self.calls.append(name)
        hook = self.hooks.get(name)
        if hook is not None and self.transport is not None:
            try:
                hook(self.transport)
            except Exception as exc:  # noqa: BLE001 - what the hook raised is observed
                self.calls.append(["hook raised", describe(exc)])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._run("connection_made")

    def data_received(self, data: bytes) -> None:
        self._run("data_received")

    def eof_received(self) -> None:
        self._run("eof_received")

    def pause_writing(self) -> None:
        self._run("pause_writing")

    def resume_writing(self) -> None:
        self._run("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._run("connection_lost")
        self.calls.append(["lost with", describe(exc)])
        if not self.lost.done():
            self.lost.set_result(None)


class BufferedProbing(Probing, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint: int) -> bytearray:
        self._run("get_buffer")
        return bytearray(1024)

    def buffer_updated(self, nbytes: int) -> None:
        self._run("buffer_updated")


class ReentrantMark(int):
    """A water mark whose comparison writes to and closes the transport: it runs inside
    set_write_buffer_limits' `high >= low` check, on both loops."""

    transport: asyncio.Transport

    def __ge__(self, other: object) -> bool:
        self.transport.write(b"from __ge__")
        self.transport.close()
        return int(self) >= other  # type: ignore[operator]


def reentrant_limits(transport: asyncio.Transport) -> Any:
    high = ReentrantMark(4096)
    high.transport = transport
    transport.set_write_buffer_limits(high=high, low=1024)
    return transport.get_write_buffer_limits()


def closing_iterator(transport: asyncio.Transport) -> Any:
    yield b"first "
    transport.abort()
    yield b"second"


BIG = b"x" * (8 << 20)


def probes() -> dict[str, tuple[dict[str, Any], Probe, bool]]:
    """name -> (protocol hooks, what the test does with the transport, buffered protocol?)."""

    def fill(t: asyncio.Transport, _: Probing) -> None:
        t.set_write_buffer_limits(high=1024)
        t.write(BIG)

    return {
        "abort_in_pause_writing": ({"pause_writing": lambda t: t.abort()}, fill, False),
        "write_in_pause_writing": ({"pause_writing": lambda t: t.write(b"more")}, fill, False),
        "limits_in_pause_writing": ({"pause_writing": lambda t: t.set_write_buffer_limits(high=1 << 30)}, fill, False),
        "close_in_data_received": (
            {"data_received": lambda t: (t.close(), t.write(b"late"), t.pause_reading())},
            lambda t, p: None,
            False,
        ),
        "close_in_get_buffer": ({"get_buffer": lambda t: t.close()}, lambda t, p: None, True),
        "abort_in_eof_received": ({"eof_received": lambda t: t.abort()}, lambda t, p: None, False),
        "write_in_connection_lost": (
            {"connection_lost": lambda t: (t.write(b"after"), t.close(), t.abort())},
            lambda t, p: t.abort(),
            False,
        ),
        "comparison_writes_and_closes": ({}, lambda t, p: reentrant_limits(t), False),
        "iterator_aborts_in_writelines": ({}, lambda t, p: t.writelines(closing_iterator(t)), False),
        "set_protocol_in_data_received": (
            {"data_received": lambda t: (t.set_protocol(Probing({})), t.close())},
            lambda t, p: None,
            False,
        ),
    }


async def run_probe(hooks: dict[str, Any], act: Probe, buffered: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    factory = BufferedProbing if buffered else Probing
    transport, protocol = await loop.connect_accepted_socket(lambda: factory(hooks), ours)
    outcome: dict[str, Any] = {}
    try:
        returned = act(transport, protocol)
        outcome["act"] = "returned" if returned is None else repr(returned)
    except Exception as exc:  # noqa: BLE001 - what the call raised is observed
        outcome["act"] = describe(exc)
    peer.send(b"peer data")
    peer.shutdown(socket.SHUT_WR)
    try:
        await asyncio.wait_for(protocol.lost, 0.5)
    except TimeoutError:  # a replaced protocol, or a transport left open: end it
        outcome["still_open"] = True
        transport.abort()
    await asyncio.sleep(0.05)
    outcome["calls"] = protocol.calls
    outcome["closing"] = transport.is_closing()
    peer.close()
    return outcome


async def loop_reentry() -> dict[str, Any]:
    """A callback that runs, run_until_completes or closes its own running loop."""
    loop = asyncio.get_running_loop()
    outcome: dict[str, Any] = {}
    done = loop.create_future()

    def callback() -> None:
        for name, call in (
            ("run_forever", loop.run_forever),
            ("run_until_complete", lambda: loop.run_until_complete(done)),
            ("close", loop.close),
        ):
            try:
                call()
                outcome[name] = "returned"
            except Exception as exc:  # noqa: BLE001 - what the call raised is observed
                outcome[name] = describe(exc)
        done.set_result(None)

    loop.call_soon(callback)
    await done
    return outcome


async def finalizers_reenter() -> list[str]:
    """Handles hold the last reference to an object whose `__del__` schedules callbacks and
    adds and removes a reader: released when a handle is cancelled, when many cancelled timers
    are swept, after a handle ran, and when a reader is removed or replaced — each while the
    loop may be in the middle of its own bookkeeping."""
    loop = asyncio.get_running_loop()
    log: list[str] = []

    class Reenters:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def __del__(self) -> None:
            try:
                loop.call_soon(log.append, f"soon from {self.tag}")
                loop.call_later(0.001, log.append, f"later from {self.tag}")
                r, w = socket.socketpair()
                loop.add_reader(r.fileno(), lambda: None)
                loop.remove_reader(r.fileno())
                r.close()
                w.close()
            except Exception as exc:  # noqa: BLE001 - what re-entering raised is observed
                log.append(f"{self.tag} raised {describe(exc)}")

    def noop(*_: Any) -> None:
        pass

    loop.call_soon(noop, Reenters("cancelled handle")).cancel()
    loop.call_later(10, noop, Reenters("cancelled timer")).cancel()
    await asyncio.sleep(0.01)
    swept = [loop.call_later(100 + i, noop, Reenters(f"swept {i}")) for i in range(300)]
    for handle in swept:
        handle.cancel()
    del swept, handle
    await asyncio.sleep(0.01)
    loop.call_soon(noop, Reenters("ran"))
    loop.call_later(0.001, noop, Reenters("timer ran"))
    await asyncio.sleep(0.02)
    r, w = socket.socketpair()
    loop.add_reader(r.fileno(), noop, Reenters("removed reader"))
    loop.remove_reader(r.fileno())
    loop.add_reader(r.fileno(), noop, Reenters("replaced reader"))
    loop.add_reader(r.fileno(), noop, Reenters("replacing reader"))
    loop.remove_reader(r.fileno())
    r.close()
    w.close()
    await asyncio.sleep(0.05)
    return sorted(log)


def scenarios() -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
    transport_probes = {
        name: functools.partial(run_probe, hooks, act, buffered) for name, (hooks, act, buffered) in probes().items()
    }
    return {**transport_probes, "loop_reentry": loop_reentry, "finalizers_reenter": finalizers_reenter}


def record(handled: list[Any], probe: str, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    handled.append([probe, context.get("message"), describe(context.get("exception"))])


def run(loop_name: str) -> None:
    """Each probe on a fresh loop: what one leaves registered (3.12+'s own writelines re-adds
    a writer after an abort from its iterator) must not decide the next one's outcome."""
    results: dict[str, Any] = {}
    handled: list[Any] = []
    for name, scenario in scenarios().items():
        loop = ferroloop.new_event_loop() if loop_name == "ferroloop" else asyncio.new_event_loop()
        loop.set_exception_handler(functools.partial(record, handled, name))
        try:
            results[name] = loop.run_until_complete(asyncio.wait_for(scenario(), 20))
        finally:
            loop.close()
    results["handled"] = handled
    print(json.dumps(results))


if __name__ == "__main__":
    run(sys.argv[1])
