"""The trace: record a run in the Rust ring buffer, then write it as Chrome trace-event JSON
(opens in https://ui.perfetto.dev) and as a self-contained HTML page with an SVG timeline.

    with ferroloop.trace("run.json"):        # every ferroloop loop running or made meanwhile
        asyncio.run(main())                  # (with ferroloop installed) or ferroloop.run(main())

The Rust side records fixed-size events with ids (`src/trace.rs`); this module turns the ids
into names when the trace is written. Event payloads, by kind (see `Kind` in `src/trace.rs`):

    callback_start  a=handle id  b=timer when (f64 bits, 0 if not a timer)  label=callback
    callback_end    a=handle id  b=(awaited future's type label) << 32 | awaited task id
                    label=innermost coroutine the task is suspended in (task steps)
    call_soon       a=new handle id  b=handle running at the time (0: none)  task=target task
    threadsafe      a=new handle id  b=calling thread's ident  task=target task
    timer_scheduled a=timer handle id  b=when (f64 bits)  task=running task
    timer_cancelled a=timer handle id  (ts: when it was cancelled)
    task_created    task=new task  b=creating task (0: none)
    task_done       task  a=1 result / 2 cancelled / 3 exception
    poll_wait       ts=start  a=duration ns  b=events returned
    iteration       a=ready-queue depth
    io              a=fd  b=bytes  label=read / write / pause_* / resume_* (a read of 0: EOF),
                    or readable / writable (the poller's readiness report, b unused)
"""

from __future__ import annotations

import html
import json
import os
import struct
import time
import weakref
from asyncio import events
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _core
from ._instrument import DEFAULT_TRACE_EVENTS, runner

if TYPE_CHECKING:
    from ._loop import Loop


_KINDS, _IO_KINDS, _EVENT_BYTES = _core.LoopCore._trace_format()


class _K:
    """Event kind codes, as the Rust side numbers them."""

    callback_start = _KINDS["callback_start"]
    callback_end = _KINDS["callback_end"]
    call_soon = _KINDS["call_soon"]
    threadsafe = _KINDS["threadsafe"]
    timer_scheduled = _KINDS["timer_scheduled"]
    task_created = _KINDS["task_created"]
    task_done = _KINDS["task_done"]
    poll_wait = _KINDS["poll_wait"]
    iteration = _KINDS["iteration"]
    io = _KINDS["io"]
    timer_cancelled = _KINDS["timer_cancelled"]


_IO_NAMES = {code: name for name, code in _IO_KINDS.items()}
_RECORD = struct.Struct("<QQQII")  # ts, a, b, task, label | kind << 24
assert _RECORD.size == _EVENT_BYTES, "trace event layout differs between Rust and Python"

_OUTCOMES = {1: "done", 2: "cancelled", 3: "raised"}

#: What a full buffer gives up: its oldest events (the default), or the newest.
DROP_POLICIES = ("oldest", "newest")

# Track ids within a loop's process in the trace.
TRACK_CALLBACKS, TRACK_POLLER, TRACK_IO, TRACK_TIMERS = 1, 2, 3, 4
TASK_TRACK_BASE = 100


@dataclass
class Recording:
    """What one loop recorded, with its names."""

    events: list[tuple[int, int, int, int, int, int]]
    dropped: int
    drop: str  # which events a full buffer gave up: "oldest" or "newest"
    labels: list[str]
    tasks: list[dict[str, Any]]
    title: str
    # fd -> (since when, in loop-clock ns, the transport's name) for the transports seen
    transports: dict[int, list[tuple[int, str]]] = field(default_factory=dict)


@dataclass
class Slice:
    track: int
    name: str
    start: float  # microseconds from the trace's start
    dur: float
    kind: str  # step, timer, callback, poll
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Flow:
    from_track: int
    from_ts: float
    to_track: int
    to_ts: float


@dataclass
class Instant:
    track: int
    name: str
    ts: float
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timeline:
    """A recording turned into named tracks, slices, flow arrows and marks."""

    title: str
    tracks: dict[int, str]
    slices: list[Slice]
    flows: list[Flow]
    instants: list[Instant]
    ready_depth: list[tuple[float, int]]
    dropped: int
    drop: str
    end: float


def _f64(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def _task_title(task: dict[str, Any]) -> str:
    return f"{task['name']}: {task['coro']}()"


def build_timeline(rec: Recording, base_ns: int) -> Timeline:
    def us(ns: float) -> float:
        return (ns - base_ns) / 1000.0

    def label(i: int) -> str:
        return rec.labels[i - 1] if 0 < i <= len(rec.labels) else "?"

    tasks = {t["id"]: t for t in rec.tasks}
    tracks = {
        TRACK_CALLBACKS: "loop: callbacks",
        TRACK_POLLER: "loop: poller",
        TRACK_IO: "loop: I/O",
        TRACK_TIMERS: "loop: timers",
    }

    def track_of(task_id: int) -> int:
        if task_id and task_id in tasks:
            tracks.setdefault(TASK_TRACK_BASE + task_id, _task_title(tasks[task_id]))
            return TASK_TRACK_BASE + task_id
        return TRACK_CALLBACKS

    slices: list[Slice] = []
    flows: list[Flow] = []
    instants: list[Instant] = []
    depth: list[tuple[float, int]] = []
    # handle id -> (ts, track, waker's label, waker's timer `when` bits) of the call_soon
    # that queued it from inside a callback
    queued_by: dict[int, tuple[float, int, str, int]] = {}
    timers: dict[int, tuple[float, float]] = {}  # handle id -> (scheduled at, when) in us
    open_cb: tuple[int, int, int, int, int, int] | None = None
    step_delay: float | None = None
    first_read: tuple[int, int] | None = None  # (fd, bytes) of the running callback's first read
    last_ts = rec.events[-1][0] if rec.events else base_ns

    for ev in rec.events:
        ts, a, b, task, lab, kind = ev
        t = us(ts)
        if kind == _K.callback_start:
            open_cb = ev
            step_delay = None
            first_read = None
        elif kind == _K.callback_end:
            if open_cb is None or open_cb[1] != a:
                continue  # its start was dropped or came before the trace began
            slices.append(_callback_slice(open_cb, ev, us, label, tasks, track_of, step_delay))
            start = slices[-1]
            if first_read is not None and start.kind == "callback" and start.name.endswith("._read_ready"):
                _name_after_the_read(start, first_read, _transport_at(rec.transports, first_read[0], ts))
            source = queued_by.pop(a, None)
            if source is not None:
                flows.append(Flow(source[1], source[0], start.track, start.start))
                start.args["woken_by"] = source[2]
                if source[3]:
                    start.args["waker_timer_when_us"] = round(us(_f64(source[3]) * 1e9), 3)
            if open_cb[2]:
                timer = timers.pop(a, None)
                if timer is not None:
                    start.args["scheduled_at_us"] = round(timer[0], 3)
            open_cb = None
        elif kind == _K.call_soon:
            if b and open_cb is not None and open_cb[1] == b:
                waker = tracks[track_of(open_cb[3])] if open_cb[3] else label(open_cb[4])
                queued_by[a] = (t, track_of(open_cb[3]), waker, open_cb[2])
        elif kind == _K.threadsafe:
            instants.append(Instant(TRACK_CALLBACKS, "call_soon_threadsafe", t, {"thread": b}))
            queued_by[a] = (t, TRACK_CALLBACKS, f"thread {b}", 0)
        elif kind == _K.timer_scheduled:
            when = _f64(b)
            timers[a] = (t, (when * 1e9 - base_ns) / 1000.0)
            step_delay = when - ts / 1e9
            instants.append(
                Instant(
                    TRACK_TIMERS,
                    f"timer scheduled (+{step_delay:.3f} s)",
                    t,
                    {"when_us": round(timers[a][1], 3), "by": tracks.get(track_of(task), "")},
                )
            )
        elif kind == _K.timer_cancelled:
            timer = timers.pop(a, None)
            args = {} if timer is None else {"when_us": round(timer[1], 3), "scheduled_at_us": round(timer[0], 3)}
            instants.append(Instant(TRACK_TIMERS, "timer cancelled", t, args))
        elif kind == _K.task_created:
            info = tasks.get(task, {})
            parent = tasks.get(b)
            instants.append(
                Instant(
                    track_of(task),
                    "created",
                    t,
                    {
                        "created_at": info.get("created_at", "?"),
                        "created_by": _task_title(parent) if parent else "(no task)",
                    },
                )
            )
        elif kind == _K.task_done:
            instants.append(Instant(track_of(task), _OUTCOMES.get(a, "done"), t))
        elif kind == _K.poll_wait:
            slices.append(Slice(TRACK_POLLER, f"poll: {b} events", t, a / 1000.0, "poll", {"events": b}))
        elif kind == _K.iteration:
            depth.append((t, a))
        elif kind == _K.io:
            what = _IO_NAMES.get(lab, "io")
            if what == "read" and open_cb is not None and first_read is None:
                first_read = (a, b)
            name = f"{what} {b} B" if what in ("read", "write") else what
            if what == "read" and b == 0:
                name = "read: EOF"
            elif what in ("readable", "writable"):
                name = f"fd {a} {what}"
            instants.append(Instant(TRACK_IO, name, t, {"fd": a, "bytes": b}))
    if open_cb is not None:
        end = (open_cb[0], open_cb[1], 0, open_cb[3], 0, _K.callback_end)
        slices.append(_callback_slice(open_cb, end, us, label, tasks, track_of, step_delay))
        end_ts = max(last_ts, open_cb[0])
        slices[-1].dur = us(end_ts) - slices[-1].start
    return Timeline(rec.title, tracks, slices, flows, instants, depth, rec.dropped, rec.drop, us(last_ts))


def _callback_slice(start_ev, end_ev, us, label, tasks, track_of, step_delay) -> Slice:  # type: ignore[no-untyped-def]
    ts, handle, when_bits, task, lab, _ = start_ev
    end_ts, _, awaited_task, _, awaited, _ = end_ev
    track = track_of(task)
    args: dict[str, Any] = {"callback": label(lab)}
    if task and task in tasks:
        info = tasks[task]
        name = f"{info['name']} step: {info['coro']}()"
        kind = "step"
        if awaited:
            args["awaits"] = _awaits(
                label(awaited),
                info["coro"],
                label(awaited_task >> 32) if awaited_task >> 32 else "",
                tasks.get(awaited_task & 0xFFFFFFFF),
                step_delay,
            )
    elif when_bits:
        when = _f64(when_bits)
        name = f"TimerHandle {label(lab)}"
        kind = "timer"
        args["when_us"] = round(us(when * 1e9), 3)
        args["late_by_us"] = round((ts - when * 1e9) / 1000.0, 3)
    else:
        name = label(lab)
        kind = "callback"
    return Slice(track, name, us(ts), max(0.0, (end_ts - ts) / 1000.0), kind, args)


def _transport_at(transports: dict[int, list[tuple[int, str]]], fd: int, ts: int) -> str:
    """The name of the transport that had `fd` at `ts` (fd numbers are reused)."""
    named = [name for since, name in transports.get(fd, ()) if since <= ts]
    return named[-1] if named else f"fd {fd}"


def _name_after_the_read(callback: Slice, read: tuple[int, int], transport: str) -> None:
    """A transport's read callback is named after what it delivered, and to whom:
    `data_received on SocketTransport(fd 7, peer ('127.0.0.1', 5000))`."""
    fd, nbytes = read
    callback.name = f"{'data_received' if nbytes else 'eof_received'} on {transport}"
    callback.args["fd"] = fd


def _awaits(
    innermost: str,
    task_coro: str,
    future_type: str,
    awaited_task: dict[str, Any] | None,
    timer_delay: float | None,
) -> str:
    """What a task waits on after a step, in words: `sleep(1)`, `Queue.get`, `task Task-3:
    worker()`, `_GatheringFuture`, ..."""
    if awaited_task is not None:
        return f"task {_task_title(awaited_task)}"
    if innermost == "sleep" and timer_delay is not None:
        return f"sleep({timer_delay:.3g})"
    if innermost == "__bare_yield":
        return "sleep(0) (a bare yield)"
    if innermost == task_coro:
        return future_type or "a bare yield"
    return innermost


def chrome_trace(timelines: list[Timeline]) -> dict[str, Any]:
    """Chrome trace-event JSON (the format ui.perfetto.dev and chrome://tracing open)."""
    out: list[dict[str, Any]] = []
    flow_id = 0
    for pid, tl in enumerate(timelines, start=1):
        out.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": tl.title}})
        for tid, name in tl.tracks.items():
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        if tl.dropped:
            which = "older" if tl.drop == "oldest" else "newer"
            out.append(
                {
                    "ph": "i",
                    "s": "p",
                    "name": f"{tl.dropped} {which} events dropped (buffer full)",
                    "pid": pid,
                    "tid": TRACK_CALLBACKS,
                    # where the gap is: before the first event kept, or after the last
                    "ts": 0 if tl.drop == "oldest" else round(tl.end, 3),
                }
            )
        for s in tl.slices:
            out.append(
                {
                    "ph": "X",
                    "name": s.name,
                    "cat": s.kind,
                    "pid": pid,
                    "tid": s.track,
                    "ts": round(s.start, 3),
                    "dur": round(s.dur, 3),
                    "args": s.args,
                }
            )
        for i in tl.instants:
            out.append(
                {"ph": "i", "s": "t", "name": i.name, "pid": pid, "tid": i.track, "ts": round(i.ts, 3), "args": i.args}
            )
        for f in tl.flows:
            flow_id += 1
            out.append(
                {
                    "ph": "s",
                    "id": flow_id,
                    "name": "wakes",
                    "cat": "wakeup",
                    "pid": pid,
                    "tid": f.from_track,
                    "ts": round(f.from_ts, 3),
                }
            )
            out.append(
                {
                    "ph": "f",
                    "bp": "e",
                    "id": flow_id,
                    "name": "wakes",
                    "cat": "wakeup",
                    "pid": pid,
                    "tid": f.to_track,
                    "ts": round(f.to_ts, 3),
                }
            )
        for ts, depth in tl.ready_depth:
            out.append({"ph": "C", "name": "ready queue", "pid": pid, "ts": round(ts, 3), "args": {"callbacks": depth}})
    return {
        "traceEvents": out,
        "displayTimeUnit": "ms",
        "otherData": {
            "producer": "ferroloop",
            "dropped_events": sum(tl.dropped for tl in timelines),
            "dropped_when_full": timelines[0].drop if timelines else DROP_POLICIES[0],
        },
    }


# ---- the picture ------------------------------------------------------------------------

_COLORS = {"step": "#4e79a7", "timer": "#f28e2b", "callback": "#59a14f", "poll": "#bab0ac"}
MAX_DRAWN_SLICES = 4000


def svg_timeline(tl: Timeline, width: int = 1100) -> str:
    """The timeline as one SVG: a row per task and per loop track, time to the right, flow
    arrows from the callback that woke a task to the step it woke."""
    rows = [tid for tid in sorted(tl.tracks) if tid >= TASK_TRACK_BASE] + [
        TRACK_TIMERS,
        TRACK_CALLBACKS,
        TRACK_POLLER,
        TRACK_IO,
    ]
    rows = [r for r in rows if any(s.track == r for s in tl.slices) or any(i.track == r for i in tl.instants)]
    label_w, row_h, top = 230, 26, 34
    plot_w = width - label_w - 20
    height = top + row_h * len(rows) + 40
    y_of = {tid: top + i * row_h for i, tid in enumerate(rows)}
    axis = _CompressedAxis(tl, label_w, plot_w)
    x = axis.x

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        '<defs><marker id="arrow" markerWidth="6" markerHeight="6" refX="5" refY="3" '
        'orient="auto"><path d="M0,0 L6,3 L0,6 z" fill="#e15759"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="8" y="18" font-size="13" font-weight="bold">{html.escape(tl.title)}</text>',
    ]
    for tid in rows:
        y = y_of[tid]
        parts.append(
            f'<rect x="0" y="{y}" width="{width}" height="{row_h}" '
            f'fill="{"#f7f7f7" if rows.index(tid) % 2 else "white"}"/>'
        )
        parts.append(f'<text x="8" y="{y + row_h * 0.65:.1f}">{html.escape(tl.tracks[tid][:36])}</text>')
    axis_y = top + row_h * len(rows) + 4
    last_label = -1e9
    for start, end in axis.clusters:
        for t in (start, end):
            parts.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{axis_y}" stroke="#ddd"/>')
        if x(start) - last_label >= 70:  # label the bursts there is room for
            parts.append(f'<text x="{x(start):.1f}" y="{axis_y + 14}">{_fmt_us(start)}</text>')
            last_label = x(start)
    for start, end in axis.gaps:
        mid = (axis.x(start) + axis.x(end)) / 2
        band = max(0.0, axis.x(end) - axis.x(start) - 4)
        parts.append(
            f'<rect x="{axis.x(start) + 2:.1f}" y="{top}" width="{band:.1f}" '
            f'height="{axis_y - top}" fill="#eee" opacity="0.6"><title>{_fmt_us(end - start)} '
            "with nothing to run: cut out of the time axis</title></rect>"
        )
        parts.append(
            f'<text x="{mid:.1f}" y="{top - 4}" text-anchor="middle" fill="#888" font-size="9">'
            f"{_fmt_us(end - start)}</text>"
        )
    if axis.gaps:
        parts.append(
            f'<text x="{width - 8}" y="18" text-anchor="end" fill="#888">grey bands: idle time '
            "cut out of the axis (their length above them)</text>"
        )
    drawn = tl.slices[:MAX_DRAWN_SLICES]
    for s in drawn:
        if s.track not in y_of:
            continue
        y = y_of[s.track] + 4
        w = max(1.0, x(s.start + s.dur) - x(s.start))
        tip = html.escape(
            f"{s.name} — {_fmt_us(s.dur)} at {_fmt_us(s.start)}" + "".join(f"\n{k}: {v}" for k, v in s.args.items())
        )
        parts.append(
            f'<rect x="{x(s.start):.2f}" y="{y}" width="{w:.2f}" height="{row_h - 8}" '
            f'fill="{_COLORS[s.kind]}"><title>{tip}</title></rect>'
        )
    for i in tl.instants[:MAX_DRAWN_SLICES]:
        if i.track not in y_of:
            continue
        y = y_of[i.track]
        tip = html.escape(i.name + "".join(f"\n{k}: {v}" for k, v in i.args.items()))
        parts.append(f'<path d="M{x(i.ts):.2f},{y + 3} l4,6 l-8,0 z" fill="#76b7b2"><title>{tip}</title></path>')
    for f in tl.flows[:MAX_DRAWN_SLICES]:
        if f.from_track not in y_of or f.to_track not in y_of or f.from_track == f.to_track:
            continue
        parts.append(
            f'<line x1="{x(f.from_ts):.2f}" y1="{y_of[f.from_track] + row_h / 2}" '
            f'x2="{x(f.to_ts):.2f}" y2="{y_of[f.to_track] + row_h / 2}" stroke="#e15759" '
            f'stroke-width="1" marker-end="url(#arrow)" opacity="0.8"/>'
        )
    legend_y = height - 8
    lx = label_w
    for kind, color in (
        ("task step", _COLORS["step"]),
        ("timer callback", _COLORS["timer"]),
        ("other callback", _COLORS["callback"]),
        ("poller wait", _COLORS["poll"]),
        ("wake-up", "#e15759"),
        ("event", "#76b7b2"),
    ):
        parts.append(f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="{legend_y}">{kind}</text>')
        lx += 120
    if len(tl.slices) > MAX_DRAWN_SLICES:
        parts.append(f'<text x="8" y="{legend_y}">first {MAX_DRAWN_SLICES} of {len(tl.slices)} slices</text>')
    parts.append("</svg>")
    return "\n".join(parts)


class _CompressedAxis:
    """Time to x, with the long stretches where nothing but the poller's wait happens cut
    down to a fixed-width band: asyncio programs are bursts of microseconds between waits of
    milliseconds or seconds, and a linear axis would draw the bursts as hairlines."""

    GAP_WIDTH = 46.0
    MAX_CLUSTERS = 24

    def __init__(self, tl: Timeline, left: float, width: float) -> None:
        spans = sorted(
            [(s.start, s.start + s.dur) for s in tl.slices if s.kind != "poll"] + [(i.ts, i.ts) for i in tl.instants]
        ) or [(0.0, max(tl.end, 1.0))]
        total = max(spans[-1][1] - spans[0][0], 1.0)
        gaps: list[tuple[float, float]] = []
        reach = spans[0][1]
        for start, end in spans[1:]:
            if start > reach:
                gaps.append((reach, start))
            reach = max(reach, end)
        # Only the longest gaps are cut: at most MAX_CLUSTERS bursts, each gap over 2% of the run.
        gaps = sorted(g for g in gaps if g[1] - g[0] > 0.02 * total)
        gaps = sorted(sorted(gaps, key=lambda g: g[0] - g[1])[: self.MAX_CLUSTERS - 1])
        edges = [spans[0][0]] + [t for g in gaps for t in g] + [reach]
        self.clusters = [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
        self.gaps = gaps
        busy = [max(end - start, 0.0) for start, end in self.clusters]
        pad = max(sum(busy), 1.0) * 0.15 / len(busy) + 1.0
        room = width - self.GAP_WIDTH * len(gaps)
        weights = [b + pad for b in busy]
        self._segments: list[tuple[float, float, float, float]] = []  # t0, t1, x0, x1
        xpos = left
        for (start, end), w in zip(self.clusters, weights):
            cw = room * w / sum(weights)
            self._segments.append((start - pad / 2, end + pad / 2, xpos, xpos + cw))
            xpos += cw + self.GAP_WIDTH

    def x(self, t: float) -> float:
        segs = self._segments
        for i, (t0, t1, x0, x1) in enumerate(segs):
            if t <= t1:
                if t >= t0:
                    return x0 + (x1 - x0) * (t - t0) / max(t1 - t0, 1e-9)
                if i == 0:
                    return x0
                pt1, px1 = segs[i - 1][1], segs[i - 1][3]
                return px1 + (x0 - px1) * (t - pt1) / max(t0 - pt1, 1e-9)  # inside a cut gap
        return segs[-1][3]


def _fmt_us(t: float) -> str:
    if t >= 1e6:
        return f"{t / 1e6:.3g} s"
    if t >= 1e3:
        return f"{t / 1e3:.3g} ms"
    return f"{t:.3g} us"


def html_page(timelines: list[Timeline], json_name: str) -> str:
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ferroloop trace</title>",
        "<style>body{font-family:sans-serif;margin:20px} td,th{padding:2px 8px;text-align:left}"
        " tr:nth-child(even){background:#f4f4f4}</style></head><body>",
        "<h1>ferroloop trace</h1>",
        f"<p>The full trace is <code>{html.escape(json_name)}</code>: open it in "
        "<a href='https://ui.perfetto.dev'>ui.perfetto.dev</a>. Hover a slice for details.</p>",
    ]
    for tl in timelines:
        steps: dict[int, list[Slice]] = {}
        for s in tl.slices:
            if s.track >= TASK_TRACK_BASE:
                steps.setdefault(s.track, []).append(s)
        body.append(svg_timeline(tl))
        body.append(
            f"<p>{len(tl.slices)} slices, {len(tl.flows)} wake-ups, {tl.dropped} events dropped ({tl.drop} first).</p>"
        )
        body.append("<table><tr><th>task</th><th>steps</th><th>busy</th><th>awaits (last step)</th></tr>")
        for tid, ss in sorted(steps.items()):
            busy = sum(s.dur for s in ss)
            body.append(
                f"<tr><td>{html.escape(tl.tracks[tid])}</td><td>{len(ss)}</td><td>{_fmt_us(busy)}</td>"
                f"<td>{html.escape(str(ss[-1].args.get('awaits', '')))}</td></tr>"
            )
        body.append("</table>")
    body.append("</body></html>")
    return "\n".join(body)


# ---- recording ---------------------------------------------------------------------------


def _records(data: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    for ts, a, b, task, kind_label in _RECORD.iter_unpack(data):
        yield ts, a, b, task, kind_label & 0xFFFFFF, kind_label >> 24


def _timestamp(event: tuple[int, int, int, int, int, int]) -> int:
    return event[0]


def _transport_name(fd: int, transport: Any) -> str:
    """A transport's type and peer: `SocketTransport(fd 7, peer ('127.0.0.1', 5000))`."""
    peer = transport.get_extra_info("peername")
    return f"{type(transport).__name__}(fd {fd}" + (f", peer {peer!r})" if peer else ")")


class TraceSession:
    """Record every ferroloop loop that runs or is created inside the `with` block; write the
    trace when it ends (also when the block raises)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        buffer_size: int = DEFAULT_TRACE_EVENTS,
        drop: str = "oldest",
        duration: float | None = None,
        html: bool = True,
    ) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive number of events, not {buffer_size!r}")
        if drop not in DROP_POLICIES:
            raise ValueError(f"drop must be 'oldest' or 'newest', not {drop!r}")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration > 0
        ):
            raise ValueError(f"duration must be a positive number of seconds, not {duration!r}")
        self.path = os.fspath(path)
        self.html_path = os.path.splitext(self.path)[0] + ".html" if html else None
        self.buffer_size = buffer_size
        self.drop = drop
        self.duration = duration
        self.recordings: list[Recording] = []
        self._loops: weakref.WeakSet[Loop] = weakref.WeakSet()
        # the transports each traced loop had or made (see `Recording.transports`)
        self._transports: weakref.WeakKeyDictionary[Loop, dict[int, list[tuple[int, str]]]] = (
            weakref.WeakKeyDictionary()
        )
        self._previous: Any = None

    def attach(self, loop: Loop) -> None:
        if loop in self._loops or loop.is_closed():
            return
        loop._trace_start(self.buffer_size, drop_newest=self.drop == "newest")
        loop._trace_session = self
        self._loops.add(loop)
        known = self._transports.setdefault(loop, {})
        for fd, transport in list(loop._transports.items()):
            known.setdefault(fd, []).append((0, _transport_name(fd, transport)))
        if self.duration is not None:
            loop.call_later(self.duration, self.collect, loop)

    def note_transport(self, loop: Loop, fd: int, transport: Any) -> None:
        """A transport was made on a traced loop: its read callbacks are named after it."""
        name = _transport_name(fd, transport)
        self._transports.setdefault(loop, {}).setdefault(fd, []).append((time.monotonic_ns(), name))

    def collect(self, loop: Loop) -> None:
        """Stop recording `loop` and keep what it recorded."""
        if loop._trace_session is not self:
            return
        loop._trace_session = None
        self._loops.discard(loop)
        stopped = loop._trace_stop()
        if stopped is None:
            return
        transports = self._transports.pop(loop, {})
        data, dropped = stopped
        self.recordings.append(
            Recording(
                # In timestamp order: a few kinds reach the ring after later events (a timer's
                # cancellation at the next iteration, a poll's wait once it returned, a call from
                # another thread during it); the sort is stable, so events of one timestamp keep
                # the order they were recorded in (a callback's end before the next one's start).
                events=sorted(_records(data), key=_timestamp),
                dropped=dropped,
                drop=self.drop,
                labels=list(loop._trace_labels()),
                tasks=loop._task_records(),
                transports=transports,
                title=f"ferroloop loop {len(self.recordings) + 1}",
            )
        )
        if not loop._task_stats_enabled():
            loop._set_task_stats(False)  # forget the task records the trace needed

    def __enter__(self) -> TraceSession:
        self._previous = runner.trace_session
        runner.trace_session = self
        running = events._get_running_loop()
        if isinstance(running, _core.LoopCore):
            self.attach(running)
        return self

    def __exit__(self, *exc_info: object) -> None:
        runner.trace_session = self._previous
        for loop in list(self._loops):
            self.collect(loop)
        self.write()

    def timelines(self) -> list[Timeline]:
        base = min((r.events[0][0] for r in self.recordings if r.events), default=0)
        return [build_timeline(r, base) for r in self.recordings]

    def write(self) -> None:
        timelines = self.timelines()
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(chrome_trace(timelines), f)
        if self.html_path is not None:
            with open(self.html_path, "w", encoding="utf-8") as f:
                f.write(html_page(timelines, os.path.basename(self.path)))
