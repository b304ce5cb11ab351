//! `LoopCore`: the Rust half of `ferroloop.Loop` — the ready queue, the timer heap, the fd
//! table, the poller, and one iteration of the loop (`run_once`).
//!
//! Everything here runs on the loop's thread with the GIL held, except the poller wait, which
//! releases the GIL, and `call_soon_threadsafe`, which any thread may call (the GIL serialises
//! it with the loop thread; the eventfd waker ends a wait that is already in progress).
//! The Python subclass (`python/ferroloop/_loop.py`) adds the parts that run once per call
//! and whose semantics the standard library spells out (run_until_complete, the exception
//! handler, executors, signals' bookkeeping).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyTuple, PyType};
use pyo3::PyTraverseError;

use crate::clock::{due_window_end, monotonic, monotonic_ns, to_ns};
use crate::errors::os_error;
use crate::fd_watchers::{Direction, FdTable, FdWatch};
use crate::fork_guard;
use crate::gil_cell::GilCell;
use crate::handle_pool::HandlePool;
use crate::handles::{Handle, TimerHandle, TimerState};
use crate::idle_spin;
use crate::instrument::Instruments;
use crate::ready::ReadyQueue;
use crate::sock_ops;
use crate::sock_waiters::{self, SockOp};
use crate::stats::CancelCounts;
use crate::support;
use crate::sys::{Event, Interest, Poller, Waker, MAX_TIMEOUT, WAKER_TOKEN};
use crate::task_factory;
use crate::timers::TimerHeap;
use crate::trace::{IoKind, Overflow};

/// Below this many scheduled timers the heap is never compacted (stdlib: 100).
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
/// Size of the loop's scratch buffer for transport reads: the most one `data_received` gets,
/// as the standard library's `max_size` (256 KiB).
pub const MAX_READ: usize = 256 * 1024;

/// An entry of the ready queue.
/// A ready-queue entry: one of ferroloop's `Handle`s (or `TimerHandle`s), or an
/// `asyncio.Handle` made by standard-library code (signal handlers), run via `_run()`. One
/// pointer, told apart by its type when it runs: a million queued callbacks take 8 MB here,
/// not 16 (an enum's tag would double it).
pub struct Ready(Py<PyAny>);

/// What a popped entry is.
enum ReadyKind<'py> {
    Native(Bound<'py, Handle>),
    Foreign(Bound<'py, PyAny>),
}

impl Ready {
    fn native(handle: Py<Handle>) -> Ready {
        Ready(handle.into_any())
    }

    /// `handle` must not be one of ferroloop's handles (those go through `native`).
    fn foreign(handle: Py<PyAny>) -> Ready {
        Ready(handle)
    }

    fn into_kind(self, py: Python<'_>) -> ReadyKind<'_> {
        match self.0.into_bound(py).cast_into::<Handle>() {
            Ok(native) => ReadyKind::Native(native),
            Err(other) => ReadyKind::Foreign(other.into_inner()),
        }
    }
}

struct Io {
    poller: Poller,
    /// Shared so a rebuilt poller (see `rebuild_poller`) keeps the same waker.
    waker: Arc<Waker>,
}

#[pyclass(module = "ferroloop._core", subclass, frozen)]
pub struct LoopCore {
    ready: GilCell<ReadyQueue<Ready>>,
    /// Handles the loop ran and nobody else kept, for the next `call_soon` to reuse.
    spare_handles: HandlePool,
    scheduled: GilCell<TimerHeap<Py<Handle>>>,
    cancelled: Arc<CancelCounts>,
    fds: GilCell<FdTable>,
    events: GilCell<Vec<Event>>,
    /// `None` once the loop is closed: closing releases the epoll fd and the eventfd.
    io: GilCell<Option<Arc<Io>>>,
    stopping: AtomicBool,
    running: AtomicBool,
    closed: AtomicBool,
    debug: AtomicBool,
    /// `fork_guard` generation this loop was made in: in a forked child it differs.
    fork_generation: u64,
    /// True while the loop thread waits in the poller with the GIL released.
    polling: AtomicBool,
    /// A wake-up was written during the current wait; further ones would be redundant.
    woken: AtomicBool,
    /// How long the loop polls without blocking before it sleeps (see `idle_spin`), in ns.
    spin_ns: u64,
    read_buffer: GilCell<Vec<u8>>,
    /// `sock_recv`'s buffer for large sizes, kept between calls (see `sock_ops::RecvSpare`).
    recv_spare: GilCell<Option<sock_ops::RecvSpare>>,
    /// `loop._task_factory`, kept here so `create_task` can check it without a dict lookup.
    task_factory: GilCell<Option<Py<PyAny>>>,
    /// Statistics, and the trace / blocking detector / per-task hooks when they are on.
    instruments: Instruments,
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

impl LoopCore {
    #[inline]
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Relaxed) {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    /// RuntimeError in a forked child: the epoll instance and eventfd are the parent's.
    #[inline]
    fn check_not_inherited(&self) -> PyResult<()> {
        if fork_guard::is_inherited(self.fork_generation) {
            Err(fork_guard::inherited_error())
        } else {
            Ok(())
        }
    }

    fn io(&self, py: Python<'_>) -> PyResult<Arc<Io>> {
        self.io
            .with_borrow(py, |v| v.clone().ok_or_else(closed_error))
    }

    fn new_handle(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let debug = self.debug.load(Relaxed);
        Py::new(
            py,
            Handle::new(py, callback, Some(args), context, false, debug)?,
        )
    }

    #[inline]
    fn push_ready(&self, py: Python<'_>, item: Ready) {
        self.ready.with_borrow_mut(py, |v| v.push(item));
    }

    fn wake(&self, py: Python<'_>) {
        // `polling` can read true in a child forked while the parent waited: its eventfd is
        // the parent's, so the child must not write it.
        if self.polling.load(Relaxed)
            && !self.woken.swap(true, Relaxed)
            && !fork_guard::is_inherited(self.fork_generation)
        {
            self.io.with_borrow(py, |io| {
                if let Some(io) = io {
                    io.waker.wake();
                }
            });
        }
    }

    /// Mirrors `BaseEventLoop._call_soon` (for `call_soon` and `call_soon_threadsafe`): check,
    /// make the handle, queue it.
    fn queue_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Option<Bound<'_, PyTuple>>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let handle = if this.debug.load(Relaxed) {
            support::debug_checks(slf.as_any(), &callback, method, threadsafe)?;
            let handle = Handle::new(py, callback, args, context, false, true)?;
            let handle = if threadsafe {
                handle.with_run_lock()
            } else {
                handle
            };
            Py::new(py, handle)?
        } else {
            this.spare_handles
                .make(py, callback, args, context, threadsafe)?
        };
        if this.instruments.follows_tasks() {
            this.instruments.on_call_soon(handle.bind(py), threadsafe);
        }
        this.push_ready(py, Ready::native(handle.clone_ref(py)));
        Ok(handle)
    }

    /// Mirrors `BaseEventLoop.call_at`: the timer handle, pushed on the heap. `read_at` is the
    /// clock reading `when` was computed from (`call_later`), so that the trace shows the delay
    /// asked for, not that minus the time taken to get here.
    fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        read_at: Option<f64>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let debug = this.debug.load(Relaxed);
        if debug {
            support::debug_checks(slf.as_any(), &callback, method, false)?;
        }
        let state = TimerState {
            cancelled: this.cancelled.clone(),
        };
        let base = Handle::new(py, callback, Some(args), context, true, debug)?;
        let timer = Bound::new(
            py,
            PyClassInitializer::from(base).add_subclass(TimerHandle::new(when, state)),
        )?;
        let as_handle: Py<Handle> = timer.clone().into_super().unbind();
        this.scheduled
            .with_borrow_mut(py, |v| v.push(when, as_handle));
        this.instruments.stats.timers_scheduled.add(1);
        if this.instruments.tracing() {
            this.instruments
                .on_timer_scheduled(py, timer.as_any(), when, read_at);
        }
        Ok(timer.unbind())
    }

    /// Drop cancelled timers: all of them when they are more than half the heap, otherwise
    /// those at its head. Returns them so they are released outside the borrow.
    fn sweep_cancelled_timers(&self, py: Python<'_>) -> Vec<Py<Handle>> {
        self.scheduled
            .with_borrow_mut(py, |heap| self.sweep_heap(heap))
    }

    fn sweep_heap(&self, heap: &mut TimerHeap<Py<Handle>>) -> Vec<Py<Handle>> {
        let count = heap.len();
        let cancelled = self.cancelled.in_heap.load(Relaxed);
        let dropped = if count > MIN_SCHEDULED_TIMER_HANDLES && cancelled * 2 > count {
            self.cancelled.in_heap.store(0, Relaxed);
            heap.compact(|h| !h.get().is_cancelled())
        } else {
            let mut dropped = Vec::new();
            while heap.peek().is_some_and(|h| h.get().is_cancelled()) {
                dropped.extend(heap.pop());
                let _ = self
                    .cancelled
                    .in_heap
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            }
            dropped
        };
        for h in &dropped {
            mark_unscheduled(h);
        }
        dropped
    }

    fn poll_timeout(&self, py: Python<'_>) -> Option<f64> {
        if self.stopping.load(Relaxed)
            || !self
                .ready
                .with_borrow(py, super::ready::ReadyQueue::is_empty)
        {
            return Some(0.0);
        }
        let when = self
            .scheduled
            .with_borrow(py, super::timers::TimerHeap::peek_when)?;
        Some((when - monotonic()).clamp(0.0, MAX_TIMEOUT))
    }

    /// Wait for I/O (releasing the GIL unless the wait is non-blocking) and queue the handles
    /// of the fds that became ready.
    fn poll(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let io = self.io(py)?;
        let needs_poll = timeout != Some(0.0)
            || !self
                .fds
                .with_borrow(py, super::fd_watchers::FdTable::is_empty);
        if !needs_poll {
            // Nothing but the waker is registered and we must not block: a pending wake-up
            // byte can wait for the next blocking poll, which drains it.
            return Ok(());
        }
        let mut events = self.events.with_borrow_mut(py, std::mem::take);
        let stats = &self.instruments.stats;
        let tracing = self.instruments.tracing();
        let mut wait_started = 0;
        let mut waited = None;
        let result = if timeout == Some(0.0) {
            if tracing {
                wait_started = monotonic_ns();
            }
            io.poller.wait(&mut events, timeout)
        } else {
            // The wake-up protocol. A signal whose Python handler has not run yet (it arrived
            // after the last bytecode) would otherwise wait for the next wake-up, so its
            // handler runs here, before blocking; it may queue a callback. Order:
            //   1. `polling` is set first, so every queue_soon + wake() from now on (the
            //      handler's own call_soon_threadsafe included) writes the waker;
            //   2. the signal check runs the handlers;
            //   3. the ready queue and `stopping` are read again: what was queued before (1),
            //      when wake() skipped the waker, is seen here and the wait does not block.
            // Between (3) and the wait this thread holds the GIL, so no other thread can
            // queue, and Python handlers only run at a later check. So no callback queued
            // before the wait is slept through. (A signal delivered in that window, after
            // the check but before epoll_wait starts, is the standard loop's race too: the
            // wakeup fd of add_signal_handler ends the wait; a bare signal.signal handler
            // runs at the next wake-up. One delivered during the wait is EINTR, below.)
            self.polling.store(true, Relaxed);
            if let Err(err) = py.check_signals() {
                self.polling.store(false, Relaxed);
                self.woken.store(false, Relaxed);
                self.events.with_borrow_mut(py, |v| *v = events);
                return Err(err);
            }
            let timeout = if self.stopping.load(Relaxed)
                || !self
                    .ready
                    .with_borrow(py, super::ready::ReadyQueue::is_empty)
            {
                Some(0.0)
            } else {
                timeout
            };
            wait_started = monotonic_ns();
            let r = self.spin_then_wait(py, &io, &mut events, timeout);
            let r = match r {
                Ok(r) => r,
                Err(err) => {
                    self.polling.store(false, Relaxed);
                    self.woken.store(false, Relaxed);
                    self.events.with_borrow_mut(py, |v| *v = events);
                    return Err(err);
                }
            };
            self.polling.store(false, Relaxed);
            self.woken.store(false, Relaxed);
            let took = monotonic_ns() - wait_started;
            stats.poll_waits.add(1);
            stats.poll_wait_ns.add(took);
            waited = Some(took);
            r
        };
        stats.poll_calls.add(1);
        stats.poll_events.add(events.len() as u64);
        if tracing {
            let took = waited.unwrap_or_else(|| monotonic_ns() - wait_started);
            self.instruments.on_poll(py, wait_started, took, &events);
        }
        if let Err(err) = result {
            self.events.with_borrow_mut(py, |v| *v = events);
            if err.kind() == std::io::ErrorKind::Interrupted {
                // A signal arrived: run Python's handlers now (Ctrl-C raises KeyboardInterrupt).
                return py.check_signals();
            }
            return Err(os_error(err));
        }
        let mut woken = Vec::with_capacity(events.len());
        let mut unknown = Vec::new();
        self.fds.with_borrow(py, |fds| {
            for ev in &events {
                if ev.token == WAKER_TOKEN {
                    io.waker.drain();
                } else if !fds.ready_handles(py, ev, &mut woken) {
                    unknown.push(ev.token as RawFd);
                }
            }
        });
        self.events.with_borrow_mut(py, |v| *v = events);
        if !unknown.is_empty() {
            self.drop_orphan_registrations(py, &io, &unknown)?;
        }
        let mut stale = Vec::new();
        self.ready.with_borrow_mut(py, |ready| {
            for (fd, dir, handle) in woken {
                if handle.get().is_cancelled() {
                    stale.push((fd, dir, handle));
                } else {
                    ready.push(Ready::native(handle));
                }
            }
        });
        for (fd, dir, handle) in stale {
            // A cancelled watcher is removed, as the standard loop does.
            let (removed, emptied, _) = self
                .fds
                .with_borrow_mut(py, |v| v.remove(Some(&io.poller), fd, dir));
            drop((removed, emptied, handle));
        }
        Ok(())
    }

    /// The blocking wait, after the idle spin (see `idle_spin`), which is never longer than
    /// `timeout`. A signal that arrived during the spin interrupted no wait, so its handler
    /// runs between the two, as an interrupted wait would have it run; it may raise, or queue
    /// a callback, and then the loop does not sleep.
    fn spin_then_wait(
        &self,
        py: Python<'_>,
        io: &Io,
        events: &mut Vec<Event>,
        mut timeout: Option<f64>,
    ) -> PyResult<std::io::Result<usize>> {
        let spin_ns = match timeout {
            None => self.spin_ns,
            Some(t) => self.spin_ns.min(to_ns(t)),
        };
        if spin_ns > 0 {
            let spun = py.detach(|| idle_spin::spin(&io.poller, events, spin_ns));
            if !matches!(spun, Ok(0)) {
                return Ok(spun);
            }
            py.check_signals()?;
            if self.stopping.load(Relaxed)
                || !self
                    .ready
                    .with_borrow(py, super::ready::ReadyQueue::is_empty)
            {
                return Ok(Ok(0));
            }
            timeout = timeout.map(|t| t - spin_ns as f64 * 1e-9);
        }
        Ok(py.detach(|| io.poller.wait(events, timeout)))
    }

    /// epoll reported fds the table does not watch. Each is a registration that outlived its
    /// fd: the fd was closed while a `dup` of it (or a forked child) kept the file open, so
    /// EPOLL_CTL_DEL by number failed and, level-triggered, it would wake every wait from now
    /// on. If deleting it by number fails again (the number is closed or another file's),
    /// nothing can reach that registration any more: the poller is rebuilt from the table.
    /// The same goes for a parked entry's registration (see `fd_watchers`): data arrived that
    /// no `sock_recv` waits for, so it is deleted before it wakes every wait.
    fn drop_orphan_registrations(&self, py: Python<'_>, io: &Io, fds: &[RawFd]) -> PyResult<()> {
        let parked: Vec<FdWatch> = self.fds.with_borrow_mut(py, |table| {
            fds.iter().filter_map(|&fd| table.drop_parked(fd)).collect()
        });
        drop(parked);
        if fds.iter().all(|&fd| io.poller.forget(fd).is_ok()) {
            return Ok(());
        }
        let poller = Poller::new().map_err(os_error)?;
        io.waker.register(&poller).map_err(os_error)?;
        self.fds.with_borrow(py, |fds| {
            for (fd, interest) in fds.interests() {
                // A watched fd that was closed behind the loop's back fails here; the old
                // poller had forgotten it too.
                let _ = poller.set_interest(fd, fd as u64, Interest::default(), interest);
            }
        });
        let rebuilt = Arc::new(Io {
            poller,
            waker: io.waker.clone(),
        });
        let old = self.io.with_borrow_mut(py, |v| v.replace(rebuilt));
        drop(old);
        Ok(())
    }

    fn queue_due_timers(&self, py: Python<'_>) {
        let now = monotonic();
        let end_time = due_window_end(now);
        let mut due = Vec::new();
        self.scheduled.with_borrow_mut(py, |heap| {
            while let Some((when, h)) = heap.pop_due_with_when(end_time) {
                mark_unscheduled(&h);
                if h.get().is_cancelled() {
                    let _ = self
                        .cancelled
                        .in_heap
                        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
                } else {
                    let stats = &self.instruments.stats;
                    stats.timers_fired.add(1);
                    stats.record_lag(to_ns(now - when));
                }
                due.push(h);
            }
        });
        if !due.is_empty() {
            self.ready
                .with_borrow_mut(py, |ready| ready.extend(due.into_iter().map(Ready::native)));
        }
    }

    fn run_ready(&self, slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let event_loop = slf.as_any();
        let ntodo = self
            .ready
            .with_borrow(py, super::ready::ReadyQueue::begin_iteration);
        let debug = self.debug.load(Relaxed);
        let instruments = &self.instruments;
        instruments.stats.ready_high_water.raise_to(ntodo as u64);
        let instrumented = instruments.flags() != 0;
        if instruments.follows_tasks() {
            instruments.on_iteration(py, ntodo, &self.cancelled);
        }
        for _ in 0..ntodo {
            let Some(item) = self
                .ready
                .with_borrow_mut(py, super::ready::ReadyQueue::pop)
            else {
                break;
            };
            match item.into_kind(py) {
                ReadyKind::Native(handle) => {
                    if handle.get().is_cancelled() {
                        continue;
                    }
                    instruments.stats.callbacks.add(1);
                    let run = || {
                        if debug {
                            run_timed(event_loop, handle.as_any(), || {
                                Handle::run(&handle, event_loop)
                            })
                        } else {
                            Handle::run(&handle, event_loop)
                        }
                    };
                    if instrumented {
                        let describe = || {
                            let when = if handle.get().is_timer() {
                                handle.cast::<TimerHandle>().ok().map(|t| t.get().when)
                            } else {
                                None
                            };
                            Ok((handle.get().callback(py), when))
                        };
                        let native = Some(handle.get());
                        let started =
                            instruments.begin_callback(handle.as_any(), native, describe)?;
                        // Spelled out, not `run()`: see below.
                        let result = if debug {
                            run()
                        } else {
                            Handle::run(&handle, event_loop)
                        };
                        instruments.end_callback(event_loop, handle.as_any(), started);
                        result?;
                    } else if debug {
                        run()?;
                    } else {
                        // Spelled out: the closure is not always inlined on this hot path.
                        Handle::run(&handle, event_loop)?;
                        self.spare_handles.recycle(py, handle);
                    }
                }
                ReadyKind::Foreign(handle) => {
                    if handle.getattr(intern!(py, "_cancelled"))?.is_truthy()? {
                        continue;
                    }
                    instruments.stats.callbacks.add(1);
                    let run_foreign = || handle.call_method0(intern!(py, "_run")).map(drop);
                    let run = || {
                        if debug {
                            run_timed(event_loop, &handle, run_foreign)
                        } else {
                            run_foreign()
                        }
                    };
                    if instrumented {
                        let describe = || Ok((handle.getattr(intern!(py, "_callback"))?, None));
                        let started = instruments.begin_callback(&handle, None, describe)?;
                        let result = run();
                        instruments.end_callback(event_loop, &handle, started);
                        result?;
                    } else {
                        run()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Mirrors `BaseEventLoop._run_once`: sweep, poll, queue due timers, run what is ready.
    fn run_once(&self, slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        self.instruments.stats.iterations.add(1);
        drop(self.sweep_cancelled_timers(py));
        let timeout = self.poll_timeout(py);
        self.poll(py, timeout)?;
        self.queue_due_timers(py);
        self.run_ready(slf)
    }

    pub(crate) fn add_watch(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        dir: Direction,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        this.check_not_inherited()?;
        let fd = resolve_fd(fileobj)?;
        let io = this.io(py)?;
        let handle = this.new_handle(py, callback, args, context)?;
        let added = this.fds.with_borrow_mut(py, |v| {
            v.add(
                &io.poller,
                fd,
                fileobj.clone().unbind(),
                dir,
                handle.clone_ref(py),
                owner,
            )
        });
        let (replaced, old_fileobj) = match added {
            Ok(replaced) => replaced,
            Err((err, stale)) => {
                cancel_watch(stale);
                return Err(os_error(err));
            }
        };
        if let Some(old) = replaced {
            old.get().cancel_handle();
        }
        drop(old_fileobj);
        Ok(handle)
    }

    fn remove_watch(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        dir: Direction,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Relaxed) {
            return Ok(false);
        }
        let fd = match resolve_fd(fileobj) {
            Ok(fd) => fd,
            // No fd that large can be registered (selectors: a KeyError, so False).
            Err(err) if err.is_instance_of::<PyOverflowError>(py) => return Ok(false),
            Err(err) if err.is_instance_of::<PyValueError>(py) => {
                match this.fds.with_borrow(py, |v| v.fd_of_object(fileobj)) {
                    Some(fd) => fd,
                    None => return Err(err),
                }
            }
            Err(err) => return Err(err),
        };
        Self::remove_watch_fd(slf, fd, dir)
    }

    pub(crate) fn remove_watch_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        dir: Direction,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Relaxed) {
            return Ok(false);
        }
        let io = this.io(py)?;
        let poller = (!fork_guard::is_inherited(this.fork_generation)).then_some(&io.poller);
        let (removed, emptied, result) =
            this.fds.with_borrow_mut(py, |v| v.remove(poller, fd, dir));
        if result.is_err() {
            cancel_watch(emptied);
        } else {
            drop(emptied);
        }
        match removed {
            Some(handle) => {
                handle.get().cancel_handle();
                drop(handle);
                result.map_err(os_error)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl LoopCore {
    /// `loop.call_soon(callback, *args, context=context)`; exposed to Python by
    /// `fastcall::install`.
    pub fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Option<Bound<'_, PyTuple>>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::queue_soon(slf, callback, args, context, "call_soon", false)
    }

    /// `loop.call_soon_threadsafe(callback, *args, context=context)`, from any thread: queue
    /// like `call_soon`, then end the loop's wait for I/O if it is in one (one eventfd write
    /// per wait, however many calls arrive during it). Exposed by `fastcall::install`.
    pub fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Option<Bound<'_, PyTuple>>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let handle = Self::queue_soon(slf, callback, args, context, "call_soon_threadsafe", true)?;
        slf.get().instruments.stats.threadsafe_calls.add(1);
        slf.get().wake(slf.py());
        Ok(handle)
    }

    /// The loop's statistics and instrumentation hooks (transports report their I/O here).
    pub fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    pub fn debug_enabled(&self) -> bool {
        self.debug.load(Relaxed)
    }

    /// Run `f` on the loop's scratch buffer for transport reads (one thread, one read at a
    /// time): data is received into it and copied into a `bytes` of exactly the received size.
    pub fn with_read_buffer<R>(&self, py: Python<'_>, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.with_scratch(py, MAX_READ, f)
    }

    /// Run `f` on the first `len` bytes of the same scratch buffer (a datagram endpoint takes
    /// several reads' worth at once); it grows to the largest `len` asked for. Memory the
    /// kernel never writes into is never touched: the buffer is made zeroed by the allocator.
    pub fn with_scratch<R>(&self, py: Python<'_>, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.read_buffer.with_borrow_mut(py, |buf| {
            if buf.len() < len {
                *buf = vec![0; len];
            }
            f(&mut buf[..len])
        })
    }

    /// One non-blocking recv for `sock_recv`: the data, or None if there is nothing to read.
    pub fn sock_recv_bytes<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        n: isize,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let data = sock_ops::recv_bytes_with_spare(py, &self.recv_spare, fd, n)?;
        if let Some(data) = &data {
            self.instruments
                .on_io(py, IoKind::Read, fd, data.as_bytes().len());
        }
        Ok(data)
    }

    /// Park `fd`'s reader (see `fd_watchers`) if it is still the handle that calls `callback`:
    /// a finished `sock_recv` waiter leaves the registration to the socket's next one.
    pub fn park_reader_if_callback(
        event_loop: &Bound<'_, LoopCore>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = event_loop.py();
        let this = event_loop.get();
        if !this.is_reader_callback(py, fd, callback) || this.closed.load(Relaxed) {
            return Ok(());
        }
        let io = this.io(py)?;
        let poller = (!fork_guard::is_inherited(this.fork_generation)).then_some(&io.poller);
        let (removed, emptied, result) = this
            .fds
            .with_borrow_mut(py, |v| v.park_reader(poller, fd, owner));
        if let Some(handle) = &removed {
            handle.get().cancel_handle();
        }
        drop((removed, emptied));
        result.map_err(os_error)
    }

    fn is_reader_callback(&self, py: Python<'_>, fd: RawFd, callback: &Bound<'_, PyAny>) -> bool {
        self.is_callback(py, fd, Direction::Read, callback)
    }

    fn is_callback(
        &self,
        py: Python<'_>,
        fd: RawFd,
        dir: Direction,
        callback: &Bound<'_, PyAny>,
    ) -> bool {
        let current = self.fds.with_borrow(py, |v| v.handle(py, fd, dir));
        current.is_some_and(|handle| handle.get().callback(py).is(callback))
    }

    /// Remove `fd`'s reader if it is still the handle that calls `callback` (a waiter that
    /// finished must not remove a reader someone installed after it).
    pub fn remove_reader_if_callback(
        event_loop: &Bound<'_, LoopCore>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::remove_watch_if_callback(event_loop, fd, Direction::Read, callback)
    }

    /// Remove `fd`'s `dir` watcher if it is still the handle that calls `callback`.
    pub fn remove_watch_if_callback(
        event_loop: &Bound<'_, LoopCore>,
        fd: RawFd,
        dir: Direction,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if event_loop
            .get()
            .is_callback(event_loop.py(), fd, dir, callback)
        {
            Self::remove_watch_fd(event_loop, fd, dir)?;
        }
        Ok(())
    }

    /// Install a `sock_*` waiter as `fd`'s reader or writer; `sock` may take over the
    /// registration it parked (see `fd_watchers`).
    pub fn add_sock_watch(
        event_loop: &Bound<'_, LoopCore>,
        fd: RawFd,
        dir: Direction,
        waiter: Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
    ) -> PyResult<Py<Handle>> {
        let py = event_loop.py();
        let fd_obj = fd.into_pyobject(py)?;
        Self::add_watch(
            event_loop,
            fd_obj.as_any(),
            dir,
            waiter,
            PyTuple::empty(py),
            None,
            Some(sock),
        )
    }

    /// Count (and, when tracing, record) `nbytes` a socket operation moved on `fd`.
    pub fn count_io(&self, py: Python<'_>, kind: IoKind, fd: RawFd, nbytes: usize) {
        self.instruments.on_io(py, kind, fd, nbytes);
    }
}

/// Cancel the watchers of an entry the poller refused, then release it (outside any borrow).
fn cancel_watch(watch: Option<FdWatch>) {
    if let Some(watch) = watch {
        for handle in watch.reader.iter().chain(watch.writer.iter()) {
            handle.get().cancel_handle();
        }
    }
}

fn mark_unscheduled(h: &Py<Handle>) {
    h.get().unschedule();
}

/// Run a handle in debug mode: expose it as `_current_handle` and log it if it was slow.
fn run_timed(
    event_loop: &Bound<'_, PyAny>,
    handle: &Bound<'_, PyAny>,
    run: impl FnOnce() -> PyResult<()>,
) -> PyResult<()> {
    let py = event_loop.py();
    event_loop.setattr(intern!(py, "_current_handle"), handle)?;
    let t0 = monotonic();
    let result = run();
    let elapsed = monotonic() - t0;
    event_loop.setattr(intern!(py, "_current_handle"), py.None())?;
    result?;
    let slow: f64 = event_loop
        .getattr(intern!(py, "slow_callback_duration"))?
        .extract()?;
    if elapsed >= slow {
        support::log_slow_callback(handle, elapsed)?;
    }
    Ok(())
}

/// `selectors._fileobj_to_fd`: ints directly, anything else through its `fileno()`.
fn resolve_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        i64::from(support::fileobj_to_fd(obj)?)
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    // epoll.register's C int conversion: the standard loop's error for a too-large fd.
    RawFd::try_from(fd)
        .map_err(|_| PyOverflowError::new_err("signed integer is greater than maximum"))
}

fn number(value: &Bound<'_, PyAny>, none_message: &'static str) -> PyResult<f64> {
    if value.is_none() {
        return Err(PyTypeError::new_err(none_message));
    }
    value.extract::<f64>()
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let spin_ns = idle_spin::configured_ns().map_err(PyValueError::new_err)?;
        let poller = Poller::new().map_err(os_error)?;
        let waker = Waker::new(&poller).map_err(os_error)?;
        Ok(LoopCore {
            ready: GilCell::new(ReadyQueue::new()),
            spare_handles: HandlePool::default(),
            scheduled: GilCell::new(TimerHeap::new()),
            cancelled: Arc::new(CancelCounts::default()),
            fds: GilCell::new(FdTable::default()),
            events: GilCell::new(Vec::with_capacity(64)),
            io: GilCell::new(Some(Arc::new(Io {
                poller,
                waker: Arc::new(waker),
            }))),
            stopping: AtomicBool::new(false),
            running: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            fork_generation: fork_guard::current(),
            polling: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            spin_ns,
            task_factory: GilCell::new(None),
            read_buffer: GilCell::new(Vec::new()),
            recv_spare: GilCell::new(None),
            instruments: Instruments::default(),
        })
    }

    fn create_future(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        task_factory::create_future(slf.as_any())
    }

    #[pyo3(signature = (coro, *, name=None, context=None, **kwargs))]
    fn create_task(
        slf: &Bound<'_, Self>,
        coro: Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Bound<'_, PyAny>>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        this.instruments.stats.tasks_created.add(1);
        let has_factory = this
            .task_factory
            .with_borrow(py, std::option::Option::is_some);
        if has_factory || this.debug.load(Relaxed) {
            // Pass on only what the caller gave, as 3.14's `create_task(coro, **kwargs)` does.
            let all = kwargs.unwrap_or_else(|| PyDict::new(py));
            if let Some(name) = name.filter(|n| !n.is_none()) {
                all.set_item(intern!(py, "name"), name)?;
            }
            if let Some(context) = context.filter(|c| !c.is_none()) {
                all.set_item(intern!(py, "context"), context)?;
            }
            return Ok(slf
                .call_method(intern!(py, "_create_task_stdlib"), (coro,), Some(&all))?
                .unbind());
        }
        task_factory::create_task(
            slf.as_any(),
            &coro,
            name.as_ref().filter(|n| !n.is_none()),
            context.as_ref().filter(|c| !c.is_none()),
            kwargs.as_ref(),
        )
    }

    #[getter(_task_factory)]
    fn task_factory_getter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory
            .with_borrow(py, |v| v.as_ref().map(|f| f.clone_ref(py)))
    }

    #[setter(_task_factory)]
    fn task_factory_setter(&self, py: Python<'_>, factory: Option<Bound<'_, PyAny>>) {
        let factory = factory.filter(|f| !f.is_none()).map(Bound::unbind);
        let old = self
            .task_factory
            .with_borrow_mut(py, |v| std::mem::replace(v, factory));
        drop(old);
    }

    fn time(&self) -> f64 {
        monotonic()
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let delay = number(&delay, "delay must not be None")?;
        let now = monotonic();
        Self::schedule_timer(
            slf,
            now + delay,
            Some(now),
            callback,
            args,
            context,
            "call_later",
        )
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let when = number(&when, "when cannot be None")?;
        Self::schedule_timer(slf, when, None, callback, args, context, "call_at")
    }

    /// Queue an existing handle (ours or an `asyncio.Handle`) unless it is cancelled.
    fn _add_callback(slf: &Bound<'_, Self>, handle: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let item = if let Ok(native) = handle.cast::<Handle>() {
            if native.get().is_cancelled() {
                return Ok(());
            }
            Ready::native(native.clone().unbind())
        } else {
            if handle.getattr(intern!(py, "_cancelled"))?.is_truthy()? {
                return Ok(());
            }
            Ready::foreign(handle.unbind())
        };
        slf.get().push_ready(py, item);
        Ok(())
    }

    fn _add_callback_signalsafe(slf: &Bound<'_, Self>, handle: Bound<'_, PyAny>) -> PyResult<()> {
        Self::_add_callback(slf, handle)?;
        slf.get().wake(slf.py());
        Ok(())
    }

    fn _write_to_self(&self, py: Python<'_>) {
        if fork_guard::is_inherited(self.fork_generation) {
            return;
        }
        self.io.with_borrow(py, |io| {
            if let Some(io) = io {
                io.waker.wake();
            }
        });
    }

    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().check_not_inherited()?;
        slf.get().run_once(slf)
    }

    fn run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_not_inherited()?;
        slf.call_method0(intern!(py, "_run_forever_setup"))?;
        this.running.store(true, Relaxed);
        let stats = &this.instruments.stats;
        let run_started = monotonic_ns();
        stats.run_started_ns.set(run_started);
        let result = loop {
            if let Err(err) = this.run_once(slf) {
                break Err(err);
            }
            if this.stopping.load(Relaxed) {
                break Ok(());
            }
        };
        this.stopping.store(false, Relaxed);
        this.running.store(false, Relaxed);
        stats.run_ns.add(monotonic_ns() - run_started);
        stats.run_started_ns.set(0);
        let cleanup = slf.call_method0(intern!(py, "_run_forever_cleanup"));
        result.and(cleanup.map(drop))
    }

    fn stop(&self) {
        self.stopping.store(true, Relaxed);
    }

    fn is_running(&self) -> bool {
        self.running.load(Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    #[getter]
    fn _closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    fn get_debug(&self) -> bool {
        self.debug.load(Relaxed)
    }

    #[getter(_debug)]
    fn debug_getter(&self) -> bool {
        self.debug.load(Relaxed)
    }

    #[setter(_debug)]
    fn debug_setter(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Relaxed);
        Ok(())
    }

    /// Count (and, when tracing, record) what a socket operation of the standard library's
    /// moved: `nbytes` read from `fd`, or written when `written`.
    fn _sock_io_done(&self, py: Python<'_>, fd: RawFd, nbytes: usize, written: bool) {
        let kind = if written { IoKind::Write } else { IoKind::Read };
        self.instruments.on_io(py, kind, fd, nbytes);
    }

    // The sock_* family (`sock_waiters.rs`): each returns the operation's result when its
    // first try finishes it, else a `SockWaiter` to `wait()` on.

    fn _sock_recv_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || Ok(SockOp::Recv { n: n.extract()? }))
    }

    fn _sock_sendall_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || SockOp::send_all(data))
    }

    fn _sock_sendto_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        data: Py<PyAny>,
        address: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || Ok(SockOp::SendTo { data, address }))
    }

    fn _sock_recv_into_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        buf: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || Ok(SockOp::RecvInto { buf }))
    }

    fn _sock_recvfrom_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        size: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || Ok(SockOp::RecvFrom { size }))
    }

    fn _sock_recvfrom_into_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || SockOp::recv_from_into(buf, nbytes))
    }

    fn _sock_accept_start(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || Ok(SockOp::Accept))
    }

    /// `address` is already resolved (`Loop.sock_connect` resolves it as the standard loop does).
    fn _sock_connect_start(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        address: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        sock_waiters::start(slf, sock, || Ok(SockOp::Connect { address }))
    }

    /// Number of timers in the heap, cancelled ones included (for tests and introspection).
    fn _scheduled_count(&self, py: Python<'_>) -> usize {
        self.scheduled
            .with_borrow(py, super::timers::TimerHeap::len)
    }

    fn _ready_count(&self, py: Python<'_>) -> usize {
        self.ready.with_borrow(py, super::ready::ReadyQueue::len)
    }

    /// `context` (3.15's transports pass theirs) is where the callback runs; by default a copy
    /// of the current context, as the standard loop's.
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watch(slf, &fd, Direction::Read, callback, args, context, None)
    }

    /// `context` (3.15's transports pass theirs) is where the callback runs; by default a copy
    /// of the current context, as the standard loop's.
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watch(slf, &fd, Direction::Write, callback, args, context, None)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch(slf, &fd, Direction::Read)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch(slf, &fd, Direction::Write)
    }

    /// Whether `fd` has a reader (`write=False`) or writer (`write=True`) installed.
    #[pyo3(signature = (fd, write=false))]
    fn _has_watcher(&self, py: Python<'_>, fd: RawFd, write: bool) -> bool {
        let dir = if write {
            Direction::Write
        } else {
            Direction::Read
        };
        self.fds.with_borrow(py, |v| v.has(fd, dir))
    }

    // ---- instruments (`python/ferroloop/_instrument.py` builds the public API on these) ----

    /// The loop-wide counters as a dict.
    fn _stats_core<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let fds = self.fds.with_borrow(py, super::fd_watchers::FdTable::len);
        self.instruments.stats_dict(py, &self.cancelled, fds)
    }

    /// Switch per-task statistics on or off (off also forgets the tasks recorded so far).
    fn _set_task_stats(&self, py: Python<'_>, on: bool) {
        self.instruments.set_task_stats(on);
        if !on && !self.instruments.tracing() {
            self.instruments.clear_tasks(py);
        }
    }

    fn _task_stats_enabled(&self) -> bool {
        self.instruments.task_stats_enabled()
    }

    /// One dict per task seen while per-task statistics or the trace were on.
    fn _task_records<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.instruments.task_dicts(py)
    }

    /// Start recording into a ring of `capacity` events (a new, empty one); when it is full,
    /// drop the newest events if `drop_newest`, else the oldest.
    #[pyo3(signature = (capacity, drop_newest = false))]
    fn _trace_start(&self, py: Python<'_>, capacity: usize, drop_newest: bool) -> PyResult<()> {
        if capacity == 0 {
            return Err(PyValueError::new_err(
                "the trace buffer needs room for at least one event",
            ));
        }
        let overflow = if drop_newest {
            Overflow::DropNewest
        } else {
            Overflow::DropOldest
        };
        self.instruments
            .start_trace(py, capacity, overflow, &self.cancelled)
    }

    /// Stop recording: (events as bytes, dropped count), or None if no trace was running.
    fn _trace_stop<'py>(&self, py: Python<'py>) -> PyResult<Option<(Bound<'py, PyBytes>, u64)>> {
        self.instruments.stop_trace(py, &self.cancelled)
    }

    fn _trace_labels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.instruments.labels(py)
    }

    /// Every subclass (`ferroloop.Loop`, and a program's subclasses of it) gets its own
    /// copies of these methods, which CPython's specializing interpreter calls directly:
    /// see `subclass_methods.rs`.
    #[classmethod]
    #[pyo3(signature = (**kwargs))]
    fn __init_subclass__(
        cls: &Bound<'_, PyType>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let core = cls.py().get_type::<LoopCore>();
        crate::subclass_methods::copy_onto(&core, cls)?;
        let next = pyo3::types::PySuper::new(&core, cls)?
            .getattr(intern!(cls.py(), "__init_subclass__"))?;
        next.call((), kwargs)?;
        Ok(())
    }

    /// The trace's event kinds and I/O kinds by name, and the bytes per event.
    #[staticmethod]
    fn _trace_format(py: Python<'_>) -> PyResult<(Bound<'_, PyDict>, Bound<'_, PyDict>, usize)> {
        let kinds = PyDict::new(py);
        for (name, kind) in crate::trace::KIND_NAMES {
            kinds.set_item(name, kind as u8)?;
        }
        let io = PyDict::new(py);
        for (name, kind) in crate::trace::IO_NAMES {
            io.set_item(name, kind as u32)?;
        }
        Ok((kinds, io, crate::trace::EVENT_BYTES))
    }

    fn _set_blocking_threshold(slf: &Bound<'_, Self>, seconds: Option<f64>) -> PyResult<()> {
        slf.get()
            .instruments
            .set_blocking_threshold(slf.as_any(), seconds)
    }

    fn _get_blocking_threshold(&self, py: Python<'_>) -> Option<f64> {
        self.instruments.blocking_threshold(py)
    }

    /// Release everything the loop holds: queued callbacks, timers, watchers, the epoll fd and
    /// the waker. Idempotent; the Python `close()` checks the loop is not running first.
    fn _close_core(&self, py: Python<'_>) {
        if self.closed.swap(true, Relaxed) {
            return;
        }
        let ready = self
            .ready
            .with_borrow_mut(py, super::ready::ReadyQueue::take_all);
        let timers = self
            .scheduled
            .with_borrow_mut(py, super::timers::TimerHeap::drain_all);
        for h in &timers {
            mark_unscheduled(h);
        }
        self.cancelled.in_heap.store(0, Relaxed);
        let watches = self
            .fds
            .with_borrow_mut(py, super::fd_watchers::FdTable::drain_all);
        let io = self.io.with_borrow_mut(py, std::option::Option::take);
        let spare = self
            .recv_spare
            .with_borrow_mut(py, std::option::Option::take);
        self.instruments.stop_watchdog(py);
        self.spare_handles.clear(py);
        drop((ready, timers, watches, io, spare));
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.ready.traverse(&visit, |ready, visit| {
            for item in ready.iter() {
                visit.call(&item.0)?;
            }
            Ok(())
        })?;
        self.scheduled.traverse(&visit, |heap, visit| {
            for h in heap.iter() {
                visit.call(h)?;
            }
            Ok(())
        })?;
        self.fds.traverse(&visit, |fds, visit| {
            let mut result = Ok(());
            fds.visit(|w| {
                if result.is_ok() {
                    result = visit
                        .call(&w.fileobj)
                        .and_then(|()| w.reader.as_ref().map_or(Ok(()), |h| visit.call(h)))
                        .and_then(|()| w.writer.as_ref().map_or(Ok(()), |h| visit.call(h)))
                        .and_then(|()| w.parked_for.as_ref().map_or(Ok(()), |p| visit.call(p)));
                }
            });
            result
        })?;
        self.task_factory
            .traverse(&visit, |factory, visit| visit.call(factory))
    }

    /// tp_clear: a loop that is garbage lets go of its queued callbacks, timers, watchers and
    /// task factory, any of which can lead back to it (a watcher's handle calling one of the
    /// loop's own methods, a `sock_recv` waiter). Released after the borrows end.
    fn __clear__(&self, py: Python<'_>) {
        let ready = self.ready.with_borrow_mut(py, ReadyQueue::take_all);
        let timers = self.scheduled.with_borrow_mut(py, TimerHeap::drain_all);
        for h in &timers {
            mark_unscheduled(h);
        }
        let watches = self.fds.with_borrow_mut(py, FdTable::drain_all);
        let factory = self.task_factory.with_borrow_mut(py, Option::take);
        self.spare_handles.clear(py);
        drop((ready, timers, watches, factory));
    }
}
