//! Images: check dimensions against the pixel limit before decoding (so a
//! decompression bomb is refused from its header), decode to validate, apply
//! the EXIF orientation, and make a JPEG thumbnail.

use std::io::Cursor;

use bytes::Bytes;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use serde_json::json;
use sluice_common::schema::Row;
use sluice_common::settings::Settings;

use super::NormalizeError;

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, NormalizeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| NormalizeError::new(format!("unreadable image: {e}")))?;
    if reader.format().is_none() && is_bigtiff(bytes) {
        // The TIFF decoder reads BigTIFF; the format guess does not know it.
        reader.set_format(image::ImageFormat::Tiff);
    }
    if reader.format().is_none() {
        return Err(NormalizeError::new("not a decodable image: unrecognised image format"));
    }
    Ok(reader)
}

fn is_bigtiff(bytes: &[u8]) -> bool {
    matches!(bytes.get(..4), Some(b"II\x2b\x00" | b"MM\x00\x2b"))
}

/// Whether FFmpeg's image decoders should have a go when the `image` crate
/// fails: for formats it does not read, and for TIFF (whose variants it
/// reads only in part). A JPEG, PNG, GIF, WebP or BMP it reads and finds
/// corrupt stays refused (FFmpeg would conceal the damage).
pub fn worth_another_decoder(bytes: &[u8]) -> bool {
    match image::guess_format(bytes) {
        Ok(format) => format == image::ImageFormat::Tiff || !format.reading_enabled(),
        Err(_) => !is_bigtiff(bytes),
    }
}

pub fn normalize_image(bytes: Bytes, mime: &str, settings: &Settings) -> Result<Vec<Row>, NormalizeError> {
    let format = reader(&bytes)?.format().expect("checked");
    // CIE L*a*b* TIFF: its samples are read as if RGB, then converted.
    let lab = (format == image::ImageFormat::Tiff).then(|| tiff_photometric(&bytes)).flatten().filter(|p| p.value == 8);
    let patched;
    let source: &[u8] = match lab {
        Some(p) => {
            let mut copy = bytes.to_vec();
            copy[p.at..p.at + 2].copy_from_slice(&if p.little_endian { 2u16.to_le_bytes() } else { 2u16.to_be_bytes() });
            patched = copy;
            &patched
        }
        None => &bytes,
    };
    let (w, h) = reader(source)?
        .into_dimensions()
        .map_err(|e| NormalizeError::new(format!("corrupt {format:?} image: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > settings.max_image_pixels {
        return Err(NormalizeError::new(format!(
            "image is {w}x{h} = {pixels} pixels, above the limit of {} (max_image_pixels); refused as a possible decompression bomb",
            settings.max_image_pixels
        )));
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(NormalizeError::new("truncated JPEG: no end-of-image marker after the image data"));
    }
    let mut r = reader(source)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // RGBA16 of the permitted pixels plus slack for decoder state.
    limits.max_alloc = Some(settings.max_image_pixels.saturating_mul(8).max(64 << 20));
    r.limits(limits);
    let corrupt = |e: image::ImageError| NormalizeError::new(format!("corrupt {format:?} image: {e}"));
    let mut decoder = r.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    if lab.is_some() {
        img = lab_to_rgb(img)?;
    }
    img.apply_orientation(orientation);

    let ts = settings.thumbnail_size;
    // 8-bit RGB as decoded (most JPEGs) is scaled as it is, other layouts
    // from a copy.
    let rgb = match &img {
        DynamicImage::ImageRgb8(pixels) => std::borrow::Cow::Borrowed(pixels),
        other => std::borrow::Cow::Owned(other.to_rgb8()),
    };
    let jpeg = super::thumbnail_jpeg(rgb.as_raw(), rgb.width(), rgb.height(), turbojpeg::PixelFormat::RGB, ts)
        .ok_or_else(|| NormalizeError::new("thumbnail encoding failed"))?;

    let _ = mime;
    let mime = format.to_mime_type();
    let mut row = Row {
        chunk_index: 0,
        mime_type: if mime.is_empty() { "application/octet-stream".into() } else { mime.to_string() },
        width: Some(img.width()),
        height: Some(img.height()),
        thumbnail: Some(jpeg),
        metadata: Some(json!({
            "format": format!("{format:?}").to_lowercase(),
            "color": if lab.is_some() { "CIELab".to_string() } else { format!("{:?}", img.color()) },
            "orientation": format!("{orientation:?}"),
            "stored_width": w,
            "stored_height": h,
        })),
        data: Some(bytes),
        ..Default::default()
    };
    if settings.ocr == sluice_common::settings::OcrMode::Always {
        let gray = img.to_luma8();
        super::ocr::read_into(&mut row, Ok((gray.as_raw(), gray.width(), gray.height(), gray.width() as usize)), super::ocr::OCR_DPI, settings.ocr_languages());
    }
    Ok(vec![row])
}

/// Where a TIFF's (or BigTIFF's) first image directory keeps its
/// PhotometricInterpretation (tag 262, one SHORT, held in the entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Photometric {
    at: usize,
    value: u16,
    little_endian: bool,
}

fn tiff_photometric(bytes: &[u8]) -> Option<Photometric> {
    let little_endian = match bytes.get(..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let int = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(if little_endian { b.iter().rev().fold(0, |v, x| v << 8 | u64::from(*x)) } else { b.iter().fold(0, |v, x| v << 8 | u64::from(*x)) })
    };
    // Classic TIFF: 12-byte entries after a u16 count; BigTIFF: 20-byte
    // entries after a u64 count, values in 8 bytes.
    let (ifd, count_len, entry_len, value_at) = match int(2, 2)? {
        42 => (int(4, 4)?, 2, 12, 8),
        43 => (int(8, 8)?, 8, 20, 12),
        _ => return None,
    };
    let ifd = usize::try_from(ifd).ok()?;
    let count = int(ifd, count_len)?.min(4096) as usize;
    (0..count).map(|i| ifd + count_len + i * entry_len).find(|at| int(*at, 2) == Some(262)).and_then(|entry| {
        let (kind, n) = (int(entry + 2, 2)?, int(entry + 4, 4)?);
        (kind == 3 && n == 1).then_some(())?;
        let at = entry + value_at;
        Some(Photometric { at, value: int(at, 2)? as u16, little_endian })
    })
}

/// 8- or 16-bit CIE L*a*b* samples (L unsigned, a and b signed, as TIFF
/// stores them; read as RGB) to sRGB, white point D65.
fn lab_to_rgb(img: DynamicImage) -> Result<DynamicImage, NormalizeError> {
    let convert = |l: f64, a: f64, b: f64| -> [u8; 3] {
        let fy = (l + 16.0) / 116.0;
        let (fx, fz) = (fy + a / 500.0, fy - b / 200.0);
        let inv = |t: f64| if t > 6.0 / 29.0 { t * t * t } else { 3.0 * (6.0f64 / 29.0).powi(2) * (t - 4.0 / 29.0) };
        let (x, y, z) = (0.95047 * inv(fx), inv(fy), 1.08883 * inv(fz));
        let lin = [
            3.2404542 * x - 1.5371385 * y - 0.4985314 * z,
            -0.9692660 * x + 1.8760108 * y + 0.0415560 * z,
            0.0556434 * x - 0.2040259 * y + 1.0572252 * z,
        ];
        lin.map(|c| {
            let c = c.clamp(0.0, 1.0);
            let s = if c <= 0.003_130_8 { 12.92 * c } else { 1.055 * c.powf(1.0 / 2.4) - 0.055 };
            (s * 255.0).round() as u8
        })
    };
    let (w, h) = (img.width(), img.height());
    let out: Vec<u8> = match &img {
        DynamicImage::ImageRgb8(p) => {
            p.pixels().flat_map(|p| convert(f64::from(p[0]) * 100.0 / 255.0, f64::from(p[1] as i8), f64::from(p[2] as i8))).collect()
        }
        DynamicImage::ImageRgb16(p) => p
            .pixels()
            .flat_map(|p| convert(f64::from(p[0]) * 100.0 / 65535.0, f64::from(p[1] as i16) / 256.0, f64::from(p[2] as i16) / 256.0))
            .collect(),
        other => return Err(NormalizeError::new(format!("CIELab TIFF with {:?} samples is not supported", other.color()))),
    };
    Ok(DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, out).expect("3 bytes a pixel")))
}

/// The JPEG decoder fills a cut-off image with gray instead of failing, so
/// check for the end-of-image marker after the last scan. Inside scan data
/// every 0xFF is byte-stuffed, so FF D9 there can only be the real marker.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage};

    fn encode(img: &RgbImage, format: ImageFormat) -> Bytes {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        Bytes::from(out.into_inner())
    }

    #[test]
    fn decodes_and_thumbnails_within_bounds() {
        let img = RgbImage::from_fn(640, 320, |x, y| image::Rgb([(x % 255) as u8, (y % 255) as u8, 7]));
        let rows = normalize_image(encode(&img, ImageFormat::Png), "image/png", &Settings::default()).unwrap();
        let row = &rows[0];
        assert_eq!((row.width, row.height), (Some(640), Some(320)));
        let thumb = image::load_from_memory(row.thumbnail.as_ref().unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (256, 128));
        assert_eq!(row.mime_type, "image/png");
    }

    #[test]
    fn pixel_limit_refuses_bombs_from_the_header() {
        let img = RgbImage::new(200, 200);
        let s = Settings { max_image_pixels: 10_000, ..Default::default() };
        let err = normalize_image(encode(&img, ImageFormat::Png), "image/png", &s).unwrap_err();
        assert!(err.0.contains("decompression bomb"), "{err}");
    }

    #[test]
    fn truncated_image_is_corrupt() {
        let img = RgbImage::from_fn(300, 300, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let full = encode(&img, ImageFormat::Jpeg);
        let cut = full.slice(..full.len() / 3);
        let err = normalize_image(cut, "image/jpeg", &Settings::default()).map(|_| ()).unwrap_err();
        assert!(err.0.contains("truncated JPEG"), "{err}");
        assert!(normalize_image(full, "image/jpeg", &Settings::default()).is_ok());
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 40x20 JPEG with an EXIF APP1 segment saying "rotate 90 degrees" (orientation 6).
        let img = RgbImage::from_fn(40, 20, |x, _| image::Rgb([if x < 20 { 255 } else { 0 }, 0, 0]));
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let exif: &[u8] = &[
            0xFF, 0xE1, 0x00, 0x22, b'E', b'x', b'i', b'f', 0, 0, b'M', b'M', 0x00, 0x2A, 0x00, 0x00, 0x00, 0x08,
            0x00, 0x01, 0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00,
        ];
        let mut with_exif = jpeg[..2].to_vec();
        with_exif.extend_from_slice(exif);
        with_exif.extend_from_slice(&jpeg[2..]);
        let rows = normalize_image(Bytes::from(with_exif), "image/jpeg", &Settings::default()).unwrap();
        assert_eq!((rows[0].width, rows[0].height), (Some(20), Some(40)));
    }
}
