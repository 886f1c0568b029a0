//! The ingest process's allocator: the system's, asking the kernel for
//! transparent huge pages under large blocks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// A transparent huge page on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

static ADVISE: AtomicBool = AtomicBool::new(false);

/// [`System`], plus `madvise(MADV_HUGEPAGE)` over the whole huge pages
/// inside every block of 2 MiB or more (once [`HugePages::enable`]d): a
/// fragment's data column, decoded images, Lance's encode buffers. With
/// [`crate::map_large_allocations`] each such block is a mapping of its
/// own, handed back when freed, whose pages were faulted in 4 KiB at a
/// time on every use. On the Deeplake corpus (release builds, two
/// alternating runs) the page faults of the whole run went from
/// 205,000–222,000 to 95,000–100,000 and its CPU time from 4.9–5.1 s to
/// 4.7 s. What glibc's `glibc.malloc.hugetlb=1` does for normalizer
/// processes ([`crate::isolation`]), which the ingest process cannot set
/// for itself once started (glibc reads its tunables at start).
pub struct HugePages;

impl HugePages {
    /// Start advising, unless `GLIBC_TUNABLES` chooses for glibc's
    /// allocations (`glibc.malloc.hugetlb=`): a user's `0` stands.
    pub fn enable() {
        let chosen = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.split(':').any(|t| t.starts_with("glibc.malloc.hugetlb=")));
        ADVISE.store(cfg!(target_os = "linux") && !chosen, Ordering::Relaxed);
    }
}

fn advise(block: *mut u8, len: usize) {
    if len < HUGE_PAGE || block.is_null() || !ADVISE.load(Ordering::Relaxed) {
        return;
    }
    let start = (block as usize).next_multiple_of(HUGE_PAGE);
    let end = (block as usize + len) & !(HUGE_PAGE - 1);
    #[cfg(target_os = "linux")]
    if end > start {
        #[allow(unsafe_code)]
        // SAFETY: the range lies inside a block this allocator just handed
        // out; the advice changes how the kernel backs its pages, not their
        // contents. A kernel without huge pages refuses it, which is fine.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[allow(unsafe_code)]
// SAFETY: every call is passed to `System` unchanged; `advise` only hints at
// the backing of the block returned.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let block = unsafe { System.alloc(layout) };
        advise(block, layout.size());
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let block = unsafe { System.alloc_zeroed(layout) };
        advise(block, layout.size());
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        if new_size > layout.size() {
            advise(moved, new_size);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_stay_usable_with_advice() {
        ADVISE.store(true, Ordering::Relaxed);
        let layout = Layout::from_size_align(6 << 20, 64).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a non-zero layout; the block is written within its size,
        // grown by realloc and freed with the layout it then has.
        unsafe {
            let block = HugePages.alloc_zeroed(layout);
            assert!(!block.is_null());
            assert!(std::slice::from_raw_parts(block, layout.size()).iter().all(|b| *b == 0));
            block.add(5 << 20).write(7);
            let grown = HugePages.realloc(block, layout, 12 << 20);
            assert_eq!(grown.add(5 << 20).read(), 7);
            HugePages.dealloc(grown, Layout::from_size_align(12 << 20, 64).unwrap());
        }
    }
}
