//! `sluice-normalizer-media`: the normalizer process for video, audio and
//! the images only FFmpeg's decoders read (it serves PDFs too). See
//! `sluice-normalizer` for the one without FFmpeg.

#[path = "../logs.rs"]
mod logs;
#[path = "../normalizer_main.rs"]
mod normalizer_main;

fn main() {
    sluice_media::install();
    normalizer_main::run("sluice-normalizer-media");
}
