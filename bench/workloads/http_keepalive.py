"""Keep-alive HTTP/1.1: a `Protocol` server parsing with httptools, loaded by wrk.

The worker starts the server (`python -m bench.workloads.http_keepalive LOOP`, pinned to
SERVER_CPU, on the candidate loop), which prints its port. wrk then runs on WRK_CPU
(`taskset -c 1 wrk -t1 -c50 -d{size}s http://127.0.0.1:PORT/`), first for WARM_UP_SECONDS
untimed, then for `size` seconds. Every request gets the same small 200 response on a
connection kept alive. The result is wrk's Requests/sec; a run with socket errors or non-2xx
responses is a failure, not a number. `size` is the duration in seconds, not a count.

Needs `wrk` (apt-get install wrk), `taskset` (util-linux) and `httptools` (pip); without
them the workload is skipped with a note.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import subprocess
import sys
from typing import cast

from ..loops import run_on
from ..pinning import pin_to
from . import Timing, Workload

SERVER_CPU = 0
WRK_CPU = 1
WRK_THREADS = 1
WRK_CONNECTIONS = 50
WARM_UP_SECONDS = 1
#: A server left behind by a worker that died exits on its own after this long.
SERVER_DEADLINE_SECONDS = 300.0
BODY = b"Hello, World!"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
CLOSING_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


# -- server -------------------------------------------------------------------------------------


class HttpProtocol(asyncio.Protocol):
    """One connection; httptools calls `on_message_complete` once per parsed request."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.parse_error = httptools.HttpParserError
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's and rloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            self.parser.feed_data(data)
        except self.parse_error:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE)
        else:
            self.transport.write(CLOSING_RESPONSE)
            self.transport.close()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    # The worker kills this process once wrk is done; the sleep only bounds an orphan. (Not
    # `async with server`: rsloop's Server is no asynchronous context manager.)
    await asyncio.sleep(SERVER_DEADLINE_SECONDS)
    server.close()


def run_server(loop_name: str) -> None:
    pin_to(SERVER_CPU)
    run_on(loop_name, serve)


# -- load ---------------------------------------------------------------------------------------

_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s*([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: (.*)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def run_wrk(port: int, seconds: int) -> str:
    command = ["taskset", "-c", str(WRK_CPU), "wrk", f"-t{WRK_THREADS}"]
    command += [f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"wrk did not finish within {seconds + 30} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def parse_wrk(output: str) -> Timing:
    """(completed requests, seconds) from wrk's report; raises on errors or bad responses."""
    errors = _SOCKET_ERRORS.search(output)
    if errors:
        raise RuntimeError(f"wrk saw socket errors: {errors.group(1)}")
    non_2xx = _NON_2XX.search(output)
    if non_2xx:
        raise RuntimeError(f"wrk got {non_2xx.group(1)} non-2xx/3xx responses")
    requests = _REQUESTS.search(output)
    per_second = _REQUESTS_PER_SEC.search(output)
    if not requests or not per_second or float(per_second.group(1)) <= 0:
        raise RuntimeError(f"could not read wrk's output: {output!r}")
    completed = int(requests.group(1))
    # wrk's Requests/sec divides by its exact run time; the printed "in 5.00s" is rounded.
    return Timing(completed, completed / float(per_second.group(1)))


def measure(loop_name: str, size: int) -> Timing:
    server = subprocess.Popen([sys.executable, "-m", __name__, loop_name], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port_line = server.stdout.readline()
        if not port_line.strip():
            raise RuntimeError(f"HTTP server on {loop_name} did not start")
        port = int(port_line)
        parse_wrk(run_wrk(port, WARM_UP_SECONDS))
        timing = parse_wrk(run_wrk(port, size))
        if server.poll() is not None:
            raise RuntimeError(f"HTTP server on {loop_name} exited with {server.returncode}")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    return timing


def unavailable() -> str | None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if importlib.util.find_spec("httptools") is None:
        missing.append("httptools")
    if not missing:
        return None
    return f"http_keepalive skipped: {', '.join(missing)} not found (apt-get install wrk; pip install httptools)"


WORKLOAD = Workload(
    name="http_keepalive",
    unit="requests",
    size=5,
    quick_size=1,
    measure=measure,
    warm_up=False,
    pins_own_cpus=True,
    describe_size=lambda seconds: f"{seconds} s of wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}",
    unavailable=unavailable,
)

if __name__ == "__main__":
    run_server(sys.argv[1])
