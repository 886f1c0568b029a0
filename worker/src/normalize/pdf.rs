//! PDF: one row per page with the page's text, a JPEG render at `pdf_dpi`
//! (scaled down to stay under `max_render_pixels`), and a thumbnail.
//!
//! libpdfium is bound once per process, from `SLUICE_PDFIUM_PATH` or the
//! `pypdfium2` wheel of the sluice Python environment. pdfium serializes all
//! calls behind one lock and reports errors through a process-wide "last
//! error", so one PDF is processed at a time per process ([`PDF_LOCK`]): more
//! threads would not be faster, and a load error could be read by the wrong
//! file. Scaling PDF work needs more processes.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use image::RgbaImage;
use pdfium_render::prelude::*;
use serde_json::json;
use sluice_common::schema::Row;
use sluice_common::settings::{OcrMode, Settings};

use super::{encode_jpeg_baseline, encode_pixels, ocr, thumbnail_jpeg, NormalizeError};

/// Held for the whole of one PDF; see the module documentation.
static PDF_LOCK: Mutex<()> = Mutex::new(());

/// Page buffers (one render each, ~8 MB at 150 DPI) a normalizer process
/// keeps from one PDF to the next while files keep coming
/// ([`keep_page_buffers`]), so that each PDF does not fault in its page
/// buffer anew. At most two: what one file renders into at once.
static SPARE_PAGE_BUFFERS: super::Spares<Vec<u8>, 2> = super::Spares::new();
static KEEP_PAGE_BUFFERS: AtomicBool = AtomicBool::new(false);

/// Keep page buffers between PDFs (`true`), or drop the kept ones and keep
/// none (`false`, the default: a process that renders a PDF now and then
/// should not hold them).
pub fn keep_page_buffers(keep: bool) {
    KEEP_PAGE_BUFFERS.store(keep, Ordering::Relaxed);
    if !keep {
        SPARE_PAGE_BUFFERS.clear();
    }
}

/// Drop the page buffers kept between PDFs (they are kept again after the next).
pub fn drop_page_buffers() {
    SPARE_PAGE_BUFFERS.clear();
}

fn spare_page_buffer() -> Vec<u8> {
    SPARE_PAGE_BUFFERS.take()
}

fn keep_page_buffer(buffer: Vec<u8>) {
    if KEEP_PAGE_BUFFERS.load(Ordering::Relaxed) && buffer.capacity() > 0 {
        SPARE_PAGE_BUFFERS.give(buffer);
    }
}

/// Pages handed on per batch.
const PAGES_PER_BATCH: usize = 8;

const INSTALL_HINT: &str = "PDF support needs libpdfium: `pip install pypdfium2==5.15.2`, then set \
     SLUICE_PDFIUM_PATH to its pypdfium2_raw/libpdfium.so (scripts/setup.sh does both)";

/// Where libpdfium may be: `SLUICE_PDFIUM_PATH`, then the `pypdfium2`
/// wheel in the Python environment this binary was installed into (`pip
/// install sluice` brings it), the active virtualenv, and the sluice venv.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var("SLUICE_PDFIUM_PATH") {
        out.push(PathBuf::from(p));
    }
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(prefix) = std::env::current_exe().ok().and_then(|e| e.parent()?.parent().map(Path::to_path_buf)) {
        prefixes.push(prefix);
    }
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        prefixes.push(venv.into());
    }
    prefixes.push(std::env::var("SLUICE_VENV").unwrap_or_else(|_| "/opt/sluice-venv".into()).into());
    for prefix in prefixes {
        if let Ok(entries) = std::fs::read_dir(prefix.join("lib")) {
            for e in entries.flatten() {
                out.push(e.path().join("site-packages/pypdfium2_raw/libpdfium.so"));
            }
        }
    }
    out
}

fn pdfium() -> Result<&'static Pdfium, NormalizeError> {
    static PDFIUM: OnceLock<Result<Pdfium, String>> = OnceLock::new();
    PDFIUM
        .get_or_init(|| {
            for path in candidates().into_iter().filter(|p| p.is_file()) {
                match Pdfium::bind_to_library(&path) {
                    Ok(bindings) => return Ok(Pdfium::new(bindings)),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot load libpdfium"),
                }
            }
            Pdfium::bind_to_system_library().map(Pdfium::new).map_err(|_| INSTALL_HINT.to_string())
        })
        .as_ref()
        .map_err(|e| NormalizeError::new(e.clone()))
}

/// A rendered page on its way to the encoder thread.
struct RenderedPage {
    row: Row,
    pixels: Result<Render, String>,
    /// What OCR reads, if the page is to be read.
    ocr: Option<OcrInput>,
}

/// The picture OCR reads: the page's render (when it is at
/// [`ocr::OCR_DPI`] already), or a gray render of its own at that
/// resolution.
enum OcrInput {
    Render { dpi: u32 },
    Gray { render: Result<GrayRender, String>, dpi: u32 },
}

/// A page as pdfium rendered it: BGRx (4 bytes a pixel, the 4th unused),
/// rows unpadded, in a buffer the encoder hands back for the next page.
/// Kept in pdfium's byte order: libjpeg-turbo and the thumbnail's box filter
/// read it as it is. Without an alpha channel pdfium blends text and paths
/// onto an opaque page, the cheaper path.
struct Render {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Render {
    const FORMAT: turbojpeg::PixelFormat = turbojpeg::PixelFormat::BGRX;

    fn jpeg(&self, quality: u8) -> Option<Vec<u8>> {
        let (w, h) = (self.width as usize, self.height as usize);
        encode_pixels(&self.pixels, w, w * 4, h, Self::FORMAT, quality)
    }

    fn thumbnail(&self, size: u32) -> Option<Vec<u8>> {
        thumbnail_jpeg(&self.pixels, self.width, self.height, Self::FORMAT, size)
    }
}

/// Read a page's text with OCR into its row (see [`ocr::read_into`]).
fn read_page(row: &mut Row, input: OcrInput, main: Option<&Render>, languages: &str) {
    match input {
        OcrInput::Render { dpi } => {
            let gray = main.map(|r| (ocr::to_gray(&r.pixels, 4, true), r.width, r.height));
            let picture = gray
                .as_ref()
                .map(|(g, w, h)| (g.as_slice(), *w, *h, *w as usize))
                .ok_or_else(|| NormalizeError::new("the page did not render"));
            ocr::read_into(row, picture, dpi, languages);
        }
        OcrInput::Gray { render, dpi } => {
            let picture = render
                .as_ref()
                .map(|r| (r.pixels.as_slice(), r.width, r.height, r.stride))
                .map_err(|e| NormalizeError::new(format!("the page did not render for OCR: {e}")));
            ocr::read_into(row, picture, dpi, languages);
        }
    }
}

/// JPEG-encode a page's render and thumbnail into its row (and read it
/// with OCR if asked). Runs on its own thread, so encoding page N overlaps
/// pdfium rendering page N+1. Gives the render's buffer back.
fn encode_page(page: RenderedPage, thumbnail_size: u32, languages: &str) -> (Row, Option<Vec<u8>>) {
    let RenderedPage { mut row, pixels, ocr } = page;
    if let Some(input) = ocr {
        read_page(&mut row, input, pixels.as_ref().ok(), languages);
    }
    match pixels {
        Ok(render) => {
            row.width = Some(render.width);
            row.height = Some(render.height);
            row.thumbnail = render.thumbnail(thumbnail_size);
            row.data = render.jpeg(85).map(Bytes::from);
            if row.data.is_none() {
                set_render_error(&mut row, "JPEG encoding failed (render larger than 65535 pixels a side)".into());
            }
            (row, Some(render.pixels))
        }
        // A page that will not render still has its text.
        Err(e) => {
            set_render_error(&mut row, e);
            (row, None)
        }
    }
}

fn set_render_error(row: &mut Row, error: String) {
    if let Some(meta) = row.metadata.as_mut() {
        meta["render_error"] = json!(error);
    }
}

/// Render `page` at `scale` pixels a point into `buffer` (grown or cut to
/// the page's size; its old pixels are painted over, not cleared first).
fn render(page: &PdfPage, scale: f32, mut buffer: Vec<u8>) -> Result<Render, String> {
    let size = |pt: f32| (pt * scale).round().max(1.0);
    let (w, h) = (size(page.width().value), size(page.height().value));
    if w * h * 4.0 > isize::MAX as f32 || w > i32::MAX as f32 || h > i32::MAX as f32 {
        return Err(format!("a {w}x{h} render is too large"));
    }
    let (w, h) = (w as i32, h as i32);
    buffer.resize(w as usize * h as usize * 4, 0);
    {
        let mut bitmap = PdfBitmap::from_bytes(w, h, PdfBitmapFormat::BGRx, &mut buffer).map_err(|e| e.to_string())?;
        // pdfium's own byte order, as declared (pdfium-render asks for RGB
        // order by default, which pdfium composites by a slower path).
        let config = PdfRenderConfig::new().set_fixed_size(w, h).set_format(PdfBitmapFormat::BGRx).set_reverse_byte_order(false);
        page.render_into_bitmap_with_config(&mut bitmap, &config).map_err(|e| e.to_string())?;
    }
    Ok(Render { width: w as u32, height: h as u32, pixels: buffer })
}

/// A page rendered in 8-bit gray for OCR, rows of `stride` bytes.
struct GrayRender {
    width: u32,
    height: u32,
    stride: usize,
    pixels: Vec<u8>,
}

/// Render `page` at `scale` pixels a point and turn it gray, for OCR.
/// (pdfium's own gray bitmaps leave images out: scans would be blank.)
fn render_gray(page: &PdfPage, scale: f32) -> Result<GrayRender, String> {
    let color = render(page, scale, Vec::new())?;
    let pixels = ocr::to_gray(&color.pixels, 4, true);
    Ok(GrayRender { width: color.width, height: color.height, stride: color.width as usize, pixels })
}

/// Render scale (pixels per point) for a page, capped to `max_pixels`.
fn render_scale(width_pt: f32, height_pt: f32, dpi: u32, max_pixels: u64) -> f32 {
    let scale = dpi as f32 / 72.0;
    let pixels = f64::from(width_pt * scale) * f64::from(height_pt * scale);
    if pixels > max_pixels as f64 {
        scale * (max_pixels as f64 / pixels).sqrt() as f32
    } else {
        scale
    }
}

/// Open a PDF and check it against the limits; returns it and its page count.
fn open<'a>(pdfium: &'a Pdfium, path: &Path, settings: &Settings) -> Result<(PdfDocument<'a>, usize), NormalizeError> {
    let doc = pdfium.load_pdf_from_file(path, None).map_err(|e| match e {
        PdfiumError::PdfiumLibraryInternalError(PdfiumInternalError::PasswordError) => {
            NormalizeError::new("encrypted PDF: a password is required to open it")
        }
        PdfiumError::PdfiumLibraryInternalError(internal) => NormalizeError::new(match internal {
            PdfiumInternalError::FormatError => "corrupt PDF: not a readable PDF file (format error)".to_string(),
            PdfiumInternalError::SecurityError => "encrypted PDF: unsupported security handler".to_string(),
            PdfiumInternalError::FileError => "corrupt PDF: cannot read the file".to_string(),
            other => format!("corrupt PDF: pdfium error {other:?}"),
        }),
        other => NormalizeError::new(format!("corrupt PDF: {other}")),
    })?;
    let count = doc.pages().len() as usize;
    if count == 0 {
        return Err(NormalizeError::new("PDF has no pages"));
    }
    if count > settings.max_pdf_pages as usize {
        return Err(NormalizeError::new(format!(
            "PDF has {count} pages, above the limit of {} (max_pdf_pages)",
            settings.max_pdf_pages
        )));
    }
    Ok((doc, count))
}

/// How many pages a PDF has, once it passed the checks [`normalize_pdf`]
/// makes first (a file that fails them fails the same way here).
pub fn pdf_page_count(path: &Path, settings: &Settings) -> Result<usize, NormalizeError> {
    let _one_at_a_time = PDF_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    open(pdfium()?, path, settings).map(|(_, count)| count)
}

/// Turn a PDF into page rows, handed to `emit` a few pages at a time.
pub fn normalize_pdf(
    path: &Path,
    settings: &Settings,
    emit: &mut dyn FnMut(Vec<Row>) -> Result<(), NormalizeError>,
) -> Result<(), NormalizeError> {
    normalize_pdf_pages(path, settings, None, emit)
}

/// Rows of the pages in `range` (0-based; all pages if `None`), numbered
/// as in the whole document: one PDF's pages can be split across processes
/// and its rows put back in order.
pub fn normalize_pdf_pages(
    path: &Path,
    settings: &Settings,
    range: Option<std::ops::Range<usize>>,
    emit: &mut dyn FnMut(Vec<Row>) -> Result<(), NormalizeError>,
) -> Result<(), NormalizeError> {
    let _one_at_a_time = PDF_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (doc, count) = open(pdfium()?, path, settings)?;
    let range = range.unwrap_or(0..count);
    if range.start >= range.end || range.end > count {
        return Err(NormalizeError::new(format!("pages {range:?} are not within the PDF's {count} pages")));
    }
    let pages = doc.pages();
    let tag = |t| doc.metadata().get(t).map(|v| v.value().to_string()).filter(|v| !v.is_empty());
    let title = tag(PdfDocumentMetadataTagType::Title);
    let author = tag(PdfDocumentMetadataTagType::Author);
    // Opened, so without a user password; encrypted if a security handler
    // (an owner password's restrictions) is there, of a revision pdfium names or not.
    let encrypted = !matches!(doc.permissions().security_handler_revision(), Ok(PdfSecurityHandlerRevision::Unprotected));

    let thumbnail_size = settings.thumbnail_size;
    let languages = settings.ocr_languages();
    // A page: its text, its render into `buffer`, and its row.
    let prepare = |index: usize, buffer: Vec<u8>| -> Result<RenderedPage, NormalizeError> {
        let page = pages.get(index as PdfPageIndex).map_err(|e| NormalizeError::new(format!("page {}: {e}", index + 1)))?;
        let (w_pt, h_pt) = (page.width().value, page.height().value);
        let text = page.text().map(|t| t.all()).unwrap_or_default();
        let has_text = !text.trim().is_empty();
        let scale = render_scale(w_pt, h_pt, settings.pdf_dpi, settings.max_render_pixels);
        let pixels = render(&page, scale, buffer);
        let ocr = match settings.ocr {
            OcrMode::Off => false,
            OcrMode::Auto => !has_text,
            OcrMode::Always => true,
        }
        .then(|| {
            let ocr_scale = render_scale(w_pt, h_pt, ocr::OCR_DPI.max(settings.pdf_dpi), settings.max_render_pixels);
            let dpi = (ocr_scale * 72.0).round() as u32;
            if (ocr_scale - scale).abs() < 1e-3 {
                OcrInput::Render { dpi }
            } else {
                OcrInput::Gray { render: render_gray(&page, ocr_scale), dpi }
            }
        });
        let row = Row {
            chunk_index: index as u32,
            page: Some(index as u32 + 1),
            mime_type: "image/jpeg".into(),
            text: Some(text),
            metadata: Some(json!({
                "page_count": count,
                "page_width_pt": w_pt,
                "page_height_pt": h_pt,
                "title": title,
                "author": author,
                "encrypted": encrypted,
                "dpi": (scale * 72.0).round(),
                "text_source": if has_text { "text_layer" } else { "none" },
            })),
            ..Default::default()
        };
        Ok(RenderedPage { row, pixels, ocr })
    };
    let mut batch = Vec::with_capacity(PAGES_PER_BATCH);
    let mut take = |row: Row, batch: &mut Vec<Row>| -> Result<(), NormalizeError> {
        batch.push(row);
        if batch.len() == PAGES_PER_BATCH {
            emit(std::mem::take(batch))?;
        }
        Ok(())
    };
    if !encode_beside_render(settings) {
        // One page at a time, in one page buffer.
        let mut buffer = spare_page_buffer();
        for index in range {
            let (row, back) = encode_page(prepare(index, std::mem::take(&mut buffer))?, thumbnail_size, languages);
            buffer = back.unwrap_or_default();
            take(row, &mut batch)?;
        }
        keep_page_buffer(buffer);
    } else {
        std::thread::scope(|scope| {
            // One page is encoded while the next is rendered: two page buffers,
            // passed back and forth (no fresh pages for the kernel to fault in).
            let (to_encoder, encoder_in) = mpsc::sync_channel::<RenderedPage>(0);
            let (encoder_out, encoded) = mpsc::channel::<Row>();
            let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
            scope.spawn(move || {
                for page in encoder_in {
                    let (row, buffer) = encode_page(page, thumbnail_size, languages);
                    if let Some(buffer) = buffer {
                        let _ = recycle.send(buffer);
                    }
                    if encoder_out.send(row).is_err() {
                        break;
                    }
                }
            });
            for index in range {
                let page = prepare(index, recycled.try_recv().unwrap_or_else(|_| spare_page_buffer()))?;
                to_encoder.send(page).map_err(|_| NormalizeError::new("PDF page encoder stopped"))?;
                while let Ok(row) = encoded.try_recv() {
                    take(row, &mut batch)?;
                }
            }
            drop(to_encoder);
            for row in encoded.iter() {
                take(row, &mut batch)?;
            }
            recycled.try_iter().for_each(keep_page_buffer);
            Ok::<(), NormalizeError>(())
        })?;
    }
    if !batch.is_empty() {
        emit(batch)?;
    }
    Ok(())
}

/// Whether a page is JPEG-encoded on a thread of its own while the next
/// renders (two page buffers, ~8 MB each at 150 DPI) rather than after it
/// (one). The overlap pays only while the machine has a core to spare for
/// it: with as many PDF processes as cores (the default), every core is
/// already busy, and the second buffer of each process is memory for
/// nothing.
fn encode_beside_render(settings: &Settings) -> bool {
    // Read once a process (it reads the cgroup's CPU limit from files).
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    cores > settings.process_limit(cores)
}

/// Benchmark baselines: render every page at `dpi` with pdfium and discard
/// the bitmaps, or (`encode`) also JPEG-encode each render once as sluice
/// does (no text, thumbnails, threads or table). Returns the page count.
pub fn bare_render(path: &Path, dpi: u32, encode: bool) -> Result<usize, NormalizeError> {
    let _one_at_a_time = PDF_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let doc = pdfium()?.load_pdf_from_file(path, None).map_err(|e| NormalizeError::new(e.to_string()))?;
    let (mut pages, mut buffer) = (0, Vec::new());
    for page in doc.pages().iter() {
        let render = render(&page, dpi as f32 / 72.0, buffer).map_err(NormalizeError::new)?;
        if encode {
            render.jpeg(85).ok_or_else(|| NormalizeError::new("JPEG encoding failed"))?;
        }
        buffer = render.pixels;
        pages += 1;
    }
    Ok(pages)
}

/// Seconds of one thread spent on each step of a page, summed over pages
/// (`sluice bench-media`): what a page costs, and what each change saves.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PageCosts {
    pub pages: usize,
    /// Page load and text extraction.
    pub load_and_text: f64,
    /// pdfium's render into the page buffer.
    pub render: f64,
    /// What sluice did before: BGRA to RGBA, then the pure-Rust encoder.
    pub to_rgba: f64,
    pub jpeg_pure_rust: f64,
    /// libjpeg-turbo straight from the BGRx render.
    pub jpeg_turbo: f64,
    /// Thumbnail from the render (SIMD box filter), and its JPEG.
    pub thumbnail: f64,
}

/// Time every step sluice takes per page of `path`, one after another on
/// this thread, plus the encoder sluice used before.
pub fn page_costs(path: &Path, dpi: u32, thumbnail_size: u32) -> Result<PageCosts, NormalizeError> {
    let _one_at_a_time = PDF_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let doc = pdfium()?.load_pdf_from_file(path, None).map_err(|e| NormalizeError::new(e.to_string()))?;
    let (mut c, mut buffer) = (PageCosts::default(), Vec::new());
    let timed = |total: &mut f64, t: std::time::Instant| *total += t.elapsed().as_secs_f64();
    let pages = doc.pages();
    for index in 0..pages.len() {
        let t = std::time::Instant::now();
        let page = pages.get(index).map_err(|e| NormalizeError::new(e.to_string()))?;
        let text = page.text().map(|t| t.all()).unwrap_or_default();
        std::hint::black_box(text);
        timed(&mut c.load_and_text, t);
        let t = std::time::Instant::now();
        let render = render(&page, dpi as f32 / 72.0, std::mem::take(&mut buffer)).map_err(NormalizeError::new)?;
        timed(&mut c.render, t);
        let t = std::time::Instant::now();
        let rgba = RgbaImage::from_raw(render.width, render.height, bgra_to_rgba(&render.pixels));
        timed(&mut c.to_rgba, t);
        let t = std::time::Instant::now();
        std::hint::black_box(rgba.and_then(|img| encode_jpeg_baseline(&img, 85)));
        timed(&mut c.jpeg_pure_rust, t);
        let t = std::time::Instant::now();
        std::hint::black_box(render.jpeg(85));
        timed(&mut c.jpeg_turbo, t);
        let t = std::time::Instant::now();
        std::hint::black_box(render.thumbnail(thumbnail_size));
        timed(&mut c.thumbnail, t);
        buffer = render.pixels;
        c.pages += 1;
    }
    Ok(c)
}

fn bgra_to_rgba(bgra: &[u8]) -> Vec<u8> {
    bgra.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0], p[3]]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test of the process-wide spare buffers (tests run in threads).
    #[test]
    fn page_buffers_are_kept_between_pdfs_only_when_asked() {
        keep_page_buffer(vec![1; 16]);
        assert_eq!(spare_page_buffer().capacity(), 0, "nothing kept by default");
        keep_page_buffers(true);
        for _ in 0..3 {
            keep_page_buffer(vec![1; 16]);
        }
        keep_page_buffer(Vec::new());
        assert_eq!(SPARE_PAGE_BUFFERS.len(), 2, "at most two, and no empty ones");
        assert_eq!(spare_page_buffer(), vec![1; 16]);
        drop_page_buffers();
        assert!(SPARE_PAGE_BUFFERS.is_empty());
        keep_page_buffer(vec![1; 16]);
        keep_page_buffers(false);
        assert!(SPARE_PAGE_BUFFERS.is_empty(), "dropped when no longer kept");
        keep_page_buffer(vec![1; 16]);
        assert!(SPARE_PAGE_BUFFERS.is_empty());
    }

    #[test]
    fn render_scale_follows_dpi_under_the_pixel_cap() {
        assert!((render_scale(612.0, 792.0, 144, u64::MAX) - 2.0).abs() < 1e-6);
        let s = render_scale(14_400.0, 14_400.0, 150, 25_000_000);
        let pixels = f64::from(14_400.0 * s) * f64::from(14_400.0 * s);
        assert!(pixels <= 25_000_000.0 * 1.001, "{pixels}");
    }
}
