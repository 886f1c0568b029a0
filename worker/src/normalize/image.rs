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
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| NormalizeError::new(format!("unreadable image: {e}")))?;
    if reader.format().is_none() {
        return Err(NormalizeError::new("not a decodable image: unrecognised image format"));
    }
    Ok(reader)
}

pub fn normalize_image(bytes: Bytes, mime: &str, settings: &Settings) -> Result<Vec<Row>, NormalizeError> {
    let format = reader(&bytes)?.format().expect("checked");
    let (w, h) = reader(&bytes)?
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
    let mut r = reader(&bytes)?;
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
    Ok(vec![Row {
        chunk_index: 0,
        mime_type: if mime.is_empty() { "application/octet-stream".into() } else { mime.to_string() },
        width: Some(img.width()),
        height: Some(img.height()),
        thumbnail: Some(jpeg),
        metadata: Some(json!({
            "format": format!("{format:?}").to_lowercase(),
            "color": format!("{:?}", img.color()),
            "orientation": format!("{orientation:?}"),
            "stored_width": w,
            "stored_height": h,
        })),
        data: Some(bytes),
        ..Default::default()
    }])
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
