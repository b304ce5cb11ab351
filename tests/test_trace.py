"""The trace: `python -m ferroloop trace` and `ferroloop.trace()` write Chrome trace-event JSON
(tracks per task, steps, awaits, timers, wake-up flow links, poller waits, I/O) and an HTML
picture; the buffer bound holds; a script that raises still leaves its trace; bad options are
refused clearly."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferro_helpers import run_python

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def tracks(trace: dict[str, Any]) -> dict[tuple[int, int], str]:
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def slices(trace: dict[str, Any], tid: int | None = None) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and (tid is None or e["tid"] == tid)]


@pytest.fixture(scope="module")
def gather_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("trace") / "gather.json"
    result = run_python("-m", "ferroloop", "trace", "--output", str(out), str(EXAMPLES / "hello_gather.py"))
    assert result.returncode == 0, result.stderr
    assert "a: three" in result.stdout
    return load(out), out


def test_gather_example_has_three_count_tracks_of_three_steps(
    gather_trace: tuple[dict[str, Any], Path],
) -> None:
    trace, _ = gather_trace
    count_tracks = {key: name for key, name in tracks(trace).items() if name.endswith(": count()")}
    assert len(count_tracks) == 3
    for (_, tid), name in count_tracks.items():
        steps = slices(trace, tid)
        assert len(steps) == 3, name
        assert all(s["name"] == f"{name.split(':')[0]} step: count()" for s in steps)
        assert [s["args"].get("awaits") for s in steps] == ["sleep(1)", "sleep(2)", None]
    instants = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i" and e["tid"] in {t for _, t in count_tracks}]
    assert instants.count("created") == 3 and instants.count("done") == 3


def test_every_wakeup_has_its_flow_link_and_no_step_precedes_its_timer(
    gather_trace: tuple[dict[str, Any], Path],
) -> None:
    trace, _ = gather_trace
    finishes = {(e["tid"], e["ts"]) for e in trace["traceEvents"] if e["ph"] == "f"}
    starts = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "s"}
    assert len(starts) == len(finishes)
    count_tids = {tid for (_, tid), name in tracks(trace).items() if name.endswith(": count()")}
    timer_steps = 0
    for step in (s for s in slices(trace) if s["tid"] in count_tids):
        assert (step["tid"], step["ts"]) in finishes, step  # woken by someone, drawn as a flow
        assert "woken_by" in step["args"]
        when = step["args"].get("waker_timer_when_us")
        if when is not None:
            timer_steps += 1
            assert step["ts"] >= when
    assert timer_steps == 6  # the steps after sleep(1) and sleep(2) of each counter


def test_gather_trace_shows_timers_and_the_poller_sleeping(
    gather_trace: tuple[dict[str, Any], Path],
) -> None:
    trace, _ = gather_trace
    timers = [s for s in slices(trace) if s["cat"] == "timer"]
    assert len(timers) == 6
    assert all(s["args"]["late_by_us"] >= 0 for s in timers)
    polls = [s for s in slices(trace) if s["cat"] == "poll"]
    assert sum(p["dur"] for p in polls) >= 2.9e6  # the loop slept through most of the 3 s
    assert trace["otherData"]["dropped_events"] == 0


def test_the_html_picture_is_self_contained(gather_trace: tuple[dict[str, Any], Path]) -> None:
    _, json_path = gather_trace
    page = json_path.with_suffix(".html").read_text()
    assert "<svg" in page and "count()" in page and "sleep(1)" in page
    assert "<script src" not in page and "stylesheet" not in page


def test_context_manager_around_part_of_a_running_program(tmp_path: Path) -> None:
    out = tmp_path / "part.json"

    async def worker() -> int:
        await asyncio.sleep(0.01)
        return 1

    async def main() -> None:
        await asyncio.sleep(0)  # before: not traced
        with ferroloop.trace(out, html=False):
            await asyncio.create_task(worker(), name="traced-worker")
        await asyncio.create_task(worker(), name="after")

    ferroloop.run(main())
    trace = load(out)
    names = set(tracks(trace).values())
    assert "traced-worker: test_context_manager_around_part_of_a_running_program.<locals>.worker()" in names
    assert not any(n.startswith("after:") for n in names)
    assert not out.with_suffix(".html").exists()


def test_io_and_threadsafe_calls_are_recorded(tmp_path: Path) -> None:
    out = tmp_path / "io.json"

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        done = loop.create_future()
        threading.Thread(target=loop.call_soon_threadsafe, args=(done.set_result, None)).start()
        await done
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    with ferroloop.trace(out):
        ferroloop.run(main())
    trace = load(out)
    io = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i" and e["tid"] == 3]
    assert io.count("write 5 B") == 2 and io.count("read 5 B") == 2
    assert any(name.endswith(" readable") for name in io)  # the poller's readiness reports
    names = [e["name"] for e in trace["traceEvents"]]
    assert "call_soon_threadsafe" in names
    delivered = [s["name"] for s in slices(trace) if s["name"].startswith("data_received on SocketTransport(fd ")]
    assert len(delivered) == 2  # the server's read of b"hello", then the client's


def test_the_buffer_bound_holds_and_the_trace_says_what_it_dropped(tmp_path: Path) -> None:
    out = tmp_path / "bounded.json"

    async def spin() -> None:
        for _ in range(5000):
            await asyncio.sleep(0)

    with ferroloop.trace(out, buffer_size=1000, html=False) as session:
        ferroloop.run(spin())
    (recording,) = session.recordings
    assert len(recording.events) == 1000
    assert recording.dropped > 10_000  # three events per step, 5000 steps
    trace = load(out)
    assert trace["otherData"]["dropped_events"] == recording.dropped
    assert any("older events dropped" in e["name"] for e in trace["traceEvents"] if e["ph"] == "i")
    # the newest events were kept: the task's last step and its end
    assert any(e["name"] == "done" for e in trace["traceEvents"] if e["ph"] == "i")


def test_a_script_that_raises_still_writes_its_trace(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio

            async def doomed():
                await asyncio.sleep(0.01)
                raise RuntimeError("boom")

            asyncio.run(doomed())
            """
        )
    )
    out = tmp_path / "fails.json"
    result = run_python("-m", "ferroloop", "trace", "-o", str(out), str(script))
    assert result.returncode == 1
    assert "RuntimeError: boom" in result.stderr
    trace = load(out)
    (doomed,) = [name for name in tracks(trace).values() if name.endswith("doomed()")]
    instants = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i"]
    assert "raised" in instants


def test_duration_stops_recording(tmp_path: Path) -> None:
    script = tmp_path / "long.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio

            async def main():
                for _ in range(30):
                    await asyncio.sleep(0.01)

            asyncio.run(main())
            """
        )
    )
    out = tmp_path / "short.json"
    result = run_python("-m", "ferroloop", "trace", "--duration", "0.05", "-o", str(out), str(script))
    assert result.returncode == 0, result.stderr
    trace = load(out)
    main_steps = [s for s in slices(trace) if s["name"].endswith("step: main()")]
    assert 2 <= len(main_steps) < 15
    assert max(s["ts"] for s in slices(trace)) < 0.2e6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--buffer-size", "0"], "--buffer-size: must be at least 1"),
        (["--buffer-size", "many"], "--buffer-size: not a whole number"),
        (["--duration", "-1"], "--duration: must be more than 0 seconds"),
        (["--output", "/nonexistent-dir/x.json"], "the directory of --output does not exist"),
        ([], "the script to run is missing"),
    ],
)
def test_bad_options_get_a_clear_error(options: list[str], message: str) -> None:
    target = [] if not options else [str(EXAMPLES / "hello_gather.py")]
    result = run_python("-m", "ferroloop", "trace", *options, *target)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_buffer_too_large_for_memory_is_a_memory_error(tmp_path: Path) -> None:
    async def step() -> int:
        await asyncio.sleep(0)
        return 5

    coro = step()
    with (
        pytest.raises(MemoryError, match="trace buffer of 4611686018427387904 events"),
        ferroloop.trace(tmp_path / "x.json", buffer_size=2**62, html=False) as session,
    ):
        ferroloop.run(coro)  # the loop is traced from its start: refused there
    coro.close()
    assert session.recordings == []
    assert ferroloop.run(step()) == 5  # the session is gone; the next loop runs untraced


def test_bad_arguments_to_trace_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        ferroloop.trace(tmp_path / "x.json", buffer_size=0)
    with pytest.raises(ValueError, match="duration"):
        ferroloop.trace(tmp_path / "x.json", duration=0)


def test_steps_per_task_add_up_in_a_long_run(tmp_path: Path) -> None:
    out = tmp_path / "many.json"

    async def worker(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(worker(i) for i in range(1, 6)))

    with ferroloop.trace(out, html=False):
        ferroloop.run(main())
    trace = load(out)
    per_track: dict[int, int] = defaultdict(int)
    for s in slices(trace):
        if s["name"].endswith(".worker()"):
            per_track[s["tid"]] += 1
    assert sorted(per_track.values()) == [2, 3, 4, 5, 6]
