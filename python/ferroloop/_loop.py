"""`ferroloop.Loop`: the public event loop class.

The per-event machinery (ready queue, timers, poller, fd watchers, running callbacks) is the
Rust `LoopCore` this class extends. What runs once per call and whose exact semantics the
standard library defines — run_until_complete, the exception handler, executors, DNS via the
executor, shutting down async generators, signal bookkeeping, sock_sendfile — is taken from the
standard library's own loop classes, function by function, so it behaves exactly like the
interpreter's asyncio (3.11 through 3.15). The other sock_* operations' state machines are Rust
(`src/sock_waiters.rs`) with the standard loop's semantics. The names borrowed are
listed in `_stdlib.BORROWED_LOOP_METHODS`; everything else is ferroloop's.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import sys
import threading
import time
import warnings
import weakref
from asyncio import base_events, constants, coroutines, events, selector_events, unix_events
from asyncio.log import logger
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVarTuple, Unpack

from . import _core, _instrument, _stdlib
from ._datagram import DatagramSocketTransport
from ._pipes import ReadPipeTransport, WritePipeTransport
from ._subprocess import ChildReaper, make_subprocess_transport
from ._tls import TlsProtocol
from ._tls import start_tls as _start_tls
from ._transports import SocketTransport

_Ts = TypeVarTuple("_Ts")


def _borrow(namespace: dict[str, Any]) -> None:
    """Copy the standard library loop methods listed in `_stdlib.BORROWED_LOOP_METHODS` into the
    class being defined (`_stdlib.check()` has made sure they exist)."""
    for (module, class_name), names in _stdlib.BORROWED_LOOP_METHODS.items():
        cls = _stdlib.resolve(module, class_name)
        for name in names:
            method = _stdlib.borrowed_method(cls, name)
            if method is not None:  # absent: one of OPTIONAL_LOOP_METHODS on this release
                namespace[name] = method


class _SelectorView:
    """Just enough of `selectors.BaseSelector` (`get_key`) for code that asks which events an
    fd is watched for, such as the standard library transports' `__repr__`."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        fd = selectors._fileobj_to_fd(fileobj)  # type: ignore[attr-defined]
        events = 0
        if self._loop._has_watcher(fd):
            events |= selectors.EVENT_READ
        if self._loop._has_watcher(fd, True):
            events |= selectors.EVENT_WRITE
        if not events:
            raise KeyError(f"{fileobj!r} is not registered")
        return selectors.SelectorKey(fileobj, fd, events, None)


def _refuse_without_gil() -> None:
    # The Rust core keeps its state in GilCells, sound only while the GIL serialises threads;
    # a free-threaded interpreter may run with the GIL off (PYTHON_GIL=0, -X gil=0) even though
    # the extension declares it needs the GIL.
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_gil_enabled is not None and not is_gil_enabled():
        raise RuntimeError(
            "ferroloop needs the GIL: this free-threaded interpreter runs with the GIL disabled "
            "(PYTHON_GIL=0 or -X gil=0); run with the GIL enabled or use asyncio's own loop"
        )


if TYPE_CHECKING:
    # What type checkers see: the functions `_borrow` copies in are the standard library
    # loop's, so its declarations type them. At run time the base is AbstractEventLoop.
    _StdlibLoopBase = base_events.BaseEventLoop
else:
    _StdlibLoopBase = asyncio.AbstractEventLoop


# ferroloop's handles are its own Rust types (as uvloop's are its own Cython types), so the
# handle-returning methods differ from the stdlib's declarations in their return types only.
class Loop(_core.LoopCore, _StdlibLoopBase):  # type: ignore[misc]
    """An asyncio event loop whose core runs in Rust."""

    _borrow(locals())
    # The standard library's start_tls, building ferroloop's TlsProtocol.
    start_tls = _start_tls  # type: ignore[assignment]

    if TYPE_CHECKING:
        # Private helpers borrowed above that typeshed does not declare.
        def _check_running(self) -> None: ...
        def _set_coroutine_origin_tracking(self, enabled: bool) -> None: ...
        def _asyncgen_firstiter_hook(self, agen: Any) -> None: ...
        def _asyncgen_finalizer_hook(self, agen: Any) -> None: ...
        def _ensure_fd_no_transport(self, fd: Any) -> None: ...
        async def _ensure_resolved(self, address: Any, *, loop: Any, **hints: Any) -> list[Any]: ...
        def _sock_write_done(self, fd: int, fut: Any, handle: Any = None) -> None: ...
        def _check_signal(self, sig: int) -> None: ...
        def _handle_signal(self, sig: int) -> None: ...
        def _child_watcher_callback(self, pid: int, returncode: int, transp: Any) -> None: ...

    # The Rust create_task handles the common case; with a task factory or in debug mode it
    # defers to the standard library's version of this interpreter.
    _create_task_stdlib = base_events.BaseEventLoop.create_task

    def __new__(cls, *args: Any, **kwargs: Any) -> Loop:
        _refuse_without_gil()  # before the Rust half opens its epoll fd and eventfd
        return super().__new__(cls, *args, **kwargs)

    def __init__(self) -> None:
        self._default_executor = None
        self._internal_fds = 0
        self._thread_id: int | None = None
        self._clock_resolution = time.get_clock_info("monotonic").resolution
        self._exception_handler = None
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        self._old_agen_hooks: Any = None
        self._transports: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._signal_handlers: dict[int, Any] = {}
        self._unix_server_sockets: dict[socket.socket, int] = {}  # 3.13+: listening sock -> inode
        self._ssock: socket.socket | None = None
        self._csock: socket.socket | None = None
        self._child_reaper = ChildReaper(self)
        self.set_debug(coroutines._is_debug_mode())  # type: ignore[attr-defined]
        self._blocking_hook: Callable[[dict[str, Any]], object] | None = None
        self._trace_session: Any = None
        # sock_sendfile: the bytes of each pending sendfile counted so far (see
        # `_sock_sendfile_native_impl`)
        self._sendfile_counted: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._pending_at_close: list[str] = []
        _instrument.on_new_loop(self)

    # -- seeing a run (python/ferroloop/_instrument.py, src/instrument.rs) ----------------

    def stats(self) -> dict[str, Any]:
        """This loop's counters (always kept); with per-task statistics or a trace on, also
        `tasks` (one dict per task) and `warnings`. `ferroloop.print_stats(loop)` prints them."""
        return _instrument.loop_stats(self)

    def set_task_stats(self, enabled: bool) -> None:
        """Keep per-task statistics (steps, busy time, wake-to-run and idle time, where each
        task was created) from now on; costs a clock read and a few lookups per callback."""
        self._set_task_stats(bool(enabled))

    def set_blocking_threshold(
        self,
        seconds: float | None,
        callback: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        """Report any callback or task step that runs longer than `seconds` (None: stop).

        A watchdog thread notices while the loop is still blocked and logs, on the `asyncio`
        logger, what is running, for how long, and the loop thread's stack at that moment;
        the loop logs again when the callback returns. With `callback`, each report is passed
        to it as a dict instead of being logged."""
        seconds = _instrument.check_threshold(seconds)
        self._blocking_hook = callback
        self._set_blocking_threshold(seconds)

    def get_blocking_threshold(self) -> float | None:
        return self._get_blocking_threshold()

    # -- running -----------------------------------------------------------------------

    def _run_forever_setup(self) -> None:
        """Called by the Rust run_forever before its first iteration."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        events._set_running_loop(self)

    def _run_forever_cleanup(self) -> None:
        """Called by the Rust run_forever after its last iteration, however it ended."""
        self._thread_id = None
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, skipping signal handlers removal",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
            self._signal_handlers.clear()
        self._child_reaper.close()
        _instrument.on_loop_close(self)
        self._close_core()
        self._close_signal_pipe()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # `context` (3.15+): the contextvars.Context all of the connection's protocol callbacks
    # run in; None, as before 3.15, runs each in a copy of the context it was scheduled from.
    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: Any = None,
        server: Any = None,
        context: Any = None,
    ) -> SocketTransport:
        return SocketTransport(self, sock, protocol, waiter, extra, server, context)

    def _make_datagram_transport(
        self, sock: socket.socket, protocol: Any, address: Any = None, waiter: Any = None, extra: Any = None
    ) -> DatagramSocketTransport:
        return DatagramSocketTransport(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
    ) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
    ) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: Any = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
        context: Any = None,
    ) -> Any:
        # The standard library's SSLProtocol state machine (the caller's SSLContext through
        # MemoryBIO) with ferroloop's record plumbing, carried by ferroloop's stream transport.
        # typeshed says the timeouts are ints; the stdlib takes any number.
        ssl_protocol = TlsProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server, context=context)
        return ssl_protocol._app_transport

    # Children are reaped by the loop itself (pidfd), not by the policy's child watcher.
    _make_subprocess_transport = make_subprocess_transport

    def _stop_serving(self, sock: socket.socket) -> None:
        # The standard library's, plus what 3.13's Unix loop adds: unlink the socket file that
        # create_unix_server bound, unless it was replaced (its version calls super(), so it
        # cannot be borrowed). Before 3.13 nothing fills `_unix_server_sockets`.
        path = sock.getsockname() if sock in self._unix_server_sockets else None
        _SELECTOR_STOP_SERVING(self, sock)
        if path is not None:
            prev_ino = self._unix_server_sockets.pop(sock)
            try:
                if os.stat(path).st_ino == prev_ino:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    @property
    def _selector(self) -> _SelectorView | None:
        # None once closed, as the selector loop's: transports' reprs then say "open".
        return None if self.is_closed() else _SelectorView(self)

    # -- file descriptors --------------------------------------------------------------

    def add_reader(self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts) -> None:
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts) -> None:
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # -- socket operations -------------------------------------------------------------
    # The sock_* family's work is Rust (`sock_waiters.rs`): each `_sock_*_start` makes the
    # standard loop's checks and first try, and returns the result when that finished the
    # operation, else a `SockWaiter`: `wait()` installs it as the fd's reader or writer and
    # returns the future it settles; `finish()` removes it if it is still installed (the
    # operation was cancelled), as the standard loop's done callback does.

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        """Receive up to n bytes from sock (non-blocking)."""
        result = self._sock_recv_start(sock, n)
        if type(result) is not _SockWaiter:
            return result  # type: ignore[return-value]
        # Inline rather than `_waited`: a request/response loop waits here every round trip.
        try:
            data: bytes = await result.wait()
            return data
        finally:
            result.finish()

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        """Send all of data to sock (non-blocking)."""
        waiter = self._sock_sendall_start(sock, data)
        if waiter is not None:
            await _waited(waiter)

    def _sock_sendfile_native_impl(
        self,
        fut: Any,
        registered_fd: int | None,
        sock: socket.socket,
        fileno: int,
        offset: int,
        count: int | None,
        blocksize: int,
        total_sent: int,
    ) -> None:
        # The standard library's step, with the bytes sent counted. A step that sent bytes
        # waits to write and passes the new total to the next step, so each `os.sendfile`
        # call's bytes are counted when the next step starts (the step after the last send
        # finds the end or the count and sends nothing). A sendfile cancelled while waiting
        # leaves its last send uncounted.
        counted = self._sendfile_counted.pop(fut, 0)
        if total_sent > counted:
            self._sock_io_done(sock.fileno(), total_sent - counted, True)
        _UNIX_SOCK_SENDFILE_STEP(self, fut, registered_fd, sock, fileno, offset, count, blocksize, total_sent)
        if not fut.done():
            self._sendfile_counted[fut] = total_sent

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive data from sock into buf (non-blocking); the number of bytes received."""
        result = self._sock_recv_into_start(sock, buf)
        if type(result) is _SockWaiter:
            return await _waited(result)  # type: ignore[no-any-return]
        return result  # type: ignore[return-value]

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive a datagram of up to bufsize bytes from sock (non-blocking)."""
        result = self._sock_recvfrom_start(sock, bufsize)
        if type(result) is _SockWaiter:
            return await _waited(result)  # type: ignore[no-any-return]
        return result  # type: ignore[return-value]

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any, nbytes: int = 0) -> tuple[int, Any]:
        """Receive a datagram from sock into buf (non-blocking): (bytes received, address)."""
        result = self._sock_recvfrom_into_start(sock, buf, nbytes)
        if type(result) is _SockWaiter:
            return await _waited(result)  # type: ignore[no-any-return]
        return result  # type: ignore[return-value]

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send a datagram to address from sock (non-blocking); the number of bytes sent."""
        result = self._sock_sendto_start(sock, data, address)
        if type(result) is _SockWaiter:
            return await _waited(result)  # type: ignore[no-any-return]
        return result  # type: ignore[return-value]

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection on the listening sock: (new non-blocking socket, its address)."""
        result = self._sock_accept_start(sock)
        if type(result) is _SockWaiter:
            return await _waited(result)  # type: ignore[no-any-return]
        return result  # type: ignore[return-value]

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect sock to a remote socket at address (non-blocking)."""
        # The checks come before resolving, as the standard loop's; the Rust start repeats
        # them (cheap) because the other operations rely on it for theirs.
        if type(sock) is not socket.socket:  # a plain socket is never an SSLSocket
            base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        # Only resolved addresses go to the socket: a host name is resolved (through
        # getaddrinfo in the executor) exactly as the standard loop's sock_connect does.
        if sock.family == socket.AF_INET or (_HAS_IPV6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            _, _, _, _, address = resolved[0]
        waiter = self._sock_connect_start(sock, address)
        if waiter is not None:
            await _waited(waiter)

    # -- signals -----------------------------------------------------------------------
    # The standard library's add_signal_handler writes signal numbers to `_csock` through
    # signal.set_wakeup_fd; we read them from `_ssock` and dispatch with `_handle_signal`.

    def add_signal_handler(self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts) -> None:
        # Same checks, in the same order, as the borrowed implementation; the wake-up pipe is
        # opened only once they pass, because that implementation needs it.
        if not (coroutines.iscoroutine(callback) or _iscoroutinefunction(callback)):
            self._check_signal(sig)
            self._check_closed()
            self._open_signal_pipe()
        _UNIX_ADD_SIGNAL_HANDLER(self, sig, callback, *args)  # type: ignore[arg-type]

    def _open_signal_pipe(self) -> None:
        if self._ssock is not None:
            return
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1
        self._add_reader(self._ssock.fileno(), self._read_signal_numbers)

    def _close_signal_pipe(self) -> None:
        if self._ssock is None:
            return
        self._remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._ssock = None
        if self._csock is not None:
            self._csock.close()
            self._csock = None
        self._internal_fds -= 1

    def _read_signal_numbers(self) -> None:
        while self._ssock is not None:
            try:
                data = self._ssock.recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                if signum:
                    self._handle_signal(signum)


# The check the interpreter's add_signal_handler makes (3.14 deprecated the public name).
_iscoroutinefunction = getattr(coroutines, "_iscoroutinefunction", None) or coroutines.iscoroutinefunction
_UNIX_ADD_SIGNAL_HANDLER = unix_events._UnixSelectorEventLoop.add_signal_handler
_UNIX_SOCK_SENDFILE_STEP = unix_events._UnixSelectorEventLoop._sock_sendfile_native_impl  # type: ignore[attr-defined]
_SockWaiter = _core.SockWaiter


async def _waited(waiter: _core.SockWaiter) -> Any:
    """The result of a sock_* operation that has to wait."""
    try:
        return await waiter.wait()
    finally:
        waiter.finish()


# What `BaseSelectorEventLoop.sock_connect` checks (`base_events._HAS_IPv6`).
_HAS_IPV6 = hasattr(socket, "AF_INET6")
_SELECTOR_STOP_SERVING = vars(selector_events.BaseSelectorEventLoop)["_stop_serving"]
