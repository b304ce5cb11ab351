//! The loop's instruments: always-on statistics, and the hooks that run only while per-task
//! statistics, the blocking detector or the trace are switched on.
//!
//! Loop thread with the GIL held (the statistics' atomics are also read by `loop.stats()` on
//! any thread, and by the watchdog). When everything optional is off, the loop pays one flag
//! read per iteration and per `call_soon`, and one integer add per counted event; the hooks in
//! this file are called only when the flag says so. Instrumentation never fails a callback:
//! its own errors are reported as unraisable.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyWeakrefReference};

use crate::blocking::{self, Watch};
use crate::callback_identity::{self, LabelTable};
use crate::clock::{monotonic_ns, to_ns, StepClock};
use crate::gil_cell::GilCell;
use crate::handles::Handle;
use crate::stats::{CancelCounts, LoopStats};
use crate::support;
use crate::sys::{Event, WAKER_TOKEN};
use crate::task_table::{self, TaskTable};
use crate::trace::{IoKind, Kind, Overflow, TraceEvent, TraceRing};

/// Per-task statistics (and task identities).
pub const TASKS: u8 = 1;
/// The blocking detector.
pub const BLOCKING: u8 = 2;
/// The trace (implies per-task identities).
pub const TRACE: u8 = 4;

/// A handle's `instrument_tag`: 0 when nothing is known yet; the id of the Task it steps; or
/// `NOT_A_TASK` with the label of its callback in the low bits (0: not named yet). A handle's
/// callback never changes, so neither does what its tag says; a task id whose task has gone
/// (or whose record was cleared) finds nothing, and the handle is looked at afresh.
const NOT_A_TASK: u32 = 1 << 31;

#[derive(Clone, Copy, Default)]
struct Running {
    handle: u64,
    task: u32,
    /// How many times the running task queued its own next step during this step.
    self_wakes: u32,
    /// When it first did, while the trace is on (0: not yet, or not traced: then the step's
    /// end, whose time is read anyway, counts as its wake-up).
    self_woken_ns: u64,
    /// The address of the running task (0: none), which a step that wakes itself names again.
    task_addr: usize,
}

/// A callback `begin_callback` saw start, for `end_callback`.
pub struct Started<'py> {
    /// The instruments on when it started (the callback may switch them).
    flags: u8,
    start: u64,
    handle_id: u64,
    task: u32,
    task_obj: Option<Bound<'py, PyAny>>,
    outer: Running,
}

#[derive(Default)]
pub struct Instruments {
    flags: AtomicU8,
    pub stats: LoopStats,
    trace: GilCell<Option<TraceRing>>,
    tasks: GilCell<TaskTable>,
    labels: GilCell<LabelTable>,
    running: GilCell<Running>,
    watch: GilCell<Option<Arc<Watch>>>,
    /// The watch `watch` holds (null when the detector is off), for the stores around each
    /// callback without a borrow: set after `watch` takes its `Arc`, cleared before it lets
    /// it go, both with the GIL held, as every read is.
    watching: AtomicPtr<Watch>,
    /// The label id of a bare yield, once made.
    bare_yield: AtomicU32,
    /// When the last instrumented callback of this iteration ended (0: none yet).
    last_end: AtomicU64,
    /// The callbacks' start and end times.
    clock: StepClock,
}

fn report<T>(py: Python<'_>, result: PyResult<T>) -> Option<T> {
    result.map_err(|err| err.write_unraisable(py, None)).ok()
}

impl Instruments {
    /// The optional instruments switched on (0: none).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.flags.load(Relaxed)
    }

    /// Whether tasks are followed (per-task statistics or the trace): `call_soon` then reports
    /// each queued callback.
    #[inline]
    pub fn follows_tasks(&self) -> bool {
        self.flags() & (TASKS | TRACE) != 0
    }

    fn set_flag(&self, flag: u8, on: bool) {
        let flags = self.flags();
        self.flags
            .store(if on { flags | flag } else { flags & !flag }, Relaxed);
    }

    #[inline]
    fn trace_event(&self, py: Python<'_>, event: TraceEvent) {
        self.trace.with_borrow_mut(py, |ring| {
            if let Some(ring) = ring {
                ring.push(event);
            }
        });
    }

    /// The id of `task`, recording it first if it is new (then it was just created, or
    /// existed before instrumentation started).
    fn task_id(&self, task: &Bound<'_, PyAny>, now_ns: u64) -> PyResult<u32> {
        let py = task.py();
        if let Some(id) = self.tasks.with_borrow(py, |v| v.find(task)) {
            return Ok(id);
        }
        let identity = task_table::task_identity(&self.tasks, task)?;
        let weak = PyWeakrefReference::new(task)?.into_any();
        let parent = self.running.with_borrow(py, |v| v.task);
        let id = self
            .tasks
            .with_borrow_mut(py, |v| v.add(task, weak, identity, parent, now_ns));
        if self.flags() & TRACE != 0 {
            self.trace_event(
                py,
                TraceEvent {
                    ts: now_ns,
                    kind: Kind::TaskCreated as u8,
                    task: id,
                    b: u64::from(parent),
                    ..Default::default()
                },
            );
        }
        Ok(id)
    }

    /// `call_soon`/`call_soon_threadsafe` queued `handle` (tasks followed). The common case
    /// first, inline: the running task queueing its own next step (a bare yield, `sleep(0)`)
    /// is recognised by the address its callback is bound to, and is woken at the end of this
    /// step (no type check, no table lookup; untraced, no clock read of its own).
    #[inline]
    pub fn on_call_soon(&self, handle: &Bound<'_, Handle>, threadsafe: bool) {
        let py = handle.py();
        if !threadsafe {
            let owner = handle.get().callback_owner_addr(py);
            let tracing = self.flags() & TRACE != 0;
            if let Some(running) = self.woke_itself(py, owner, tracing) {
                handle.get().instrument_tag.store(running.task, Relaxed);
                if tracing {
                    self.trace_event(
                        py,
                        TraceEvent {
                            ts: running.self_woken_ns,
                            kind: Kind::CallSoon as u8,
                            a: handle.as_ptr() as u64,
                            b: running.handle,
                            task: running.task,
                            label: 0,
                        },
                    );
                }
                return;
            }
        }
        self.identify_queued(handle, threadsafe);
    }

    /// If the object at `owner` is the running task, count its self-wake and return the
    /// running callback, with `self_woken_ns` this wake-up's time when `tracing`.
    #[inline]
    fn woke_itself(&self, py: Python<'_>, owner: usize, tracing: bool) -> Option<Running> {
        self.running.with_borrow_mut(py, |r| {
            if r.task == 0 || owner != r.task_addr {
                return None;
            }
            r.self_wakes += 1;
            let mut running = *r;
            if tracing {
                running.self_woken_ns = self.clock.now();
                if r.self_woken_ns == 0 {
                    r.self_woken_ns = running.self_woken_ns;
                }
            }
            Some(running)
        })
    }

    #[inline(never)]
    fn identify_queued(&self, handle: &Bound<'_, Handle>, threadsafe: bool) {
        let py = handle.py();
        let tracing = self.flags() & TRACE != 0;
        let running = self.running.with_borrow(py, |v| *v);
        let callback = handle.get().callback(py);
        let owner = callback_identity::bound_self(&callback);
        let by_itself = !threadsafe
            && running.task != 0
            && owner
                .as_ref()
                .is_some_and(|o| o.as_ptr() as usize == running.task_addr);
        if by_itself && !tracing {
            // Bound in a way only `bound_self` reads; counted as in `on_call_soon`.
            self.woke_itself(py, running.task_addr, false);
            handle.get().instrument_tag.store(running.task, Relaxed);
            return;
        }
        // The clock is read only for a task's wake-up or the trace: most callbacks queued
        // are neither. On the loop thread that is the callbacks' own clock (a callback queued
        // inside another is stamped within its span); another thread reads the system's.
        let clock_now = || {
            if threadsafe {
                monotonic_ns()
            } else {
                self.clock.now()
            }
        };
        let mut now = 0;
        let task = match owner {
            _ if by_itself => running.task,
            Some(owner) if callback_identity::is_task(&owner) => {
                now = clock_now();
                report(py, self.task_id(&owner, now)).unwrap_or(0)
            }
            _ => 0,
        };
        if now == 0 && (task != 0 || tracing) {
            now = clock_now();
        }
        let tag = if task == 0 { NOT_A_TASK } else { task };
        handle.get().instrument_tag.store(tag, Relaxed);
        if task != 0 {
            self.tasks
                .with_borrow_mut(py, |v| v.woken(task, now, by_itself));
        }
        if tracing {
            let (kind, b) = if threadsafe {
                // SAFETY: returns the calling thread's ident; no preconditions.
                let ident = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
                (Kind::Threadsafe, ident as u64)
            } else {
                (Kind::CallSoon, running.handle)
            };
            self.trace_event(
                py,
                TraceEvent {
                    ts: now,
                    kind: kind as u8,
                    a: handle.as_ptr() as u64,
                    b,
                    task,
                    label: 0,
                },
            );
        }
    }

    /// A timer was scheduled (trace on), at `read_at` when its `when` was computed from that.
    pub fn on_timer_scheduled(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, PyAny>,
        when: f64,
        read_at: Option<f64>,
    ) {
        {
            self.trace_event(
                py,
                TraceEvent {
                    ts: read_at.map_or_else(monotonic_ns, to_ns),
                    kind: Kind::TimerScheduled as u8,
                    a: handle.as_ptr() as u64,
                    b: when.to_bits(),
                    task: self.running.with_borrow(py, |v| v.task),
                    label: 0,
                },
            );
        }
    }

    /// The poller waited from `start_ns` for `took_ns` and returned `events` (trace on):
    /// the wait, then each fd's readiness.
    pub fn on_poll(&self, py: Python<'_>, start_ns: u64, took_ns: u64, events: &[Event]) {
        self.trace.with_borrow_mut(py, |ring| {
            Self::push_poll(ring.as_mut(), start_ns, took_ns, events);
        });
    }

    fn push_poll(ring: Option<&mut TraceRing>, start_ns: u64, took_ns: u64, events: &[Event]) {
        let end = start_ns + took_ns;
        let Some(ring) = ring else {
            return;
        };
        ring.push(TraceEvent {
            ts: start_ns,
            kind: Kind::PollWait as u8,
            a: took_ns,
            b: events.len() as u64,
            ..Default::default()
        });
        for ev in events.iter().filter(|ev| ev.token != WAKER_TOKEN) {
            for (ready, kind) in [
                (ev.readable, IoKind::Readable),
                (ev.writable, IoKind::Writable),
            ] {
                if ready {
                    let (kind, label) = (Kind::Io as u8, kind as u32);
                    ring.push(TraceEvent {
                        ts: end,
                        kind,
                        a: ev.token,
                        label,
                        ..Default::default()
                    });
                }
            }
        }
    }

    /// An iteration is about to run `depth` ready callbacks (tasks followed); the timers
    /// cancelled since the last one go into the trace first.
    pub fn on_iteration(&self, py: Python<'_>, depth: usize, cancels: &CancelCounts) {
        let tracing = self.tracing();
        if !tracing && depth == 0 {
            self.last_end.store(0, Relaxed);
            return;
        }
        let now = self.clock.anchor();
        self.last_end.store(now, Relaxed); // also the first callback's start
        if !tracing {
            return;
        }
        self.record_cancels(py, cancels);
        self.trace_event(
            py,
            TraceEvent {
                ts: now,
                kind: Kind::Iteration as u8,
                a: depth as u64,
                ..Default::default()
            },
        );
    }

    /// A transport read or wrote `bytes` on `fd`, or changed its flow control. Inlined at
    /// each call: untraced, it is an add and a flag test.
    #[inline]
    pub fn on_io(&self, py: Python<'_>, kind: IoKind, fd: i32, bytes: usize) {
        match kind {
            IoKind::Read => self.stats.bytes_read.add(bytes as u64),
            IoKind::Write => self.stats.bytes_written.add(bytes as u64),
            _ => {}
        }
        if self.flags() & TRACE != 0 {
            self.trace_io(py, kind, fd, bytes);
        }
    }

    #[inline(never)]
    fn trace_io(&self, py: Python<'_>, kind: IoKind, fd: i32, bytes: usize) {
        let task = self.running.with_borrow(py, |v| v.task);
        self.trace_event(
            py,
            TraceEvent {
                ts: self.clock.now(),
                kind: Kind::Io as u8,
                a: fd as u64,
                b: bytes as u64,
                task,
                label: kind as u32,
            },
        );
    }

    /// A ready callback is about to run with the instruments that are on (call
    /// `end_callback` after it). `native` is the handle when it is one of ferroloop's (its tag
    /// saves looking at the callback again); `describe` gives what the handle calls and a
    /// timer's due time, and is asked only when that is needed.
    #[inline]
    pub fn begin_callback<'py>(
        &self,
        handle: &Bound<'py, PyAny>,
        native: Option<&Handle>,
        describe: impl FnOnce() -> PyResult<(Bound<'py, PyAny>, Option<f64>)>,
    ) -> PyResult<Started<'py>> {
        let flags = self.flags();
        let mut started = Started {
            flags,
            start: 0,
            handle_id: handle.as_ptr() as u64,
            task: 0,
            task_obj: None,
            outer: Running::default(),
        };
        if flags & (TASKS | TRACE) != 0 {
            self.begin_followed(handle, native, describe, &mut started)?;
        }
        if flags & BLOCKING != 0 {
            self.watch_begin(handle);
        }
        Ok(started)
    }

    #[inline]
    fn begin_followed<'py>(
        &self,
        handle: &Bound<'py, PyAny>,
        native: Option<&Handle>,
        describe: impl FnOnce() -> PyResult<(Bound<'py, PyAny>, Option<f64>)>,
        started: &mut Started<'py>,
    ) -> PyResult<()> {
        let py = handle.py();
        // The previous callback's end, when one just ended in this iteration: back-to-back
        // callbacks share a clock read.
        let start = match self.last_end.load(Relaxed) {
            0 => self.clock.now(),
            previous => {
                self.last_end.store(0, Relaxed);
                previous
            }
        };
        let (task_obj, task, label, when) = self.identify(handle, native, describe, start)?;
        if started.flags & TRACE != 0 {
            // A task step is named after its task when the trace is written.
            self.trace_event(
                py,
                TraceEvent {
                    ts: start,
                    kind: Kind::CallbackStart as u8,
                    a: started.handle_id,
                    b: when.map_or(0, f64::to_bits),
                    task,
                    label,
                },
            );
        }
        let task_addr = match &task_obj {
            Some(t) if task != 0 => t.as_ptr() as usize,
            _ => 0,
        };
        let running = Running {
            handle: started.handle_id,
            task,
            task_addr,
            ..Running::default()
        };
        started.outer = self
            .running
            .with_borrow_mut(py, |v| std::mem::replace(v, running));
        started.start = start;
        started.task = task;
        started.task_obj = task_obj;
        Ok(())
    }

    /// The callback `begin_callback` started has returned.
    // Always: left to itself the compiler calls it out of line, which costs more per task
    // step (measured with callgrind) than the rest of its common path.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn end_callback<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        handle: &Bound<'py, PyAny>,
        started: Started<'py>,
    ) {
        let py = handle.py();
        let flags = started.flags;
        if flags & BLOCKING != 0 {
            self.watch_end(event_loop, handle);
        }
        if flags & (TASKS | TRACE) == 0 {
            return;
        }
        let end = self.clock.now();
        self.last_end.store(end, Relaxed);
        let ran = self
            .running
            .with_borrow_mut(py, |v| std::mem::replace(v, started.outer));
        match started.task_obj.filter(|_| started.task != 0) {
            Some(task_obj) => {
                let span = (started.start, end);
                self.after_step(
                    &task_obj,
                    started.task,
                    started.handle_id,
                    span,
                    (ran.self_wakes, ran.self_woken_ns),
                    flags,
                );
            }
            None if flags & TRACE != 0 => self.end_event(py, started.handle_id, end, 0, 0, 0),
            None => {}
        }
    }

    /// The task a callback about to run at `now` steps (object and id, or None and 0; its step
    /// is started in the table), the label of its callback when it is not a task step and the
    /// trace is on (else 0), and a timer's due time. What the handle's tag already says is not
    /// looked up again; what is looked up is written to the tag.
    #[allow(clippy::type_complexity)]
    fn identify<'py>(
        &self,
        handle: &Bound<'py, PyAny>,
        native: Option<&Handle>,
        describe: impl FnOnce() -> PyResult<(Bound<'py, PyAny>, Option<f64>)>,
        now: u64,
    ) -> PyResult<(Option<Bound<'py, PyAny>>, u32, u32, Option<f64>)> {
        let py = handle.py();
        let tracing = self.flags() & TRACE != 0;
        let tag = native.map_or(0, |h| h.instrument_tag.load(Relaxed));
        if tag & NOT_A_TASK != 0 && (!tracing || tag != NOT_A_TASK) {
            let label = if tracing { tag & !NOT_A_TASK } else { 0 };
            return Ok((None, 0, label, None));
        }
        if tag != 0 && tag & NOT_A_TASK == 0 {
            // The tag was taken from the object this handle's callback is bound to, so that
            // object is the task: read from the callback, which is about to run, rather than
            // from the record's weak reference, which would be one more cache line per step.
            let owner = native.map_or(0, |h| h.callback_owner_addr(py)) as *mut ffi::PyObject;
            if !owner.is_null() && self.tasks.with_borrow_mut(py, |v| v.step_started(tag, now)) {
                // SAFETY: the callback holds a reference to its bound object, and the handle
                // (alive for this call) holds the callback; a new reference is made at once.
                let task = unsafe { Bound::from_borrowed_ptr(py, owner) };
                return Ok((Some(task), tag, 0, None));
            }
        }
        let (callback, when) = describe()?;
        let task_obj = callback_identity::task_owner(&callback);
        let task = match &task_obj {
            Some(t) => report(py, self.task_id(t, now)).unwrap_or(0),
            None => 0,
        };
        if task != 0 {
            self.tasks
                .with_borrow_mut(py, |v| v.step_started(task, now));
        }
        let label = if task == 0 && tracing {
            report(
                py,
                callback_identity::callback_label(&self.labels, &callback),
            )
            .unwrap_or(0)
        } else {
            0
        };
        if let Some(h) = native {
            let known = if task != 0 { task } else { NOT_A_TASK | label };
            h.instrument_tag.store(known, Relaxed);
        }
        Ok((task_obj, task, label, when))
    }

    /// The watch while the detector is on.
    #[inline]
    fn watching(&self) -> Option<&Watch> {
        // SAFETY: non-null only while `watch` holds the `Arc` it points into (see the field);
        // the caller holds the GIL, so that `Arc` cannot be let go while the reference is
        // used (no Python code runs in between).
        unsafe { self.watching.load(Relaxed).as_ref() }
    }

    #[inline]
    fn watch_begin(&self, handle: &Bound<'_, PyAny>) {
        if let Some(w) = self.watching() {
            w.begin(handle.as_ptr());
        }
    }

    /// The watched callback returned: if the watchdog reported it, report its end.
    #[inline]
    fn watch_end(&self, event_loop: &Bound<'_, PyAny>, handle: &Bound<'_, PyAny>) {
        let reported = self.watching().and_then(Watch::end);
        if let Some(elapsed) = reported {
            report(
                handle.py(),
                support::report_unblocked(event_loop, handle, elapsed),
            );
        }
    }

    /// Task `task`'s step ran over `span` (start, end), waking itself `self_wakes` times (the
    /// first at `self_woken_ns` when traced). The usual step, not its task's first, that
    /// queued its own next step ends here.
    #[allow(clippy::inline_always)]
    #[inline(always)] // as `end_callback`, which it ends
    fn after_step(
        &self,
        task_obj: &Bound<'_, PyAny>,
        task: u32,
        handle_id: u64,
        span: (u64, u64),
        (self_wakes, self_woken_ns): (u32, u64),
        flags: u8,
    ) {
        let py = task_obj.py();
        let (start, end) = span;
        let (first_step, requeued) = self.tasks.with_borrow_mut(py, |v| {
            v.stepped(task, start, end, self_wakes, self_woken_ns)
        });
        if requeued && !first_step {
            // Pending on a bare yield (see `after_step_more`).
            if flags & TRACE != 0 {
                let label = self.bare_yield_label(py);
                self.end_event(py, handle_id, end, task, label, 0);
            }
            return;
        }
        self.after_step_more(
            task_obj,
            task,
            handle_id,
            end,
            (first_step, requeued),
            flags,
        );
    }

    #[inline(never)]
    fn after_step_more(
        &self,
        task_obj: &Bound<'_, PyAny>,
        task: u32,
        handle_id: u64,
        end: u64,
        (first_step, requeued): (bool, bool),
        flags: u8,
    ) {
        let py = task_obj.py();
        if first_step {
            if let Some(name) = report(py, task_obj.call_method0(intern!(py, "get_name"))) {
                let old = self
                    .tasks
                    .with_borrow_mut(py, |v| v.rename(task, name.unbind()));
                drop(old);
            }
        }
        // A task waiting on a future, or one whose step queued its next step (a bare
        // yield such as sleep(0)), is pending: only otherwise ask the task.
        let waiter = if requeued {
            None
        } else {
            report(py, task_obj.getattr(intern!(py, "_fut_waiter")))
        };
        let outcome = match &waiter {
            _ if requeued => task_table::OUTCOME_PENDING,
            Some(w) if !w.is_none() => task_table::OUTCOME_PENDING,
            _ => report(py, task_outcome(task_obj)).unwrap_or(task_table::OUTCOME_PENDING),
        };
        if flags & TRACE != 0 {
            let (label, awaited) = match waiter {
                _ if requeued => (self.bare_yield_label(py), 0),
                Some(w) if outcome == task_table::OUTCOME_PENDING => {
                    report(py, self.awaited(task_obj, &w)).unwrap_or((0, 0))
                }
                _ => (0, 0),
            };
            self.end_event(py, handle_id, end, task, label, awaited);
        }
        if outcome != task_table::OUTCOME_PENDING {
            self.tasks.with_borrow_mut(py, |v| {
                v.finished(task, outcome, end, task_obj.as_ptr() as usize);
            });
            if flags & TRACE != 0 {
                self.trace_event(
                    py,
                    TraceEvent {
                        ts: end,
                        kind: Kind::TaskDone as u8,
                        a: u64::from(outcome),
                        task,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// What a task that just stepped waits on: the label of its innermost coroutine (a bare
    /// yield gets `BARE_YIELD`, without walking the coroutines), and (the label of the awaited
    /// future's type) << 32 | (the awaited task's id, if it is a task).
    fn awaited(&self, task: &Bound<'_, PyAny>, waiter: &Bound<'_, PyAny>) -> PyResult<(u32, u64)> {
        if waiter.is_none() {
            return Ok((self.bare_yield_label(task.py()), 0));
        }
        let label = callback_identity::innermost_label(&self.labels, task)?;
        let waiter_type = callback_identity::callback_label(&self.labels, waiter)?;
        let awaited_task = if callback_identity::is_task(waiter) {
            self.tasks
                .with_borrow(task.py(), |v| v.find(waiter).unwrap_or(0))
        } else {
            0
        };
        Ok((
            label,
            u64::from(waiter_type) << 32 | u64::from(awaited_task),
        ))
    }

    fn bare_yield_label(&self, py: Python<'_>) -> u32 {
        let cached = self.bare_yield.load(Relaxed);
        if cached != 0 {
            return cached;
        }
        let label = report(py, callback_identity::bare_yield_label(&self.labels, py)).unwrap_or(0);
        self.bare_yield.store(label, Relaxed);
        label
    }

    /// The end of a callback (for a task step: what the task awaits now), for the trace.
    fn end_event(&self, py: Python<'_>, handle_id: u64, end: u64, task: u32, label: u32, b: u64) {
        let kind = Kind::CallbackEnd as u8;
        let event = TraceEvent {
            ts: end,
            kind,
            a: handle_id,
            b,
            task,
            label,
        };
        self.trace_event(py, event);
    }

    // ---- switching instruments on and off, reading them (cold) ----

    pub fn set_task_stats(&self, on: bool) {
        // From the next callback's start (no earlier end of this iteration is known).
        self.last_end.store(0, Relaxed);
        self.set_flag(TASKS, on);
    }

    pub fn task_stats_enabled(&self) -> bool {
        self.follows_tasks()
    }

    /// Move the timer cancellations `cancels` logged into the trace (at each traced
    /// iteration: most have none, and pay one test).
    #[inline]
    fn record_cancels(&self, py: Python<'_>, cancels: &CancelCounts) {
        if !cancels.traced_cancels.with_borrow(py, Vec::is_empty) {
            self.record_logged_cancels(py, cancels);
        }
    }

    #[inline(never)]
    fn record_logged_cancels(&self, py: Python<'_>, cancels: &CancelCounts) {
        cancels.traced_cancels.with_borrow_mut(py, |logged| {
            self.trace.with_borrow_mut(py, |ring| {
                for (handle, ts) in logged.drain(..) {
                    if let Some(ring) = ring.as_mut() {
                        ring.push(TraceEvent {
                            ts,
                            kind: Kind::TimerCancelled as u8,
                            a: handle,
                            ..Default::default()
                        });
                    }
                }
            });
        });
    }

    /// Start recording into a new ring of `capacity` events; MemoryError if it cannot be
    /// mapped.
    pub fn start_trace(
        &self,
        py: Python<'_>,
        capacity: usize,
        overflow: Overflow,
        cancels: &CancelCounts,
    ) -> PyResult<()> {
        let ring = TraceRing::new(capacity, overflow).map_err(|err| {
            pyo3::exceptions::PyMemoryError::new_err(format!(
                "no memory for a trace buffer of {capacity} events: {err}"
            ))
        })?;
        cancels
            .traced_cancels
            .with_borrow_mut(py, std::vec::Vec::clear);
        cancels.traced.store(true, Relaxed);
        self.trace.with_borrow_mut(py, |v| *v = Some(ring));
        self.last_end.store(0, Relaxed); // see `set_task_stats`
        self.set_flag(TRACE, true);
        Ok(())
    }

    /// Stop tracing; returns (events as bytes, dropped count) or None if it was not on.
    pub fn stop_trace<'py>(
        &self,
        py: Python<'py>,
        cancels: &CancelCounts,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, u64)>> {
        self.record_cancels(py, cancels);
        cancels.traced.store(false, Relaxed);
        self.set_flag(TRACE, false);
        let Some(ring) = self.trace.with_borrow_mut(py, std::option::Option::take) else {
            return Ok(None);
        };
        let bytes = uninit_bytes(py, ring.len() * crate::trace::EVENT_BYTES)?;
        // SAFETY: `bytes` is a new bytes object of exactly that size that nothing else has
        // seen yet, so writing its buffer before handing it out is allowed; every byte of it
        // is written here.
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                pyo3::ffi::PyBytes_AsString(bytes.as_ptr()).cast::<u8>(),
                bytes.as_bytes().len(),
            )
        };
        ring.write_bytes(out);
        Ok(Some((bytes, ring.dropped())))
    }

    pub fn tracing(&self) -> bool {
        self.flags() & TRACE != 0
    }

    pub fn labels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let names = self.labels.with_borrow(py, |v| v.names(py));
        PyList::new(py, names)
    }

    pub fn task_dicts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let dicts = self.tasks.with_borrow(py, |v| v.to_dicts(py))?;
        PyList::new(py, dicts)
    }

    pub fn clear_tasks(&self, py: Python<'_>) {
        let records = self
            .tasks
            .with_borrow_mut(py, super::task_table::TaskTable::take_all);
        drop(records);
    }

    /// Switch the blocking detector on (`threshold` seconds) or off (`None`).
    pub fn set_blocking_threshold(
        &self,
        event_loop: &Bound<'_, PyAny>,
        threshold: Option<f64>,
    ) -> PyResult<()> {
        let py = event_loop.py();
        self.stop_watchdog(py);
        let Some(threshold) = threshold else {
            return Ok(());
        };
        let watch = Watch::new(to_ns(threshold).max(1));
        let loop_ref = PyWeakrefReference::new(event_loop)?.into_any().unbind();
        blocking::spawn(watch.clone(), loop_ref).map_err(crate::errors::os_error)?;
        let pointer = Arc::as_ptr(&watch).cast_mut();
        self.watch.with_borrow_mut(py, |v| *v = Some(watch));
        self.watching.store(pointer, Relaxed);
        self.set_flag(BLOCKING, true);
        Ok(())
    }

    pub fn stop_watchdog(&self, py: Python<'_>) {
        self.watching.store(std::ptr::null_mut(), Relaxed);
        let watch = self.watch.with_borrow_mut(py, std::option::Option::take);
        if let Some(watch) = watch {
            watch.stop();
        }
        self.set_flag(BLOCKING, false);
    }

    pub fn blocking_threshold(&self, py: Python<'_>) -> Option<f64> {
        self.watch.with_borrow(py, |v| {
            v.as_ref()
                .map(|w| w.threshold_ns.load(Relaxed) as f64 * 1e-9)
        })
    }

    pub fn stats_dict<'py>(
        &self,
        py: Python<'py>,
        cancelled: &crate::stats::CancelCounts,
        fds_watched: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.stats
            .to_dict(py, cancelled, fds_watched, monotonic_ns())
    }
}

/// A new bytes object of `size` bytes, not zeroed (the caller fills it; zeroing a trace's
/// megabytes first would cost more than copying them).
fn uninit_bytes(py: Python<'_>, size: usize) -> PyResult<Bound<'_, PyBytes>> {
    let size = pyo3::ffi::Py_ssize_t::try_from(size)
        .map_err(|_| pyo3::exceptions::PyMemoryError::new_err("trace too large"))?;
    // SAFETY: a NULL source asks CPython for an uninitialised bytes object of that size; the
    // result is a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size),
        )
        .map(|b| b.cast_into_unchecked())
    }
}

/// After a step: still pending, or how it finished. Reads the exception without marking it
/// retrieved (`exception()` would silence "Task exception was never retrieved").
fn task_outcome(task: &Bound<'_, PyAny>) -> PyResult<u8> {
    let py = task.py();
    if !task.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(task_table::OUTCOME_PENDING);
    }
    if task.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
        return Ok(task_table::OUTCOME_CANCELLED);
    }
    let exception = task.getattr(intern!(py, "_exception"))?;
    Ok(if exception.is_none() {
        task_table::OUTCOME_RESULT
    } else {
        task_table::OUTCOME_EXCEPTION
    })
}
