"""Seeing a run, the Python half: loop statistics, the blocking detector's reports, and the
names the Rust instruments need (task identities, callback labels).

Everything here runs on cold paths: once per new task or new kind of callback while
instruments are on, once per blocked callback, or when statistics are read. The counting
itself is Rust (`src/stats.rs`, `src/instrument.rs`, `src/blocking.rs`).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
import types
from asyncio.log import logger
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ._loop import Loop

BLOCKING_ENV = "FERROLOOP_BLOCKING_THRESHOLD"
# Events a trace keeps per loop unless told otherwise (32 bytes each in the Rust ring, which
# commits its memory when the trace starts up to this size: `INITIAL_COMMIT` in src/trace.rs).
DEFAULT_TRACE_EVENTS = 1_000_000

# A task is reported as busy-looping when it woke itself in more than half of at least this
# many steps (tokio-console's "self-wake" warning), and as never yielding for long when one
# of its steps ran at least this long.
SELF_WAKE_MIN_STEPS = 100
LONG_STEP_SECONDS = 0.1

_PACKAGE_DIRS = tuple(
    os.path.dirname(os.path.abspath(m.__file__ or ""))
    for m in (sys.modules["asyncio"], sys.modules[__package__ or "ferroloop"])
)


# ---- names, asked for by the Rust instruments ------------------------------------------


def is_internal_code(code: types.CodeType) -> bool:
    """Whether `code` is asyncio's or ferroloop's own: a task's creation site is the first
    frame, from the innermost, outside them (the Rust side walks the frames, asking this once
    per code object)."""
    return code.co_filename.startswith(_PACKAGE_DIRS)


def format_site(site: tuple[types.CodeType, int] | str) -> str:
    """`file:line in function` for a task's creation site: its code and instruction offset,
    or a string already."""
    if isinstance(site, str):
        return site
    code, offset = site
    line = next((line for start, end, line in code.co_lines() if start <= offset < end), None)
    return f"{code.co_filename}:{'?' if line is None else line} in {code.co_name}"


def callback_label(callback: Any) -> str:
    """A readable name for what a callback calls. The Rust side caches it per builtin method,
    per code object, or per type for any other callable, so the name depends on no more than
    that key."""
    if isinstance(callback, types.BuiltinMethodType):
        owner = callback.__self__
        if owner is None or isinstance(owner, types.ModuleType):
            return callback.__qualname__
        return f"{type(owner).__qualname__}.{callback.__name__}"
    if isinstance(callback, (types.FunctionType, types.MethodType)):
        return callback.__qualname__
    if type(callback).__name__ == "TaskStepMethWrapper":
        return "Task.__step"
    if isinstance(callback, functools.partial):
        return "functools.partial"
    return type(callback).__qualname__


def describe_handle(handle: Any) -> str:
    """Which callback or task a handle runs, for the blocking reports."""
    if handle is None:
        return "a callback"
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if task is not None and hasattr(task, "get_coro") and hasattr(task, "get_name"):
        coro = task.get_coro()
        qualname = getattr(coro, "__qualname__", type(coro).__qualname__)
        return f"task {task.get_name()!r} ({qualname}())"
    return f"callback {callback_label(callback)}" if callback is not None else repr(handle)


# ---- the blocking detector --------------------------------------------------------------


def _deliver(loop: Loop, report: dict[str, Any], message: str, *args: Any) -> None:
    hook: Callable[[dict[str, Any]], object] | None = getattr(loop, "_blocking_hook", None)
    if hook is not None:
        hook(report)
    else:
        logger.warning(message, *args)


def report_blocked(loop: Loop, handle: Any, elapsed: float) -> None:
    """Called on the watchdog thread, with the GIL, while the loop is still stuck."""
    what = describe_handle(handle)
    thread_id = loop._thread_id
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
    report = {
        "event": "blocked",
        "what": what,
        "elapsed": elapsed,
        "threshold": loop.get_blocking_threshold(),
        "stack": stack,
        "handle": handle,
    }
    _deliver(
        loop,
        report,
        "%s has been blocking the event loop for %.3f s (threshold %.3f s); the loop thread is at:\n%s",
        what,
        elapsed,
        report["threshold"],
        stack or "  (its stack is not available)\n",
    )


def report_unblocked(loop: Loop, handle: Any, elapsed: float) -> None:
    """Called on the loop thread when a callback the watchdog reported returns."""
    what = describe_handle(handle)
    report = {
        "event": "returned",
        "what": what,
        "elapsed": elapsed,
        "threshold": loop.get_blocking_threshold(),
        "handle": handle,
    }
    _deliver(loop, report, "%s blocked the event loop for %.3f s in all", what, elapsed)


def blocking_threshold_from_env() -> float | None:
    """`FERROLOOP_BLOCKING_THRESHOLD` in seconds, or None when unset or empty."""
    raw = os.environ.get(BLOCKING_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{BLOCKING_ENV} must be a number of seconds, not {raw!r}") from None
    return check_threshold(value)


def check_threshold(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"the blocking threshold must be a number of seconds, not {seconds!r}")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"the blocking threshold must be a positive number of seconds, not {seconds!r}")
    return float(seconds)


# ---- statistics -------------------------------------------------------------------------


def task_warnings(tasks: list[dict[str, Any]], long_step: float) -> list[str]:
    """tokio-console's lints, for asyncio tasks."""
    warnings = []
    for t in tasks:
        label = f"task {t['name']!r} ({t['coro']}(), created at {t['created_at']})"
        if t["steps"] >= SELF_WAKE_MIN_STEPS and t["self_wakes"] * 2 > t["steps"]:
            warnings.append(
                f"{label} woke itself in {t['self_wakes']} of {t['steps']} steps: a busy loop around sleep(0)?"
            )
        if t["max_step_seconds"] >= long_step:
            warnings.append(f"{label} ran {t['max_step_seconds']:.3f} s in one step without yielding to the loop")
    return warnings


def loop_stats(loop: Loop) -> dict[str, Any]:
    stats: dict[str, Any] = loop._stats_core()
    # `_transports` holds every transport still referenced, closed ones too
    stats["transports_open"] = sum(not t.is_closing() for t in list(loop._transports.values()))
    if loop._task_stats_enabled() or loop._task_records():
        tasks = loop._task_records()
        stats["tasks"] = tasks
        long_step = loop.get_blocking_threshold() or LONG_STEP_SECONDS
        warnings = task_warnings(tasks, long_step)
        warnings.extend(getattr(loop, "_pending_at_close", ()))
        stats["warnings"] = warnings
    return stats


def warn_pending_at_close(loop: Loop) -> None:
    """At close, with per-task statistics on: tasks still pending, with where they were made."""
    if not loop._task_stats_enabled():
        return
    pending = []
    for t in loop._task_records():
        task = t["task"]
        if t["state"] == "pending" and task is not None and not task.done():
            pending.append(
                f"task {t['name']!r} ({t['coro']}()) was still pending when the loop closed; "
                f"it was created at {t['created_at']}"
            )
    loop._pending_at_close = pending
    for message in pending:
        logger.warning("%s", message)


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3f} ms"
    return f"{value * 1e6:.1f} us"


def format_stats(stats: dict[str, Any], *, max_tasks: int = 20) -> str:
    """A plain-text report of `loop.stats()`: loop counters, the lag histogram, the busiest
    tasks (when per-task statistics were on) and the warnings."""
    lines = ["ferroloop statistics"]
    lines.append(
        f"  ran {stats['run_seconds']:.3f} s: busy {stats['busy_seconds']:.3f} s, "
        f"waiting in the poller {stats['poll_wait_seconds']:.3f} s "
        f"({stats['poll_waits']} waits, {stats['poll_events']} events)"
    )
    for key in (
        "iterations",
        "callbacks",
        "timers_scheduled",
        "timers_fired",
        "timers_cancelled",
        "tasks_created",
        "ready_high_water",
        "fds_watched",
        "transports_open",
        "threadsafe_calls",
        "bytes_read",
        "bytes_written",
        "blocked_episodes",
    ):
        if key in stats:
            lines.append(f"  {key.replace('_', ' ')}: {stats[key]}")
    hist = stats["lag_histogram"]
    lines.append(
        f"  loop lag (due timers): max {_seconds(stats['lag_max_seconds'])}; "
        + ", ".join(f"{bucket}: {count}" for bucket, count in hist.items())
    )
    tasks = stats.get("tasks")
    if tasks:
        busiest = sorted(tasks, key=lambda t: t["busy_seconds"], reverse=True)[:max_tasks]
        lines.append(f"  tasks ({len(tasks)}; busiest {len(busiest)}):")
        lines.append(
            "    {:<24} {:<24} {:>9} {:>7} {:>11} {:>11} {:>11} {:>11}".format(
                "name", "coroutine", "state", "steps", "busy", "wake->run", "idle", "max step"
            )
        )
        for t in busiest:
            lines.append(
                "    {:<24} {:<24} {:>9} {:>7} {:>11} {:>11} {:>11} {:>11}".format(
                    str(t["name"])[:24],
                    str(t["coro"])[:24],
                    t["state"],
                    t["steps"],
                    _seconds(t["busy_seconds"]),
                    _seconds(t["wake_to_run_seconds"]),
                    _seconds(t["idle_seconds"]),
                    _seconds(t["max_step_seconds"]),
                )
            )
    for warning in stats.get("warnings", ()):
        lines.append(f"  warning: {warning}")
    return "\n".join(lines) + "\n"


def print_stats(loop_or_stats: Any, file: TextIO | None = None) -> None:
    """Print `loop.stats()` (or a stats dict) as `format_stats` lays it out."""
    stats = loop_or_stats if isinstance(loop_or_stats, dict) else loop_or_stats.stats()
    print(format_stats(stats), end="", file=file if file is not None else sys.stderr)


# ---- loops being born and closed --------------------------------------------------------


class _Runner:
    """What `python -m ferroloop` and `ferroloop.trace()` ask of every loop made meanwhile."""

    stats_at_close = False
    trace_session: Any = None


runner = _Runner()


def on_new_loop(loop: Loop) -> None:
    threshold = blocking_threshold_from_env()
    if threshold is not None:
        loop.set_blocking_threshold(threshold)
    if runner.stats_at_close:
        loop.set_task_stats(True)
    if runner.trace_session is not None:
        runner.trace_session.attach(loop)


def on_new_transport(loop: Any, fd: int, transport: Any) -> None:
    """A transport was made on `loop`: a trace recording it names the transport's I/O after it
    (`data_received on ReadPipeTransport(fd 5)`)."""
    session = loop._trace_session
    if session is not None:
        session.note_transport(loop, fd, transport)


def on_loop_close(loop: Loop) -> None:
    warn_pending_at_close(loop)
    session = getattr(loop, "_trace_session", None)
    if session is not None:
        session.collect(loop)
    if runner.stats_at_close:
        print_stats(loop)
    loop._set_blocking_threshold(None)
