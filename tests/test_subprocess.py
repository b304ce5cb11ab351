"""Subprocesses: subprocess_exec / subprocess_shell, the subprocess transport and protocol, and
asyncio.create_subprocess_* on top, as the standard library defines them; and how ferroloop
reaps its children (a pidfd per child; where the kernel has no pidfd, SIGCHLD on the main
thread and waiter threads elsewhere; from any thread, without the policy's child watcher).

Most tests run on the standard loop and on ferroloop (fixture `any_loop`) with the same
assertions; those about ferroloop's own reaping run on ferroloop only."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops
from ferroloop import _subprocess

pytestmark = pytest.mark.timeout(60)

PIPE = asyncio.subprocess.PIPE
TEN_MB = hashlib.sha256(b"subprocess").digest() * (10 * (1 << 20) // 32)


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, timeout))


def pidfds_open() -> int:
    """How many pidfds this process holds (they show as anon_inode:[pidfd] in /proc)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[pidfd]"
        except OSError:
            pass  # the listing's own fd, closed by now
    return count


def assert_reaped(pid: int) -> None:
    """`pid` is no child of ours any more: neither running nor a zombie waiting for us."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return
    # The number may have been reused already: it must not be our zombie.
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    assert not (state == "Z" and int(ppid) == os.getpid()), stat


class Recorder(asyncio.SubprocessProtocol):
    """Records the protocol calls in order; `done` resolves at connection_lost."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.transport: asyncio.SubprocessTransport | None = None
        self.output: dict[int, bytes] = {1: b"", 2: b""}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport
        self.calls.append(("connection_made",))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if self.calls[-1] != ("pipe_data_received", fd):  # one entry per run of reads
            self.calls.append(("pipe_data_received", fd))
        self.output[fd] += data

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self.calls.append(("pipe_connection_lost", fd, type(exc).__name__ if exc else None))

    def process_exited(self) -> None:
        assert self.transport is not None
        self.calls.append(("process_exited", self.transport.get_returncode()))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append(("connection_lost", exc))
        self.done.set_result(None)


# -- data through children -------------------------------------------------------------------


def test_ten_megabytes_through_cat_byte_for_byte(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> bytes:
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        assert proc.stdin is not None and proc.stdout is not None

        async def feed() -> None:
            assert proc.stdin is not None
            view = memoryview(TEN_MB)
            for start in range(0, len(view), 1 << 20):
                proc.stdin.write(view[start : start + (1 << 20)])
                await proc.stdin.drain()
            proc.stdin.close()

        feeder = asyncio.create_task(feed())
        received = await proc.stdout.read()
        await feeder
        assert await proc.wait() == 0
        return received

    received = run(any_loop, scenario())
    assert len(received) == len(TEN_MB)
    assert received == TEN_MB


def test_communicate_with_input(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> tuple[tuple[bytes, bytes], int | None]:
        proc = await asyncio.create_subprocess_shell("cat; echo done >&2", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        return await proc.communicate(b"input\n" * 10_000), proc.returncode

    (out, err), returncode = run(any_loop, scenario())
    assert out == b"input\n" * 10_000
    assert err == b"done\n"
    assert returncode == 0


def test_communicate_timeout_then_kill(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> tuple[int, tuple[bytes, None]]:
        proc = await asyncio.create_subprocess_exec("sleep", "30", stdout=PIPE)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.communicate(), 0.2)
        assert proc.returncode is None
        proc.kill()
        returncode = await proc.wait()
        return returncode, await proc.communicate()

    assert run(any_loop, scenario()) == (-signal.SIGKILL, (b"", None))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1])
def test_a_child_killed_by_a_signal_reports_minus_the_signal(
    any_loop: asyncio.AbstractEventLoop, signum: signal.Signals
) -> None:
    async def scenario() -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        proc.send_signal(signum)
        killed_by_parent = await proc.wait()
        # and one that kills itself
        proc = await asyncio.create_subprocess_shell(f"kill -{signum.name.removeprefix('SIG')} $$")
        return killed_by_parent, await proc.wait()

    assert run(any_loop, scenario()) == (-signum, -signum)


def test_exit_codes(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> list[int]:
        codes = []
        for status in (0, 1, 7, 255):
            proc = await asyncio.create_subprocess_shell(f"exit {status}")
            codes.append(await proc.wait())
        return codes

    assert run(any_loop, scenario()) == [0, 1, 7, 255]


def test_a_child_that_closes_stdin_early_breaks_the_writer_as_the_stdlib_does() -> None:
    # The child closes its stdin, says so, and lives on; the parent then writes.
    child = "exec 0<&-; echo closed; exec sleep 5"

    def snippet(event_loop: asyncio.AbstractEventLoop) -> tuple[Any, ...]:
        async def streams() -> tuple[str, tuple[bytes, None]]:
            proc = await asyncio.create_subprocess_shell(child, stdin=PIPE, stdout=PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            assert await proc.stdout.readline() == b"closed\n"
            proc.stdin.write(b"x" * 100_000)
            with pytest.raises((BrokenPipeError, ConnectionResetError)) as broken:
                await proc.stdin.drain()
            proc.kill()
            await proc.wait()
            # communicate() swallows the same error while feeding stdin
            proc = await asyncio.create_subprocess_shell(child, stdin=PIPE, stdout=PIPE)
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"closed\n"
            communicate = asyncio.ensure_future(proc.communicate(b"x" * 1_000_000))
            await asyncio.sleep(0.1)
            proc.kill()
            return type(broken.value).__name__, await communicate

        async def protocol() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            # The stdin transport watches for its reader going away: it reports the pipe lost
            # (cleanly: nothing was waiting to be sent) without being written to.
            transport, proto = await event_loop.subprocess_shell(Recorder, child, stdin=PIPE, stdout=PIPE)
            while proto.output[1] != b"closed\n" or ("pipe_connection_lost", 0, None) not in proto.calls:
                await asyncio.sleep(0.01)
            stdin = transport.get_pipe_transport(0)
            assert isinstance(stdin, asyncio.WriteTransport)
            assert stdin.is_closing()
            stdin.write(b"x" * 100_000)  # dropped, not raised
            await asyncio.sleep(0.1)
            # Closing stdin and printing are two steps of the child: the loop may see them in
            # one poll or two, so their order is not compared.
            before_kill = list(proto.calls)
            assert before_kill[0] == ("connection_made",)
            transport.kill()
            await proto.done
            transport.close()
            # The child's exit and its stdout's EOF happen together: either may be seen first.
            after_kill = proto.calls[len(before_kill) :]
            assert after_kill[-1] == ("connection_lost", None)
            return sorted(before_kill, key=repr), sorted(after_kill, key=repr)

        return run(event_loop, streams()), run(event_loop, protocol())

    stdlib, ferro = on_both_loops(snippet)
    assert ferro == stdlib
    (drain_error, communicated), (before_kill, _) = ferro
    assert drain_error in ("BrokenPipeError", "ConnectionResetError")
    assert communicated == (b"", None)
    assert before_kill == sorted(
        [("connection_made",), ("pipe_data_received", 1), ("pipe_connection_lost", 0, None)], key=repr
    )


def test_a_child_that_stops_reading_with_data_pending_breaks_the_pipe_as_the_stdlib_does() -> None:
    # The child reads a little and closes its stdin while a megabyte waits in the transport's
    # buffer: the writer is paused, and learns of it as BrokenPipeError.
    child = "head -c 10 >/dev/null; exec 0<&-; exec sleep 5"

    def snippet(event_loop: asyncio.AbstractEventLoop) -> tuple[str, list[tuple[Any, ...]]]:
        async def streams() -> str:
            proc = await asyncio.create_subprocess_shell(child, stdin=PIPE)
            assert proc.stdin is not None
            proc.stdin.write(b"x" * 1_000_000)
            with pytest.raises((BrokenPipeError, ConnectionResetError)) as broken:
                await proc.stdin.drain()
            proc.kill()
            await proc.wait()
            return type(broken.value).__name__

        async def protocol() -> list[tuple[Any, ...]]:
            transport, proto = await event_loop.subprocess_shell(
                Recorder, child, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            stdin = transport.get_pipe_transport(0)
            assert isinstance(stdin, asyncio.WriteTransport)
            stdin.write(b"x" * 1_000_000)
            while ("pipe_connection_lost", 0, "BrokenPipeError") not in proto.calls:
                await asyncio.sleep(0.01)
            transport.kill()
            await proto.done
            transport.close()
            return proto.calls

        return run(event_loop, streams()), run(event_loop, protocol())

    stdlib, ferro = on_both_loops(snippet)
    assert ferro == stdlib
    assert ferro[0] == "BrokenPipeError"
    assert ferro[1] == [
        ("connection_made",),
        ("pipe_connection_lost", 0, "BrokenPipeError"),
        ("process_exited", -signal.SIGKILL),
        ("connection_lost", None),
    ]


# -- the subprocess transport and protocol ---------------------------------------------------


def test_subprocess_transport_api(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        transport, proto = await any_loop.subprocess_exec(Recorder, "cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert isinstance(transport, asyncio.SubprocessTransport)
        popen = transport.get_extra_info("subprocess")
        assert isinstance(popen, subprocess.Popen)
        assert transport.get_pid() == popen.pid
        assert transport.get_returncode() is None
        assert isinstance(transport.get_pipe_transport(0), asyncio.WriteTransport)
        assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
        assert isinstance(transport.get_pipe_transport(2), asyncio.ReadTransport)
        assert transport.get_pipe_transport(3) is None
        assert proto.calls == [("connection_made",)]
        transport.send_signal(signal.SIGTERM)
        await proto.done
        assert transport.get_returncode() == -signal.SIGTERM
        assert popen.returncode == -signal.SIGTERM
        for action in (transport.kill, transport.terminate, lambda: transport.send_signal(signal.SIGINT)):
            with pytest.raises(ProcessLookupError):
                action()
        assert not transport.is_closing()
        transport.close()
        transport.close()
        assert transport.is_closing()

    run(any_loop, scenario())


def test_closing_the_transport_kills_a_running_child(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> tuple[int, list[tuple[Any, ...]]]:
        transport, proto = await any_loop.subprocess_exec(Recorder, "sleep", "30", stdout=PIPE)
        transport.close()
        await proto.done
        return transport.get_returncode(), proto.calls

    returncode, calls = run(any_loop, scenario())
    assert returncode == -signal.SIGKILL
    assert calls[-1] == ("connection_lost", None)


@pytest.mark.parametrize(
    ("child", "expected"),
    [
        pytest.param(
            "{ sleep 0.3; echo late; } &",  # the shell exits; its background job keeps stdout
            [
                ("connection_made",),
                ("process_exited", 0),
                ("pipe_data_received", 1),
                ("pipe_connection_lost", 1, None),
                ("connection_lost", None),
            ],
            id="child-exits-before-its-pipes-close",
        ),
        pytest.param(
            "echo early; exec >&-; sleep 0.3",
            [
                ("connection_made",),
                ("pipe_data_received", 1),
                ("pipe_connection_lost", 1, None),
                ("process_exited", 0),
                ("connection_lost", None),
            ],
            id="pipes-close-before-the-child-exits",
        ),
    ],
)
def test_protocol_callbacks_come_in_the_stdlib_order(child: str, expected: list[tuple[Any, ...]]) -> None:
    def snippet(event_loop: asyncio.AbstractEventLoop) -> list[tuple[Any, ...]]:
        async def scenario() -> list[tuple[Any, ...]]:
            transport, proto = await event_loop.subprocess_shell(
                Recorder, child, stdin=asyncio.subprocess.DEVNULL, stdout=PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            await proto.done
            transport.close()
            return proto.calls

        return run(event_loop, scenario())

    stdlib, ferro = on_both_loops(snippet)
    assert stdlib == expected
    assert ferro == stdlib


def test_wait_and_streams_after_the_child_exited(any_loop: asyncio.AbstractEventLoop) -> None:
    # The child is gone long before the output is read.
    async def scenario() -> tuple[int, bytes, int]:
        proc = await asyncio.create_subprocess_shell("head -c 300000 /dev/zero; exit 3", stdout=PIPE)
        assert proc.stdout is not None
        await asyncio.sleep(0.3)
        data = await proc.stdout.read()
        returncode = await proc.wait()
        return len(data), data.strip(b"\0"), returncode

    assert run(any_loop, scenario()) == (300_000, b"", 3)


# -- what the child gets ---------------------------------------------------------------------


def test_children_get_real_pipes(any_loop: asyncio.AbstractEventLoop) -> None:
    # Programs that reopen their standard streams by name only work on pipes (or files):
    # reopening a socket through /proc fails with ENXIO.
    script = (
        "stat -L -c %F /dev/stdin /dev/stdout /dev/stderr;"
        "cat /dev/stdin;"
        "echo reopened-stdout >/proc/self/fd/1;"
        "echo reopened-stderr >/dev/stderr"
    )

    async def scenario() -> tuple[bytes, bytes]:
        proc = await asyncio.create_subprocess_shell(script, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        return await proc.communicate(b"read through /dev/stdin\n")

    out, err = run(any_loop, scenario())
    assert out == b"fifo\nfifo\nfifo\nread through /dev/stdin\nreopened-stdout\n"
    assert err == b"reopened-stderr\n"


def test_pass_fds_cwd_env_and_start_new_session(any_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    code = (
        "import os, sys\n"
        "os.write(int(sys.argv[1]), b'through pass_fds')\n"
        "print(os.getcwd(), os.environ.get('FERRO_MARK'), os.getsid(0) == os.getpid(), 'HOME' in os.environ)\n"
    )

    async def scenario() -> tuple[bytes, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, str(write_fd),
            stdout=PIPE, pass_fds=(write_fd,), cwd=tmp_path, env={"FERRO_MARK": "marked"},
            start_new_session=True,
        )  # fmt: skip
        out, _ = await proc.communicate()
        # Without pass_fds the descriptor is not inherited (close_fds is the default).
        proc = await asyncio.create_subprocess_exec("sh", "-c", f"test -e /proc/self/fd/{write_fd}")
        return out, await proc.wait()

    try:
        out, returncode = run(any_loop, scenario())
        assert os.read(read_fd, 100) == b"through pass_fds"
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert out.decode().split() == [str(tmp_path), "marked", "True", "False"]
    assert returncode == 1


def test_stdio_redirections(any_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"from a file\n")
    target = tmp_path / "out.txt"

    async def scenario() -> tuple[bytes, bytes | None, bytes]:
        # stderr merged into stdout
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2", stdout=PIPE, stderr=asyncio.subprocess.STDOUT
        )
        merged, no_err = await proc.communicate()
        # stdin from a file descriptor, stdout to a file object, stderr to DEVNULL
        with open(source, "rb") as stdin_file, open(target, "wb") as stdout_file:
            proc = await asyncio.create_subprocess_shell(
                "cat; echo lost >&2", stdin=stdin_file.fileno(), stdout=stdout_file,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
            assert await proc.wait() == 0
        return merged, no_err, target.read_bytes()

    assert run(any_loop, scenario()) == (b"out\nerr\n", None, b"from a file\n")


# -- argument checks -------------------------------------------------------------------------

_BAD_CALLS: dict[str, Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, Any]]] = {
    "universal_newlines": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", universal_newlines=True),
    "text": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", text=True),
    "encoding": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", encoding="utf-8"),
    "errors": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", errors="strict"),
    "bufsize": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", bufsize=1),
    "exec-shell": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", shell=True),
    "shell-not-shell": lambda lp: lp.subprocess_shell(asyncio.SubprocessProtocol, "true", shell=False),
    "shell-list": lambda lp: lp.subprocess_shell(asyncio.SubprocessProtocol, ["true"]),
    "shell-text": lambda lp: lp.subprocess_shell(asyncio.SubprocessProtocol, "true", text=True),
    "shell-bufsize": lambda lp: lp.subprocess_shell(asyncio.SubprocessProtocol, "true", bufsize=1),
    "program-int": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, 123),
    "no-such-program": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "/nonexistent/program"),
    "no-such-cwd": lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", cwd="/nonexistent"),
    "create-exec-text": lambda _: asyncio.create_subprocess_exec("true", text=True),
    "create-shell-encoding": lambda _: asyncio.create_subprocess_shell("true", encoding="utf-8"),
}


@pytest.mark.parametrize("call", sorted(_BAD_CALLS))
def test_argument_errors_match_the_stdlib(call: str) -> None:
    def snippet(event_loop: asyncio.AbstractEventLoop) -> tuple[str, str]:
        async def scenario() -> tuple[str, str]:
            try:
                await _BAD_CALLS[call](event_loop)
            except Exception as exc:  # noqa: BLE001 - the error is what is compared
                return type(exc).__name__, str(exc)
            return "no error", ""

        return run(event_loop, scenario())

    stdlib, ferro = on_both_loops(snippet)
    assert stdlib[0] != "no error"
    assert ferro == stdlib


# -- reaping ---------------------------------------------------------------------------------


def test_two_hundred_concurrent_children_are_all_reaped(any_loop: asyncio.AbstractEventLoop) -> None:
    async def one(index: int) -> tuple[int, bytes, int]:
        proc = await asyncio.create_subprocess_exec("echo", str(index), stdout=PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.pid, out, proc.returncode

    async def scenario() -> list[tuple[int, bytes, int]]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = run(any_loop, scenario(), timeout=40)
    assert [(out, code) for _, out, code in results] == [(f"{i}\n".encode(), 0) for i in range(200)]
    for pid, _, _ in results:
        assert_reaped(pid)
    assert pidfds_open() == 0


def _subprocesses_in(event_loop: asyncio.AbstractEventLoop) -> list[tuple[bytes, int | None]]:
    async def one(index: int) -> tuple[bytes, int | None]:
        proc = await asyncio.create_subprocess_shell(f"cat; exit {index}", stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(b"%d" % index)
        return out, proc.returncode

    async def scenario() -> list[tuple[bytes, int | None]]:
        return await asyncio.gather(*(one(i) for i in range(20)))

    return run(event_loop, scenario())


EXPECTED_20 = [(b"%d" % i, i) for i in range(20)]


def test_a_loop_in_a_worker_thread_runs_subprocesses(any_loop: asyncio.AbstractEventLoop) -> None:
    # `any_loop` only picks the kind of loop; the worker builds its own of that kind.
    factory = type(any_loop)
    results: list[Any] = []

    def worker() -> None:
        event_loop = factory()
        try:
            results.append(_subprocesses_in(event_loop))
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            results.append(exc)
        finally:
            event_loop.close()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert results == [EXPECTED_20]


def test_ferroloop_needs_no_child_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not the policy's watcher (deprecated in 3.12, gone in 3.14), not on any thread, and no
    # warning on the way.
    def no_watcher(*_: Any) -> None:
        raise AssertionError("the policy's child watcher was asked for")

    # What asyncio's own loop calls on 3.11-3.13 (3.14 has no such function).
    monkeypatch.setattr(asyncio.events, "get_child_watcher", no_watcher, raising=False)
    outcomes: list[Any] = []

    def in_thread() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                outcomes.append(ferroloop.run(_subprocesses_async()))
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                outcomes.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outcomes.append(ferroloop.run(_subprocesses_async()))
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(30)
    assert outcomes == [EXPECTED_20, EXPECTED_20]


async def _subprocesses_async() -> list[tuple[bytes, int | None]]:
    async def one(index: int) -> tuple[bytes, int | None]:
        proc = await asyncio.create_subprocess_shell(f"cat; exit {index}", stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(b"%d" % index)
        return out, proc.returncode

    return list(await asyncio.gather(*(one(i) for i in range(20))))


def test_without_pidfds_sigchld_or_waiter_threads_reap_the_children(monkeypatch: pytest.MonkeyPatch) -> None:
    # An old kernel: pidfd_open fails with ENOSYS. A loop on the main thread then reaps on
    # SIGCHLD (and removes its handler when no child is left); a loop on another thread, which
    # cannot handle signals, uses a waiter thread per child.
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    waits: list[int] = []
    wait_in_thread = _subprocess._wait_in_thread

    def counted_wait(*args: Any) -> None:
        waits.append(args[1])
        wait_in_thread(*args)

    monkeypatch.setattr(_subprocess, "_wait_in_thread", counted_wait)
    sigchld_before = signal.getsignal(signal.SIGCHLD)
    event_loop = ferroloop.new_event_loop()
    try:
        assert _subprocesses_in(event_loop) == EXPECTED_20

        async def killed() -> tuple[int, int]:
            proc = await asyncio.create_subprocess_exec("sleep", "30")
            proc.kill()
            return proc.pid, await proc.wait()

        killed_pid, returncode = run(event_loop, killed())
        assert returncode == -signal.SIGKILL
        assert_reaped(killed_pid)
        assert waits == []  # the main thread's loop used SIGCHLD, not threads
        assert signal.getsignal(signal.SIGCHLD) == sigchld_before  # handler removed again
    finally:
        event_loop.close()
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(ferroloop.run(_subprocesses_async())))
    thread.start()
    thread.join(30)
    assert outcome == [EXPECTED_20]
    assert len(waits) == 20
    for pid in waits:
        assert_reaped(pid)
    for waiter in [t for t in threading.enumerate() if t.name.startswith("ferroloop-waitpid-")]:
        waiter.join(5)  # each ends as soon as its child is reaped
        assert not waiter.is_alive()


def test_closing_the_loop_releases_the_pidfds_of_running_children(loop: ferroloop.Loop) -> None:
    async def start() -> Any:
        transport, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, "sleep", "30")
        return transport

    before = pidfds_open()
    transport = run(loop, start())
    assert pidfds_open() == before + 1
    popen = transport.get_extra_info("subprocess")
    transport.close()  # kills the child; the loop never runs again to see it exit
    loop.close()
    assert pidfds_open() == before
    assert popen.wait(5) == -signal.SIGKILL
    assert_reaped(popen.pid)


def test_a_child_reaped_elsewhere_reports_255(loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture) -> None:
    # Someone else (here: Popen.wait) collected the exit status first; as the standard
    # library's watchers do, the loop reports 255 and logs a warning.
    async def scenario() -> int:
        # The child outlives the setup, so the loop cannot have reaped it first.
        transport, proto = await loop.subprocess_exec(Recorder, "sleep", "0.3")
        transport.get_extra_info("subprocess").wait()
        await proto.done
        transport.close()
        returncode = transport.get_returncode()
        assert isinstance(returncode, int)
        return returncode

    popen_wait = subprocess.Popen.wait

    def wait_with_waitpid(self: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        _, status = os.waitpid(self.pid, 0)  # what a program calling waitpid itself does
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    subprocess.Popen.wait = wait_with_waitpid  # type: ignore[method-assign]
    try:
        assert run(loop, scenario()) == 255
    finally:
        subprocess.Popen.wait = popen_wait  # type: ignore[method-assign]
    assert "exit status already read" in caplog.text
