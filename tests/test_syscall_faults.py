"""Faults injected at the syscall boundary, ferroloop against asyncio's loop.

tests/fault_shim.c interposes libc's recv, read, send, write, sendmsg, writev, accept4,
socket, shutdown, epoll_ctl and epoll_wait; it is built here with `cc` and preloaded into a child
interpreter that runs one scenario of tests/syscall_faults.py, so a fault never reaches this
process. ferroloop's Rust core calls these through the libc crate's dynamic symbols, so the
shim sees its calls exactly as it sees the standard loop's (each scenario asserts the shim
acted). Each scenario runs on both loops: the observations must be equal, and must be what the
scenario is about — the loop keeps running, the right callback gets the right exception once,
every byte arrives once and in order.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ferro_helpers import run_python

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
LOOPS = ("asyncio", "ferroloop")


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the fault shim")
    library = tmp_path_factory.mktemp("fault_shim") / "fault_shim.so"
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-O1",
            "-Wall",
            "-Werror",
            "-o",
            str(library),
            str(HERE / "fault_shim.c"),
            "-ldl",
        ],
        check=True,
    )
    return library


def observe(shim: Path, scenario: str, loop_name: str) -> dict[str, Any]:
    result = run_python(
        str(HERE / "syscall_faults.py"),
        scenario,
        loop_name,
        timeout=90,
        env_extra={"LD_PRELOAD": str(shim)},
    )
    assert result.returncode == 0, result.stderr
    observed: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert observed.pop("loop") == ("ferroloop._loop" if loop_name == "ferroloop" else "asyncio.unix_events")
    return observed


def lost_with(name: str, code: int) -> list[Any]:
    return ["connection_made", ["connection_lost", [name, code]]]


CLEAN_END = ["connection_made", "data_received", "eof_received", ["connection_lost", None]]
OUT_OF_RESOURCES = "socket.accept() out of system resource"

# What each scenario must show, on both loops (a subset of the observations; the rest must be
# equal between the loops). By default the scenario ran to its end (`raised` None), nothing
# reached the exception handler, and the loop ran again afterwards (`runs_after`).
EXPECTED: dict[str, dict[str, Any]] = {
    "read_storm": {"calls": CLEAN_END, "injected": True, "received_size": 1 << 20},
    "buffered_read_storm": {"calls": CLEAN_END, "injected": True},
    "tls_storm": {"injected": True},
    # write_eof raises what shutdown raised; from the write watcher it is a callback's error.
    "write_eof_shutdown_fails": {"write_eof": ["OSError", errno.ENOTCONN], "injected": 1},
    "write_eof_shutdown_fails_buffered": {
        "write_eof": "returned",
        "peer_size": 5000,
        "injected": 1,
        "handled": [["Exception in callback ...", ["OSError", errno.ENOTCONN]]],
    },
    "write_storm": {
        "calls": ["connection_made", ["connection_lost", None]],
        "injected": True,
        "received_size": 1 << 20,
    },
    "send_econnreset": {"calls": lost_with("ConnectionResetError", errno.ECONNRESET), "injected": 1, "buffer": 0},
    "send_econnreset_buffered": {
        "calls": lost_with("ConnectionResetError", errno.ECONNRESET),
        "injected": 2,
        "buffer": 0,
    },
    "send_epipe": {"calls": lost_with("BrokenPipeError", errno.EPIPE), "injected": 1},
    "send_epipe_buffered": {"calls": lost_with("BrokenPipeError", errno.EPIPE), "injected": 2},
    # The socket transport's _fatal_error only logs OSErrors (in debug mode).
    "send_enobufs": {"calls": lost_with("OSError", errno.ENOBUFS), "handled": []},
    "send_enobufs_buffered": {"calls": lost_with("OSError", errno.ENOBUFS), "handled": []},
    "recv_econnreset": {"calls": lost_with("ConnectionResetError", errno.ECONNRESET), "injected": 1},
    "recv_etimedout": {"calls": lost_with("TimeoutError", errno.ETIMEDOUT), "injected": 1},
    **{
        f"accept_{name}": {
            "replies": ["client 0\n", "client 1\n"],
            "served": 2,
            "injected": 2,
            "handled": [[OUT_OF_RESOURCES, ["OSError", code]]] * 2,
        }
        for name, code in (("emfile", errno.EMFILE), ("enfile", errno.ENFILE), ("enobufs", errno.ENOBUFS))
    },
    # An aborted connection in the backlog is skipped silently.
    "accept_econnaborted": {"replies": ["client 0\n", "client 1\n"], "injected": 2, "handled": []},
    "socket_emfile": {"first": ["OSError", errno.EMFILE], "second": "connected", "injected": 1},
    "add_reader_enomem": {"first": ["OSError", errno.ENOMEM], "removed": False, "ran": "second"},
    "add_reader_enospc": {"first": ["OSError", errno.ENOSPC], "removed": False, "ran": "second"},
    "reader_watch_refused": {
        "peer_size": 12,
        "calls": ["connection_made", ["connection_lost", None]],
        "injected": 1,
        "handled": [["Exception in callback ...", ["OSError", errno.ENOMEM]]],
    },
    "writer_watch_refused": {"write": ["OSError", errno.ENOMEM], "buffered": 0, "peer": [True, 101], "injected": 1},
    "pipe_writer_watch_refused": {"write": ["OSError", errno.ENOMEM], "buffered": 0, "peer": True, "injected": 1},
    "sock_ops_storm": {"received_size": 1 << 20, "injected": True},
    "wait_fails": {"raised": ["OSError", errno.ENOMEM], "fired": [1]},
    "wait_interrupted": {"fired": list(range(1, 21)), "data": "through", "injected": True},
    "pipe_storm": {
        "reader_calls": CLEAN_END,
        "injected": True,
        "received_size": 1 << 20,
        "writer_calls": ["connection_made", ["connection_lost", None]],
    },
    # The write pipe's _fatal_error only logs OSErrors, as the socket transport's.
    "pipe_write_epipe": {"calls": lost_with("BrokenPipeError", errno.EPIPE), "handled": [], "injected": 1},
}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_fault_matches_asyncio(shim: Path, scenario: str) -> None:
    outcomes = {loop_name: observe(shim, scenario, loop_name) for loop_name in LOOPS}
    for loop_name, observed in outcomes.items():
        assert observed.get("received") == observed.get("sent"), (loop_name, "bytes differ")
        expected = {"handled": [], "raised": None, "runs_after": "runs", **EXPECTED[scenario]}
        assert {key: observed.get(key) for key in expected} == expected, (loop_name, observed)
    assert outcomes["ferroloop"] == outcomes["asyncio"]
