"""Every private name of CPython's asyncio that ferroloop relies on, in one place.

ferroloop reuses the standard library where its exact semantics matter (see `_loop.py`), and so
depends on names CPython does not promise to keep: private functions and classes, the methods
the `Loop` borrows, and the `SSLProtocol` internals the Rust TLS record plumbing reads on every
connection (`src/tls_records.rs`). `check()` runs when ferroloop is imported: a CPython release
that renamed one fails there, with the name and the interpreter's version, not at some later
first TLS read. `tests/test_stdlib_names.py` checks the list on every interpreter the test
command runs.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: module -> names (dotted for a class's attribute) that must exist in it.
REQUIRED: dict[str, tuple[str, ...]] = {
    "asyncio.base_events": (
        "BaseEventLoop",
        "BaseEventLoop.create_task",  # `Loop._create_task_stdlib` (task factory, debug mode)
        "BaseEventLoop.start_tls",  # rebuilt to make TlsProtocol (`_tls.py`)
        "Server._attach",
        "_SendfileFallbackProtocol",
        "_check_ssl_socket",
        "_format_handle",
        "_set_nodelay",
    ),
    "asyncio.selector_events": (
        "BaseSelectorEventLoop._stop_serving",
        "_SelectorDatagramTransport",
        "_SelectorSocketTransport.write",  # its TypeError for non-bytes (`_support.py`)
    ),
    "asyncio.unix_events": (
        "_UnixSelectorEventLoop.add_signal_handler",
        "_UnixSubprocessTransport",
        "waitstatus_to_exitcode",
    ),
    "asyncio.events": ("_get_running_loop", "_set_running_loop"),
    "asyncio.futures": ("_set_result_unless_cancelled",),
    "asyncio.transports": ("_FlowControlMixin",),
    "asyncio.constants": ("_SendfileMode.TRY_NATIVE",),
    "asyncio.coroutines": ("_is_debug_mode",),
    "asyncio.format_helpers": ("_format_callback_source", "extract_stack"),
    "selectors": ("_fileobj_to_fd",),
    # Read by the Rust record plumbing on every TLS connection (`src/tls_records.rs`).
    "asyncio.sslproto": (
        "SSLAgainErrors",
        "SSLProtocolState.WRAPPED",
        "SSLProtocolState.FLUSHING",
        "SSLProtocol._do_read__buffered",
        "SSLProtocol._do_read__copied",
        "SSLProtocol._control_app_writing",
        "SSLProtocol._control_ssl_reading",
        "SSLProtocol._write_appdata",
        "SSLProtocol._start_shutdown",
        "SSLProtocol._fatal_error",
        "SSLProtocol._call_eof_received",
    ),
}

#: Instance attributes of `sslproto.SSLProtocol` the Rust plumbing reads and writes: they have
#: no class attribute to look up, so they must be names its methods use.
SSL_PROTOCOL_STATE = (
    "_app_protocol",
    "_app_protocol_is_buffer",
    "_app_reading_paused",
    "_app_writing_paused",
    "_incoming",
    "_incoming_high_water",
    "_incoming_low_water",
    "_outgoing",
    "_outgoing_high_water",
    "_outgoing_low_water",
    "_ssl_buffer_view",
    "_ssl_reading_paused",
    "_ssl_writing_paused",
    "_sslobj",
    "_state",
    "_transport",
    "_write_backlog",
    "_write_buffer_size",
)

#: The standard library loop methods `ferroloop.Loop` takes over as they are, by defining class.
BORROWED_LOOP_METHODS: dict[tuple[str, str], tuple[str, ...]] = {
    ("asyncio.base_events", "BaseEventLoop"): (
        "__repr__",
        "set_task_factory",
        "get_task_factory",
        "run_until_complete",
        "_check_running",
        "_check_default_executor",
        "_check_callback",
        "_check_thread",
        "_asyncgen_finalizer_hook",
        "_asyncgen_firstiter_hook",
        "shutdown_asyncgens",
        "shutdown_default_executor",
        "_do_shutdown",
        "run_in_executor",
        "set_default_executor",
        "_getaddrinfo_debug",
        "getaddrinfo",
        "getnameinfo",
        "_ensure_resolved",
        "sock_sendfile",
        "_sock_sendfile_fallback",
        "_check_sendfile_params",
        "get_exception_handler",
        "set_exception_handler",
        "default_exception_handler",
        "call_exception_handler",
        "_set_coroutine_origin_tracking",
        "set_debug",
        "_timer_handle_cancelled",
        # connections, servers, pipes: per-connection setup
        "_connect_sock",
        "create_connection",
        "_create_connection_transport",
        "sendfile",
        "_sendfile_fallback",
        "create_datagram_endpoint",
        "_create_server_getaddrinfo",
        "create_server",
        "connect_accepted_socket",
        "connect_read_pipe",
        "connect_write_pipe",
        # subprocesses: the argument checks; the transport is `_make_subprocess_transport`
        "subprocess_exec",
        "subprocess_shell",
        "_log_subprocess",
    ),
    ("asyncio.selector_events", "BaseSelectorEventLoop"): (
        "_ensure_fd_no_transport",
        "_sock_read_done",
        "_sock_write_done",
        # accepting (datagram transports: `Loop._make_datagram_transport`)
        "_sendfile_native",
        "_start_serving",
        "_accept_connection",
        "_accept_connection2",
    ),
    ("asyncio.unix_events", "_UnixSelectorEventLoop"): (
        "_check_signal",
        "_handle_signal",
        "remove_signal_handler",
        "_sock_sendfile_native",
        "_sock_sendfile_native_impl",
        "_sock_sendfile_update_filepos",
        "_sock_add_cancellation_callback",
        "create_unix_connection",
        "create_unix_server",
        "_child_watcher_callback",
    ),
}

#: Borrowed methods some supported releases do not have (ferroloop does without them there).
OPTIONAL_LOOP_METHODS = frozenset({"_timer_handle_cancelled", "_sock_read_done", "_sock_write_done"})


def resolve(module: str, dotted: str) -> Any:
    """`resolve("asyncio.base_events", "Server._attach")` -> the object; AttributeError or
    ImportError if the interpreter has no such thing."""
    obj: Any = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def borrowed_method(cls: type, name: str) -> Any:
    """The function `name` as `cls` resolves it (its own or a base class's), or None."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def missing() -> list[str]:
    """The names above this interpreter lacks."""
    absent: list[str] = []
    for module, names in REQUIRED.items():
        for name in names:
            try:
                resolve(module, name)
            except (AttributeError, ImportError):
                absent.append(f"{module}.{name}")
    try:
        ssl_protocol = resolve("asyncio.sslproto", "SSLProtocol")
    except (AttributeError, ImportError):
        pass  # reported above
    else:
        used = set()
        for member in vars(ssl_protocol).values():
            code = getattr(member, "__code__", None)
            if code is not None:
                used.update(code.co_names)
        absent += [f"asyncio.sslproto.SSLProtocol().{n}" for n in SSL_PROTOCOL_STATE if n not in used]
    try:
        start_tls = resolve("asyncio.base_events", "BaseEventLoop.start_tls")
    except (AttributeError, ImportError):
        pass  # reported above
    else:
        if "sslproto" not in start_tls.__code__.co_names:  # `_tls.py` swaps that global
            absent.append("asyncio.base_events.BaseEventLoop.start_tls's use of sslproto.SSLProtocol")
    for (module, class_name), names in BORROWED_LOOP_METHODS.items():
        try:
            cls = resolve(module, class_name)
        except (AttributeError, ImportError):
            absent.append(f"{module}.{class_name}")
            continue
        absent += [
            f"{module}.{class_name}.{name}"
            for name in names
            if name not in OPTIONAL_LOOP_METHODS and borrowed_method(cls, name) is None
        ]
    return absent


def check() -> None:
    """Refuse to import on an interpreter whose asyncio lacks a name ferroloop relies on."""
    absent = missing()
    if absent:
        version = ".".join(map(str, sys.version_info[:3]))
        raise ImportError(
            f"ferroloop cannot run on CPython {version}: its asyncio lacks "
            + ", ".join(absent)
            + " (private names ferroloop relies on; see ferroloop/_stdlib.py)"
        )
