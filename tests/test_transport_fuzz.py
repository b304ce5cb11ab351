"""Differential fuzzing of stream transports against asyncio's SelectorEventLoop (see
tests/transport_fuzz.py): a few fixed seeds within a small budget here, longer runs from
scripts/fuzz-transports; and every divergence it found, replayed as a regression test."""

from __future__ import annotations

import time
from typing import Any

import pytest

import ferroloop
from transport_fuzz import play, random_program

pytestmark = pytest.mark.timeout(120)

QUIET = {
    "connection_made": "none",
    "data_received": "none",
    "eof_received": "none",
    "pause_writing": "none",
    "resume_writing": "none",
    "connection_lost": "none",
}

# (what it found, reactions, operations): shrunk reproducers of the divergences the fuzzer
# found, each fixed in ferroloop.
REGRESSIONS: list[tuple[str, dict[str, str], list[Any]]] = [
    (
        # A write made from resume_writing, when _write_ready has just emptied the buffer,
        # is sent at once by asyncio (the buffer is empty); ferroloop queued it behind the
        # still-installed writer, so a transport closed in pause_writing lost its
        # connection_lost until the socket drained a third of its buffer.
        "write from resume_writing after the buffer drained",
        {**QUIET, "pause_writing": "close", "resume_writing": "write"},
        [
            ("write", 5000),
            ("peer_read", 10000),
            ("write", 70000),
            ("peer_read", 10000),
            ("limits", None, 50),
            ("peer_send", 8000),
        ],
    ),
]


@pytest.mark.parametrize("found,reactions,ops", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_fuzzer_regression(found: str, reactions: dict[str, str], ops: list[Any]) -> None:
    divergence = play(reactions, ops, ferroloop.new_event_loop)
    assert divergence is None, str(divergence)


def test_random_operation_sequences_behave_as_on_asyncio() -> None:
    # Fixed seeds, so a failure reproduces: `scripts/fuzz-transports --seed N --count 1`.
    budget = 4.0
    start = time.monotonic()
    played = 0
    for seed in range(1000):
        if played >= 3 and time.monotonic() - start > budget:
            break
        reactions, ops = random_program(seed, 40)
        divergence = play(reactions, ops, ferroloop.new_event_loop, seed)
        assert divergence is None, str(divergence)
        played += 1
