"""Subprocesses: the loop starts children with the standard library's subprocess transport and
reaps them itself.

asyncio's own loops ask the policy for a child watcher before 3.14 (and that watcher is bound to
the main thread before 3.12, deprecated from 3.12 on, gone in 3.14). ferroloop's loop needs no
policy: each child it starts is watched through a pidfd registered with the loop, so the loop
learns of the exit from the same poll that carries its other events, on whichever thread runs
it. Where the kernel has no pidfd (Linux before 5.3), a loop on the main thread reaps on
SIGCHLD (a handler installed with its own add_signal_handler, checking only its own children
with waitpid(WNOHANG)); a loop on another thread, which cannot install signal handlers, uses a
thread per child that blocks in waitpid() and hands the status back with call_soon_threadsafe,
as the standard library's ThreadedChildWatcher does.

Either way the exit status goes to the loop's `_child_watcher_callback` (the standard
library's, borrowed), which schedules the transport's `_process_exited`: the callbacks then run
in the standard library's order.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from asyncio import unix_events
from asyncio.log import logger
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._loop import Loop

ExitCallback = Callable[..., object]  # (pid, returncode, *args)

# Reported when the exit status is gone: someone else reaped the child (the standard library's
# watchers report the same number).
_UNKNOWN_RETURNCODE = 255

_thread_counter = itertools.count(1)


def _exitcode(status: int) -> int:
    """The standard library's unix_events.waitstatus_to_exitcode: -signal for a child a
    signal killed, and the raw status should the kernel report one Python cannot decode."""
    try:
        return os.waitstatus_to_exitcode(status)
    except ValueError:
        return status


#: The standard library's warnings when a child's exit status is gone (255 is reported).
_UNKNOWN_CHILD = "Unknown child process pid %d, will report returncode 255"
_STATUS_ALREADY_READ = "child process pid %d exit status already read:  will report returncode 255"


def _wait_for_exit(loop: Loop, pid: int, flags: int, status_gone: str) -> int | None:
    """`waitpid(pid, flags)` as the standard library's child watchers do it: the exit code
    (logged in debug mode), 255 with the `status_gone` warning if the status was already
    collected, None if the child has not exited yet (`WNOHANG`)."""
    try:
        reaped, status = os.waitpid(pid, flags)
    except ChildProcessError:
        logger.warning(status_gone, pid)
        return _UNKNOWN_RETURNCODE
    if reaped == 0:
        return None
    returncode = _exitcode(status)
    if loop.get_debug():
        logger.debug("process %s exited with returncode %s", pid, returncode)
    return returncode


class ChildReaper:
    """Reaps one loop's children: a pidfd per child, or a waiter thread where pidfds fail."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._pidfds: dict[int, int] = {}  # pid -> pidfd registered with the loop
        # pid -> (callback, args): children reaped on SIGCHLD (no pidfd, main thread)
        self._on_sigchld: dict[int, tuple[ExitCallback, tuple[Any, ...]]] = {}

    def watch(self, pid: int, callback: ExitCallback, *args: Any) -> None:
        """Call `callback(pid, returncode, *args)` on the loop once the child has exited and
        been reaped."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            # No pidfd on this kernel (or the child is already reaped by someone else, which
            # both fallbacks report the same way the standard library does).
            if threading.current_thread() is threading.main_thread():
                self._watch_with_sigchld(pid, callback, args)
            else:
                self._watch_with_thread(pid, callback, args)
            return
        self._pidfds[pid] = pidfd
        self._loop._add_reader(pidfd, self._pidfd_ready, pid, pidfd, callback, args)

    def close(self) -> None:
        """Forget the children still running (the loop is closing): release their pidfds and
        the SIGCHLD handler."""
        for pidfd in self._pidfds.values():
            self._loop._remove_reader(pidfd)
            os.close(pidfd)
        self._pidfds.clear()
        if self._on_sigchld:
            self._on_sigchld.clear()
            self._loop.remove_signal_handler(signal.SIGCHLD)

    def _watch_with_sigchld(self, pid: int, callback: ExitCallback, args: tuple[Any, ...]) -> None:
        if not self._on_sigchld:
            self._loop.add_signal_handler(signal.SIGCHLD, self._reap_signalled)
        self._on_sigchld[pid] = (callback, args)
        # The child may have exited before the handler existed: look once now.
        self._loop.call_soon(self._reap_signalled)

    def _reap_signalled(self) -> None:
        """On SIGCHLD: collect whichever of this loop's children have exited (signals merge,
        so one SIGCHLD may stand for several)."""
        for pid in list(self._on_sigchld):
            returncode = _wait_for_exit(self._loop, pid, os.WNOHANG, _UNKNOWN_CHILD)
            if returncode is None:
                continue
            callback, args = self._on_sigchld.pop(pid)
            callback(pid, returncode, *args)
        if not self._on_sigchld:
            self._loop.remove_signal_handler(signal.SIGCHLD)

    def _pidfd_ready(self, pid: int, pidfd: int, callback: ExitCallback, args: tuple[Any, ...]) -> None:
        # ChildProcessError: waitpid() was called elsewhere (a test, or Popen.wait()).
        try:
            returncode = _wait_for_exit(self._loop, pid, os.WNOHANG, _STATUS_ALREADY_READ)
        except BaseException:
            # Any other waitpid failure ends the watch, as the standard library's pidfd watcher
            # ends it: the pidfd is released (not leaked, not left readable to spin on) and the
            # error goes to the exception handler.
            self._forget_pidfd(pid, pidfd)
            raise
        if returncode is None:
            return  # readable, yet not waitable: not over yet, keep watching
        self._forget_pidfd(pid, pidfd)
        callback(pid, returncode, *args)

    def _forget_pidfd(self, pid: int, pidfd: int) -> None:
        del self._pidfds[pid]
        self._loop._remove_reader(pidfd)
        os.close(pidfd)

    def _watch_with_thread(self, pid: int, callback: ExitCallback, args: tuple[Any, ...]) -> None:
        thread = threading.Thread(
            target=_wait_in_thread,
            name=f"ferroloop-waitpid-{next(_thread_counter)}",
            args=(self._loop, pid, callback, args),
            daemon=True,
        )
        thread.start()


def _wait_in_thread(loop: Loop, pid: int, callback: ExitCallback, args: tuple[Any, ...]) -> None:
    """The body of a waiter thread: the standard library's ThreadedChildWatcher._do_waitpid."""
    returncode = _wait_for_exit(loop, pid, 0, _UNKNOWN_CHILD)
    assert returncode is not None  # a blocking waitpid returns once the child has exited
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(callback, pid, returncode, *args)
            return
        except RuntimeError:  # closed between the check and the call
            pass
    logger.warning("Loop %r that handles pid %r is closed", loop, pid)


async def make_subprocess_transport(
    loop: Loop,
    protocol: Any,
    args: Any,
    shell: bool,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    bufsize: int,
    extra: Any = None,
    **kwargs: Any,
) -> Any:
    """The standard library's `_make_subprocess_transport`, with the loop's own reaper in place
    of the policy's child watcher. The transport's Popen gives the child real pipes."""
    waiter = loop.create_future()
    transport = unix_events._UnixSubprocessTransport(  # type: ignore[attr-defined]
        loop, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs
    )
    loop._child_reaper.watch(transport.get_pid(), loop._child_watcher_callback, transport)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait()
        raise
    return transport
