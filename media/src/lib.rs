//! FFmpeg's part of normalization: video and audio cut into segments,
//! images only FFmpeg's decoders read, and naming containers that have no
//! magic bytes.
//!
//! A crate of its own because of what linking FFmpeg costs a process:
//! Debian's FFmpeg brings about 130 shared libraries, ~40 ms of CPU to load
//! and relocate at every start and ~25-35 MB of resident pages. Only
//! `sluice-normalizer-media` links this crate and [`install`]s it at start;
//! `sluice` itself (the worker's pipeline, the table writer) and
//! `sluice-normalizer` (PDFs, images, OCR) do not, and send what needs
//! FFmpeg to a `sluice-normalizer-media` process.

mod media;
mod still;

use std::path::Path;

use sluice_common::schema::{Kind, Row};
use sluice_common::settings::Settings;
use sluice_worker::normalize::{NormalizeError, Piece, Probed};

pub use media::bare_remux;

struct Ffmpeg;

impl sluice_worker::normalize::Ffmpeg for Ffmpeg {
    fn probe(&self, head: &[u8]) -> Probed {
        let probed = media::probe_format(head);
        let probed = probed.as_deref().unwrap_or_default();
        Probed {
            container: media::whitelisted_container(probed),
            image: still::whitelisted_image(probed).map(|format| (format.to_string(), still::mime(format).to_string())),
        }
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
