"""Helpers shared by ferroloop's behaviour tests (imported as `ferro_helpers`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ferroloop

# Where the imported ferroloop package lives: site-packages, or python/ for the dev build.
FERROLOOP_HOME = Path(ferroloop.__file__).resolve().parent.parent


def on_both_loops(snippet: Callable[[asyncio.AbstractEventLoop], Any]) -> tuple[Any, Any]:
    """Run `snippet(loop)` on a standard loop and on a ferroloop loop; return both results."""
    results = []
    for factory in (asyncio.new_event_loop, ferroloop.new_event_loop):
        event_loop = factory()
        try:
            results.append(snippet(event_loop))
        finally:
            event_loop.close()
    return results[0], results[1]


def outcome(action: Callable[[], Any]) -> tuple[str, Any]:
    """What a call did, comparable across loops: ('ok', result type) or ('raised', exc type)."""
    try:
        result = action()
    except BaseException as exc:  # noqa: BLE001 - the point is to record any outcome
        return ("raised", type(exc))
    return ("ok", type(result).__name__)


def run_python(
    *args: str, timeout: float = 30, env_extra: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter that imports ferroloop from this checkout."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=python_env(**(env_extra or {})),
        **kwargs,
    )


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter: the ferroloop this process imported (installed,
    or the dev build), debug mode off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FERROLOOP_HOME), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)
    env.update(extra)
    return env
