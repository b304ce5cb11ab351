"""Differential fuzzing of stream transports: the same random sequence of operations is played
against a connection on ferroloop and on asyncio's SelectorEventLoop, over real loopback
sockets, and everything a program can observe is compared after every step.

Operations: the transport's own methods (write, writelines, write_eof, close, abort,
pause_reading, resume_reading, set_write_buffer_limits, set_protocol to a Protocol or a
BufferedProtocol), the peer's (send, half-close, reset, slow reads), changes of what the
protocol does from inside its callbacks (write, close, abort, pause, write_eof, raise; a
get_buffer that returns a one-byte, empty or read-only buffer, or raises), batches of
call_soon / call_soon_threadsafe / call_later callbacks that cancel each other or themselves,
and sock_recv cancelled mid-way. Observed: the protocol's callbacks in order with their
arguments (consecutive data_received calls merged, since chunking is the kernel's business),
what each operation returned or raised, the exception handler's reports, is_closing(),
is_reading(), the write buffer size, and the bytes the peer received.

Both worlds run in one thread: each operation is applied to one world's loop with
run_until_complete, then to the other's, so the two never interleave.

Used by tests/test_transport_fuzz.py (fixed seeds, small budget) and scripts/fuzz-transports
(long runs). A divergence is reported with its seed and the operations up to it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Small fixed socket buffers: the kernel then takes the same number of bytes in both worlds
# (autotuning would make "how much was buffered" depend on timing).
SNDBUF = 16 * 1024
RCVBUF = 16 * 1024

Op = tuple[Any, ...]

REACTIONS: dict[str, tuple[str, ...]] = {
    "connection_made": ("none", "write", "close", "pause_reading"),
    "data_received": (
        "none",
        "none",
        "none",
        "echo",
        "close",
        "abort",
        "pause_reading",
        "raise",
        "write_eof",
        "writelines",
        "limits",
    ),
    "eof_received": ("none", "keep_open", "raise", "close", "write"),
    "pause_writing": ("none", "none", "abort", "close", "raise", "write"),
    "resume_writing": ("none", "write", "raise"),
    "connection_lost": ("none", "write", "close", "raise"),
    # BufferedProtocol only (after a set_protocol to one): what get_buffer returns.
    "get_buffer": ("normal", "normal", "tiny", "empty", "readonly", "raise"),
}


class Boom(Exception):
    """What a protocol raises from a callback when told to."""


class FuzzProtocol(asyncio.Protocol):
    def __init__(self, world: World) -> None:
        self.world = world
        self.transport: Any = None

    def _react(self, callback: str, payload: bytes = b"") -> Any:
        reaction = self.world.reactions[callback]
        t = self.transport
        if reaction == "write" or reaction == "echo":
            t.write(payload or b"w" * 100)
        elif reaction == "writelines":
            t.writelines([b"a" * 10, bytearray(b"b" * 20), memoryview(payload or b"c")])
        elif reaction == "close":
            t.close()
        elif reaction == "abort":
            t.abort()
        elif reaction == "pause_reading":
            t.pause_reading()
        elif reaction == "write_eof":
            t.write_eof()
        elif reaction == "limits":
            t.set_write_buffer_limits(high=100, low=10)
        elif reaction == "raise":
            raise Boom(callback)
        elif reaction == "keep_open":
            return True
        return None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.world.record("connection_made")
        self._react("connection_made")

    def data_received(self, data: bytes) -> None:
        self.world.record_data(data)
        self._react("data_received", data[:200])

    def eof_received(self) -> bool | None:
        self.world.record("eof_received")
        return self._react("eof_received")

    def pause_writing(self) -> None:
        self.world.record("pause_writing")
        self._react("pause_writing")

    def resume_writing(self) -> None:
        self.world.record("resume_writing")
        self._react("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.world.record("connection_lost", describe(exc))
        self._react("connection_lost")


class FuzzBufferedProtocol(FuzzProtocol, asyncio.BufferedProtocol):
    """The same reactions, reading through get_buffer/buffer_updated."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.buffer = bytearray(4096)

    def get_buffer(self, sizehint: int) -> Any:
        reaction = self.world.reactions["get_buffer"]
        if reaction == "raise":
            raise Boom("get_buffer")
        self.buffer = {
            "normal": lambda: bytearray(4096),
            "tiny": lambda: bytearray(1),
            "empty": lambda: bytearray(0),
            "readonly": lambda: bytes(100),
        }[reaction]()
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.world.record_data(bytes(self.buffer[:nbytes]))
        self._react("data_received", bytes(self.buffer[: min(nbytes, 200)]))


def describe(exc: BaseException | None) -> Any:
    if exc is None:
        return None
    return (type(exc).__name__, getattr(exc, "errno", None), str(exc) if isinstance(exc, Boom) else None)


def normalize_message(message: str) -> str:
    # Handles' reprs differ between the loops (class names, addresses); the rest must not.
    if message.startswith("Exception in callback"):
        return "Exception in callback"
    return message


class _LogCapture(logging.Handler):
    """asyncio's log records (e.g. "socket.send() raised exception.") go to the world that is
    being stepped: they are observable too."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.world: World | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.world is not None:
            self.world.record("log", record.levelname, record.getMessage())


_CAPTURE = _LogCapture()


class World:
    """One loop, one connection made with create_connection, and the raw peer socket."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop], reactions: dict[str, str]) -> None:
        self.loop = factory()
        self.reactions = dict(reactions)
        self.log: list[Any] = []
        self.activity = 0  # bumped by every recorded event (see settle)
        self.peer_received = bytearray()
        self.peer: socket.socket | None = None
        self.transport: Any = None
        self.loop.set_exception_handler(self._on_exception)
        self.loop.run_until_complete(self._connect())

    def _on_exception(self, loop: Any, context: dict[str, Any]) -> None:
        self.record("handler", normalize_message(context.get("message", "")), describe(context.get("exception")))

    def record(self, *event: Any) -> None:
        self.activity += 1
        self.log.append(event)

    def record_data(self, data: bytes) -> None:
        self.activity += 1
        # Consecutive reads merged, as (size, CRC) to keep reports short.
        if self.log and self.log[-1][0] == "data_received":
            _, size, crc = self.log[-1]
            self.log[-1] = ("data_received", size + len(data), zlib.crc32(data, crc))
        else:
            self.log.append(("data_received", len(data), zlib.crc32(data)))

    async def _connect(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # inherited by the peer
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setblocking(False)
        await self.loop.sock_connect(sock, listener.getsockname())
        self.peer, _ = listener.accept()
        listener.close()
        self.peer.setblocking(False)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        # Without it, Nagle holds the peer's small sends until a delayed ACK (up to 40 ms):
        # when data_received runs would be the timer's business, not the loop's.
        self.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport, _ = await self.loop.create_connection(lambda: FuzzProtocol(self), sock=sock)
        await settle(self)

    # -- operations ---------------------------------------------------------------------

    def apply(self, op: Op) -> Any:
        """Apply `op`, let the loop settle, return what is observable now."""
        mark = len(self.log)
        _CAPTURE.world = self
        try:
            result = self.loop.run_until_complete(self._apply(op))
        finally:
            _CAPTURE.world = None
        new_events = self.log[mark:]
        t = self.transport
        return (
            result,
            new_events,
            t.is_closing(),
            t.is_reading(),
            # Whether anything is buffered, not how much: how many bytes a send takes depends
            # on when delayed ACKs free the socket's buffer (timing, even between two asyncio
            # loops). Flow control's pause/resume_writing are compared exactly.
            t.get_write_buffer_size() > 0,
            len(self.peer_received),
        )

    async def _apply(self, op: Op) -> Any:
        try:
            outcome = self._do(op)
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            outcome = ("raised", describe(exc))
        await settle(self)
        return outcome

    def _do(self, op: Op) -> Any:
        kind, *args = op
        t = self.transport
        if kind == "write":
            return t.write(payload(args[0]))
        if kind == "writelines":
            return t.writelines([payload(n) for n in args[0]])
        if kind in ("write_eof", "close", "abort", "pause_reading", "resume_reading"):
            return getattr(t, kind)()
        if kind == "limits":
            return t.set_write_buffer_limits(*args)
        if kind == "react":
            self.reactions[args[0]] = args[1]
            return None
        if kind == "callbacks":
            return self._schedule(args[0])
        if kind == "sock_recv_cancel":
            return self._sock_recv_cancelled(args[0])
        if kind == "set_protocol":
            protocol = (FuzzBufferedProtocol if args[0] else FuzzProtocol)(self)
            protocol.transport = t
            return t.set_protocol(protocol)
        return self._peer_do(kind, args)

    def _schedule(self, plan: tuple[tuple[str, Any], ...]) -> None:
        """Schedule one callback per entry; each records its index, then cancels the handle
        its entry names (an index, possibly itself or one that already ran)."""
        handles: list[Any] = []

        def run(i: int, target: Any) -> None:
            self.record("callback", i)
            if target is not None and target < len(handles):
                handles[target].cancel()

        for i, (when, target) in enumerate(plan):
            if when == "soon":
                handles.append(self.loop.call_soon(run, i, target))
            elif when == "threadsafe":
                handles.append(self.loop.call_soon_threadsafe(run, i, target))
            else:
                handles.append(self.loop.call_later(when, run, i, target))
        for i, (_, target) in enumerate(plan):
            if target == "now":  # cancelled right away, from outside any callback
                handles[i].cancel()

    def _sock_recv_cancelled(self, after: int) -> Any:
        """A sock_recv cancelled after `after` iterations, then data, then a second one."""
        a, b = socket.socketpair()
        a.setblocking(False)

        async def scenario() -> Any:
            first = asyncio.ensure_future(self.loop.sock_recv(a, 100))
            for _ in range(after):
                await asyncio.sleep(0)
            first.cancel()
            b.send(b"after the cancel")
            try:
                got_first = await first
            except asyncio.CancelledError:
                got_first = "cancelled"
            return got_first, await asyncio.wait_for(self.loop.sock_recv(a, 100), 5)

        task = self.loop.create_task(scenario())
        task.add_done_callback(lambda t: (a.close(), b.close(), self.record("sock_recv", t.result())))
        return None

    def _peer_do(self, kind: str, args: list[Any]) -> Any:
        peer = self.peer
        if peer is None:
            return "peer gone"
        try:
            if kind == "peer_send":
                return peer.send(payload(args[0]))
            if kind == "peer_shut_wr":
                return peer.shutdown(socket.SHUT_WR)
            if kind == "peer_reset":
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                peer.close()
                self.peer = None
                return None
            if kind == "peer_read":
                return self._peer_read(args[0])
        except OSError as exc:
            return ("peer raised", describe(exc))
        raise AssertionError(f"unknown operation {kind}")

    def _peer_read(self, limit: int) -> int:
        assert self.peer is not None
        total = 0
        while total < limit:
            try:
                chunk = self.peer.recv(min(65536, limit - total))
            except BlockingIOError:
                break
            if not chunk:
                return -1  # EOF
            self.peer_received += chunk
            total += len(chunk)
        return total

    def finish(self) -> Any:
        """Drain the peer, abort what is left, and return the final observation."""
        # Read until the transport has nothing more to send: what one read finds depends on
        # how far the transport's last flush got, which is timing.
        for _ in range(100):
            observed = self.apply(("peer_read", 1 << 30))
            if observed[0] in (0, -1) or not isinstance(observed[0], int):
                break
        observed = observed[2:]  # the state after draining, not how the reads were chunked
        if not self.transport.is_closing():
            self.apply(("abort",))
        if self.peer is not None:
            self.peer.close()
            self.peer = None
        self.loop.run_until_complete(settle(self))
        final = (observed, self.log, len(self.peer_received), zlib.crc32(self.peer_received))
        self.loop.close()
        return final

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        if not self.loop.is_closed():
            if self.transport is not None and not self.transport.is_closing():
                self.transport.abort()
                self.loop.run_until_complete(settle(self))
            self.loop.close()


def payload(n: int) -> bytes:
    return (b"%08d" % n * (n // 8 + 1))[:n]


async def settle(world: World | None = None) -> None:
    """Run the loop until the readiness the kernel already has is handled: at least 2 ms,
    and on until the protocol has seen nothing new for a few iterations (a BufferedProtocol
    with a one-byte buffer takes one iteration per byte, however fast the loop is)."""
    start = time.monotonic()
    quiet = 0
    for _ in range(100_000):
        before = world.activity if world is not None else 0
        await asyncio.sleep(0)
        changed = world is not None and world.activity != before
        quiet = 0 if changed else quiet + 1
        if quiet >= 8 and time.monotonic() - start >= 0.002:
            return
        if quiet == 4:
            await asyncio.sleep(0.0005)  # let the kernel deliver what a syscall started


# -- random programs --------------------------------------------------------------------


def random_op(rng: random.Random) -> Op:
    kind = rng.choices(
        [
            "write",
            "writelines",
            "write_eof",
            "close",
            "abort",
            "pause_reading",
            "resume_reading",
            "limits",
            "react",
            "peer_send",
            "peer_shut_wr",
            "peer_reset",
            "peer_read",
            "set_protocol",
            "callbacks",
            "sock_recv_cancel",
        ],
        weights=[14, 6, 2, 1, 1, 4, 4, 3, 6, 12, 2, 1, 8, 2, 4, 1],
    )[0]
    if kind == "set_protocol":
        return (kind, rng.random() < 0.7)  # True: a BufferedProtocol
    if kind == "callbacks":
        size = rng.randint(1, 6)
        return (
            kind,
            tuple(
                (
                    rng.choice(["soon", "soon", "threadsafe", 0, 0.0005, -1]),
                    rng.choice([None, None, "now", *range(size)]),
                )
                for _ in range(size)
            ),
        )
    if kind == "sock_recv_cancel":
        return (kind, rng.choice([0, 1, 3]))
    if kind == "write":
        return (kind, rng.choice([0, 1, 100, 5000, 70_000, 300_000]))
    if kind == "writelines":
        return (kind, tuple(rng.choice([0, 10, 1000, 40_000]) for _ in range(rng.randint(0, 4))))
    if kind == "limits":
        return (
            kind,
            *rng.choice(
                [
                    (None, None),
                    (0, 0),
                    (100, 10),
                    (1, None),
                    (None, 50),
                    (65536, 16384),
                    (5, 10),
                    (-1, None),
                ]
            ),
        )
    if kind == "react":
        callback = rng.choice(sorted(REACTIONS))
        return (kind, callback, rng.choice(REACTIONS[callback]))
    if kind == "peer_send":
        return (kind, rng.choice([1, 10, 1000, 8000]))
    if kind == "peer_read":
        return (kind, rng.choice([1, 100, 10_000, 1 << 20]))
    return (kind,)


def random_program(seed: int, length: int) -> tuple[dict[str, str], list[Op]]:
    rng = random.Random(seed)
    reactions = {
        callback: rng.choice(choices[:3] if rng.random() < 0.6 else choices) for callback, choices in REACTIONS.items()
    }
    return reactions, [random_op(rng) for _ in range(length)]


SEND_WARNING = ("log", "WARNING", "socket.send() raised exception.")


def asyncio_bug(op: Op, expected: Any, actual: Any) -> bool:
    """Known bugs of asyncio's transport, where ferroloop does the sensible thing instead."""
    # After close() with data still buffered, the flush ends with connection_lost, which
    # sets the transport's _sock and _loop to None without counting the connection as lost:
    # a later write(), writelines() or abort() then fails with AttributeError ('NoneType'
    # object has no attribute 'send' / 'call_exception_handler' / '_remove_reader').
    # ferroloop ignores them as it does any call on a lost connection (writes counted and,
    # past the stdlib's threshold, logged).
    if expected[0] == ("raised", ("AttributeError", None, None)) and actual[0] is None:
        events = [e for e in actual[1] if e != SEND_WARNING]
        return (expected[1], *expected[2:]) == (events, *actual[2:])
    return False


@dataclass
class Divergence:
    seed: int | None
    step: int
    op: Op | str
    reactions: dict[str, str]
    ops: list[Op]
    expected: Any
    actual: Any

    def __str__(self) -> str:
        return (
            f"seed {self.seed}: divergence at step {self.step} ({self.op!r})\n"
            f"  reactions: {self.reactions!r}\n  ops: {self.ops[: self.step + 1]!r}\n"
            f"  asyncio:   {self.expected!r}\n  ferroloop: {self.actual!r}"
        )


def play(
    reactions: dict[str, str],
    ops: list[Op],
    ferroloop_factory: Callable[[], asyncio.AbstractEventLoop],
    seed: int | None = None,
    attempts: int = 3,
) -> Divergence | None:
    """Play `ops` in both worlds; the first difference, or None. How many bytes loopback TCP
    takes from a send now and then depends on when the kernel processes acknowledgements,
    even between two asyncio loops; so a difference counts only if every one of `attempts`
    fresh replays shows it, and asyncio played against itself does not."""
    divergence = None
    for _ in range(attempts):
        divergence = play_once(reactions, ops, ferroloop_factory, seed)
        if divergence is None:
            return None
    if play_once(reactions, ops, asyncio.SelectorEventLoop, seed) is not None:
        return None  # the sequence is timing-dependent on the standard loop too
    return divergence


def play_once(
    reactions: dict[str, str],
    ops: list[Op],
    ferroloop_factory: Callable[[], asyncio.AbstractEventLoop],
    seed: int | None = None,
) -> Divergence | None:
    logger = logging.getLogger("asyncio")
    logger.addHandler(_CAPTURE)
    propagate, logger.propagate = logger.propagate, False
    worlds = [World(asyncio.SelectorEventLoop, reactions), World(ferroloop_factory, reactions)]
    try:
        asyncio_bug_hit = False
        for step, op in enumerate(ops):
            expected, actual = (w.apply(op) for w in worlds)
            if asyncio_bug_hit:
                # The loops count writes to a lost connection from different points since
                # asyncio's bug, so their "socket.send() raised exception." warnings differ.
                expected, actual = ((o[0], [e for e in o[1] if e != SEND_WARNING], *o[2:]) for o in (expected, actual))
            if expected != actual:
                if not asyncio_bug(op, expected, actual):
                    return Divergence(seed, step, op, reactions, ops, expected, actual)
                asyncio_bug_hit = True
        expected, actual = (w.finish() for w in worlds)
        if asyncio_bug_hit:
            expected, actual = ((o[0], [e for e in o[1] if e != SEND_WARNING], *o[2:]) for o in (expected, actual))
        if expected != actual:
            return Divergence(seed, len(ops), "finish", reactions, ops, expected, actual)
        return None
    finally:
        for w in worlds:
            w.close()
        logger.removeHandler(_CAPTURE)
        logger.propagate = propagate


def shrink(divergence: Divergence, ferroloop_factory: Callable[[], asyncio.AbstractEventLoop]) -> Divergence:
    """Drop operations one at a time while the two loops still diverge: a short reproducer."""
    best = divergence
    ops = list(divergence.ops[: divergence.step + 1])
    i = 0
    while i < len(ops):
        candidate = ops[:i] + ops[i + 1 :]
        found = play(best.reactions, candidate, ferroloop_factory, best.seed)
        if found is not None:
            ops, best = candidate[: found.step + 1], found
        else:
            i += 1
    return best
