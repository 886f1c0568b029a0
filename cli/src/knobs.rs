//! The pipeline knobs, shared by `sluice ingest` and `sluice submit`: each
//! a flag and a `SLUICE_*` environment variable, defaults from [`Settings::DEFAULT`].

use sluice_common::settings::{OcrMode, Settings};

#[derive(clap::Args, Debug, Clone)]
pub struct Knobs {
    /// Files normalized in parallel
    #[arg(long, env = "SLUICE_NORMALIZATION_WORKERS", default_value_t = Settings::DEFAULT.normalization_workers)]
    pub normalization_workers: u32,
    /// Most video/audio normalizer processes (with FFmpeg) at once; 0: one per two cores (at least one), at most --normalization-workers
    #[arg(long, env = "SLUICE_MEDIA_PROCESSES", default_value_t = Settings::DEFAULT.media_processes)]
    pub media_processes: u32,
    /// Rows buffered before a fragment is written
    #[arg(long, env = "SLUICE_FLUSH_EVERY", default_value_t = Settings::DEFAULT.flush_every)]
    pub flush_every: u32,
    /// Bytes buffered before a fragment is written (whichever comes first)
    #[arg(long, env = "SLUICE_FLUSH_BYTES", default_value_t = Settings::DEFAULT.flush_bytes)]
    pub flush_bytes: u64,
    /// Bytes of rows in flight at once (normalizers, buffer, writes); normalizers wait when it is spent
    #[arg(long, env = "SLUICE_MEMORY_BUDGET", default_value_t = Settings::DEFAULT.memory_budget_bytes)]
    pub memory_budget: u64,
    /// Seconds rows may wait before they are written anyway (slow files)
    #[arg(long, env = "SLUICE_FLUSH_INTERVAL", default_value_t = Settings::DEFAULT.flush_interval_secs)]
    pub flush_interval: u32,
    /// Rows between table commits
    #[arg(long, env = "SLUICE_COMMIT_EVERY", default_value_t = Settings::DEFAULT.commit_every)]
    pub commit_every: u32,
    /// Concurrent object-store requests
    #[arg(long, env = "SLUICE_STORAGE_CONCURRENCY", default_value_t = Settings::DEFAULT.storage_concurrency)]
    pub storage_concurrency: u32,
    /// Text chunk size in characters
    #[arg(long, env = "SLUICE_CHUNK_SIZE", default_value_t = Settings::DEFAULT.chunk_size)]
    pub chunk_size: u32,
    /// Text chunk overlap in characters
    #[arg(long, env = "SLUICE_CHUNK_OVERLAP", default_value_t = Settings::DEFAULT.chunk_overlap)]
    pub chunk_overlap: u32,
    /// Largest image accepted, in pixels
    #[arg(long, env = "SLUICE_MAX_IMAGE_PIXELS", default_value_t = Settings::DEFAULT.max_image_pixels)]
    pub max_image_pixels: u64,
    /// Longest side of image thumbnails, in pixels
    #[arg(long, env = "SLUICE_THUMBNAIL_SIZE", default_value_t = Settings::DEFAULT.thumbnail_size)]
    pub thumbnail_size: u32,
    /// Largest file accepted, in bytes
    #[arg(long, env = "SLUICE_MAX_FILE_SIZE", default_value_t = Settings::DEFAULT.max_file_bytes)]
    pub max_file_size: u64,
    /// Seconds one file may spend in a normalizer
    #[arg(long, env = "SLUICE_FILE_TIMEOUT", default_value_t = Settings::DEFAULT.file_timeout_secs)]
    pub file_timeout: u32,
    /// Target video segment length, in seconds (cut at keyframes)
    #[arg(long, env = "SLUICE_SEGMENT_SECONDS", default_value_t = Settings::DEFAULT.segment_seconds)]
    pub segment_seconds: f64,
    /// Longest video accepted, in seconds
    #[arg(long, env = "SLUICE_MAX_VIDEO_SECONDS", default_value_t = Settings::DEFAULT.max_video_seconds)]
    pub max_video_seconds: u32,
    /// Largest video accepted, in bytes (videos are streamed, not loaded)
    #[arg(long, env = "SLUICE_MAX_VIDEO_SIZE", default_value_t = Settings::DEFAULT.max_video_bytes)]
    pub max_video_size: u64,
    /// PDF page render resolution
    #[arg(long, env = "SLUICE_PDF_DPI", default_value_t = Settings::DEFAULT.pdf_dpi)]
    pub pdf_dpi: u32,
    /// Largest page render, in pixels (larger pages are rendered smaller)
    #[arg(long, env = "SLUICE_MAX_RENDER_PIXELS", default_value_t = Settings::DEFAULT.max_render_pixels)]
    pub max_render_pixels: u64,
    /// Most pages accepted in one PDF
    #[arg(long, env = "SLUICE_MAX_PDF_PAGES", default_value_t = Settings::DEFAULT.max_pdf_pages)]
    pub max_pdf_pages: u32,
    /// OCR (Tesseract): `auto` reads PDF pages without a text layer,
    /// `always` every PDF page and every image, `off` none
    #[arg(long, env = "SLUICE_OCR", default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(OcrMode::NAMES))]
    pub ocr: String,
    /// Tesseract languages for OCR, joined by `+` (e.g. `eng+deu`; each needs
    /// its data installed, Debian: tesseract-ocr-<lang>)
    #[arg(long, env = "SLUICE_OCR_LANGUAGES", default_value = "eng")]
    pub ocr_languages: String,
}

impl Knobs {
    pub fn settings(&self) -> Settings {
        Settings {
            normalization_workers: self.normalization_workers,
            media_processes: self.media_processes,
            flush_every: self.flush_every,
            flush_bytes: self.flush_bytes,
            flush_interval_secs: self.flush_interval,
            memory_budget_bytes: self.memory_budget,
            commit_every: self.commit_every,
            storage_concurrency: self.storage_concurrency,
            chunk_size: self.chunk_size,
            chunk_overlap: self.chunk_overlap,
            max_image_pixels: self.max_image_pixels,
            thumbnail_size: self.thumbnail_size,
            max_file_bytes: self.max_file_size,
            file_timeout_secs: self.file_timeout,
            segment_seconds: self.segment_seconds,
            max_video_seconds: self.max_video_seconds,
            max_video_bytes: self.max_video_size,
            pdf_dpi: self.pdf_dpi,
            max_render_pixels: self.max_render_pixels,
            max_pdf_pages: self.max_pdf_pages,
            ocr: OcrMode::parse(&self.ocr).unwrap_or_default(),
            ocr_languages: self.ocr_languages.clone(),
        }
    }
}

