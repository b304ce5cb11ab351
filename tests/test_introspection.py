"""CPython 3.14's asyncio introspection on a program that runs on ferroloop: the in-process call
graph (`asyncio.capture_call_graph` / `format_call_graph`) and the external tools that read a
live process (`python -m asyncio ps PID`, `pstree PID`) show the same task tree as on asyncio's
own loop. ferroloop's tasks are asyncio's C tasks and it sets the running loop the standard way,
which is what those tools read."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferroloop

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="task introspection (call graphs, asyncio ps/pstree) is 3.14's"
)

PROGRAM = textwrap.dedent("""
    import asyncio, os, sys
    import ferroloop

    async def leaf():
        await asyncio.sleep(60)

    async def branch():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leaf(), name="leaf-1")
            tg.create_task(leaf(), name="leaf-2")

    async def main():
        task = asyncio.create_task(branch(), name="branch")
        await asyncio.sleep(0.1)
        print(asyncio.format_call_graph(task), flush=True)
        print("READY", flush=True)
        await task

    factory = ferroloop.new_event_loop if sys.argv[1] == "ferroloop" else None
    asyncio.run(main(), loop_factory=factory)
""")


def _normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-f]+", "0x?", text)
    return re.sub(r"^\d+(?=\s)", "TID", text, flags=re.MULTILINE)


def _observe(tmp_path: Path, loop_name: str) -> dict[str, str]:
    script = tmp_path / "tree.py"
    script.write_text(PROGRAM)
    child = subprocess.Popen([sys.executable, str(script), loop_name], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        graph = ""
        for line in child.stdout:
            if line.strip() == "READY":
                break
            graph += line
        seen = {"graph": graph}
        for tool in ("ps", "pstree"):
            result = subprocess.run(
                [sys.executable, "-m", "asyncio", tool, str(child.pid)], capture_output=True, text=True, timeout=60
            )
            if result.returncode != 0 and "ermission" in result.stderr:
                pytest.skip(f"this machine does not let one process read another: {result.stderr[-200:]}")
            assert result.returncode == 0, result.stderr
            seen[tool] = result.stdout
        return {k: _normalise(v) for k, v in seen.items()}
    finally:
        child.kill()
        child.wait()


def test_call_graph_and_asyncio_ps_pstree_show_the_same_tree(tmp_path: Path) -> None:
    on_ferroloop = _observe(tmp_path, "ferroloop")
    assert on_ferroloop == _observe(tmp_path, "asyncio")
    assert "branch" in on_ferroloop["graph"] and "TaskGroup" in on_ferroloop["graph"]
    for name in ("Task-1", "branch", "leaf-1", "leaf-2"):
        assert name in on_ferroloop["ps"]
        assert name in on_ferroloop["pstree"]


def test_capture_call_graph_in_process(loop: ferroloop.Loop, stdlib_loop: asyncio.AbstractEventLoop) -> None:
    async def inner(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(60)

    async def outer() -> list[str]:
        ready = asyncio.Event()
        task = asyncio.create_task(inner(ready), name="inner")
        await ready.wait()
        graph = asyncio.capture_call_graph(task)
        task.cancel()
        assert graph is not None
        names = [entry.frame.f_code.co_name for entry in graph.call_stack]
        return names + [f"awaited by {type(a.future).__name__}" for a in graph.awaited_by]

    expected = stdlib_loop.run_until_complete(outer())
    assert "inner" in expected
    assert loop.run_until_complete(outer()) == expected
