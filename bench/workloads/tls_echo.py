"""TLS echo, Protocol style, at three message sizes: the `protocol` echo of echo.py with
`ssl=` on both ends. Server and client in separate processes pinned to different cores,
both on the candidate loop.

Before the server starts, the client (the worker) makes a throwaway certificate authority
and a server certificate for SERVER_HOSTNAME with `trustme`, in a temporary directory that
is removed afterwards. The server (`python -m bench.workloads.tls_echo LOOP CONNECTIONS
MESSAGE_SIZE CERT_CHAIN_PEM`) loads the certificate and key into
`ssl.create_default_context(Purpose.CLIENT_AUTH)`; the client trusts only the CA through
`ssl.create_default_context(cafile=...)`, so the certificate is verified and the hostname
checked (`server_hostname=SERVER_HOSTNAME`, the connection itself goes to 127.0.0.1). The
handshakes happen during the connections' warm-up, before the clock starts: what is timed
is records going through established TLS sessions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ssl
import sys
import tempfile
from pathlib import Path

from . import Timing, Workload
from .echo import (
    CONNECTIONS,
    drive_protocol,
    echo_workload,
    measure_against_server,
    run_pinned_server,
    serve_protocol,
    size_label,
)

#: The name the server certificate is issued for and the client checks.
SERVER_HOSTNAME = "echo.bench.test"
#: Message size -> round trips per measurement in a full run, tuned for roughly 0.3-1 s on
#: the slowest loop (the standard one) on a 2-core machine.
ROUND_TRIPS = {1024: 40_000, 10 * 1024: 20_000, 100 * 1024: 4_000}


def server_context(cert_chain_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_chain_pem)
    return context


def run_server(loop_name: str, connections: int, message_size: int, cert_chain_pem: str) -> None:
    context = server_context(cert_chain_pem)
    run_pinned_server(loop_name, lambda: serve_protocol(connections, message_size, context))


def write_certificates(directory: Path) -> tuple[Path, Path]:
    """A fresh CA and a server certificate for SERVER_HOSTNAME signed by it; returns the CA
    certificate's path and the path of the server's key + certificate chain."""
    import trustme

    authority = trustme.CA()
    ca_pem = directory / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_pem))
    server_pem = directory / "server.pem"
    issued = authority.issue_cert(SERVER_HOSTNAME)
    issued.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return ca_pem, server_pem


def measure(message_size: int, loop_name: str, size: int) -> Timing:
    per_connection = max(1, size // CONNECTIONS)
    message = b"x" * message_size
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as directory:
        ca_pem, server_pem = write_certificates(Path(directory))
        client_context = ssl.create_default_context(cafile=str(ca_pem))
        server_arguments = [loop_name, str(CONNECTIONS), str(message_size), str(server_pem)]
        return measure_against_server(
            __name__,
            server_arguments,
            f"TLS echo server on {loop_name}",
            loop_name,
            lambda port, notes: drive_protocol(port, message, per_connection, notes, client_context, SERVER_HOSTNAME),
            per_connection * CONNECTIONS,
        )


def make_workload(message_size: int) -> Workload:
    name = f"tls_echo_{size_label(message_size)}"

    def unavailable() -> str | None:
        if importlib.util.find_spec("trustme") is None:
            return f"{name} skipped: trustme is not installed (pip install trustme)"
        return None

    workload = echo_workload(
        name,
        message_size,
        ROUND_TRIPS[message_size],
        lambda loop_name, size: measure(message_size, loop_name, size),
    )
    return dataclasses.replace(workload, unavailable=unavailable)


WORKLOADS = [make_workload(size) for size in ROUND_TRIPS]

if __name__ == "__main__":
    run_server(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
