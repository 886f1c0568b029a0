//! `sluice-normalizer`: the process a worker starts for a normalizer that
//! renders PDFs or reads images (decoders are C code fed untrusted files;
//! see `sluice_worker::isolation`). A binary of its own, so each of these
//! processes maps the decoders and not the table engine, the coordinator
//! and the rest of `sluice`; and without FFmpeg, whose ~130 shared
//! libraries would cost every start ~40 ms and ~35 MB of resident pages.
//! Video and audio go to `sluice-normalizer-media`.

#[path = "../logs.rs"]
mod logs;
#[path = "../normalizer_main.rs"]
mod normalizer_main;

fn main() {
    normalizer_main::run("sluice-normalizer");
}
