"""Nothing crosses into Python as an abort: re-entrant calls while ferroloop's Rust is in the
middle of an operation (tests/reentrancy_probes.py) end as asyncio's loop ends them.

Each loop runs the probes in a child interpreter, so a Rust panic that aborted would show as
the child dying by a signal rather than taking pytest down; a panic caught by PyO3 would show
as a `PanicException` in the observations or on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ferro_helpers import run_python

pytestmark = pytest.mark.timeout(120)

PROBES = Path(__file__).resolve().parent / "reentrancy_probes.py"


def probe(loop_name: str) -> dict[str, Any]:
    result = run_python(str(PROBES), loop_name, timeout=90)
    assert result.returncode == 0, (result.returncode, result.stderr)  # < 0: killed by a signal
    assert "PanicException" not in result.stdout + result.stderr
    observed: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return observed


def test_reentrant_calls_end_as_in_asyncio() -> None:
    ferro, stdlib = probe("ferroloop"), probe("asyncio")
    # The probes did provoke what they are about.
    assert ferro["abort_in_pause_writing"]["calls"] == [
        "connection_made",
        "pause_writing",
        "connection_lost",
        ["lost with", None],
    ]
    assert ferro["close_in_get_buffer"]["calls"][:3] == ["connection_made", "get_buffer", "buffer_updated"]
    assert ferro["loop_reentry"] == {
        "run_forever": "RuntimeError",
        "run_until_complete": "RuntimeError",
        "close": "RuntimeError",
    }
    assert len(ferro["finalizers_reenter"]) == 2 * 307  # every __del__ (307 objects) scheduled both
    assert not [entry for entry in ferro["finalizers_reenter"] if "raised" in entry]
    assert ferro["handled"] == []
    assert ferro == stdlib
