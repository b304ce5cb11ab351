//! Anonymous memory mapped for one large buffer and committed (its pages made present) ahead
//! of the writes, so that the writer does not stop at each new page: the trace ring's
//! storage. A fresh page costs its first write a page fault (about 2 us per 4 KiB on the
//! development VM, the kernel's entry and the page's zeroing), far more than the trace event
//! written into it; committing a range in one call costs less per page, and less again with
//! transparent huge pages, which the mapping asks for. Any thread, no GIL.

use std::io;
use std::ptr::NonNull;

#[cfg(target_os = "linux")]
use super::check;

/// Pages committed together (and the huge page size on x86-64 Linux).
pub const COMMIT_CHUNK: usize = 2 << 20;

/// An anonymous private read-write mapping, unmapped when dropped. Its bytes read as zero
/// until written.
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone; moving it to another thread
// moves that ownership.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Map `len` bytes (at least one page), asking for huge pages where the system has them.
    /// Nothing is committed yet.
    pub fn new(len: usize) -> io::Result<Mapping> {
        let len = len.max(1);
        // SAFETY: an anonymous private mapping at an address of the kernel's choice; no
        // existing memory is touched, and the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(|| io::Error::other("mmap"))?;
        let mapping = Mapping { base, len };
        // Best effort: huge pages make committing about three times cheaper per byte here,
        // and a kernel without them (or with them switched off) just commits 4 KiB pages.
        #[cfg(target_os = "linux")]
        let _ = mapping.advise(0..len, libc::MADV_HUGEPAGE);
        Ok(mapping)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Make the pages of `range` (bytes, clamped to the mapping) present and writable now,
    /// their contents unchanged.
    pub fn commit(&self, range: std::ops::Range<usize>) {
        let page = page_size();
        let start = range.start / page * page;
        let end = range.end.min(self.len);
        if start >= end {
            return;
        }
        #[cfg(target_os = "linux")]
        if self.advise(start..end, libc::MADV_POPULATE_WRITE).is_ok() {
            return;
        }
        // Before Linux 5.14, or elsewhere: fault each page in by writing to it.
        for at in (start..end).step_by(page) {
            // SAFETY: `at` is inside the mapping (below `end` <= `len`); rewriting a byte with
            // its own value changes nothing the owner has written or will read.
            unsafe {
                let byte = self.base.as_ptr().add(at);
                byte.write_volatile(byte.read_volatile());
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn advise(&self, range: std::ops::Range<usize>, advice: libc::c_int) -> io::Result<()> {
        // SAFETY: the range lies inside this mapping (callers pass page-aligned starts at or
        // above the base and ends at most `len`); these advices change no contents.
        check(unsafe {
            libc::madvise(
                self.base.as_ptr().add(range.start).cast(),
                range.end - range.start,
                advice,
            )
        })
        .map(|_| ())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly what `mmap` returned and was asked for, and
        // nothing borrows the memory any more (borrows are tied to `&self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_memory_keeps_what_was_written() {
        let mapping = Mapping::new(3 * COMMIT_CHUNK + 100).unwrap();
        // SAFETY: inside the mapping.
        unsafe { mapping.as_ptr().add(10).write(7) };
        mapping.commit(0..COMMIT_CHUNK);
        mapping.commit(COMMIT_CHUNK..10 * COMMIT_CHUNK); // clamped to the mapping
                                                         // SAFETY: inside the mapping.
        let (kept, fresh, last) = unsafe {
            (
                mapping.as_ptr().add(10).read(),
                mapping.as_ptr().add(COMMIT_CHUNK + 5).read(),
                mapping.as_ptr().add(mapping.len() - 1).read(),
            )
        };
        assert_eq!((kept, fresh, last), (7, 0, 0));
    }
}
