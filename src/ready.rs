//! The ready queue: callbacks to run on this iteration of the loop, in FIFO order, in pure
//! Rust.
//!
//! One iteration runs exactly the callbacks that were queued when it started; callbacks they
//! queue run on the next iteration, after another poll (the standard loop's `ntodo` rule), so
//! a callback that keeps re-scheduling itself cannot starve I/O.
//!
//! ```
//! use _core::ready::ReadyQueue;
//! let mut q = ReadyQueue::new();
//! q.push("a");
//! let batch = q.begin_iteration();
//! q.push("b"); // queued by a running callback: next iteration
//! assert_eq!(batch, 1);
//! assert_eq!(q.pop(), Some("a"));
//! ```

use std::collections::VecDeque;

pub struct ReadyQueue<T> {
    items: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ReadyQueue<T> {
    pub fn new() -> Self {
        ReadyQueue {
            items: VecDeque::new(),
        }
    }

    #[inline]
    pub fn push(&mut self, item: T) {
        self.items.push_back(item);
    }

    pub fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        self.items.extend(items);
    }

    /// How many callbacks this iteration runs: those queued right now.
    pub fn begin_iteration(&self) -> usize {
        self.items.len()
    }

    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn take_all(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.items)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order() {
        let mut q = ReadyQueue::new();
        q.extend(0..5);
        let got: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn items_queued_during_an_iteration_wait_for_the_next() {
        let mut q = ReadyQueue::new();
        q.push(1);
        q.push(2);
        let batch = q.begin_iteration();
        let mut ran = Vec::new();
        for _ in 0..batch {
            let item = q.pop().unwrap();
            ran.push(item);
            q.push(item * 10); // each callback schedules another
        }
        assert_eq!(ran, vec![1, 2]);
        assert_eq!(q.begin_iteration(), 2);
        assert_eq!(q.pop(), Some(10));
    }
}
