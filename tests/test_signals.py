"""Signals: add_signal_handler/remove_signal_handler with the stdlib's checks, real signals
delivered with os.kill, and Ctrl-C (SIGINT) ending a program promptly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import ferroloop
from ferro_helpers import python_env

pytestmark = pytest.mark.timeout(30)  # a lost wake-up must fail fast, not hang the suite


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(-1)


def test_a_real_signal_reaches_the_handler_with_its_arguments(loop: ferroloop.Loop, restore_signals: None) -> None:
    received: list[tuple[Any, ...]] = []

    def on_signal(*args: Any) -> None:
        received.append(args)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1", 1)
    loop.call_later(3600, print)  # the loop blocks in the poller with a long timer pending
    loop.call_later(0.02, os.kill, os.getpid(), signal.SIGUSR1)
    safety = loop.call_later(5, loop.stop)
    start = time.monotonic()
    loop.run_forever()
    assert received == [("usr1", 1)]
    assert time.monotonic() - start < 2
    safety.cancel()


def test_signal_sent_from_another_thread_wakes_the_loop(loop: ferroloop.Loop, restore_signals: None) -> None:
    received: list[int] = []

    def on_signal() -> None:
        received.append(signal.SIGUSR2)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR2, on_signal)
    killer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR2))
    killer.start()
    safety = loop.call_later(5, loop.stop)
    start = time.monotonic()
    loop.run_forever()
    killer.join()
    assert received == [signal.SIGUSR2]
    assert time.monotonic() - start < 2
    safety.cancel()


def test_remove_signal_handler_returns_the_stdlib_booleans_and_restores_defaults(
    loop: ferroloop.Loop, restore_signals: None
) -> None:
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGINT, print)
    assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert loop.remove_signal_handler(signal.SIGUSR2) is False
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_adding_a_handler_again_replaces_it(loop: ferroloop.Loop, restore_signals: None) -> None:
    received: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, received.append, "first")
    loop.add_signal_handler(signal.SIGUSR1, received.append, "second")
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert received == ["second"]


def test_close_removes_the_signal_handlers(loop: ferroloop.Loop, restore_signals: None) -> None:
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


@pytest.mark.parametrize(
    ("sig", "exc_type", "message"),
    [
        ("2", TypeError, "sig must be an int"),
        (2.0, TypeError, "sig must be an int"),
        (None, TypeError, "sig must be an int"),
        (0, ValueError, "invalid signal number 0"),
        (-1, ValueError, "invalid signal number -1"),
        (signal.NSIG + 10, ValueError, "invalid signal number"),
        (signal.SIGKILL, RuntimeError, "cannot be caught"),
        (signal.SIGSTOP, RuntimeError, "cannot be caught"),
    ],
)
def test_add_signal_handler_checks_match_the_stdlib(
    loop: ferroloop.Loop,
    stdlib_loop: asyncio.AbstractEventLoop,
    restore_signals: None,
    sig: Any,
    exc_type: type[Exception],
    message: str,
) -> None:
    for event_loop in (stdlib_loop, loop):
        with pytest.raises(exc_type, match=message):
            event_loop.add_signal_handler(sig, print)


@pytest.mark.parametrize(
    ("sig", "exc_type"),
    [("2", TypeError), (0, ValueError), (signal.NSIG + 10, ValueError)],
)
def test_remove_signal_handler_checks_match_the_stdlib(
    loop: ferroloop.Loop,
    stdlib_loop: asyncio.AbstractEventLoop,
    sig: Any,
    exc_type: type[Exception],
) -> None:
    for event_loop in (stdlib_loop, loop):
        with pytest.raises(exc_type):
            event_loop.remove_signal_handler(sig)


def test_add_signal_handler_refuses_coroutines(loop: ferroloop.Loop, restore_signals: None) -> None:
    async def handler() -> None:
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, handler)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_add_signal_handler_on_a_closed_loop_raises(loop: ferroloop.Loop) -> None:
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_signal_handler(signal.SIGUSR1, print)


def test_add_signal_handler_outside_the_main_thread_raises_runtime_error(
    loop: ferroloop.Loop, stdlib_loop: asyncio.AbstractEventLoop, restore_signals: None
) -> None:
    errors: list[BaseException | None] = []

    def try_from_thread() -> None:
        for event_loop in (stdlib_loop, loop):
            try:
                event_loop.add_signal_handler(signal.SIGUSR1, print)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
                errors.append(exc)
            else:
                errors.append(None)

    thread = threading.Thread(target=try_from_thread)
    thread.start()
    thread.join(5)
    assert [type(e) for e in errors] == [RuntimeError, RuntimeError]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


# -- Ctrl-C -----------------------------------------------------------------------------------

CTRL_C_PROGRAMS = {
    "ferroloop.run": """
import asyncio, ferroloop
async def main():
    print("ready", flush=True)
    await asyncio.sleep(3600)
ferroloop.run(main())
""",
    "run_until_complete": """
import asyncio, ferroloop
loop = ferroloop.new_event_loop()
async def main():
    print("ready", flush=True)
    await asyncio.sleep(3600)
try:
    loop.run_until_complete(main())
finally:
    loop.close()
""",
    "run_forever-idle": """
import ferroloop
loop = ferroloop.new_event_loop()
loop.call_soon(lambda: print("ready", flush=True))
loop.run_forever()
""",
    "asyncio.run-after-install": """
import asyncio, ferroloop
ferroloop.install()
async def main():
    assert type(asyncio.get_running_loop()).__module__.startswith("ferroloop")
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
""",
}


def start_interactive(source: str) -> subprocess.Popen[str]:
    """A Python program started as from a terminal: SIGINT at its default disposition, so the
    interpreter installs its KeyboardInterrupt handler even when this test runs as a background
    job (where the shell starts everything with SIGINT ignored, and the child would inherit
    that)."""
    return subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("program", sorted(CTRL_C_PROGRAMS))
def test_ctrl_c_raises_keyboard_interrupt_promptly(program: str) -> None:
    proc = start_interactive(CTRL_C_PROGRAMS[program])
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)  # let the loop settle into its wait in the poller
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "KeyboardInterrupt" in stderr, stderr
    # An uncaught KeyboardInterrupt makes CPython exit by SIGINT itself.
    assert proc.returncode in (-signal.SIGINT, 130, 1), stderr
    assert elapsed < 2


def test_ctrl_c_exit_status_matches_asyncio() -> None:
    program = CTRL_C_PROGRAMS["ferroloop.run"]
    returncodes = []
    for source in (program.replace("ferroloop.run(main())", "asyncio.run(main())"), program):
        proc = start_interactive(source)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        returncodes.append(proc.returncode)
    assert returncodes[1] == returncodes[0]


def test_sigint_with_a_loop_handler_calls_it_instead_of_interrupting() -> None:
    source = """
import asyncio, signal, ferroloop
async def main():
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGINT, got.set_result, "handled")
    print("ready", flush=True)
    print(await asyncio.wait_for(got, 10), flush=True)
ferroloop.run(main())
"""
    proc = start_interactive(source)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "handled"


def test_handler_run_by_the_loops_last_signal_check_wakes_it(
    any_loop: asyncio.AbstractEventLoop, restore_signals: None
) -> None:
    # The signal is raised from C (the ctypes function is the callback itself), so no Python
    # bytecode runs its handler before the loop's own check just ahead of the poller wait.
    # The handler's call_soon_threadsafe must end that wait although no timer is pending.
    import ctypes

    raise_signal = ctypes.CDLL(None)["raise"]
    fut = any_loop.create_future()

    def on_signal(signum: int, frame: Any) -> None:
        any_loop.call_soon_threadsafe(fut.set_result, signum)

    signal.signal(signal.SIGUSR1, on_signal)
    any_loop.call_soon(raise_signal, signal.SIGUSR1)
    rescued: list[bool] = []

    def rescue() -> None:  # ends a lost wait, so the test fails instead of hanging
        rescued.append(True)
        any_loop.call_soon_threadsafe(any_loop.stop)

    watchdog = threading.Timer(5, rescue)
    watchdog.start()
    try:
        assert any_loop.run_until_complete(fut) == signal.SIGUSR1
    finally:
        watchdog.cancel()
    assert not rescued, "the loop slept through the handler's call_soon_threadsafe"
