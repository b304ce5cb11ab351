"""Pipe transports: what `connect_read_pipe`, `connect_write_pipe` and subprocesses' stdio use.

`ReadPipeTransport` and `WritePipeTransport` are `asyncio.ReadTransport` /
`asyncio.WriteTransport` subclasses whose per-event work is Rust (`_core.ReadPipeCore`,
`_core.WritePipeCore`), bound straight onto each instance as `SocketTransport` does. Their
construction checks and callbacks follow the standard library's `_UnixReadPipeTransport` and
`_UnixWritePipeTransport`.
"""

from __future__ import annotations

import os
import stat
import warnings
from asyncio import futures, transports
from collections.abc import Callable
from typing import Any

from . import _core
from ._core_backed import CoreBacked, ReadSide, WriteSide, bind_core
from ._instrument import on_new_transport


def _check_fd(pipe: Any, message: str, allow_char: bool = True) -> tuple[int, int]:
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (allow_char and stat.S_ISCHR(mode))):
        raise ValueError(message)
    os.set_blocking(fileno, False)
    return fileno, mode


class _PipeTransportBase(CoreBacked):
    """Once-per-pipe parts shared by both directions: the pipe object, repr, closing it."""

    _core: Any
    _pipe: Any
    _fileno: int | None
    _loop: Any
    _extra: dict[str, Any]

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on pipe transport") -> None:
        self._core._close(exc)

    def _close(self, exc: BaseException | None = None) -> None:
        self._core._close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._core._connection_lost(exc)
        finally:
            if self._pipe is not None:
                self._pipe.close()
                self._pipe = None
            self._loop = None

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        loop = self._loop
        if self._pipe is not None and loop is not None and not loop.is_closed():
            write = isinstance(self, WritePipeTransport)
            info.append("polling" if loop._has_watcher(self._fileno, write) else "idle")
            if write:
                info.append(f"bufsize={self._core.get_write_buffer_size()}")
        elif self._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        pipe = getattr(self, "_pipe", None)
        if pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            pipe.close()


class ReadPipeTransport(_PipeTransportBase, ReadSide, transports.ReadTransport):
    def __init__(self, loop: Any, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None) -> None:
        transports.ReadTransport.__init__(self, extra)
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = None
        self._fileno = None
        fileno, _ = _check_fd(pipe, "Pipe transport is for pipes/sockets only.")
        self._pipe = pipe
        self._fileno = fileno
        self._core = _core.ReadPipeCore(loop, fileno, self, protocol)
        bind_core(self, ReadSide.BOUND)
        on_new_transport(loop, fileno, self)
        loop.call_soon(protocol.connection_made, self)
        # only start reading when connection_made() has been called
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]

    @property
    def _paused(self) -> bool:
        return bool(self._core._paused)


class WritePipeTransport(_PipeTransportBase, WriteSide, transports._FlowControlMixin, transports.WriteTransport):
    def __init__(self, loop: Any, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None) -> None:
        transports.WriteTransport.__init__(self, extra)  # the flow-control state is the core's
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = None
        self._fileno = None
        fileno, mode = _check_fd(pipe, "Pipe transport is only for pipes, sockets and character devices")
        self._pipe = pipe
        self._fileno = fileno
        # The closing of the read end shows as readability of pipes and sockets.
        watches_peer = stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode)
        self._core = _core.WritePipeCore(loop, fileno, self, protocol, watches_peer)
        bind_core(self, WriteSide.BOUND)
        on_new_transport(loop, fileno, self)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]
