//! The timer heap: the loop's `scheduled` list, in pure Rust.
//!
//! Entries are ordered by `when`, ties broken by scheduling order (a sequence number), which is
//! the order `heapq` gives the standard loop. A NaN `when` sorts first, so such a timer fires on
//! the next iteration, as it does in the standard loop. Cancelled entries stay in the heap until
//! they reach the top or until `compact` drops them all at once (the loop calls it when more than
//! half the heap is cancelled), so cancelling is O(1) and a million cancelled timers do not keep
//! a million entries.
//!
//! ```
//! use _core::timers::TimerHeap;
//! let mut heap = TimerHeap::new();
//! heap.push(2.0, "later");
//! heap.push(1.0, "sooner");
//! assert_eq!(heap.pop_due(1.5), Some("sooner"));
//! assert_eq!(heap.pop_due(1.5), None);
//! ```

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Entry<T> {
    key: f64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    fn order(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the earliest `when` is on top.
        other
            .key
            .total_cmp(&self.key)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order(other)
    }
}

pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerHeap<T> {
    pub fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn push(&mut self, when: f64, item: T) {
        let key = if when.is_nan() {
            f64::NEG_INFINITY
        } else {
            when
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { key, seq, item });
    }

    /// The `when` of the earliest entry (NaN entries report negative infinity).
    pub fn peek_when(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.key)
    }

    pub fn peek(&self) -> Option<&T> {
        self.heap.peek().map(|e| &e.item)
    }

    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|e| e.item)
    }

    /// Pop the earliest entry if its `when` is strictly before `end_time`.
    pub fn pop_due(&mut self, end_time: f64) -> Option<T> {
        match self.heap.peek() {
            Some(e) if e.key < end_time => self.heap.pop().map(|e| e.item),
            _ => None,
        }
    }

    /// `pop_due`, with the entry's `when` (negative infinity for NaN).
    pub fn pop_due_with_when(&mut self, end_time: f64) -> Option<(f64, T)> {
        match self.heap.peek() {
            Some(e) if e.key < end_time => self.heap.pop().map(|e| (e.key, e.item)),
            _ => None,
        }
    }

    /// Drop every entry for which `keep` is false; returns the dropped items so the caller can
    /// release them outside any borrow.
    pub fn compact(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let mut kept = Vec::with_capacity(entries.len());
        let mut dropped = Vec::new();
        for e in entries {
            if keep(&e.item) {
                kept.push(e);
            } else {
                dropped.push(e.item);
            }
        }
        self.heap = BinaryHeap::from(kept);
        dropped
    }

    /// Remove everything (the loop is closing).
    pub fn drain_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_when_order() {
        let mut h = TimerHeap::new();
        for (w, v) in [(3.0, 3), (1.0, 1), (2.0, 2)] {
            h.push(w, v);
        }
        assert_eq!(h.pop_due(10.0), Some(1));
        assert_eq!(h.pop_due(10.0), Some(2));
        assert_eq!(h.pop_due(10.0), Some(3));
        assert_eq!(h.pop_due(10.0), None);
    }

    #[test]
    fn ties_keep_scheduling_order() {
        let mut h = TimerHeap::new();
        for v in 0..100 {
            h.push(5.0, v);
        }
        let got: Vec<_> = std::iter::from_fn(|| h.pop_due(6.0)).collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn not_due_until_strictly_before_end_time() {
        let mut h = TimerHeap::new();
        h.push(1.0, ());
        assert_eq!(h.pop_due(1.0), None);
        assert_eq!(h.pop_due(1.0 + 1e-9), Some(()));
    }

    #[test]
    fn nan_fires_first() {
        let mut h = TimerHeap::new();
        h.push(0.5, "a");
        h.push(f64::NAN, "nan");
        assert_eq!(h.pop_due(0.0), Some("nan"));
        assert_eq!(h.peek_when(), Some(0.5));
    }

    #[test]
    fn compact_drops_rejected_and_keeps_order() {
        let mut h = TimerHeap::new();
        for v in 0..1000u32 {
            h.push(f64::from(1000 - v), v);
        }
        let dropped = h.compact(|v| v % 2 == 0);
        assert_eq!(dropped.len(), 500);
        assert_eq!(h.len(), 500);
        let mut last = f64::NEG_INFINITY;
        while let Some(w) = h.peek_when() {
            assert!(w >= last);
            last = w;
            h.pop();
        }
    }
}
