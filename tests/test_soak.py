"""Resources: connection churn (close, abort, reset, server abort, TLS), floods of callbacks
and timers, and a writer that ignores flow control leave the fd count where it was and the
resident memory within a generous bound (scripts/soak runs the long version with numbers)."""

from __future__ import annotations

import gc

import pytest
import soak

import ferroloop

pytestmark = pytest.mark.timeout(120)

pytest.importorskip("trustme", reason="trustme (test extra) makes the TLS certificates")

RSS_BOUND = 16 * 1024 * 1024  # generous: allocator noise, not a leak of a few bytes per event


def test_churn_callbacks_and_timers_return_fds_and_memory(loop: ferroloop.Loop) -> None:
    tls = soak.tls_contexts()
    loop.run_until_complete(soak.churn(300, tls, seed=1))  # warm-up: caches, allocator arenas
    gc.collect()
    fds, rss = soak.open_fds(), soak.rss_bytes()
    counts = loop.run_until_complete(soak.churn(1500, tls, seed=2))
    assert set(counts) == set(soak.MODES) and all(counts.values())
    assert loop.run_until_complete(soak.callbacks(300_000)) == 300_001
    assert loop.run_until_complete(soak.timers(50_000)) == 25_000
    gc.collect()
    assert soak.open_fds() == fds
    assert soak.rss_bytes() - rss < RSS_BOUND


def test_a_writer_ignoring_pause_writing_buffers_only_what_it_wrote(loop: ferroloop.Loop) -> None:
    fds = soak.open_fds()
    written, peak = loop.run_until_complete(soak.ignored_backpressure(8 * 1024 * 1024))
    assert written - 4 * 1024 * 1024 < peak <= written  # the kernel took at most a few MB
    assert soak.open_fds() == fds
