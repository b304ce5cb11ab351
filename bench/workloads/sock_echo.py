"""Echo over loopback with loop.sock_recv / loop.sock_sendall, server and client in separate
processes pinned to different cores, both on the candidate loop.

The client (the worker process, pinned to CLIENT_CPU) starts the server
(`python -m bench.workloads.sock_echo LOOP CONNECTIONS`, pinned to SERVER_CPU), which prints
its port and exits once every connection has closed. The client opens CONNECTIONS
connections, warms each with a few round trips, then times `size` request/response round
trips of a 1 KiB message spread over the connections.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

from ..loops import run_on
from ..pinning import pin_to
from . import Timing, Workload

SERVER_CPU = 0
CLIENT_CPU = 1
CONNECTIONS = 4
MESSAGE = b"x" * 1024
WARM_UP_ROUND_TRIPS = 200
RECV_SIZE = 65536


def _nonblocking_nodelay(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- server ------------------------------------------------------------------------------------


async def serve(connections: int) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)

    async def echo(conn: socket.socket) -> None:
        with conn:
            while data := await loop.sock_recv(conn, RECV_SIZE):
                await loop.sock_sendall(conn, data)

    handlers = []
    with listener:
        for _ in range(connections):
            conn, _ = await loop.sock_accept(listener)
            handlers.append(loop.create_task(echo(_nonblocking_nodelay(conn))))
    await asyncio.gather(*handlers)


def run_server(loop_name: str, connections: int) -> None:
    pin_to(SERVER_CPU)
    run_on(loop_name, lambda: serve(connections))


# -- client ------------------------------------------------------------------------------------


async def round_trips(sock: socket.socket, count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(count):
        await loop.sock_sendall(sock, MESSAGE)
        received = 0
        while received < len(MESSAGE):
            chunk = await loop.sock_recv(sock, RECV_SIZE)
            if not chunk:
                raise ConnectionError("echo server closed the connection")
            received += len(chunk)


async def drive(port: int, per_connection: int) -> float:
    loop = asyncio.get_running_loop()
    socks = [_nonblocking_nodelay(socket.socket()) for _ in range(CONNECTIONS)]
    try:
        for sock in socks:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        await asyncio.gather(*(round_trips(s, WARM_UP_ROUND_TRIPS) for s in socks))
        start = time.perf_counter()
        await asyncio.gather(*(round_trips(s, per_connection) for s in socks))
        return time.perf_counter() - start
    finally:
        for sock in socks:
            sock.close()


def measure(loop_name: str, size: int) -> Timing:
    per_connection = max(1, size // CONNECTIONS)
    # Start the server before pinning: it inherits this process's affinity and pins itself.
    server = subprocess.Popen(
        [sys.executable, "-m", __name__, loop_name, str(CONNECTIONS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    pin_to(CLIENT_CPU)
    try:
        assert server.stdout is not None
        port_line = server.stdout.readline()
        if not port_line.strip():
            raise RuntimeError(f"echo server on {loop_name} did not start")
        seconds = run_on(loop_name, lambda: drive(int(port_line), per_connection))
        if server.wait(timeout=30) != 0:
            raise RuntimeError(f"echo server on {loop_name} exited with {server.returncode}")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return Timing(per_connection * CONNECTIONS, seconds)


WORKLOAD = Workload(
    name="sock_echo",
    unit="requests",
    size=40_000,
    quick_size=4_000,
    measure=measure,
    warm_up=False,
    pins_own_cpus=True,
)

if __name__ == "__main__":
    run_server(sys.argv[1], int(sys.argv[2]))
