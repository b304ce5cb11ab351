"""The datagram echo server of `datagram_echo.py` measured alone: the load comes from
`bench/echo_client`'s `udp_echo_client`, a small native (Rust, std + libc) client, instead of
a client on the candidate loop, so the number says what the server's loop costs.

Same server, cores (server on 0, client on 1), endpoints (4, one datagram in flight each),
message sizes and warm-up as the both-ends datagram echo. With `--loops ...,native` the
server is `udp_echo_server` (no loop: `recvmmsg` of what is there and one `sendmmsg` of the
replies), the limit of this echo on the machine. Built with the TCP native client
(`echo_native.build_failure`), skipped with a note when that build is impossible.
"""

from __future__ import annotations

from ..loops import NATIVE
from . import Timing, Workload, datagram_echo
from .echo import SERVER_CPU, measure_against_server
from .echo_native import BINARY_DIR, build_failure, run_native_client

CLIENT_BINARY = BINARY_DIR / "udp_echo_client"
SERVER_BINARY = BINARY_DIR / "udp_echo_server"
ENDPOINTS = datagram_echo.ENDPOINTS


def measure(message_size: int, loop_name: str, size: int) -> Timing:
    failure = build_failure()
    if failure is not None:
        raise RuntimeError(failure)
    per_endpoint = max(1, size // ENDPOINTS)
    native_server = [str(SERVER_BINARY), str(SERVER_CPU), str(ENDPOINTS)] if loop_name == NATIVE else None
    return measure_against_server(
        datagram_echo.__name__,
        [loop_name, str(ENDPOINTS)],
        f"datagram echo server on {loop_name}",
        loop_name,
        None,
        per_endpoint * ENDPOINTS,
        native_client=lambda port, notes: run_native_client(port, message_size, per_endpoint, CLIENT_BINARY, ENDPOINTS),
        server_command=native_server,
    )


def make_workload(message_size: int) -> Workload:
    both_ends = datagram_echo.make_workload(message_size)
    return Workload(
        **{
            **both_ends.__dict__,
            "name": f"{both_ends.name}_native",
            "measure": lambda loop_name, size: measure(message_size, loop_name, size),
            "unavailable": build_failure,
            "native_limit": True,
        }
    )


WORKLOADS = [make_workload(size) for size in datagram_echo.ROUND_TRIPS]
