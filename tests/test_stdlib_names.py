"""The private asyncio names ferroloop relies on (`ferroloop._stdlib`) exist in the running
interpreter, and a release that lacked one would be refused at import with a message naming it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ferroloop import _stdlib


def test_the_running_interpreter_has_every_name_ferroloop_relies_on() -> None:
    assert _stdlib.missing() == []


def test_the_list_covers_what_the_rust_tls_plumbing_reads() -> None:
    # src/tls_records.rs reads these per connection; each must be on the list.
    listed = set(_stdlib.REQUIRED["asyncio.sslproto"]) | set(_stdlib.SSL_PROTOCOL_STATE)
    for name in ("SSLProtocol._do_read__copied", "_ssl_buffer_view", "_write_backlog", "SSLProtocolState.WRAPPED"):
        assert name in listed


def test_a_release_without_a_name_is_refused_at_import_with_that_name() -> None:
    # Simulate a CPython that renamed one private function and one SSLProtocol attribute.
    program = textwrap.dedent("""
        import asyncio.base_events, asyncio.sslproto
        del asyncio.base_events._set_nodelay
        for member in vars(asyncio.sslproto.SSLProtocol).values():
            if getattr(member, "__code__", None) is not None:
                member.__code__ = member.__code__.replace(co_names=tuple(
                    "_renamed_buffer" if n == "_ssl_buffer_view" else n for n in member.__code__.co_names))
        try:
            import ferroloop
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"ferroloop cannot run on CPython {sys.version_info[0]}.{sys.version_info[1]}")
    assert "asyncio.base_events._set_nodelay" in message
    assert "asyncio.sslproto.SSLProtocol()._ssl_buffer_view" in message
