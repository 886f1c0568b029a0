//! Pipeline settings: defaults, validation, and the protocol form.

use serde::{Deserialize, Serialize};

use crate::{pb, Error, Result};

/// Every knob of an ingest pipeline. Validated once with [`Settings::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Files normalized in parallel.
    pub normalization_workers: u32,
    /// Most normalizer processes with FFmpeg (video, audio) a worker runs
    /// at once; 0: one per two cores of the worker's machine (at least one,
    /// at most `normalization_workers`). Each costs ~35 MB of FFmpeg's
    /// libraries before it cuts a byte, and the worker's own process spends
    /// about half as much CPU on a video as the cutting does: on two cores,
    /// one such process cut the corpus's videos within a tenth of the time
    /// two took, at 50 MB less. Other files go on meanwhile.
    pub media_processes: u32,
    /// Rows buffered before an uncommitted fragment is written.
    pub flush_every: u32,
    /// Bytes buffered before a fragment is written, whichever comes first.
    pub flush_bytes: u64,
    /// Seconds rows may wait in the buffer before they are written anyway
    /// (slow files, a trickle of rows): bounds what a crash can cost.
    pub flush_interval_secs: u32,
    /// Bytes of rows in flight at once, from normalizers through the
    /// flusher's buffer to finished fragment writes; normalizers wait when
    /// it is spent. 32 MiB by default: against 64 MiB it kept the same pace
    /// (local PDFs and video; uploads to moto) at 30-60 MB less peak RSS.
    pub memory_budget_bytes: u64,
    /// Rows between table commits.
    pub commit_every: u32,
    /// Concurrent object-store requests.
    pub storage_concurrency: u32,
    /// Text chunk size and overlap, in characters.
    pub chunk_size: u32,
    pub chunk_overlap: u32,
    /// Images above this many pixels are refused (decompression bombs).
    pub max_image_pixels: u64,
    /// Longest side of thumbnails, in pixels.
    pub thumbnail_size: u32,
    /// Files above this size are refused.
    pub max_file_bytes: u64,
    /// Seconds one file may take in a normalizer.
    pub file_timeout_secs: u32,
    /// Target length of video segments, in seconds (cut at keyframes).
    pub segment_seconds: f64,
    /// Videos longer than this are refused.
    pub max_video_seconds: u32,
    /// Videos above this size are refused (they are streamed, not loaded).
    pub max_video_bytes: u64,
    /// PDF page render resolution.
    pub pdf_dpi: u32,
    /// Page renders are scaled down to at most this many pixels.
    pub max_render_pixels: u64,
    /// PDFs with more pages are refused.
    pub max_pdf_pages: u32,
    /// When pictures of text are read with OCR.
    pub ocr: OcrMode,
    /// Tesseract languages joined by `+` (e.g. `eng+deu`); empty: `eng`.
    pub ocr_languages: String,
}

/// When pictures of text are read with OCR (Tesseract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OcrMode {
    /// PDF pages without a text layer (scans).
    #[default]
    Auto,
    Off,
    /// Every PDF page (the text layer is replaced) and every image.
    Always,
}

impl OcrMode {
    pub const NAMES: [&'static str; 3] = ["auto", "off", "always"];

    /// The mode named `s` (as [`OcrMode::as_str`] writes it).
    pub fn parse(s: &str) -> Option<OcrMode> {
        [OcrMode::Auto, OcrMode::Off, OcrMode::Always].into_iter().find(|m| m.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OcrMode::Auto => "auto",
            OcrMode::Off => "off",
            OcrMode::Always => "always",
        }
    }
}

impl Settings {
    /// How many normalizer processes with FFmpeg may run at once on a
    /// machine with `cores` cores (see [`Settings::media_processes`]).
    pub fn media_process_limit(&self, cores: usize) -> usize {
        let workers = self.normalization_workers.max(1) as usize;
        match self.media_processes {
            0 => (cores / 2).clamp(1, workers),
            n => (n as usize).min(workers),
        }
    }

    /// How many normalizer processes (with FFmpeg or without: PDFs) may
    /// run at once on `cores` cores: one per core, at most
    /// `normalization_workers`, and never fewer than those with FFmpeg.
    /// Decoding is CPU work: a process more than the cores would only hold
    /// its libraries and buffers (a PDF's page buffers) for nothing.
    pub fn process_limit(&self, cores: usize) -> usize {
        let workers = self.normalization_workers.max(1) as usize;
        cores.clamp(1, workers).max(self.media_process_limit(cores))
    }

    /// The OCR languages asked for, `eng` if none.
    pub fn ocr_languages(&self) -> &str {
        if self.ocr_languages.is_empty() {
            "eng"
        } else {
            &self.ocr_languages
        }
    }
}

impl Settings {
    /// Every knob's default: the one place they are set (the command line's
    /// defaults and help read them from here).
    pub const DEFAULT: Settings = Settings {
        normalization_workers: 4,
        media_processes: 0,
        flush_every: 200,
        flush_bytes: 64 << 20,
        flush_interval_secs: 30,
        memory_budget_bytes: 32 << 20,
        commit_every: 2000,
        storage_concurrency: 32,
        chunk_size: 1000,
        chunk_overlap: 200,
        max_image_pixels: 100_000_000,
        thumbnail_size: 256,
        max_file_bytes: 512 << 20,
        file_timeout_secs: 300,
        segment_seconds: 10.0,
        max_video_seconds: 6 * 3600,
        max_video_bytes: 64 << 30,
        pdf_dpi: 150,
        max_render_pixels: 25_000_000,
        max_pdf_pages: 5000,
        ocr: OcrMode::Auto,
        ocr_languages: String::new(),
    };
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSettings(m));
        if !(1..=1024).contains(&self.normalization_workers) {
            return bad(format!("normalization_workers must be 1..=1024, got {}", self.normalization_workers));
        }
        if self.media_processes > 1024 {
            return bad(format!("media_processes must be 0 (one per two cores) to 1024, got {}", self.media_processes));
        }
        if self.flush_every == 0 {
            return bad("flush_every must be at least 1".into());
        }
        if self.memory_budget_bytes < 1 << 20 {
            return bad(format!("memory_budget_bytes must be at least 1 MiB, got {}", self.memory_budget_bytes));
        }
        if self.flush_bytes < 1024 {
            return bad(format!("flush_bytes must be at least 1024, got {}", self.flush_bytes));
        }
        if !(1..=86_400).contains(&self.flush_interval_secs) {
            return bad(format!("flush_interval_secs must be 1..=86400, got {}", self.flush_interval_secs));
        }
        if self.commit_every == 0 {
            return bad("commit_every must be at least 1".into());
        }
        if !(1..=4096).contains(&self.storage_concurrency) {
            return bad(format!("storage_concurrency must be 1..=4096, got {}", self.storage_concurrency));
        }
        if self.chunk_size == 0 {
            return bad("chunk_size must be at least 1".into());
        }
        if self.chunk_overlap >= self.chunk_size {
            return bad(format!(
                "chunk_overlap ({}) must be smaller than chunk_size ({})",
                self.chunk_overlap, self.chunk_size
            ));
        }
        if self.max_image_pixels == 0 {
            return bad("max_image_pixels must be at least 1".into());
        }
        if !(16..=4096).contains(&self.thumbnail_size) {
            return bad(format!("thumbnail_size must be 16..=4096, got {}", self.thumbnail_size));
        }
        if self.max_file_bytes == 0 {
            return bad("max_file_bytes must be at least 1".into());
        }
        if self.file_timeout_secs == 0 {
            return bad("file_timeout_secs must be at least 1".into());
        }
        if !(self.segment_seconds.is_finite() && self.segment_seconds >= 0.5 && self.segment_seconds <= 3600.0) {
            return bad(format!("segment_seconds must be 0.5..=3600, got {}", self.segment_seconds));
        }
        if !(18..=1200).contains(&self.pdf_dpi) {
            return bad(format!("pdf_dpi must be 18..=1200, got {}", self.pdf_dpi));
        }
        if self.max_render_pixels < 10_000 || self.max_pdf_pages == 0 {
            return bad("max_render_pixels must be at least 10000 and max_pdf_pages at least 1".into());
        }
        if self.max_video_seconds == 0 || self.max_video_bytes == 0 {
            return bad("max_video_seconds and max_video_bytes must be at least 1".into());
        }
        let language = |l: &str| !l.is_empty() && l.len() <= 32 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !self.ocr_languages.is_empty() && !self.ocr_languages.split('+').all(language) {
            return bad(format!(
                "ocr_languages must be Tesseract language names joined by '+' (e.g. eng+deu), got {:?}",
                self.ocr_languages
            ));
        }
        Ok(())
    }
}

impl From<&Settings> for pb::PipelineSettings {
    fn from(s: &Settings) -> Self {
        pb::PipelineSettings {
            normalization_workers: s.normalization_workers,
            media_processes: s.media_processes,
            flush_every: s.flush_every,
            flush_bytes: s.flush_bytes,
            flush_interval_secs: s.flush_interval_secs,
            memory_budget_bytes: s.memory_budget_bytes,
            commit_every: s.commit_every,
            storage_concurrency: s.storage_concurrency,
            chunk_size: s.chunk_size,
            chunk_overlap: s.chunk_overlap,
            max_image_pixels: s.max_image_pixels,
            thumbnail_size: s.thumbnail_size,
            max_file_bytes: s.max_file_bytes,
            file_timeout_secs: s.file_timeout_secs,
            segment_seconds: s.segment_seconds,
            max_video_seconds: s.max_video_seconds,
            max_video_bytes: s.max_video_bytes,
            pdf_dpi: s.pdf_dpi,
            max_render_pixels: s.max_render_pixels,
            max_pdf_pages: s.max_pdf_pages,
            ocr: s.ocr.as_str().to_string(),
            ocr_languages: s.ocr_languages.clone(),
        }
    }
}

impl TryFrom<&pb::PipelineSettings> for Settings {
    type Error = Error;

    /// Zero fields take their defaults, so a sparse request works.
    fn try_from(p: &pb::PipelineSettings) -> Result<Self> {
        let d = Settings::default();
        let pick = |v: u32, dv: u32| if v == 0 { dv } else { v };
        let pick64 = |v: u64, dv: u64| if v == 0 { dv } else { v };
        let s = Settings {
            normalization_workers: pick(p.normalization_workers, d.normalization_workers),
            media_processes: p.media_processes,
            flush_every: pick(p.flush_every, d.flush_every),
            flush_bytes: pick64(p.flush_bytes, d.flush_bytes),
            flush_interval_secs: pick(p.flush_interval_secs, d.flush_interval_secs),
            memory_budget_bytes: pick64(p.memory_budget_bytes, d.memory_budget_bytes),
            commit_every: pick(p.commit_every, d.commit_every),
            storage_concurrency: pick(p.storage_concurrency, d.storage_concurrency),
            chunk_size: pick(p.chunk_size, d.chunk_size),
            chunk_overlap: if p.chunk_size == 0 && p.chunk_overlap == 0 { d.chunk_overlap } else { p.chunk_overlap },
            max_image_pixels: pick64(p.max_image_pixels, d.max_image_pixels),
            thumbnail_size: pick(p.thumbnail_size, d.thumbnail_size),
            max_file_bytes: pick64(p.max_file_bytes, d.max_file_bytes),
            file_timeout_secs: pick(p.file_timeout_secs, d.file_timeout_secs),
            segment_seconds: if p.segment_seconds == 0.0 { d.segment_seconds } else { p.segment_seconds },
            max_video_seconds: pick(p.max_video_seconds, d.max_video_seconds),
            max_video_bytes: pick64(p.max_video_bytes, d.max_video_bytes),
            pdf_dpi: pick(p.pdf_dpi, d.pdf_dpi),
            max_render_pixels: pick64(p.max_render_pixels, d.max_render_pixels),
            max_pdf_pages: pick(p.max_pdf_pages, d.max_pdf_pages),
            ocr: match p.ocr.as_str() {
                "" => d.ocr,
                other => OcrMode::parse(other)
                    .ok_or_else(|| Error::InvalidSettings(format!("ocr must be auto, off or always, got {other:?}")))?,
            },
            ocr_languages: p.ocr_languages.clone(),
        };
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_knobs() {
        let s = Settings::default();
        assert_eq!((s.normalization_workers, s.flush_every, s.commit_every, s.storage_concurrency), (4, 200, 2000, 32));
        s.validate().unwrap();
    }

    #[test]
    fn invalid_settings_say_what_is_wrong() {
        let s = Settings { chunk_overlap: 1000, ..Default::default() };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("chunk_overlap"), "{e}");
        let s = Settings { normalization_workers: 0, ..Default::default() };
        assert!(s.validate().unwrap_err().to_string().contains("normalization_workers"));
        let s = Settings { ocr_languages: "eng+../x".into(), ..Default::default() };
        assert!(s.validate().unwrap_err().to_string().contains("ocr_languages"));
        let p = pb::PipelineSettings { ocr: "sometimes".into(), ..Default::default() };
        assert!(Settings::try_from(&p).unwrap_err().to_string().contains("ocr must be"));
    }

    #[test]
    fn processes_default_to_a_core_each_within_the_workers() {
        let s = Settings::default();
        assert_eq!([1, 2, 3, 4, 64].map(|cores| s.media_process_limit(cores)), [1, 1, 1, 2, 4]);
        assert_eq!([1, 2, 3, 4, 64].map(|cores| s.process_limit(cores)), [1, 2, 3, 4, 4]);
        assert_eq!((s.media_process_limit(0), s.process_limit(0)), (1, 1), "never none");
        let s = Settings { media_processes: 3, ..Default::default() };
        assert_eq!([1, 64].map(|cores| s.media_process_limit(cores)), [3, 3], "asked for: whatever the cores");
        assert_eq!(s.process_limit(1), 3, "room for the processes with FFmpeg asked for");
        let s = Settings { media_processes: 9, normalization_workers: 2, ..Default::default() };
        assert_eq!(s.media_process_limit(64), 2, "never more than the workers");
        assert!(Settings { media_processes: 5000, ..Default::default() }.validate().unwrap_err().to_string().contains("media_processes"));
    }

    #[test]
    fn protocol_round_trip_and_sparse_defaults() {
        let s = Settings { flush_every: 7, media_processes: 2, ocr: OcrMode::Always, ocr_languages: "eng+deu".into(), ..Default::default() };
        let p = pb::PipelineSettings::from(&s);
        assert_eq!(Settings::try_from(&p).unwrap(), s);
        let sparse = pb::PipelineSettings::default();
        assert_eq!(Settings::try_from(&sparse).unwrap(), Settings::default());
    }
}
