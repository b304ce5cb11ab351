"""Bad input everywhere: every public loop, transport, pipe and server method called with wrong
types, out-of-range values, closed or blocking sockets and on closed loops, on the standard
loop and on ferroloop in the same test. Both must answer alike (the same outcome: a result of
the same type or the same exception type), and nothing may surface as a Rust panic."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import ferroloop

pytestmark = pytest.mark.timeout(60)

HUGE = 2**70


def nothing(*args: Any) -> None:
    pass


async def coro() -> None:
    pass


@dataclass
class Env:
    """What a case can act on: a loop, a connected transport and its peer, a server, a pipe
    transport pair, spare sockets. Built fresh for each case on each loop."""

    loop: asyncio.AbstractEventLoop
    transport: Any = None
    peer: socket.socket | None = None
    server: Any = None
    read_pipe: Any = None
    write_pipe: Any = None
    closed_sock: socket.socket | None = None
    blocking_sock: socket.socket | None = None
    nonblocking_sock: socket.socket | None = None
    cleanup: list[Callable[[], Any]] = field(default_factory=list)


async def build(env: Env) -> None:
    loop = env.loop
    env.server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    listener = socket.create_server(("127.0.0.1", 0))
    env.transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
    env.peer, _ = listener.accept()
    listener.close()
    r, w = os.pipe()
    env.read_pipe, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb", 0))
    env.write_pipe, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, os.fdopen(w, "wb", 0))
    env.closed_sock = socket.socket()
    env.closed_sock.close()
    a, b = socket.socketpair()
    env.blocking_sock = a
    env.nonblocking_sock = b
    b.setblocking(False)
    env.cleanup += [a.close, b.close, env.peer.close]


async def teardown(env: Env) -> None:
    for transport in (env.transport, env.read_pipe, env.write_pipe):
        # Only if still open: abort() on a write pipe whose connection_lost has run raises
        # AttributeError on the standard loop (its _loop is None by then).
        if transport is not None and not transport.is_closing():
            transport.abort() if hasattr(transport, "abort") else transport.close()
    if env.server is not None:
        env.server.close()
        await env.server.wait_closed()
    await asyncio.sleep(0.01)
    for action in env.cleanup:
        action()


def closed_loop(env: Env) -> asyncio.AbstractEventLoop:
    """A second loop of the same kind, already closed."""
    other = type(env.loop)() if not isinstance(env.loop, ferroloop.Loop) else ferroloop.new_event_loop()
    other.close()
    return other


# (id, action). An action takes the Env; what it returns, if awaitable, is awaited (with a
# timeout) on the env's loop.
CASES: list[tuple[str, Callable[[Env], Any]]] = [
    # -- scheduling callbacks --
    ("call_soon non-callable", lambda e: e.loop.call_soon(1)),
    ("call_soon None", lambda e: e.loop.call_soon(None)),
    ("call_soon context not a Context", lambda e: e.loop.call_soon(nothing, context=1)),
    ("call_soon no args", lambda e: e.loop.call_soon()),
    ("call_soon unknown keyword", lambda e: e.loop.call_soon(nothing, when=1)),
    ("call_soon_threadsafe None", lambda e: e.loop.call_soon_threadsafe(None)),
    ("call_soon_threadsafe non-callable", lambda e: e.loop.call_soon_threadsafe("x")),
    ("call_later None delay", lambda e: e.loop.call_later(None, nothing)),
    ("call_later str delay", lambda e: e.loop.call_later("1", nothing)),
    ("call_later nan", lambda e: e.loop.call_later(float("nan"), nothing)),
    ("call_later inf", lambda e: e.loop.call_later(float("inf"), nothing)),
    ("call_later -inf", lambda e: e.loop.call_later(float("-inf"), nothing)),
    ("call_later huge int", lambda e: e.loop.call_later(HUGE, nothing)),
    ("call_later 10**400", lambda e: e.loop.call_later(10**400, nothing)),
    ("call_later non-callable", lambda e: e.loop.call_later(1, 5)),
    ("call_later missing callback", lambda e: e.loop.call_later(1)),
    ("call_at None", lambda e: e.loop.call_at(None, nothing)),
    ("call_at list", lambda e: e.loop.call_at([], nothing)),
    ("call_at nan", lambda e: e.loop.call_at(float("nan"), nothing)),
    ("call_at -huge", lambda e: e.loop.call_at(-HUGE, nothing)),
    ("call_at complex", lambda e: e.loop.call_at(1j, nothing)),
    # -- tasks and futures --
    ("create_task non-coroutine", lambda e: e.loop.create_task(1)),
    ("create_task None", lambda e: e.loop.create_task(None)),
    ("create_task function", lambda e: e.loop.create_task(coro)),
    ("create_task bad name type", lambda e: e.loop.create_task(coro(), name=1)),
    # (in a list: the task never runs a step, so awaiting it would never end, on both loops)
    ("create_task bad context", lambda e: [e.loop.create_task(coro(), context=1)]),
    ("run_until_complete None", lambda e: e.loop.run_until_complete(None)),
    ("run_until_complete int", lambda e: e.loop.run_until_complete(1)),
    ("set_task_factory non-callable", lambda e: e.loop.set_task_factory(1)),
    ("set_exception_handler non-callable", lambda e: e.loop.set_exception_handler(1)),
    ("call_exception_handler not a dict", lambda e: e.loop.call_exception_handler(1)),
    ("set_default_executor non-executor", lambda e: e.loop.set_default_executor(1)),
    ("run_in_executor non-callable", lambda e: e.loop.run_in_executor(None, 1)),
    # -- fd watchers --
    ("add_reader -1", lambda e: e.loop.add_reader(-1, nothing)),
    ("add_reader str", lambda e: e.loop.add_reader("x", nothing)),
    ("add_reader None", lambda e: e.loop.add_reader(None, nothing)),
    ("add_reader float", lambda e: e.loop.add_reader(1.5, nothing)),
    ("add_reader huge", lambda e: e.loop.add_reader(HUGE, nothing)),
    ("add_reader 2**31", lambda e: e.loop.add_reader(2**31, nothing)),
    ("add_reader unopened fd", lambda e: e.loop.add_reader(1_000_000, nothing)),
    ("add_reader object", lambda e: e.loop.add_reader(object(), nothing)),
    ("add_reader fileno raises", lambda e: e.loop.add_reader(BadFileno(), nothing)),
    ("add_reader fileno returns str", lambda e: e.loop.add_reader(StrFileno(), nothing)),
    ("add_reader closed socket", lambda e: e.loop.add_reader(e.closed_sock, nothing)),
    ("add_reader regular file", lambda e: e.loop.add_reader(open(os.devnull), nothing)),
    ("add_reader transport fd", lambda e: e.loop.add_reader(e.transport.get_extra_info("socket").fileno(), nothing)),
    ("add_reader non-callable", lambda e: e.loop.add_reader(e.nonblocking_sock, None)),
    ("add_writer -1", lambda e: e.loop.add_writer(-1, nothing)),
    ("add_writer huge", lambda e: e.loop.add_writer(HUGE, nothing)),
    ("add_writer unopened fd", lambda e: e.loop.add_writer(1_000_000, nothing)),
    ("add_writer closed socket", lambda e: e.loop.add_writer(e.closed_sock, nothing)),
    ("remove_reader -1", lambda e: e.loop.remove_reader(-1)),
    ("remove_reader str", lambda e: e.loop.remove_reader("x")),
    ("remove_reader huge", lambda e: e.loop.remove_reader(HUGE)),
    ("remove_reader unwatched", lambda e: e.loop.remove_reader(e.nonblocking_sock)),
    ("remove_reader closed socket", lambda e: e.loop.remove_reader(e.closed_sock)),
    ("remove_writer object", lambda e: e.loop.remove_writer(object())),
    ("remove_writer unopened fd", lambda e: e.loop.remove_writer(1_000_000)),
    # -- sock_* --
    ("sock_recv negative", lambda e: e.loop.sock_recv(e.nonblocking_sock, -1)),
    ("sock_recv str size", lambda e: e.loop.sock_recv(e.nonblocking_sock, "x")),
    ("sock_recv float size", lambda e: e.loop.sock_recv(e.nonblocking_sock, 1.5)),
    ("sock_recv huge size", lambda e: e.loop.sock_recv(e.nonblocking_sock, HUGE)),
    ("sock_recv zero", lambda e: e.loop.sock_recv(e.nonblocking_sock, 0)),
    ("sock_recv closed socket", lambda e: e.loop.sock_recv(e.closed_sock, 10)),
    ("sock_recv not a socket", lambda e: e.loop.sock_recv(5, 10)),
    ("sock_recv None", lambda e: e.loop.sock_recv(None, 10)),
    ("sock_recv transport socket", lambda e: e.loop.sock_recv(e.transport.get_extra_info("socket")._sock, 10)),
    ("sock_recv_into bytes", lambda e: e.loop.sock_recv_into(e.nonblocking_sock, b"xx")),
    ("sock_recv_into closed", lambda e: e.loop.sock_recv_into(e.closed_sock, bytearray(4))),
    ("sock_sendall str", lambda e: e.loop.sock_sendall(e.nonblocking_sock, "x")),
    ("sock_sendall closed", lambda e: e.loop.sock_sendall(e.closed_sock, b"x")),
    ("sock_sendall None", lambda e: e.loop.sock_sendall(e.nonblocking_sock, None)),
    ("sock_connect closed", lambda e: e.loop.sock_connect(e.closed_sock, ("127.0.0.1", 1))),
    ("sock_connect bad address", lambda e: e.loop.sock_connect(socket.socket(), "nope")),
    ("sock_connect port out of range", lambda e: e.loop.sock_connect(socket.socket(), ("127.0.0.1", 70000))),
    ("sock_accept closed", lambda e: e.loop.sock_accept(e.closed_sock)),
    ("sock_accept not listening", lambda e: e.loop.sock_accept(e.nonblocking_sock)),
    ("sock_sendfile text file", lambda e: e.loop.sock_sendfile(e.nonblocking_sock, open(os.devnull))),
    # -- connections and servers with odd sockets --
    ("create_connection closed sock", lambda e: e.loop.create_connection(asyncio.Protocol, sock=e.closed_sock)),
    (
        "create_connection sock and host",
        lambda e: e.loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, sock=e.nonblocking_sock),
    ),
    ("create_connection nothing", lambda e: e.loop.create_connection(asyncio.Protocol)),
    ("create_connection bad port", lambda e: e.loop.create_connection(asyncio.Protocol, "127.0.0.1", 70000)),
    (
        "create_connection ssl not a context",
        lambda e: e.loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, ssl=1),
    ),
    ("create_server closed sock", lambda e: e.loop.create_server(asyncio.Protocol, sock=e.closed_sock)),
    ("create_server bad backlog", lambda e: e.loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog="x")),
    ("connect_accepted_socket closed", lambda e: e.loop.connect_accepted_socket(asyncio.Protocol, e.closed_sock)),
    ("connect_read_pipe regular file", lambda e: e.loop.connect_read_pipe(asyncio.Protocol, open(os.devnull, "rb"))),
    ("connect_write_pipe closed file", lambda e: e.loop.connect_write_pipe(asyncio.Protocol, closed_file())),
    ("add_signal_handler bad signal", lambda e: e.loop.add_signal_handler(0, nothing)),
    ("add_signal_handler huge signal", lambda e: e.loop.add_signal_handler(HUGE, nothing)),
    ("add_signal_handler str", lambda e: e.loop.add_signal_handler("SIGINT", nothing)),
    ("remove_signal_handler unset", lambda e: e.loop.remove_signal_handler(10_000)),
    # -- stream transport --
    ("write str", lambda e: e.transport.write("x")),
    ("write None", lambda e: e.transport.write(None)),
    ("write int", lambda e: e.transport.write(5)),
    ("write list", lambda e: e.transport.write([b"x"])),
    ("write array", lambda e: e.transport.write(__import__("array").array("i", [1, 2]))),
    ("write empty", lambda e: e.transport.write(b"")),
    ("write released memoryview", lambda e: e.transport.write(released_view())),
    ("write non-contiguous memoryview", lambda e: e.transport.write(memoryview(b"abcdef")[::2])),
    ("writelines str", lambda e: e.transport.writelines("abc")),
    ("writelines None", lambda e: e.transport.writelines(None)),
    ("writelines int", lambda e: e.transport.writelines(5)),
    ("writelines list of str", lambda e: e.transport.writelines(["x"])),
    ("writelines raising iterator", lambda e: e.transport.writelines(raising_iter())),
    ("writelines mixed", lambda e: e.transport.writelines([b"a", bytearray(b"b"), memoryview(b"c")])),
    ("write after write_eof", lambda e: (e.transport.write_eof(), e.transport.write(b"x"))),
    ("writelines after write_eof", lambda e: (e.transport.write_eof(), e.transport.writelines([b"x"]))),
    ("write_eof twice", lambda e: (e.transport.write_eof(), e.transport.write_eof())),
    ("write after close", lambda e: (e.transport.close(), e.transport.write(b"x"))),
    ("write after abort", lambda e: (e.transport.abort(), e.transport.write(b"x"))),
    ("write_eof after close", lambda e: (e.transport.close(), e.transport.write_eof())),
    ("close twice", lambda e: (e.transport.close(), e.transport.close())),
    ("abort twice", lambda e: (e.transport.abort(), e.transport.abort())),
    ("pause_reading after close", lambda e: (e.transport.close(), e.transport.pause_reading())),
    ("resume_reading when not paused", lambda e: e.transport.resume_reading()),
    ("pause_reading twice", lambda e: (e.transport.pause_reading(), e.transport.pause_reading())),
    ("set_protocol None", lambda e: e.transport.set_protocol(None)),
    ("set_protocol int", lambda e: e.transport.set_protocol(1)),
    ("get_extra_info unknown", lambda e: e.transport.get_extra_info("nope", 7)),
    ("get_extra_info unhashable", lambda e: e.transport.get_extra_info([])),
    ("set_write_buffer_limits str", lambda e: e.transport.set_write_buffer_limits("x")),
    ("set_write_buffer_limits low > high", lambda e: e.transport.set_write_buffer_limits(1, 2)),
    ("set_write_buffer_limits negative", lambda e: e.transport.set_write_buffer_limits(-1)),
    ("set_write_buffer_limits huge", lambda e: e.transport.set_write_buffer_limits(HUGE)),
    ("set_write_buffer_limits too many", lambda e: e.transport.set_write_buffer_limits(1, 2, 3)),
    (
        "write after the app closed the socket",
        lambda e: (e.transport.get_extra_info("socket")._sock.close(), e.transport.write(b"x")),
    ),
    ("write after the peer closed", lambda e: peer_gone_then_write(e)),
    # -- pipe transports --
    ("pipe write str", lambda e: e.write_pipe.write("x")),
    ("pipe write None", lambda e: e.write_pipe.write(None)),
    ("pipe writelines list of int", lambda e: e.write_pipe.writelines([1])),
    ("pipe write after close", lambda e: (e.write_pipe.close(), e.write_pipe.write(b"x"))),
    ("pipe write_eof twice", lambda e: (e.write_pipe.write_eof(), e.write_pipe.write_eof())),
    ("pipe write after write_eof", lambda e: (e.write_pipe.write_eof(), e.write_pipe.write(b"x"))),
    ("pipe set_write_buffer_limits negative", lambda e: e.write_pipe.set_write_buffer_limits(-5)),
    ("pipe set_write_buffer_limits huge low", lambda e: e.write_pipe.set_write_buffer_limits(None, HUGE)),
    ("read pipe pause twice", lambda e: (e.read_pipe.pause_reading(), e.read_pipe.pause_reading())),
    ("read pipe resume after close", lambda e: (e.read_pipe.close(), e.read_pipe.resume_reading())),
    ("read pipe set_protocol int", lambda e: e.read_pipe.set_protocol(1)),
    # -- servers --
    ("server close twice", lambda e: (e.server.close(), e.server.close())),
    ("server start_serving after close", lambda e: (e.server.close(), e.server.start_serving())),
    ("server serve_forever after close", lambda e: (e.server.close(), e.server.serve_forever())),
    ("server get_loop", lambda e: e.server.get_loop() is e.loop),
    # -- a closed loop --
    ("closed call_soon", lambda e: closed_loop(e).call_soon(nothing)),
    ("closed call_soon_threadsafe", lambda e: closed_loop(e).call_soon_threadsafe(nothing)),
    ("closed call_later", lambda e: closed_loop(e).call_later(1, nothing)),
    ("closed call_at", lambda e: closed_loop(e).call_at(1, nothing)),
    ("closed create_task", lambda e: closed_loop(e).create_task(coro())),
    ("closed create_future", lambda e: closed_loop(e).create_future()),
    ("closed run_forever", lambda e: closed_loop(e).run_forever()),
    ("closed run_until_complete", lambda e: closed_loop(e).run_until_complete(coro())),
    ("closed add_reader", lambda e: closed_loop(e).add_reader(e.nonblocking_sock, nothing)),
    ("closed add_writer", lambda e: closed_loop(e).add_writer(e.nonblocking_sock, nothing)),
    ("closed remove_reader", lambda e: closed_loop(e).remove_reader(e.nonblocking_sock)),
    ("closed remove_writer", lambda e: closed_loop(e).remove_writer(e.nonblocking_sock)),
    ("closed add_signal_handler", lambda e: closed_loop(e).add_signal_handler(10, nothing)),
    ("closed close", lambda e: closed_loop(e).close()),
    ("closed stop", lambda e: closed_loop(e).stop()),
    ("closed time", lambda e: closed_loop(e).time()),
    ("closed is_running", lambda e: closed_loop(e).is_running()),
    ("closed set_debug", lambda e: closed_loop(e).set_debug(True)),
    ("closed run_in_executor", lambda e: closed_loop(e).run_in_executor(None, nothing)),
    ("closed shutdown_asyncgens", lambda e: closed_loop(e).shutdown_asyncgens()),
    ("closed default_exception_handler", lambda e: closed_loop(e).default_exception_handler({"message": "m"})),
    # -- the running loop, re-entered --
    ("run_forever inside the running loop", lambda e: e.loop.run_forever()),
    ("run_until_complete inside the running loop", lambda e: e.loop.run_until_complete(coro())),
    ("close while running", lambda e: e.loop.close()),
]


class BadFileno:
    def fileno(self) -> int:
        raise OSError("no fileno")


class StrFileno:
    def fileno(self) -> str:
        return "3"


def raising_iter() -> Iterator[bytes]:
    yield b"a"
    raise ZeroDivisionError


def released_view() -> memoryview:
    view = memoryview(b"abc")
    view.release()
    return view


def closed_file() -> Any:
    r, w = os.pipe()
    os.close(r)
    f = os.fdopen(w, "wb", 0)
    f.close()
    return f


async def peer_gone_then_write(env: Env) -> None:
    assert env.peer is not None
    env.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    env.peer.close()  # RST
    await asyncio.sleep(0.02)
    for _ in range(3):
        env.transport.write(b"x" * 1000)
        await asyncio.sleep(0.01)


def outcome_on(factory: Callable[[], asyncio.AbstractEventLoop], action: Callable[[Env], Any]) -> Any:
    loop = factory()
    env = Env(loop)
    handler_calls: list[type] = []
    # Reports with an exception only: "Task was destroyed but it is pending!" depends on when
    # the garbage collector runs, not on the loop.
    loop.set_exception_handler(lambda _loop, ctx: "exception" in ctx and handler_calls.append(type(ctx["exception"])))

    async def scenario() -> Any:
        await build(env)
        try:
            result = action(env)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, 2)
            elif isinstance(result, tuple):
                for item in result:  # a tuple of steps: await the steps that are coroutines
                    if inspect.isawaitable(item):
                        await asyncio.wait_for(item, 2)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what is compared
            text = f"{type(exc).__name__}: {exc}"
            assert "panick" not in text.lower() and "RefCell" not in text, text
            return ("raised", type(exc))
        finally:
            await asyncio.sleep(0.01)
            await teardown(env)
        # `__class__`: on 3.14+ a thread-safe handle is, to isinstance, events._ThreadSafeHandle
        return ("ok", result.__class__.__name__)

    try:
        return (loop.run_until_complete(scenario()), sorted({t.__name__ for t in handler_calls}))
    finally:
        if not loop.is_closed():
            loop.close()


# Where the standard loop's answer is its own bug, ferroloop's answer is pinned instead.
ASYNCIO_BUGS: dict[str, Any] = {
    # asyncio accepts any `when`, then its next iteration fails comparing it with a float
    # (TypeError out of run_until_complete, the loop unusable); ferroloop refuses it up front.
    "call_at list": (("raised", TypeError), []),
    "call_at complex": (("raised", TypeError), []),
    # A NaN `when` is accepted by every release; 3.11's loop then treats the timer as due
    # (max(0, nan) is 0), as ferroloop does, while later releases hand NaN to the selector as
    # its timeout and their next iteration raises ValueError, the loop unusable.
    "call_later nan": (("ok", "TimerHandle"), []),
    "call_at nan": (("ok", "TimerHandle"), []),
}


@pytest.mark.parametrize("name,action", CASES, ids=[name for name, _ in CASES])
def test_bad_input_gets_the_standard_loops_answer(name: str, action: Callable[[Env], Any]) -> None:
    actual = outcome_on(ferroloop.new_event_loop, action)
    if name in ASYNCIO_BUGS:
        assert actual == ASYNCIO_BUGS[name]
        return
    expected = outcome_on(asyncio.new_event_loop, action)
    assert actual == expected
