"""The blocking detector: a watchdog thread reports a callback that holds the loop past the
threshold while it is still running (with the loop thread's stack), the loop reports its end,
short callbacks are never reported, and the switch (method, callback, environment variable)
rejects bad values clearly."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferro_helpers import run_python


def parse_huge_document() -> None:
    time.sleep(0.3)  # stands for a synchronous call that holds the loop


def records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def test_a_blocking_task_step_is_reported_while_it_blocks_with_its_stack(
    loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler() -> None:
        await asyncio.sleep(0)
        parse_huge_document()

    loop.set_blocking_threshold(0.1)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(loop.create_task(handler(), name="request-handler"))
    blocked, returned = records(caplog)
    assert blocked.startswith("task 'request-handler' (")
    assert "has been blocking the event loop for 0.1" in blocked
    # the stack is the loop thread's, taken while it was still inside the blocking call
    assert "in parse_huge_document" in blocked and "time.sleep(0.3)" in blocked
    assert blocked.index("in handler") < blocked.index("in parse_huge_document")
    assert returned.startswith("task 'request-handler' (")
    # "in all" counts from the watchdog's first sighting (within a tick of the start when the
    # machine is idle, later when it is loaded), which came at least a threshold before the end.
    in_all = re.search(r"blocked the event loop for (\d+\.\d+) s in all", returned)
    assert in_all is not None and 0.1 <= float(in_all.group(1)) < 5
    assert loop.stats()["blocked_episodes"] == 1


def test_the_report_comes_while_the_callback_still_runs(loop: ferroloop.Loop) -> None:
    reports: list[dict[str, Any]] = []
    seen_at: list[float] = []

    def record(report: dict[str, Any]) -> None:
        reports.append(report)
        seen_at.append(time.monotonic())

    def blocking_callback() -> None:
        time.sleep(0.3)
        returned_at.append(time.monotonic())

    returned_at: list[float] = []
    loop.set_blocking_threshold(0.05, callback=record)
    loop.call_soon(blocking_callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [r["event"] for r in reports] == ["blocked", "returned"]
    assert seen_at[0] < returned_at[0]  # reported before the callback returned
    what = "callback test_the_report_comes_while_the_callback_still_runs.<locals>.blocking_callback"
    assert reports[0]["what"] == what
    assert 0.05 <= reports[0]["elapsed"] < 0.3
    assert reports[1]["elapsed"] >= 0.2
    assert "time.sleep(0.3)" in reports[0]["stack"]


def test_callbacks_under_the_threshold_are_never_reported(
    loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        for _ in range(10):
            time.sleep(0.03)
            await asyncio.sleep(0)

    loop.set_blocking_threshold(0.1)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(main())
    assert records(caplog) == []
    assert loop.stats()["blocked_episodes"] == 0


def test_switching_it_off(loop: ferroloop.Loop, caplog: pytest.LogCaptureFixture) -> None:
    loop.set_blocking_threshold(0.05)
    assert loop.get_blocking_threshold() == pytest.approx(0.05)
    loop.set_blocking_threshold(None)
    assert loop.get_blocking_threshold() is None
    loop.call_soon(time.sleep, 0.15)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert records(caplog) == []


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), ("0.1", TypeError), (True, TypeError)],
)
def test_bad_thresholds_are_refused(loop: ferroloop.Loop, value: Any, error: type) -> None:
    with pytest.raises(error, match="blocking threshold"):
        loop.set_blocking_threshold(value)
    assert loop.get_blocking_threshold() is None


def test_the_environment_variable_switches_it_on(tmp_path: Path) -> None:
    script = tmp_path / "blocks.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, time

            def crunch():
                time.sleep(0.25)

            async def main():
                await asyncio.sleep(0)
                crunch()

            asyncio.run(main())
            """
        )
    )
    result = run_python("-m", "ferroloop", str(script), env_extra={"FERROLOOP_BLOCKING_THRESHOLD": "0.05"})
    assert result.returncode == 0, result.stderr
    assert "has been blocking the event loop" in result.stderr
    assert "in crunch" in result.stderr


def test_a_bad_environment_variable_is_a_clear_error(tmp_path: Path) -> None:
    result = run_python(
        "-c",
        "import ferroloop; ferroloop.new_event_loop()",
        env_extra={"FERROLOOP_BLOCKING_THRESHOLD": "soon"},
    )
    assert result.returncode == 1
    assert "FERROLOOP_BLOCKING_THRESHOLD must be a number of seconds, not 'soon'" in result.stderr


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def wait_for_threads(count: int) -> int:
    deadline = time.monotonic() + 5
    while os_threads() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return os_threads()


def test_the_watchdog_thread_ends_with_its_loop() -> None:
    before = os_threads()
    closed = ferroloop.new_event_loop()
    closed.set_blocking_threshold(0.01)
    assert wait_for_threads(before + 1) == before + 1
    closed.close()
    assert wait_for_threads(before) == before
    dropped = ferroloop.new_event_loop()
    dropped.set_blocking_threshold(0.01)
    assert wait_for_threads(before + 1) == before + 1
    with pytest.warns(ResourceWarning):
        del dropped
        gc.collect()
    assert wait_for_threads(before) == before
