"""`DatagramSocketTransport`: what `create_datagram_endpoint` makes (UDP, Unix datagrams).

An `asyncio.DatagramTransport` (and, as the standard library's `_SelectorDatagramTransport`,
an `asyncio.Transport` with `_FlowControlMixin`), whose per-datagram work — receiving,
`datagram_received`/`error_received`, `sendto` and its buffer, flow control, closing — is the
Rust `DatagramCore`, bound straight onto each instance. What runs once per endpoint (extra
info, closing the socket, repr) is here. Two behaviours differ between releases and are read
from the interpreter's own transport: whether `sendto(b'')` sends an empty datagram (3.12+)
and the per-datagram overhead flow control counts (`_header_size`, 3.12+).
"""

from __future__ import annotations

import inspect
import socket
from asyncio import futures, selector_events, transports
from typing import TYPE_CHECKING, Any

from . import _core
from ._core_backed import CoreMethod, ReadSide, bind_core
from ._instrument import on_new_transport
from ._transports import SocketTransport, record_socket_extra

_STDLIB_TRANSPORT: Any = selector_events._SelectorDatagramTransport  # type: ignore[attr-defined]


def _stdlib_sends_empty_datagrams() -> bool:
    """3.12 dropped the `if not data: return` at the top of `sendto`."""
    try:
        source = inspect.getsource(_STDLIB_TRANSPORT.sendto)
    except (OSError, TypeError):
        return True
    return "if not data:" not in source


_HEADER_SIZE: int = getattr(_STDLIB_TRANSPORT, "_header_size", 0)
_SENDS_EMPTY = _stdlib_sends_empty_datagrams()


class DatagramSocketTransport(ReadSide, transports._FlowControlMixin, transports.DatagramTransport):
    max_size = 256 * 1024  # what one read takes, as the standard transport's
    _extra: dict[str, Any]

    BOUND = ReadSide.BOUND + (
        "sendto",
        "abort",
        "get_write_buffer_size",
        "get_write_buffer_limits",
        "set_write_buffer_limits",
    )
    if TYPE_CHECKING:

        def sendto(self, data: Any, addr: Any = None) -> None: ...
        def abort(self) -> None: ...
        def get_write_buffer_size(self) -> int: ...
        def get_write_buffer_limits(self) -> tuple[int, int]: ...
        def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    else:
        sendto = CoreMethod()
        abort = CoreMethod()
        get_write_buffer_size = CoreMethod()
        get_write_buffer_limits = CoreMethod()
        set_write_buffer_limits = CoreMethod()

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        transports.Transport.__init__(self, extra)  # the flow-control state is the core's
        record_socket_extra(self._extra, sock)
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._sock_fd = sock.fileno()
        self._address = address
        core = _core.DatagramCore(
            loop,
            sock,
            self,
            protocol,
            sock.family,
            bool(self._extra["peername"]),
            address if address else None,
            _HEADER_SIZE,
            _SENDS_EMPTY,
        )
        self._core = core
        bind_core(self, self.BOUND)
        loop._transports[self._sock_fd] = self
        on_new_transport(loop, self._sock_fd, self)
        loop.call_soon(protocol.connection_made, self)
        # only start reading when connection_made() has been called
        loop.call_soon(core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]

    @property
    def _paused(self) -> bool:
        return bool(self._core._paused)

    @property
    def _conn_lost(self) -> int:
        return int(self._core._conn_lost)

    @property
    def _buffer_size(self) -> int:
        return int(self._core.get_write_buffer_size())

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        self._core._fatal_error(exc, message)

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._core._connection_lost(exc)
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._loop = None

    # The same repr and unclosed-transport warning as the stream transport's (same attributes).
    __repr__ = SocketTransport.__repr__
    __del__ = SocketTransport.__del__
