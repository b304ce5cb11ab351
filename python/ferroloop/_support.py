"""Cold-path helpers the Rust core calls: reprs, debug-mode checks and stacks, log lines.

Nothing here runs per callback unless debug mode is on.
"""

from __future__ import annotations

import inspect
import selectors
import sys
from asyncio import base_events, format_helpers, selector_events
from asyncio.log import logger
from typing import Any

_FORMAT_TAKES_DEBUG = "debug" in inspect.signature(format_helpers._format_callback_source).parameters


def _format_source(callback: Any, args: tuple[Any, ...], debug: bool) -> str:
    if _FORMAT_TAKES_DEBUG:  # 3.13+: arguments are shown in debug mode only
        return format_helpers._format_callback_source(  # type: ignore[call-arg]
            callback, args, debug=debug
        )
    return format_helpers._format_callback_source(callback, args)


def format_callback_source(callback: Any, args: tuple[Any, ...], loop: Any) -> str:
    return _format_source(callback, args, loop.get_debug())


def extract_stack() -> Any:
    # Frame 0 is this helper; frame 1 is the Python code that called into the loop.
    return format_helpers.extract_stack(sys._getframe(1))


def handle_repr(handle: Any) -> str:
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    when = getattr(handle, "_when", None)
    if when is not None:
        info.append(f"when={when}")
    if handle._callback is not None:  # released by cancel() outside debug mode, as in asyncio
        # A handle has a source traceback exactly when it was made in debug mode.
        debug = handle._source_traceback is not None
        info.append(_format_source(handle._callback, handle._args, debug))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def debug_checks(loop: Any, callback: Any, method: str, threadsafe: bool) -> None:
    if not threadsafe:
        loop._check_thread()
    loop._check_callback(callback, method)


def log_slow_callback(handle: Any, seconds: float) -> None:
    handle_text = base_events._format_handle(handle)  # type: ignore[attr-defined]
    logger.warning("Executing %s took %.3f seconds", handle_text, seconds)


def log_transport_error(transport: Any, message: str, exc: BaseException) -> None:
    logger.debug("%r: %s", transport, message, exc_info=exc)


def log_transport_debug(transport: Any, what: str) -> None:
    logger.debug("%r %s", transport, what)


def log_warning(message: str) -> None:
    logger.warning(message)


fileobj_to_fd = selectors._fileobj_to_fd  # type: ignore[attr-defined]


def write_type_error(data: Any) -> TypeError:
    """The TypeError the interpreter's `_SelectorSocketTransport.write(data)` raises for a
    `data` that is not bytes, bytearray or memoryview: its type check comes first, before the
    transport's state is touched, so it runs here without a transport."""
    try:
        selector_events._SelectorSocketTransport.write(None, data)  # type: ignore[attr-defined, arg-type]
    except TypeError as exc:
        exc.__traceback__ = None
        return exc
    except Exception:
        pass
    return TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")


def stdlib_counts_lost_on_drained_close() -> bool:
    """gh-156512 (in 3.14.x and 3.15, not in 3.13.18): the socket transport's drained close
    checks and sets `_conn_lost` before calling `_call_connection_lost`. Read from its source,
    since `_write_sendmsg` uses `_conn_lost` elsewhere on every release."""
    transport_class = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    write_sendmsg = getattr(transport_class, "_write_sendmsg", None)
    if write_sendmsg is None:
        return False
    try:
        source = inspect.getsource(write_sendmsg)
    except (OSError, TypeError):
        return False
    return "self._closing and not self._conn_lost" in source
