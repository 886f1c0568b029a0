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
