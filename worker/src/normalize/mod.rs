//! Normalizers turn one source file into table rows. They are pure functions of
//! the file's bytes and the settings, run on blocking threads by the
//! normalizer actors. A file a normalizer cannot handle yields a
//! [`NormalizeError`] whose message is what the error ledger records.

mod image;
pub mod ocr;
mod other;
mod pdf;
mod text;

use bytes::Bytes;
use sluice_common::schema::{Kind, Row};
use sluice_common::settings::Settings;

pub use self::image::{normalize_image, worth_another_decoder};
pub use self::other::normalize_other;
pub use self::pdf::{
    bare_render, drop_page_buffers, keep_page_buffers, normalize_pdf, normalize_pdf_pages, page_costs, pdf_page_count, PageCosts,
};
pub use self::text::{chunk_text, decode_text, normalize_text};

/// Why a file could not be normalized, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NormalizeError(pub String);

impl NormalizeError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Rows of one file plus what kind it turned out to be.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub kind: Kind,
    pub rows: Vec<Row>,
}

/// JPEG-encode an image through libjpeg-turbo (SIMD; 4:2:0 chroma, or
/// grayscale). `None` if the image is empty or above JPEG's 65,535 pixels a
/// side.
pub fn encode_jpeg<P>(img: &::image::ImageBuffer<P, Vec<u8>>, quality: u8) -> Option<Vec<u8>>
where
    P: ::image::Pixel<Subpixel = u8>,
{
    let format = match P::CHANNEL_COUNT {
        3 => turbojpeg::PixelFormat::RGB,
        4 => turbojpeg::PixelFormat::RGBA,
        1 => turbojpeg::PixelFormat::GRAY,
        _ => return None,
    };
    let (width, height) = (img.width() as usize, img.height() as usize);
    encode_pixels(img.as_raw(), width, width * format.size(), height, format, quality)
}

/// JPEG-encode raw pixels (`pitch` bytes a row) of any layout libjpeg-turbo
/// reads, such as pdfium's BGRA renders, without converting them first. An
/// image whose every pixel is gray (its three color bytes equal: a page of
/// text, a scan, a black-and-white photo) is encoded as a grayscale JPEG:
/// the same pixels, one component where color takes three (libjpeg-turbo
/// takes the luma of the color pixels, which for gray ones is the value).
pub fn encode_pixels(
    pixels: &[u8],
    width: usize,
    pitch: usize,
    height: usize,
    format: turbojpeg::PixelFormat,
    quality: u8,
) -> Option<Vec<u8>> {
    if width == 0 || height == 0 || width > 65_535 || height > 65_535 || pixels.len() < pitch * height {
        return None;
    }
    thread_local! {
        // A compressor holds libjpeg-turbo's state: made once per thread.
        static COMPRESSOR: std::cell::RefCell<Option<turbojpeg::Compressor>> = const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = turbojpeg::Compressor::new().ok();
        }
        let compressor = slot.as_mut()?;
        compressor.set_quality(i32::from(quality));
        let gray = format == turbojpeg::PixelFormat::GRAY || is_gray(pixels, width, pitch, height, format);
        compressor.set_subsamp(if gray { turbojpeg::Subsamp::Gray } else { turbojpeg::Subsamp::Sub2x2 });
        compressor.compress_to_vec(turbojpeg::Image { pixels, width, pitch, height, format }).ok()
    })
}

/// Whether every pixel of `width` x `height` (`pitch` bytes a row) has its
/// three color bytes equal. Row by row, stopping at the first row with a
/// color; a row is folded without branches, so that it runs in SIMD.
fn is_gray(pixels: &[u8], width: usize, pitch: usize, height: usize, format: turbojpeg::PixelFormat) -> bool {
    use turbojpeg::PixelFormat as F;
    let rows = pixels.chunks(pitch.max(1)).take(height);
    match format {
        F::RGB | F::BGR => rows.into_iter().all(|row| {
            let color = row.get(..width * 3).unwrap_or_default();
            color.len() == width * 3 && color.chunks_exact(3).fold(0u8, |acc, p| acc | (p[0] ^ p[1]) | (p[1] ^ p[2])) == 0
        }),
        F::RGBX | F::BGRX | F::RGBA | F::BGRA | F::XRGB | F::XBGR | F::ARGB | F::ABGR => {
            // Little-endian words: color bytes 0-2, or 1-3 after an X or A.
            let mask: u32 = if matches!(format, F::XRGB | F::XBGR | F::ARGB | F::ABGR) { 0x00ff_ff00 } else { 0x0000_ffff };
            rows.into_iter().all(|row| {
                let color = row.get(..width * 4).unwrap_or_default();
                let spread = color.chunks_exact(4).map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]])).fold(0u32, |acc, v| acc | ((v ^ (v >> 8)) & mask));
                color.len() == width * 4 && spread == 0
            })
        }
        _ => false,
    }
}

/// A JPEG thumbnail of an image of 3 or 4 bytes a pixel (rows unpadded; a
/// 4th byte, if any, is padding), scaled down to fit `size`×`size` with its
/// aspect kept: a box filter over a 3x supersampling (fast_image_resize,
/// SIMD), then libjpeg-turbo. An image that fits already keeps its size
/// (an icon scaled up to 256 px made a thumbnail several times its own
/// file). `None` if the image is empty.
pub fn thumbnail_jpeg(pixels: &[u8], width: u32, height: u32, format: turbojpeg::PixelFormat, size: u32) -> Option<Vec<u8>> {
    use fast_image_resize as fr;
    let pixel_type = match format.size() {
        3 => fr::PixelType::U8x3,
        4 => fr::PixelType::U8x4,
        _ => return None,
    };
    if width == 0 || height == 0 || size == 0 {
        return None;
    }
    let ratio = f64::min(f64::from(size) / f64::from(width), f64::from(size) / f64::from(height)).min(1.0);
    let fit = |n: u32| ((f64::from(n) * ratio).round() as u32).clamp(1, size);
    let (tw, th) = (fit(width), fit(height));
    let src = fr::images::ImageRef::new(width, height, pixels, pixel_type).ok()?;
    let mut dst = fr::images::Image::new(tw, th, pixel_type);
    // A 4th byte is padding (pdfium's BGRx), not alpha to weigh colors by.
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::SuperSampling(fr::FilterType::Box, 3)).use_alpha(false);
    // A resizer keeps its working buffers (the supersampled image, ~2 MB for
    // a page at 150 DPI): two are kept for the next thumbnails, which then
    // write into pages already mapped (a new one cost a page 0.7 ms more).
    static SPARE_RESIZERS: Spares<fr::Resizer, 2> = Spares::new();
    let mut resizer = SPARE_RESIZERS.take();
    let resized = resizer.resize(&src, &mut dst, &options);
    SPARE_RESIZERS.give(resizer);
    resized.ok()?;
    let (tw, th) = (tw as usize, th as usize);
    encode_pixels(dst.buffer(), tw, tw * format.size(), th, format, 80)
}

/// One plane of 8-bit samples (`stride` bytes a row, `width` x `height`)
/// scaled to `to_width` x `to_height`, packed: a bilinear convolution
/// (fast_image_resize, SIMD), for planar pictures such as a video frame's
/// Y, Cb and Cr. `None` if the plane is shorter than its size says.
pub fn scale_plane(plane: &[u8], stride: usize, (width, height): (u32, u32), (to_width, to_height): (u32, u32)) -> Option<Vec<u8>> {
    use fast_image_resize as fr;
    let row = width as usize;
    if stride < row || plane.len() < stride * (height as usize).saturating_sub(1) + row {
        return None;
    }
    let packed: std::borrow::Cow<[u8]> = if stride == row {
        std::borrow::Cow::Borrowed(&plane[..row * height as usize])
    } else {
        std::borrow::Cow::Owned(plane.chunks(stride).take(height as usize).flat_map(|r| &r[..row]).copied().collect())
    };
    let src = fr::images::ImageRef::new(width, height, &packed, fr::PixelType::U8).ok()?;
    let mut dst = fr::images::Image::new(to_width, to_height, fr::PixelType::U8);
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new().resize(&src, &mut dst, &options).ok()?;
    Some(dst.into_vec())
}

/// Up to `N` values kept for reuse, such as buffers whose pages are mapped
/// already: taken (or made anew when none is kept) and given back.
pub(crate) struct Spares<T, const N: usize>(parking_lot::Mutex<Vec<T>>);

impl<T: Default, const N: usize> Spares<T, N> {
    pub(crate) const fn new() -> Self {
        Self(parking_lot::Mutex::new(Vec::new()))
    }

    /// A kept value, else a new one.
    pub(crate) fn take(&self) -> T {
        self.0.lock().pop().unwrap_or_default()
    }

    /// Keep `value` for the next `take`, unless `N` are kept already.
    pub(crate) fn give(&self, value: T) {
        let mut kept = self.0.lock();
        if kept.len() < N {
            kept.push(value);
        }
    }

    /// Drop every kept value.
    pub(crate) fn clear(&self) {
        self.0.lock().clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

/// The pure-Rust encoder sluice used before libjpeg-turbo, kept as the
/// baseline `sluice bench-media` measures against.
pub fn encode_jpeg_baseline(img: &::image::RgbaImage, quality: u8) -> Option<Vec<u8>> {
    let (w, h) = (u16::try_from(img.width()).ok()?, u16::try_from(img.height()).ok()?);
    let mut out = Vec::with_capacity(img.as_raw().len() / 12);
    jpeg_encoder::Encoder::new(&mut out, quality).encode(img.as_raw(), w, h, jpeg_encoder::ColorType::Rgba).ok()?;
    Some(out)
}

/// How much of a file's start [`detect_kind`] looks at.
pub const DETECT_BYTES: usize = 8192;

/// Decide how to treat a file from its magic bytes first, its name second.
/// Only the first [`DETECT_BYTES`] count: FFmpeg's probe runs every
/// demuxer's check over what it is given, ~45 ms for 4 MB of bytes that are
/// no media at all.
pub fn detect_kind(name: &str, bytes: &[u8]) -> (Kind, String) {
    detect_kind_with(name, bytes, &mut |head| ffmpeg().map(|ff| ff.probe(head)))
}

/// [`detect_kind`] with FFmpeg's probe asked of `probe`, which is given
/// the bytes only where FFmpeg has the last word: containers and raw
/// streams without magic bytes, images only FFmpeg reads. `None` from it:
/// no answer to be had; the file is then judged without one (as `Other`
/// bytes where FFmpeg would have been asked).
pub fn detect_kind_with(name: &str, bytes: &[u8], probe: &mut dyn FnMut(&[u8]) -> Option<Probed>) -> (Kind, String) {
    let bytes = &bytes[..bytes.len().min(DETECT_BYTES)];
    let by_name = match Kind::from_name(name) {
        // `.ts` without MPEG-TS sync bytes is a TypeScript source.
        Some(Kind::Video) if name.to_ascii_lowercase().ends_with(".ts") && !looks_like_mpeg_ts(bytes) => Some(Kind::Text),
        other => other,
    };
    if let Some(t) = infer::get(bytes) {
        let mime = t.mime_type().to_string();
        let decodable = ::image::ImageFormat::from_mime_type(&mime).is_some_and(|f| f.reading_enabled());
        return match t.matcher_type() {
            infer::MatcherType::Image if decodable => (Kind::Image, mime),
            // Images for FFmpeg's image decoders (JPEG 2000, PSD, EXR, ...).
            infer::MatcherType::Image if probe(bytes).is_some_and(|p| p.image.is_some()) => (Kind::Image, mime),
            infer::MatcherType::Video => (Kind::Video, mime),
            // Audio the whitelisted demuxers read (MIDI, DSD, Monkey's Audio and
            // AMR are kept as bytes).
            infer::MatcherType::Audio if !matches!(t.extension(), "midi" | "dsf" | "ape" | "amr") => (Kind::Audio, mime),
            _ if mime == "application/pdf" => (Kind::Pdf, mime),
            // Text formats infer recognises (e.g. some XML/HTML) stay text.
            infer::MatcherType::Text => (Kind::Text, mime),
            _ => (Kind::Other, mime),
        };
    }
    // Formats the image crate reads that `infer` does not know (binary
    // PNM, ...); their two-byte magic alone would take some text for one.
    let picture = || ::image::guess_format(bytes).ok().filter(|f| f.reading_enabled());
    if let Some(format) = picture().filter(|_| !looks_like_text(bytes)) {
        return (Kind::Image, format.to_mime_type().to_string());
    }
    let guessed = mime_guess::from_path(name).first();
    if by_name == Some(Kind::Pdf) {
        return (Kind::Pdf, "application/pdf".to_string());
    }
    if let Some(kind @ (Kind::Video | Kind::Audio)) = by_name {
        // Named like media: the demuxer gives the precise reason if not.
        let mime = guessed.map_or("application/octet-stream".to_string(), |m| m.to_string());
        return (kind, mime);
    }
    if by_name == Some(Kind::Image) {
        // Named like an image but without image magic: the image decoder
        // gives the precise reason.
        let mime = guessed.map_or("application/octet-stream".to_string(), |m| m.to_string());
        return (Kind::Image, mime);
    }
    let texty = by_name == Some(Kind::Text) || guessed.as_ref().is_some_and(|m| m.type_() == "text");
    let text_bytes = looks_like_text(bytes);
    if !texty && !text_bytes {
        // Containers and raw streams without magic bytes that `infer` knows.
        if let Some(probed) = probe(bytes) {
            if let Some((kind, format)) = probed.container {
                return (kind, format!("{kind}/x-{format}"));
            }
            if let Some((_, mime)) = probed.image {
                return (Kind::Image, mime);
            }
        }
    }
    if texty || (guessed.is_none() && text_bytes) {
        let mime = guessed.filter(|m| m.type_() == "text" || m.subtype() == "json").map_or("text/plain".to_string(), |m| m.to_string());
        return (Kind::Text, mime);
    }
    let mime = guessed.map_or("application/octet-stream".to_string(), |m| m.to_string());
    (Kind::Other, mime)
}

/// What FFmpeg's probe takes a file's first bytes for, among the formats
/// sluice reads with FFmpeg (judged by content alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probed {
    /// A whitelisted container or raw stream: video or audio, and the
    /// demuxer's name.
    pub container: Option<(Kind, String)>,
    /// A whitelisted image format, and its MIME type.
    pub image: Option<(String, String)>,
}

/// FFmpeg's probe of the first [`DETECT_BYTES`] of the file at `path`, in a
/// process that has FFmpeg (answer to [`crate::isolation::Part::Probe`]).
pub fn probe_file(path: &std::path::Path) -> Result<Probed, NormalizeError> {
    use std::io::Read;
    let ff = need_ffmpeg()?;
    let mut head = Vec::with_capacity(DETECT_BYTES);
    std::fs::File::open(path)
        .and_then(|f| f.take(DETECT_BYTES as u64).read_to_end(&mut head))
        .map_err(|e| NormalizeError::new(format!("cannot read the file: {e}")))?;
    Ok(ff.probe(&head))
}

/// MPEG transport streams are 188-byte packets, each starting with 0x47.
fn looks_like_mpeg_ts(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x47) && bytes.get(188).is_none_or(|b| *b == 0x47)
}

/// A cheap look at the first bytes: valid (possibly cut) UTF-8 without
/// NULs, or UTF-16/32 (with a byte-order mark or told by its NULs).
fn looks_like_text(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(8192)];
    if text::wide_bom(head).is_some() || text::sniff_wide(head).is_some() {
        return true;
    }
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut at the end of the window is fine.
        Err(e) => e.error_len().is_none(),
    }
}

/// Normalize one file's bytes (every kind but video, audio and PDF, which
/// stream from their path).
/// On failure, the kind the file was detected as comes with the reason.
pub fn normalize(name: &str, bytes: Bytes, settings: &Settings) -> Result<Normalized, (Kind, NormalizeError)> {
    let (kind, mime) = detect_kind(name, &bytes);
    normalize_detected(kind, &mime, bytes, settings)
}

/// [`normalize`] a file already detected as `kind` (`mime`).
pub fn normalize_detected(kind: Kind, mime: &str, bytes: Bytes, settings: &Settings) -> Result<Normalized, (Kind, NormalizeError)> {
    let rows = match kind {
        Kind::Text => normalize_text(&bytes, mime, settings),
        Kind::Image => normalize_image(bytes, mime, settings),
        _ => Ok(normalize_other(bytes, mime)),
    };
    rows.map(|rows| Normalized { kind, rows }).map_err(|e| (kind, e))
}

/// FFmpeg's part of normalization, provided by the `sluice-media` crate to
/// the one binary that links it, `sluice-normalizer-media`: linking
/// Debian's FFmpeg loads ~130 shared libraries into a process (~25 MB of
/// them resident before any work), so `sluice` itself and the processes
/// that render PDFs do without it, and hand what needs FFmpeg to a
/// `sluice-normalizer-media` process (video, audio, FFmpeg's image
/// decoders, and probing files without magic bytes).
pub trait Ffmpeg: Send + Sync {
    /// What FFmpeg's probe takes a file's first bytes for, from their
    /// content alone.
    fn probe(&self, head: &[u8]) -> Probed;
    /// A video or audio file cut into segments (`named`: what the file was
    /// taken for before it was opened).
    fn normalize_media(
        &self,
        path: &std::path::Path,
        named: Kind,
        settings: &Settings,
        out: &mut dyn FnMut(Piece) -> Result<(), NormalizeError>,
    ) -> Result<(), NormalizeError>;
    /// An image file only FFmpeg's image decoders read.
    fn normalize_still(&self, path: &std::path::Path, settings: &Settings) -> Result<Vec<Row>, NormalizeError>;
}

static FFMPEG: std::sync::OnceLock<&'static dyn Ffmpeg> = std::sync::OnceLock::new();

/// Give this process FFmpeg's decoders (`sluice_media::install`).
pub fn install_ffmpeg(ffmpeg: &'static dyn Ffmpeg) {
    let _ = FFMPEG.set(ffmpeg);
}

/// FFmpeg's decoders, if this process has them.
pub fn ffmpeg() -> Option<&'static dyn Ffmpeg> {
    FFMPEG.get().copied()
}

fn need_ffmpeg() -> Result<&'static dyn Ffmpeg, NormalizeError> {
    ffmpeg().ok_or_else(|| NormalizeError::new("this process has no FFmpeg: video, audio and FFmpeg's image decoders run in sluice-normalizer-media"))
}

/// An image file from its path (in a normalizer process): the `image`
/// crate first, then FFmpeg's image decoders; both reasons if neither
/// reads it.
pub fn normalize_image_file(path: &std::path::Path, settings: &Settings) -> Result<Vec<Row>, NormalizeError> {
    let bytes = Bytes::from(std::fs::read(path).map_err(|e| NormalizeError::new(format!("cannot read image: {e}")))?);
    match normalize_image(bytes.clone(), "", settings) {
        Ok(rows) => Ok(rows),
        Err(first) if worth_another_decoder(&bytes) => need_ffmpeg()?
            .normalize_still(path, settings)
            .map_err(|second| NormalizeError::new(format!("{first}; {second}"))),
        Err(first) => Err(first),
    }
}

/// What a streamed (video, PDF) normalization hands out: the file's content
/// hash, always before its first rows, then rows a few at a time.
pub enum Piece {
    Hash(String),
    Rows(Vec<Row>),
    /// A PDF's page count (answer to [`crate::isolation::Part::PageCount`]).
    PageCount(usize),
    /// FFmpeg's probe of the file's head (answer to
    /// [`crate::isolation::Part::Probe`]).
    Probed(Probed),
    /// What the file turned out to be once opened (video or audio, by its
    /// streams), before its rows.
    Kind(Kind),
    /// Rows whose blobs, each row's data then its thumbnail, are exactly
    /// the bytes of this sealed memfd, which the rows' data map (made by
    /// [`Piece::sealed_row`]). A normalizer process hands the memfd over as
    /// it is; anywhere else these are plain rows.
    Sealed(Vec<Row>, std::os::fd::OwnedFd),
}

impl Piece {
    /// One row whose data are the `data_len` bytes written into `memfd`
    /// (from [`crate::handover::memfd`]): its thumbnail is written after
    /// them, the memfd sealed, and the row's data mapped from it. No byte
    /// of the data is copied here, nor, in a normalizer process, later.
    pub fn sealed_row(memfd: std::fs::File, data_len: u64, mut row: Row) -> std::io::Result<Piece> {
        use std::os::unix::fs::FileExt;
        let thumbnail = row.thumbnail.as_deref().unwrap_or_default();
        memfd.write_all_at(thumbnail, data_len)?;
        memfd.set_len(data_len + thumbnail.len() as u64)?;
        let fd = crate::handover::seal(memfd)?;
        let len = usize::try_from(data_len).map_err(std::io::Error::other)?;
        let mapped = crate::handover::map_sealed_lazily(fd.try_clone()?, len + thumbnail.len())?;
        row.data = Some(mapped.slice(..len));
        Ok(Piece::Sealed(vec![row], fd))
    }
}

/// Normalize a video, audio file, PDF or image (through FFmpeg's image
/// decoders) from its path while another thread
/// hashes the file, so the hash costs no time of its own. The hash is
/// handed to `out` just before the first rows (or at the end, if there are
/// none).
pub fn normalize_streamed(
    kind: Kind,
    path: &std::path::Path,
    settings: &Settings,
    out: &mut dyn FnMut(Piece) -> Result<(), NormalizeError>,
) -> Result<(), NormalizeError> {
    std::thread::scope(|scope| {
        let mut hasher = Some(scope.spawn(|| crate::fetch::hash_file(path)));
        let mut hash_first = |out: &mut dyn FnMut(Piece) -> Result<(), NormalizeError>| -> Result<(), NormalizeError> {
            if let Some(h) = hasher.take() {
                let hash = h.join().map_err(|_| NormalizeError::new("hashing thread panicked"))?;
                out(Piece::Hash(hash.map_err(NormalizeError::new)?))?;
            }
            Ok(())
        };
        let mut emit = |piece: Piece| -> Result<(), NormalizeError> {
            if matches!(piece, Piece::Rows(_) | Piece::Sealed(..)) {
                hash_first(&mut *out)?;
            }
            out(piece)
        };
        match kind {
            Kind::Video | Kind::Audio => need_ffmpeg()?.normalize_media(path, kind, settings, &mut emit),
            Kind::Pdf => normalize_pdf(path, settings, &mut |rows| emit(Piece::Rows(rows))),
            // Images come here for OCR, or when the `image` crate could not read them.
            Kind::Image => emit(Piece::Rows(normalize_image_file(path, settings)?)),
            other => Err(NormalizeError::new(format!("{other} files are not normalized from a path"))),
        }?;
        hash_first(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_pixels_make_a_grayscale_jpeg_and_one_colored_pixel_does_not() {
        use turbojpeg::PixelFormat as F;
        let (w, h) = (40usize, 30usize);
        let decoded = |jpeg: Option<Vec<u8>>| ::image::load_from_memory(&jpeg.unwrap()).unwrap();
        for (format, size, first) in [(F::BGRX, 4, 0), (F::RGB, 3, 0), (F::XRGB, 4, 1), (F::ARGB, 4, 1)] {
            // A gradient of grays, with padding bytes of another value and two
            // bytes of slack at the end of each row.
            let pitch = w * size + 2;
            let mut pixels = vec![7u8; pitch * h];
            for y in 0..h {
                for x in 0..w {
                    let p = y * pitch + x * size + first;
                    pixels[p..p + 3].fill((x * 6) as u8);
                }
            }
            let gray = decoded(encode_pixels(&pixels, w, pitch, h, format, 90));
            assert_eq!(gray.color(), ::image::ColorType::L8, "{format:?}");
            assert!(gray.to_luma8().get_pixel(20, 15).0[0].abs_diff(120) < 4, "{format:?}: the gray values are kept");

            // One pixel of color in the last row.
            let p = (h - 1) * pitch + (w - 1) * size + first;
            pixels[p + 1] = 200;
            let color = decoded(encode_pixels(&pixels, w, pitch, h, format, 90));
            assert_eq!(color.color(), ::image::ColorType::Rgb8, "{format:?}");
        }
        assert!(!is_gray(&[9, 9, 9], 1, 2, 1, F::RGB), "a pitch shorter than a row is not read past");
    }

    #[test]
    fn thumbnails_fit_the_box_and_keep_colors_of_padded_pixels() {
        // BGRx with a zero padding byte: a red left half, a blue right half.
        let (w, h) = (1200u32, 600u32);
        let mut bgrx = Vec::with_capacity((w * h * 4) as usize);
        for _y in 0..h {
            for x in 0..w {
                bgrx.extend_from_slice(if x < w / 2 { &[0, 0, 255, 0] } else { &[255, 0, 0, 0] });
            }
        }
        let jpeg = thumbnail_jpeg(&bgrx, w, h, turbojpeg::PixelFormat::BGRX, 256).unwrap();
        let thumb = ::image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!((thumb.width(), thumb.height()), (256, 128));
        let near = |p: &::image::Rgb<u8>, want: [u8; 3]| p.0.iter().zip(want).all(|(a, b)| a.abs_diff(b) < 24);
        assert!(near(thumb.get_pixel(32, 64), [255, 0, 0]), "{:?}", thumb.get_pixel(32, 64));
        assert!(near(thumb.get_pixel(224, 64), [0, 0, 255]), "{:?}", thumb.get_pixel(224, 64));

        let rgb = vec![200u8; 30 * 90 * 3];
        let tall = ::image::load_from_memory(&thumbnail_jpeg(&rgb, 30, 90, turbojpeg::PixelFormat::RGB, 64).unwrap()).unwrap();
        assert_eq!((tall.width(), tall.height()), (21, 64));
        let small = ::image::load_from_memory(&thumbnail_jpeg(&rgb, 30, 90, turbojpeg::PixelFormat::RGB, 256).unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (30, 90), "an image that fits is not scaled up");
        assert!(thumbnail_jpeg(&[], 0, 0, turbojpeg::PixelFormat::RGB, 64).is_none());
    }

    #[test]
    fn detection_prefers_magic_over_extension() {
        let png = {
            let img = ::image::RgbImage::new(2, 2);
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, ::image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        assert_eq!(detect_kind("photo.txt", &png).0, Kind::Image);
        assert_eq!(detect_kind("notes.md", b"# hello").0, Kind::Text);
        assert_eq!(detect_kind("README", b"plain words").0, Kind::Text);
        assert_eq!(detect_kind("blob.bin", &[0u8, 159, 146, 150, 1, 2]).0, Kind::Other);
        assert_eq!(detect_kind("fake.jpg", b"not an image").0, Kind::Image);
        let pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n";
        assert_eq!(detect_kind("doc.pdf", pdf), (Kind::Pdf, "application/pdf".to_string()));
        // `.ts`: an MPEG transport stream, or a TypeScript source.
        assert_eq!(detect_kind("app.ts", b"export const x: number = 1;\n").0, Kind::Text);
        let mut packets = vec![0u8; 188 * 3];
        packets.iter_mut().step_by(188).for_each(|b| *b = 0x47);
        assert_eq!(detect_kind("clip.TS", &packets).0, Kind::Video);
        // Audio by magic whatever the name; MIDI stays bytes; a bare MPEG
        // audio frame (no ID3 tag) is told by FFmpeg's probe.
        assert_eq!(detect_kind("song.bin", b"fLaC\0\0\0\x22\x10\0\x10\0").0, Kind::Audio);
        assert_eq!(detect_kind("take", b"RIFF\x24\0\0\0WAVEfmt ").0, Kind::Audio);
        assert_eq!(detect_kind("tune.mid", b"MThd\0\0\0\x06\0\x01\0\x02").0, Kind::Other);
        assert_eq!(detect_kind("voice.opus", b"").0, Kind::Audio);
        // UTF-16 without a byte-order mark and without a telling name is text.
        let utf16: Vec<u8> = "plain words, in UTF-16".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(detect_kind("NOTES", &utf16).0, Kind::Text);
        let rows = normalize("NOTES", Bytes::from(utf16), &Settings::default()).unwrap().rows;
        assert_eq!(rows[0].text.as_deref(), Some("plain words, in UTF-16"));
        assert_eq!(rows[0].metadata.as_ref().unwrap()["encoding"], "UTF-16BE");
    }

    /// FFmpeg's probe is asked only of bytes nothing else tells apart, and
    /// its answer (from this process or another) decides them.
    #[test]
    fn ffmpegs_probe_decides_only_files_without_magic() {
        let raw: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8 | 0x80).collect();
        let mut asked = 0;
        let mut none = |_: &[u8]| {
            asked += 1;
            None
        };
        assert_eq!(detect_kind_with("capture.bin", &raw, &mut none).0, Kind::Other);
        assert_eq!(detect_kind_with("notes.txt", b"plain words", &mut none).0, Kind::Text);
        assert_eq!(detect_kind_with("clip.mp4", b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom", &mut none).0, Kind::Video);
        assert_eq!(asked, 1, "only the file without magic or text was probed");
        let stream = Probed { container: Some((Kind::Video, "h264".into())), image: None };
        assert_eq!(detect_kind_with("capture.bin", &raw, &mut |_| Some(stream.clone())), (Kind::Video, "video/x-h264".into()));
        let sgi = Probed { container: None, image: Some(("sgi".into(), "image/sgi".into())) };
        assert_eq!(detect_kind_with("capture.bin", &raw, &mut |_| Some(sgi.clone())), (Kind::Image, "image/sgi".into()));
        assert_eq!(detect_kind_with("capture.bin", &raw, &mut |_| Some(Probed::default())).0, Kind::Other);
    }

    /// Stands in for FFmpeg: remembers the longest input its probe was given.
    struct ProbeLength(std::sync::atomic::AtomicUsize);

    impl Ffmpeg for ProbeLength {
        fn probe(&self, head: &[u8]) -> Probed {
            self.0.fetch_max(head.len(), std::sync::atomic::Ordering::SeqCst);
            Probed::default()
        }
        fn normalize_media(
            &self,
            _: &std::path::Path,
            _: Kind,
            _: &Settings,
            _: &mut dyn FnMut(Piece) -> Result<(), NormalizeError>,
        ) -> Result<(), NormalizeError> {
            Err(NormalizeError::new("not here"))
        }
        fn normalize_still(&self, _: &std::path::Path, _: &Settings) -> Result<Vec<Row>, NormalizeError> {
            Err(NormalizeError::new("not here"))
        }
    }

    #[test]
    fn ffmpegs_probe_sees_only_the_head_of_a_big_unknown_file() {
        static FAKE: ProbeLength = ProbeLength(std::sync::atomic::AtomicUsize::new(0));
        install_ffmpeg(&FAKE);
        let Some(ff) = ffmpeg() else { unreachable!("installed") };
        assert!(std::ptr::addr_eq(ff, &FAKE), "no other FFmpeg in the worker's tests");
        // 4 MB of bytes no detector knows, as an in-process normalizer gets them.
        let mut bytes = vec![0u8; 4 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        let normalized = normalize("blob.bin", Bytes::from(bytes), &Settings::default()).unwrap();
        assert_eq!(normalized.kind, Kind::Other);
        let probed = FAKE.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(probed > 0 && probed <= DETECT_BYTES, "FFmpeg probed {probed} bytes");
    }

    #[test]
    fn wrong_extension_image_fails_with_a_reason() {
        let (kind, err) = normalize("fake.jpg", Bytes::from_static(b"not an image at all"), &Settings::default()).unwrap_err();
        assert_eq!(kind, Kind::Image);
        assert!(err.0.contains("image"), "{err}");
    }
}
