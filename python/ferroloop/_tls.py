"""TLS over ferroloop's transports.

`TlsProtocol` is the standard library's `SSLProtocol` (the caller's `SSLContext` through
`MemoryBIO`: handshake, shutdown, timeouts, errors and flow-control decisions exactly as
asyncio has them) with its per-record data path — decrypting what arrives, encrypting what the
application writes, handing records to the carrier transport — replaced by the Rust methods of
`_core.TlsRecords` (see `src/tls_records.rs`).
"""

from __future__ import annotations

import types
from asyncio import base_events, sslproto
from collections.abc import Callable
from typing import Any

from ._core import TlsRecords


class TlsProtocol(TlsRecords, sslproto.SSLProtocol):  # type: ignore[misc]
    """`asyncio.sslproto.SSLProtocol` with ferroloop's record plumbing."""


def _with_tls_protocol(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a standard-library loop method that builds `sslproto.SSLProtocol`) made to
    build `TlsProtocol` instead; nothing else in it changes."""
    namespace = dict(function.__globals__)
    namespace["sslproto"] = types.SimpleNamespace(**{**vars(sslproto), "SSLProtocol": TlsProtocol})
    rebuilt = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    rebuilt.__kwdefaults__ = function.__kwdefaults__
    rebuilt.__qualname__ = function.__qualname__
    rebuilt.__doc__ = function.__doc__
    return rebuilt


#: `BaseEventLoop.start_tls`, building `TlsProtocol`.
start_tls = _with_tls_protocol(base_events.BaseEventLoop.start_tls)
