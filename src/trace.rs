//! The trace buffer: fixed-size events in a bounded ring, in pure Rust (its memory comes from
//! `sys::memory`).
//!
//! The loop appends an event (kind, timestamp, two payload words, task id, label id) at each
//! point worth seeing; nothing is named here. Ids become names only when the trace is written
//! (`python/ferroloop/_trace.py`). When the ring is full it drops either its oldest events (a
//! long-running server keeps its most recent history) or the newest (a start-up keeps its
//! beginning), and counts them, so memory stays bounded. Used on the loop thread with the GIL
//! held (it lives in a `GilCell`).
//!
//! ```
//! use _core::trace::{Kind, Overflow, TraceEvent, TraceRing};
//! # fn main() -> std::io::Result<()> {
//! let mut ring = TraceRing::new(2, Overflow::DropOldest)?;
//! for ts in 1..=3 {
//!     ring.push(TraceEvent { ts, kind: Kind::CallbackStart as u8, ..Default::default() });
//! }
//! assert_eq!(ring.dropped(), 1);
//! assert_eq!(ring.ordered().map(|e| e.ts).collect::<Vec<_>>(), vec![2, 3]);
//! # Ok(())
//! # }
//! ```

use std::io;

use crate::sys::memory::{Mapping, COMMIT_CHUNK};

/// What an event records; the payload words `a` and `b` per kind are listed in
/// `python/ferroloop/_trace.py`, which reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// a: handle id, b: timer `when` (f64 bits) or 0; label: the callback.
    CallbackStart = 1,
    /// a: handle id, b: awaited future's type label << 32 | awaited task id (task steps);
    /// label: the innermost coroutine the task is suspended in.
    CallbackEnd = 2,
    /// a: new handle id, b: the handle running when it was queued (0: none); task: target.
    CallSoon = 3,
    /// As `CallSoon`, queued from another thread; b: that thread's ident.
    Threadsafe = 4,
    /// a: timer handle id, b: `when` (f64 bits).
    TimerScheduled = 5,
    /// task: the new task, b: the task that created it (0: none).
    TaskCreated = 6,
    /// task: the task, a: 1 result, 2 cancelled, 3 exception.
    TaskDone = 7,
    /// ts: wait start, a: duration ns, b: number of events.
    PollWait = 8,
    /// a: ready-queue depth when the iteration began running callbacks.
    Iteration = 9,
    /// a: fd, b: bytes; label: the I/O kind (see `IoKind`).
    Io = 10,
    /// a: timer handle id (ts: when it was cancelled).
    TimerCancelled = 11,
}

/// What an `Io` event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum IoKind {
    Read = 1,
    Write = 2,
    PauseReading = 3,
    ResumeReading = 4,
    PauseWriting = 5,
    ResumeWriting = 6,
    /// The poller reported the fd readable (b unused).
    Readable = 7,
    /// The poller reported the fd writable (b unused).
    Writable = 8,
}

pub const KIND_NAMES: [(&str, Kind); 11] = [
    ("callback_start", Kind::CallbackStart),
    ("callback_end", Kind::CallbackEnd),
    ("call_soon", Kind::CallSoon),
    ("threadsafe", Kind::Threadsafe),
    ("timer_scheduled", Kind::TimerScheduled),
    ("task_created", Kind::TaskCreated),
    ("task_done", Kind::TaskDone),
    ("poll_wait", Kind::PollWait),
    ("iteration", Kind::Iteration),
    ("io", Kind::Io),
    ("timer_cancelled", Kind::TimerCancelled),
];

pub const IO_NAMES: [(&str, IoKind); 8] = [
    ("read", IoKind::Read),
    ("write", IoKind::Write),
    ("pause_reading", IoKind::PauseReading),
    ("resume_reading", IoKind::ResumeReading),
    ("pause_writing", IoKind::PauseWriting),
    ("resume_writing", IoKind::ResumeWriting),
    ("readable", IoKind::Readable),
    ("writable", IoKind::Writable),
];

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// Monotonic clock, ns.
    pub ts: u64,
    pub a: u64,
    pub b: u64,
    pub task: u32,
    /// Label ids are kept below 2^24 (`LABEL_MASK`): the kind shares their word.
    pub label: u32,
    pub kind: u8,
}

pub const LABEL_MASK: u32 = 0x00FF_FFFF;

/// An event as the ring stores it: 32 bytes, the kind in the label word's top byte.
#[derive(Clone, Copy)]
#[repr(C)]
struct Stored {
    ts: u64,
    a: u64,
    b: u64,
    task: u32,
    kind_label: u32,
}

impl Stored {
    fn pack(e: TraceEvent) -> Stored {
        Stored {
            ts: e.ts,
            a: e.a,
            b: e.b,
            task: e.task,
            kind_label: (e.label & LABEL_MASK) | u32::from(e.kind) << 24,
        }
    }

    fn unpack(&self) -> TraceEvent {
        TraceEvent {
            ts: self.ts,
            a: self.a,
            b: self.b,
            task: self.task,
            label: self.kind_label & LABEL_MASK,
            kind: (self.kind_label >> 24) as u8,
        }
    }
}

/// Bytes per event in `TraceRing::to_bytes` (`struct` format `<QQQII`: ts, a, b, task, and
/// the label with the kind in its top byte).
pub const EVENT_BYTES: usize = 32;

/// Which events a full ring gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Overwrite the oldest: a long-running server keeps its latest history.
    #[default]
    DropOldest,
    /// Keep the first `capacity` events: a start-up keeps its beginning.
    DropNewest,
}

pub struct TraceRing {
    /// Room for `capacity` events, mapped up front so that the ring never moves, and
    /// committed ahead of the writer (`INITIAL_COMMIT` at once, then a chunk at a time):
    /// a page fault per 128 events would cost more than writing them (see `sys::memory`).
    memory: Mapping,
    /// Events written so far (at most `capacity`); they are the first `len` slots.
    len: usize,
    /// Slots whose memory is committed (at most `capacity`).
    committed: usize,
    capacity: usize,
    /// Where the next event goes once the ring is full (its oldest event).
    oldest: usize,
    overflow: Overflow,
    dropped: u64,
}

/// Bytes committed when the ring is made: the whole of `DEFAULT_TRACE_EVENTS`' ring
/// (`_instrument.py`), so that a default trace takes no page fault while recording; a larger
/// ring commits the rest a chunk at a time as it fills.
pub const INITIAL_COMMIT: usize = 32 << 20;

impl TraceRing {
    /// A ring of `capacity` events (at least one): fails only if the memory cannot be mapped.
    pub fn new(capacity: usize, overflow: Overflow) -> io::Result<Self> {
        let capacity = capacity.max(1);
        let bytes = capacity
            .checked_mul(EVENT_BYTES)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let memory = Mapping::new(bytes)?;
        memory.commit(0..INITIAL_COMMIT);
        Ok(TraceRing {
            memory,
            len: 0,
            committed: capacity.min(INITIAL_COMMIT / EVENT_BYTES),
            capacity,
            oldest: 0,
            overflow,
            dropped: 0,
        })
    }

    /// The first slot. A mapping starts on a page boundary, aligned for any `Stored`.
    #[inline]
    #[allow(clippy::cast_ptr_alignment)]
    fn slots(&self) -> *mut Stored {
        self.memory.as_ptr().cast::<Stored>()
    }

    #[inline]
    fn write(&mut self, slot: usize, stored: Stored) {
        debug_assert!(slot < self.capacity);
        // SAFETY: `slot` < `capacity`, so the event lies inside the mapping (aligned, see
        // `slots`), which this ring owns and `&mut self` borrows.
        unsafe { self.slots().add(slot).write(stored) };
    }

    #[inline]
    pub fn push(&mut self, event: TraceEvent) {
        let stored = Stored::pack(event);
        if self.len < self.committed {
            self.write(self.len, stored);
            self.len += 1;
        } else {
            self.push_uncommitted_or_full(stored);
        }
    }

    #[cold]
    fn push_uncommitted_or_full(&mut self, stored: Stored) {
        if self.len < self.capacity {
            let from = self.committed * EVENT_BYTES;
            self.memory.commit(from..from + COMMIT_CHUNK);
            self.committed = (self.committed + COMMIT_CHUNK / EVENT_BYTES).min(self.capacity);
            self.write(self.len, stored);
            self.len += 1;
            return;
        }
        self.dropped += 1;
        if self.overflow == Overflow::DropNewest {
            return;
        }
        self.write(self.oldest, stored);
        self.oldest += 1;
        if self.oldest == self.capacity {
            self.oldest = 0;
        }
    }

    /// The events written, in slot order.
    fn events(&self) -> &[Stored] {
        // SAFETY: the first `len` slots lie inside the mapping and have each been written
        // (slots are filled in order, and only rewritten after that); the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.slots(), self.len) }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Oldest first.
    pub fn ordered(&self) -> impl Iterator<Item = TraceEvent> + '_ {
        let (newer, older) = self.events().split_at(self.oldest);
        older.iter().chain(newer).map(Stored::unpack)
    }

    /// Write the events oldest first into `out` (`len() * EVENT_BYTES` bytes), little-endian,
    /// `EVENT_BYTES` each.
    pub fn write_bytes(&self, out: &mut [u8]) {
        let (newer, older) = self.events().split_at(self.oldest);
        let mut at = 0;
        for part in [older, newer] {
            let n = part.len() * EVENT_BYTES;
            write_records(part, &mut out[at..at + n]);
            at += n;
        }
    }

    /// The events oldest first, little-endian, `EVENT_BYTES` each.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len * EVENT_BYTES];
        self.write_bytes(&mut out);
        out
    }
}

/// `records` as their little-endian bytes: on a little-endian machine `Stored` (`repr(C)`,
/// four u64-sized words without padding) already is that layout, so it is one copy.
fn write_records(records: &[Stored], out: &mut [u8]) {
    const _: () = assert!(std::mem::size_of::<Stored>() == EVENT_BYTES);
    if cfg!(target_endian = "little") {
        // SAFETY: `Stored` is `repr(C)` with only integer fields and no padding (its size is
        // the sum of its fields', asserted above), so every byte of the slice is initialised
        // and may be read as `u8`; the length covers exactly the slice.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                records.as_ptr().cast::<u8>(),
                std::mem::size_of_val(records),
            )
        };
        out.copy_from_slice(bytes);
        return;
    }
    for (e, record) in records.iter().zip(out.chunks_exact_mut(EVENT_BYTES)) {
        record[0..8].copy_from_slice(&e.ts.to_le_bytes());
        record[8..16].copy_from_slice(&e.a.to_le_bytes());
        record[16..24].copy_from_slice(&e.b.to_le_bytes());
        record[24..28].copy_from_slice(&e.task.to_le_bytes());
        record[28..32].copy_from_slice(&e.kind_label.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: u64) -> TraceEvent {
        TraceEvent {
            ts,
            kind: Kind::Io as u8,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_newest_capacity_events_in_order() {
        let mut ring = TraceRing::new(3, Overflow::DropOldest).unwrap();
        for ts in 0..10 {
            ring.push(event(ts));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.dropped(), 7);
        let ts: Vec<u64> = ring.ordered().map(|e| e.ts).collect();
        assert_eq!(ts, vec![7, 8, 9]);
    }

    #[test]
    fn dropping_the_newest_keeps_the_first_capacity_events() {
        let mut ring = TraceRing::new(3, Overflow::DropNewest).unwrap();
        for ts in 0..10 {
            ring.push(event(ts));
        }
        assert_eq!(ring.dropped(), 7);
        let ts: Vec<u64> = ring.ordered().map(|e| e.ts).collect();
        assert_eq!(ts, vec![0, 1, 2]);
    }

    #[test]
    fn bytes_follow_the_ring_order_after_wrapping() {
        let mut ring = TraceRing::new(3, Overflow::DropOldest).unwrap();
        for ts in 0..5 {
            ring.push(event(ts));
        }
        let bytes = ring.to_bytes();
        let ts: Vec<u8> = bytes.chunks_exact(EVENT_BYTES).map(|r| r[0]).collect();
        assert_eq!(ts, vec![2, 3, 4]);
        assert!(bytes
            .chunks_exact(EVENT_BYTES)
            .all(|r| r[31] == Kind::Io as u8));
    }

    #[test]
    fn a_ring_larger_than_its_first_commit_keeps_every_event() {
        let capacity = INITIAL_COMMIT / EVENT_BYTES + COMMIT_CHUNK / EVENT_BYTES + 10;
        let mut ring = TraceRing::new(capacity, Overflow::DropOldest).unwrap();
        for ts in 0..capacity as u64 + 5 {
            ring.push(event(ts));
        }
        assert_eq!((ring.len(), ring.dropped()), (capacity, 5));
        assert!(ring.ordered().map(|e| e.ts).eq(5..capacity as u64 + 5));
    }

    #[test]
    fn bytes_are_fixed_size_records() {
        let mut ring = TraceRing::new(4, Overflow::DropOldest).unwrap();
        ring.push(TraceEvent {
            ts: 1,
            a: 2,
            b: 3,
            task: 4,
            label: 5,
            kind: 6,
        });
        let bytes = ring.to_bytes();
        assert_eq!(bytes.len(), EVENT_BYTES);
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[8], 2);
        assert_eq!(bytes[16], 3);
        assert_eq!(bytes[24], 4);
        assert_eq!(bytes[28], 5);
        assert_eq!(bytes[31], 6);
        assert_eq!(
            ring.ordered().next().map(|e| (e.label, e.kind)),
            Some((5, 6))
        );
    }
}
