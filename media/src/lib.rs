//! FFmpeg's part of normalization: video and audio cut into segments,
//! images only FFmpeg's decoders read, and naming containers that have no
//! magic bytes.
//!
//! A crate of its own because of what linking FFmpeg costs a process:
//! Debian's FFmpeg brings about 130 shared libraries, ~40 ms of CPU to load
//! and relocate at every start and ~35 MB of resident pages. Only the
//! binaries that run it link this crate and [`install`] it at start: `sluice`
//! (kind detection, in-process normalizers) and `sluice-normalizer-media`.
//! `sluice-normalizer`, the process PDFs, images and OCR go to, does not.

mod media;
mod still;

use std::path::Path;

use sluice_common::schema::{Kind, Row};
use sluice_common::settings::Settings;
use sluice_worker::normalize::{NormalizeError, Piece};

pub use media::bare_remux;

struct Ffmpeg;

impl sluice_worker::normalize::Ffmpeg for Ffmpeg {
    fn probe_format(&self, head: &[u8]) -> Option<String> {
        media::probe_format(head)
    }

    fn whitelisted_container(&self, probed: &str) -> Option<(Kind, String)> {
        media::whitelisted_container(probed)
    }

    fn whitelisted_image(&self, probed: &str) -> Option<(String, &'static str)> {
        still::whitelisted_image(probed).map(|format| (format.to_string(), still::mime(format)))
    }

    fn normalize_media(
        &self,
        path: &Path,
        named: Kind,
        settings: &Settings,
        out: &mut dyn FnMut(Piece) -> Result<(), NormalizeError>,
    ) -> Result<(), NormalizeError> {
        media::normalize_media(path, named, settings, out)
    }

    fn normalize_still(&self, path: &Path, settings: &Settings) -> Result<Vec<Row>, NormalizeError> {
        still::normalize_still(path, settings)
    }
}

/// Make FFmpeg's decoders available to this process's normalization. Call
/// first thing in `main` of a binary that should have them.
pub fn install() {
    sluice_worker::normalize::install_ffmpeg(&Ffmpeg);
}
