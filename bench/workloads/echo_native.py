"""The echo servers of `echo.py` measured alone: the load comes from `bench/echo_client`, a
small native (Rust, std only) client, instead of a client on the candidate loop.

With both ends on the candidate loop, an echo number is the sum of two loops' costs; here the
client is the same program for every loop and costs little, so the number says what the
server's loop costs. Same servers, cores (server on 0, client on 1), connections, message
sizes and warm-up round trips as the both-ends echoes; the client is one thread per
connection with blocking sockets. It is built with cargo the first time a run selects one of
these workloads (`cargo build --release` in `bench/echo_client`), and the workloads are skipped
with a note when cargo is missing or the build fails.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

from ..loops import NATIVE
from . import Timing, Workload, echo
from .echo import (
    CONNECTIONS,
    ROUND_TRIPS,
    SERVER_CPU,
    STYLES,
    WARM_UP_ROUND_TRIPS,
    echo_workload,
    measure_against_server,
    size_label,
)

CLIENT_DIR = Path(__file__).resolve().parent.parent / "echo_client"
BINARY_DIR = CLIENT_DIR / "target" / "release"
CLIENT_BINARY = BINARY_DIR / "echo_client"
#: The native limit (`--loops ...,native`): the same echo with no loop at all.
SERVER_BINARY = BINARY_DIR / "echo_server"
#: Every program the crate builds; a build that lacks one of them failed.
BINARIES = (CLIENT_BINARY, SERVER_BINARY, BINARY_DIR / "udp_echo_client", BINARY_DIR / "udp_echo_server")
#: Message sizes measured this way (the both-ends echoes cover 100 KiB too).
SIZES = (1024, 10 * 1024)


@cache
def build_failure() -> str | None:
    """Build the client (a no-op when it is up to date); None on success, else why not."""
    cargo = shutil.which("cargo")
    if cargo is None:
        return "native-client echoes skipped: cargo not found (needed to build bench/echo_client)"
    build = subprocess.run(
        [cargo, "build", "--release", "--quiet"],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 or not all(binary.exists() for binary in BINARIES):
        last = (build.stderr.strip().splitlines() or ["no output"])[-1]
        return f"native-client echoes skipped: building bench/echo_client failed: {last}"
    return None


def run_native_client(
    port: int,
    message_size: int,
    per_connection: int,
    binary: Path = CLIENT_BINARY,
    connections: int = CONNECTIONS,
) -> float:
    """The seconds the native client `binary` took for `per_connection` round trips on each
    of `connections` connections (or datagram endpoints)."""
    command = [
        str(binary),
        str(port),
        str(message_size),
        str(connections),
        str(per_connection),
        str(WARM_UP_ROUND_TRIPS),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{binary.name} exited with {done.returncode}: {done.stderr.strip()}")
    return float(done.stdout.strip())


def measure(style: str, message_size: int, loop_name: str, size: int) -> Timing:
    failure = build_failure()
    if failure is not None:
        raise RuntimeError(failure)
    per_connection = max(1, size // CONNECTIONS)
    native_server = [str(SERVER_BINARY), str(SERVER_CPU), str(CONNECTIONS)] if loop_name == NATIVE else None
    return measure_against_server(
        echo.__name__,
        [style, loop_name, str(CONNECTIONS), str(message_size)],
        f"{style} echo server on {loop_name}",
        loop_name,
        None,
        per_connection * CONNECTIONS,
        native_client=lambda port, notes: run_native_client(port, message_size, per_connection),
        server_command=native_server,
    )


def make_workload(style: str, message_size: int) -> Workload:
    workload = echo_workload(
        f"{style}_echo_{size_label(message_size)}_native",
        message_size,
        ROUND_TRIPS[message_size],
        lambda loop_name, size: measure(style, message_size, loop_name, size),
    )
    return Workload(**{**workload.__dict__, "unavailable": build_failure, "native_limit": True})


WORKLOADS = [make_workload(style, size) for style in STYLES for size in SIZES]
