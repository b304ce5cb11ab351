//! A transport's write buffer: the bytes an application handed to `write()` that the socket
//! has not accepted yet, in pure Rust.
//!
//! Data is kept in chunks sized to what was written (small writes are coalesced into the last
//! chunk), so the buffer holds about what the application wrote — a writer that ignores
//! `pause_writing` grows memory by what it wrote, not by a doubling `Vec`. The front chunks
//! are handed to `writev` as one vectored write.
//!
//! ```
//! use _core::write_buffer::WriteBuffer;
//! let mut buf = WriteBuffer::new();
//! buf.push(b"hello ");
//! buf.push(b"world");
//! assert_eq!(buf.len(), 11);
//! buf.consume(6);
//! assert_eq!(buf.front_slices(8).concat(), b"world");
//! ```

use std::collections::VecDeque;

/// Writes up to this size are appended to the last chunk instead of starting a new one.
const COALESCE_LIMIT: usize = 16 * 1024;

#[derive(Default)]
pub struct WriteBuffer {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already sent.
    offset: usize,
    len: usize,
}

impl WriteBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(last) = self.chunks.back_mut() {
            if last.len() + data.len() <= COALESCE_LIMIT {
                last.extend_from_slice(data);
                return;
            }
        }
        self.chunks.push_back(data.to_vec());
    }

    /// Up to `max` slices from the front, for one vectored write.
    pub fn front_slices(&self, max: usize) -> Vec<&[u8]> {
        self.chunks
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, c)| if i == 0 { &c[self.offset..] } else { &c[..] })
            .collect()
    }

    /// Drop `n` sent bytes from the front.
    pub fn consume(&mut self, mut n: usize) {
        debug_assert!(n <= self.len);
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.chunks.pop_front();
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.offset = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(buf: &WriteBuffer) -> Vec<u8> {
        buf.front_slices(usize::MAX).concat()
    }

    #[test]
    fn keeps_order_across_partial_consumes() {
        let mut buf = WriteBuffer::new();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let piece: Vec<u8> = (0..(i * 97 % 5000)).map(|j| (i + j) as u8).collect();
            buf.push(&piece);
            expected.extend_from_slice(&piece);
            if i % 3 == 0 {
                let n = buf.len() / 2;
                buf.consume(n);
                expected.drain(..n);
            }
            assert_eq!(buf.len(), expected.len());
        }
        assert_eq!(contents(&buf), expected);
    }

    #[test]
    fn small_writes_coalesce_large_ones_do_not() {
        let mut buf = WriteBuffer::new();
        for _ in 0..100 {
            buf.push(b"0123456789");
        }
        assert_eq!(buf.front_slices(usize::MAX).len(), 1);
        buf.push(&vec![1u8; 100_000]);
        assert_eq!(buf.front_slices(usize::MAX).len(), 2);
        assert_eq!(buf.len(), 101_000);
    }

    #[test]
    fn memory_tracks_what_was_written() {
        let mut buf = WriteBuffer::new();
        for _ in 0..64 {
            buf.push(&vec![7u8; 1 << 20]);
        }
        let capacity: usize = buf.chunks.iter().map(std::vec::Vec::capacity).sum();
        assert_eq!(capacity, 64 << 20);
    }

    #[test]
    fn consume_everything_empties() {
        let mut buf = WriteBuffer::new();
        buf.push(b"abc");
        buf.push(&vec![9u8; 20_000]);
        buf.consume(buf.len());
        assert!(buf.is_empty());
        assert!(buf.front_slices(4).is_empty());
    }
}
