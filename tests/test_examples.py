"""The programs in examples/ run under `python -m ferroloop` and print what asyncio prints.

Each example runs in a fresh interpreter: the one running the tests, with the same environment
and working directory, so it imports the same ferroloop build. Timings vary, so lines that
report one are matched with a pattern.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FERROLOOP_CLASS = "ferroloop._loop.Loop"


def run_example(name: str) -> tuple[list[str], float]:
    """Run examples/NAME.py on ferroloop; return its stdout lines and the wall time."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "default::ResourceWarning", "-m", "ferroloop", EXAMPLES / name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    # An unclosed loop or socket would show up here as a ResourceWarning.
    assert proc.stderr == ""
    return proc.stdout.splitlines(), elapsed


def test_examples_hello_gather_overlaps_the_sleeps() -> None:
    lines, elapsed = run_example("hello_gather.py")
    assert lines[0] == f"running on {FERROLOOP_CLASS}"
    assert lines[1:-1] == [f"{name}: {word}" for word in ("one", "two", "three") for name in "abc"]
    finished = re.fullmatch(r"finished in (\d+\.\d\d) s", lines[-1])
    assert finished is not None, lines[-1]
    assert 2.9 <= float(finished.group(1)) < 5
    assert 2.9 <= elapsed < 5


def test_examples_chained_steps_use_previous_results() -> None:
    lines, _ = run_example("chained.py")
    expected: list[str] = []
    for user_id in (1, 2, 3):
        expected += [
            f"step 1: fetched user-{user_id}",
            f"step 2: made a greeting for user-{user_id}",
            rf"chain {user_id} -> 'hello, user-{user_id}' \(took \d+\.\d\d s\)",
        ]
    expected += [
        re.escape("all chains done: ['hello, user-1', 'hello, user-2', 'hello, user-3']"),
        r"finished in \d+\.\d\d s",
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(pattern, line), (line, pattern)
    # The chains overlap: the program takes about as long as the slowest one (0.65 s), not as
    # long as the three one after the other (1.35 s). The lines' order holds with 150 ms to spare.
    assert float(lines[-1].split()[2]) < 1.2


def test_examples_producer_consumer_processes_every_item() -> None:
    lines, _ = run_example("producer_consumer.py")
    items = {f"producer-{p}/item-{i}" for p in range(3) for i in range(3)}
    put = {line.split(" put ")[1] for line in lines if " put " in line}
    processed = [line.split(" processed ")[1] for line in lines if " processed " in line]
    consumers = {line.split()[0] for line in lines if " processed " in line}
    assert put == items
    assert sorted(processed) == sorted(items)
    assert consumers == {"consumer-0", "consumer-1"}
    assert lines[-1] == "done: 9 items processed, queue empty: True"
    assert len(lines) == 19


def test_examples_future_resolved_by_another_task() -> None:
    lines, _ = run_example("future_resolved.py")
    value = "'hello from another task'"
    assert lines == [
        "main: waiting, future done? False",
        f"resolver: setting the result to {value}",
        f"done callback: the future now holds {value}",
        f"main: got {value}",
    ]


def test_examples_loop_per_thread_runs_ferroloop_in_every_thread() -> None:
    lines, _ = run_example("loop_per_thread.py")
    assert lines == [
        f"thread-1: slept 0.1 s on {FERROLOOP_CLASS}",
        f"thread-2: slept 0.2 s on {FERROLOOP_CLASS}",
        f"thread-3: slept 0.3 s on {FERROLOOP_CLASS}",
        "3 threads ran 3 distinct event loops",
    ]


def test_examples_sock_echo_echoes_and_stops() -> None:
    lines, _ = run_example("sock_echo.py")
    assert lines == [
        "sent 5 bytes (b'hello'...), echo intact: True",
        "sent 9 bytes (b'ferroloop'...), echo intact: True",
        "sent 1000000 bytes (b'xxxxxxxxx'...), echo intact: True",
        "server stopped",
    ]
