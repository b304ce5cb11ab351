"""`SocketTransport`: ferroloop's TCP and Unix stream transport.

An `asyncio.Transport` subclass, so `isinstance` checks in libraries hold. Everything that runs
per read or per write — receiving, `data_received`/`buffer_updated`, sending, the write buffer,
flow control, EOF and closing — is the Rust `StreamCore`; its methods are bound straight onto
each instance, so `transport.write(data)` calls Rust with no Python frame in between. What runs
once per connection (extra info, server bookkeeping, closing the socket) is here.
"""

from __future__ import annotations

import inspect
import socket
import warnings
from asyncio import base_events, constants, futures, transports, trsock
from collections.abc import Callable
from typing import Any

from . import _core
from ._core_backed import ReadSide, WriteSide, bind_core
from ._instrument import on_new_transport

# 3.13's Server tracks its transports (for close_clients/abort_clients): _attach(transport).
_SERVER_TRACKS_TRANSPORTS = (
    len(inspect.signature(base_events.Server._attach).parameters) > 1  # type: ignore[attr-defined]
)


def _server_call(server: Any, method: str, transport: Any) -> None:
    if _SERVER_TRACKS_TRANSPORTS:
        getattr(server, method)(transport)
    else:
        getattr(server, method)()


def record_socket_extra(extra: dict[str, Any], sock: socket.socket) -> None:
    """The extra info the standard library's `_SelectorTransport.__init__` records for a socket."""
    extra["socket"] = trsock.TransportSocket(sock)
    try:
        extra["sockname"] = sock.getsockname()
    except OSError:
        extra["sockname"] = None
    if "peername" not in extra:
        try:
            extra["peername"] = sock.getpeername()
        except OSError:
            extra["peername"] = None


_BOUND = tuple(dict.fromkeys(ReadSide.BOUND + WriteSide.BOUND))


class SocketTransport(ReadSide, WriteSide, transports._FlowControlMixin):
    # _FlowControlMixin, as the standard library's socket transports: loop.sendfile's fallback
    # (base_events._SendfileFallbackProtocol) accepts only transports of that class. Its state
    # and methods are the Rust core's here, so its __init__ is skipped (see __init__).
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _extra: dict[str, Any]  # BaseTransport's slot, which typeshed leaves undeclared

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        context: Any = None,
    ) -> None:
        transports.Transport.__init__(self, extra)  # not _FlowControlMixin's: no state here
        record_socket_extra(self._extra, sock)
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._sock_fd = sock.fileno()
        self._server = server
        # 3.15+: every protocol callback of this connection runs in `context`.
        core = _core.StreamCore(loop, self._sock_fd, self, protocol, sock, context)
        self._core = core
        bind_core(self, _BOUND)
        if server is not None:
            _server_call(server, "_attach", self)
        loop._transports[self._sock_fd] = self
        on_new_transport(loop, self._sock_fd, self)
        base_events._set_nodelay(sock)  # type: ignore[attr-defined]
        loop.call_soon(protocol.connection_made, self, context=context)
        loop.call_soon(core._start_reading, context=context)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=context)  # type: ignore[attr-defined]

    @property
    def _read_ready_cb(self) -> Any:
        # The standard transport's "what runs when the socket is readable" (asyncio's own tests
        # read it); here one core method serves both protocol kinds.
        return self._core._read_ready

    @property
    def _empty_waiter(self) -> Any:
        return self._core._empty_waiter

    def _make_empty_waiter(self) -> Any:
        waiter = self._loop.create_future()
        self._core._set_empty_waiter(waiter)
        return waiter

    def _reset_empty_waiter(self) -> None:
        self._core._set_empty_waiter(None)

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._core._connection_lost(exc)
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            server = self._server
            if server is not None:
                _server_call(server, "_detach", self)
                self._server = None

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        loop = self._loop
        if loop is not None and not loop.is_closed():
            reading = loop._has_watcher(self._sock_fd)
            info.append("read=polling" if reading else "read=idle")
            writing = "polling" if loop._has_watcher(self._sock_fd, True) else "idle"
            info.append(f"write=<{writing}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)  # None too if __init__ failed part way
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()
