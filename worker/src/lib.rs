//! The sluice worker: fetch → normalizers → flusher → checkpoint publisher.
//!
//! A worker session ([`session::run_worker`]) speaks the worker protocol
//! ([`sluice_common::protocol::CoordinatorApi`]) to the coordinator in this
//! process or over gRPC, and its [`Worker`] runs one [`actors::ShardPipeline`]
//! per job. Uncommitted Lance fragments are handed to the coordinator in
//! checkpoints; the coordinator commits them.

pub mod actors;
pub mod alloc;
pub mod error;
pub mod fetch;
pub mod handover;
pub mod isolation;
pub mod membership;
pub mod normalize;
pub mod session;
mod worker;

pub use error::PipelineError;
pub use worker::Worker;

/// Hold glibc's malloc to two arenas (unless `MALLOC_ARENA_MAX` says
/// otherwise). By default it gives threads that allocate at once arenas of
/// their own, up to eight per core, and memory freed in one stays there: with
/// Lance's, tokio's and the normalizers' threads, peak RSS then grows with
/// the job. Measured on one ingest of small files: 240 MB at 10,000 files
/// and 333 MB at 100,000 by default, 175 MB and 221 MB with two arenas, and
/// no slower. Call first thing in `main`, before any thread starts.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: mallopt only sets a parameter of the allocator; called
        // before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// The part size of Lance's uploads to object stores: a fragment up to this
/// size goes up in one PUT, a larger one in parts of this size. Two flush
/// shares of the default row budget (the most a fragment holds: a buffer
/// one row short of a share, then a row of up to a share) plus room for the
/// file's own structure, so at default settings every fragment is one
/// request. Lance's own part size (5 MiB) made a fragment of 12 MB three
/// part uploads between a create and a complete request, in two writes at a
/// time: `bench-storage` against moto (64 x 4 MB, `--rounds 3`, four
/// alternating runs) gave 0.54-0.61x the bare multipart upload with 5 MiB
/// parts and 0.94-1.07x with these, at the same peak RSS.
pub const UPLOAD_PART_BYTES: usize = 24 << 20;

/// Parts of one upload in flight at once (Lance's default is 10): what a
/// fragment larger than [`UPLOAD_PART_BYTES`] (a file stored whole, beyond
/// a flush share) holds in part buffers is at most this many parts.
pub const UPLOAD_PARTS_IN_FLIGHT: usize = 4;

/// Size Lance's uploads to object stores ([`UPLOAD_PART_BYTES`],
/// [`UPLOAD_PARTS_IN_FLIGHT`]), unless `LANCE_INITIAL_UPLOAD_SIZE` and
/// `LANCE_UPLOAD_CONCURRENCY` say otherwise. Lance reads them once, on its
/// first upload. Call first thing in `main`, before any thread starts.
pub fn size_uploads() {
    for (key, value) in [("LANCE_INITIAL_UPLOAD_SIZE", UPLOAD_PART_BYTES), ("LANCE_UPLOAD_CONCURRENCY", UPLOAD_PARTS_IN_FLIGHT)] {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value.to_string());
        }
    }
}

/// Threads of the runtime's blocking pool, for jobs that normalize up to
/// `normalization_workers` files at once: two for each (a file's reads,
/// then its normalizing in this process; a media file's hash beside the
/// process that cuts it) and eight for the flushers' batch building and the
/// table's file writes. Tokio's default is 512, and it starts a new thread
/// whenever work arrives while none is idle, then keeps it ten seconds
/// after its last use (a waiting thread is woken for the next work, so
/// none ever times out under steady load): on two busy cores, an ingest of
/// 100,000 small files grew the pool from ~20 threads to over 100, each
/// holding its stack's pages and a JPEG compressor, and peaked at 85-87 MB
/// against 67 MB for 1,000 files. Held to this many (16 at default
/// knobs): 75-76 MB against 67-68 MB, and no slower. Work beyond it waits
/// in the pool's queue.
pub fn blocking_threads(normalization_workers: u32) -> usize {
    2 * normalization_workers.max(1) as usize + 8
}

static BLOCKING_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The runtime of a `sluice` process, its blocking pool sized by
/// [`blocking_threads`] for jobs of up to `normalization_workers`.
pub fn runtime(normalization_workers: u32) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = blocking_threads(normalization_workers);
    let runtime = tokio::runtime::Builder::new_multi_thread().max_blocking_threads(threads).enable_all().build()?;
    let _ = BLOCKING_THREADS.set(threads);
    Ok(runtime)
}

/// Files normalized at once that this process's blocking pool serves
/// without a wait (unbounded when the runtime is not [`runtime`]'s).
pub(crate) fn normalizers_served() -> Option<u32> {
    BLOCKING_THREADS.get().map(|t| (t.saturating_sub(8) / 2) as u32)
}

/// Hand the allocator's free memory back to the kernel. glibc keeps freed
/// heap for reuse, up to twice the largest block freed so far: a normalizer
/// process idle after a PDF held 15-19 MB of anonymous memory (its page
/// buffers and pdfium's), and 1 MB after this.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: malloc_trim only returns the allocator's free pages.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Give allocations of 256 KiB and more pages of their own (`mmap`), handed
/// back to the kernel when they are freed (unless `MALLOC_MMAP_THRESHOLD_`
/// says otherwise). By default glibc raises that threshold to the size of
/// the largest block freed so far (up to 32 MiB): after the first fragment's
/// data column, batches and column buffers of every later fragment come
/// from the heap, where the small long-lived allocations made between them
/// (manifests, tasks, channels) keep the freed pages from going back.
/// Measured on ingests of small files (`sluice ingest --json`, peak RSS of
/// the process, release build): 99, 111 and 131–133 MiB at 1,000, 10,000
/// and 100,000 files by default; 96–98, 101 and 110–111 MiB with this and
/// the small metadata cache of writing table handles; no slower within
/// this machine's noise. Not for normalizer processes: they reuse page
/// buffers of several MB for every page, which would then fault in anew
/// each time. Call first thing in `main`, before any thread starts.
pub fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: mallopt only sets a parameter of the allocator; called
        // before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        }
    }
}

#[cfg(test)]
mod runtime_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_blocking_pool_runs_at_most_its_threads_and_queues_the_rest() {
        let runtime = super::runtime(1).unwrap();
        assert_eq!(super::blocking_threads(1), 10);
        assert_eq!(super::normalizers_served(), Some(1));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let done = runtime.block_on(async {
            let tasks: Vec<_> = (0..30)
                .map(|_| {
                    let (now, most) = (now.clone(), most.clone());
                    tokio::task::spawn_blocking(move || {
                        let at = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(at, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                })
                .collect();
            futures::future::join_all(tasks).await.into_iter().filter(Result::is_ok).count()
        });
        assert_eq!(done, 30, "queued work still runs");
        assert_eq!(most.load(Ordering::SeqCst), 10);
    }
}
