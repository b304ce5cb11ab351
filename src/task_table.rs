//! Per-task records while instrumentation is on: who each Task is (name, coroutine, where it
//! was created, by which task) and how it ran (steps, busy time, wake-to-run time, idle time,
//! self-wakes, longest step, outcome) — the task list tokio-console shows.
//!
//! Loop thread, GIL held (lives in a `GilCell`). Tasks are found by address; the record holds
//! a weak reference that confirms the address still is that task, so a task that died pending
//! and whose memory was reused is not mistaken for the new one. Ids start at 1; 0 is "none".

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::callback_identity::AddrMap;
use crate::gil_cell::GilCell;
use crate::support;

/// Frames looked at for a creation site before giving up.
const MAX_SITE_DEPTH: usize = 64;

pub const OUTCOME_PENDING: u8 = 0;
pub const OUTCOME_RESULT: u8 = 1;
pub const OUTCOME_CANCELLED: u8 = 2;
pub const OUTCOME_EXCEPTION: u8 = 3;

/// Who a task is and how it ended: read when the statistics are read, and when a task is
/// found by address.
pub struct TaskRecord {
    weak: Py<PyAny>,
    name: Py<PyAny>,
    coro: Py<PyAny>,
    site: Py<PyAny>,
    parent: u32,
    created_ns: u64,
    done_ns: u64,
    outcome: u8,
}

/// How a task ran: what every step touches, one cache line per task, apart from the rest of
/// its record (a program with a thousand tasks stepping in turn would otherwise carry two or
/// three lines per task, and the interpreter's own data pays for the room they take).
#[derive(Default)]
#[repr(align(64))]
struct StepTimes {
    /// When its next step was queued (0: not queued). A step that queues its own next step
    /// (a bare yield) wakes it at the step's end, whose time is read anyway.
    woken_ns: u64,
    last_end_ns: u64,
    steps: u64,
    busy_ns: u64,
    wake_wait_ns: u64,
    idle_ns: u64,
    max_step_ns: u64,
    self_wakes: u64,
}

impl TaskRecord {
    /// The task, borrowed from the weak reference (null once it died).
    fn referent(&self) -> *mut ffi::PyObject {
        // SAFETY: `weak` is a live weak reference object this record owns (made by
        // `PyWeakrefReference::new`); `wr_object` is its referent, or None once that died.
        let referent = unsafe { (*(self.weak.as_ptr().cast::<ffi::PyWeakReference>())).wr_object };
        // SAFETY: reading the address of the None singleton.
        if referent == unsafe { ffi::Py_None() } {
            std::ptr::null_mut()
        } else {
            referent
        }
    }
}

#[derive(Default)]
pub struct TaskTable {
    by_addr: AddrMap<u32>,
    records: Vec<TaskRecord>,
    /// Beside `records`, index for index.
    times: Vec<StepTimes>,
    /// Code objects met while looking for creation sites, by address: whether each is
    /// asyncio's or ferroloop's own (`internal_code` keeps them alive, so an address is never
    /// another code object's).
    internal_code: AddrMap<bool>,
    keep_code: Vec<Py<PyAny>>,
    /// Ids handed out before the last `take_all`: ids are never reused, so an id still held
    /// by a running callback when the table was cleared finds nothing instead of a stranger.
    base: u32,
}

impl TaskTable {
    /// The id of `task` if it is recorded (and still alive at that address).
    pub fn find(&self, task: &Bound<'_, PyAny>) -> Option<u32> {
        let id = *self.by_addr.get(&(task.as_ptr() as usize))?;
        (self.get(id)?.referent() == task.as_ptr()).then_some(id)
    }

    fn get(&self, id: u32) -> Option<&TaskRecord> {
        self.records.get(self.index(id)?)
    }

    /// Record a new task; `identity` is (name, coroutine qualname, creation site).
    pub fn add(
        &mut self,
        task: &Bound<'_, PyAny>,
        weak: Bound<'_, PyAny>,
        identity: (Py<PyAny>, Py<PyAny>, Py<PyAny>),
        parent: u32,
        now_ns: u64,
    ) -> u32 {
        let (name, coro, site) = identity;
        self.records.push(TaskRecord {
            weak: weak.unbind(),
            name,
            coro,
            site,
            parent,
            created_ns: now_ns,
            done_ns: 0,
            outcome: OUTCOME_PENDING,
        });
        self.times.push(StepTimes {
            last_end_ns: now_ns,
            ..StepTimes::default()
        });
        let id = self.base + self.records.len() as u32;
        self.by_addr.insert(task.as_ptr() as usize, id);
        id
    }

    fn index(&self, id: u32) -> Option<usize> {
        Some(id.checked_sub(self.base + 1)? as usize)
    }

    fn times(&mut self, id: u32) -> Option<&mut StepTimes> {
        let index = self.index(id)?;
        self.times.get_mut(index)
    }

    /// Its next step was queued at `now_ns`; `by_itself` when the task's own step queued it.
    pub fn woken(&mut self, id: u32, now_ns: u64, by_itself: bool) {
        let Some(r) = self.times(id) else {
            return;
        };
        if r.woken_ns == 0 {
            r.woken_ns = now_ns;
            if !by_itself {
                // Idle from the end of its last step; a task that wakes itself never idles.
                r.idle_ns += now_ns.saturating_sub(r.last_end_ns);
            }
        }
        if by_itself {
            r.self_wakes += 1;
        }
    }

    /// Task `id`'s step begins at `start_ns`: the wait since its wake-up ends. Returns whether
    /// the task is recorded.
    pub fn step_started(&mut self, id: u32, start_ns: u64) -> bool {
        let Some(r) = self.times(id) else {
            return false;
        };
        if r.woken_ns != 0 {
            r.wake_wait_ns += start_ns.saturating_sub(r.woken_ns);
            r.woken_ns = 0;
        }
        true
    }

    /// Record a finished step, in which the task queued its own next step `self_wakes` times,
    /// the first at `self_woken_ns` (0: count it woken at the step's end); returns whether it
    /// was the task's first step, and whether its next step is queued already.
    pub fn stepped(
        &mut self,
        id: u32,
        start_ns: u64,
        end_ns: u64,
        self_wakes: u32,
        self_woken_ns: u64,
    ) -> (bool, bool) {
        let Some(r) = self.times(id) else {
            return (false, false);
        };
        let took = end_ns.saturating_sub(start_ns);
        r.steps += 1;
        r.busy_ns += took;
        r.max_step_ns = r.max_step_ns.max(took);
        r.last_end_ns = end_ns;
        if self_wakes != 0 {
            r.self_wakes += u64::from(self_wakes);
            if r.woken_ns == 0 {
                r.woken_ns = if self_woken_ns == 0 {
                    end_ns
                } else {
                    self_woken_ns
                };
            }
        }
        (r.steps == 1, r.woken_ns != 0)
    }

    /// The task's name as it is now (`create_task(name=...)` may set it after the task has
    /// queued its first step).
    pub fn rename(&mut self, id: u32, name: Py<PyAny>) -> Option<Py<PyAny>> {
        let index = self.index(id)?;
        Some(std::mem::replace(
            &mut self.records.get_mut(index)?.name,
            name,
        ))
    }

    pub fn finished(&mut self, id: u32, outcome: u8, now_ns: u64, addr: usize) {
        let Some(r) = self.index(id).and_then(|i| self.records.get_mut(i)) else {
            return;
        };
        r.outcome = outcome;
        r.done_ns = now_ns;
        if self.by_addr.get(&addr) == Some(&id) {
            self.by_addr.remove(&addr);
        }
    }

    /// One dict per task, in creation order.
    pub fn to_dicts<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let secs = |ns: u64| ns as f64 * 1e-9;
        let mut out = Vec::with_capacity(self.records.len());
        for (i, (r, t)) in self.records.iter().zip(&self.times).enumerate() {
            let d = PyDict::new(py);
            d.set_item("id", self.base as usize + i + 1)?;
            let name = match r.name.bind(py) {
                // Named at its first step; one that never stepped is asked now, if it is alive.
                unnamed if unnamed.is_none() => match r.weak.bind(py).call0()? {
                    task if task.is_none() => "?".into_pyobject(py)?.into_any(),
                    task => task.call_method0(intern!(py, "get_name"))?,
                },
                name => name.clone(),
            };
            d.set_item("name", name)?;
            d.set_item("coro", r.coro.bind(py))?;
            d.set_item("created_at", crate::support::format_site(r.site.bind(py))?)?;
            d.set_item("parent", r.parent)?;
            d.set_item("task", r.weak.bind(py).call0()?)?;
            d.set_item(
                "state",
                ["pending", "done", "cancelled", "raised"][r.outcome as usize],
            )?;
            d.set_item("created_ns", r.created_ns)?;
            d.set_item("done_ns", r.done_ns)?;
            d.set_item("steps", t.steps)?;
            d.set_item("busy_seconds", secs(t.busy_ns))?;
            d.set_item("wake_to_run_seconds", secs(t.wake_wait_ns))?;
            d.set_item("idle_seconds", secs(t.idle_ns))?;
            d.set_item("max_step_seconds", secs(t.max_step_ns))?;
            d.set_item("self_wakes", t.self_wakes)?;
            out.push(d);
        }
        Ok(out)
    }

    pub fn take_all(&mut self) -> Vec<TaskRecord> {
        self.by_addr.clear();
        self.base += self.records.len() as u32;
        self.times.clear();
        std::mem::take(&mut self.records)
    }
}

/// A new task's (name, coroutine qualname, creation site) for its record. The name is left
/// `None` (it is read at the task's first step, after `create_task(name=...)` has set it); the
/// site is the innermost frame outside asyncio and ferroloop, as `(code, instruction offset)`,
/// which `format_site` makes readable when the statistics are read (a line number costs a
/// walk of the line table).
pub fn task_identity(
    table: &GilCell<TaskTable>,
    task: &Bound<'_, PyAny>,
) -> PyResult<(Py<PyAny>, Py<PyAny>, Py<PyAny>)> {
    let py = task.py();
    let coro = task.call_method0(intern!(py, "get_coro"))?;
    let qualname = match coro.getattr(intern!(py, "__qualname__")) {
        Ok(name) if name.is_truthy()? => name.str()?,
        _ => coro.get_type().qualname()?,
    };
    Ok((
        py.None(),
        qualname.into_any().unbind(),
        creation_site(table, py)?,
    ))
}

fn creation_site(table: &GilCell<TaskTable>, py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: the current frame, borrowed (NULL when no Python code is running); a new
    // reference is made at once.
    let mut frame = unsafe { Bound::from_borrowed_ptr_or_opt(py, ffi::PyEval_GetFrame().cast()) };
    for _ in 0..MAX_SITE_DEPTH {
        let Some(current) = frame else {
            break;
        };
        let frame_ptr = current.as_ptr().cast::<ffi::PyFrameObject>();
        // SAFETY: `frame_ptr` is a live frame; PyFrame_GetCode returns a new, non-NULL
        // reference.
        let code = unsafe { Bound::from_owned_ptr(py, ffi::PyFrame_GetCode(frame_ptr).cast()) };
        if !is_internal_code(table, &code)? {
            // SAFETY: `frame_ptr` is a live frame.
            let offset = unsafe { ffi::PyFrame_GetLasti(frame_ptr) };
            return Ok(
                PyTuple::new(py, [code, offset.into_pyobject(py)?.into_any()])?
                    .into_any()
                    .unbind(),
            );
        }
        // SAFETY: `frame_ptr` is a live frame; PyFrame_GetBack returns a new reference or NULL
        // for the outermost frame.
        frame = unsafe { Bound::from_owned_ptr_or_opt(py, ffi::PyFrame_GetBack(frame_ptr).cast()) };
    }
    Ok("?".into_pyobject(py)?.into_any().unbind())
}

/// Whether `code` is asyncio's or ferroloop's own, asked of `ferroloop._instrument` once per
/// code object.
fn is_internal_code(table: &GilCell<TaskTable>, code: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = code.py();
    let key = code.as_ptr() as usize;
    if let Some(internal) = table.with_borrow(py, |t| t.internal_code.get(&key).copied()) {
        return Ok(internal);
    }
    let internal = support::is_internal_code(code)?;
    table.with_borrow_mut(py, |t| {
        t.internal_code.insert(key, internal);
        t.keep_code.push(code.clone().unbind());
    });
    Ok(internal)
}
