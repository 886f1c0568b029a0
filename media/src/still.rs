//! Images the `image` crate does not read (OpenEXR, JPEG 2000, Photoshop,
//! DPX, SGI, Sun Raster, XWD, PCX, QOI, and TIFF variants) through
//! FFmpeg's image decoders. FFmpeg is C code fed untrusted files: this runs
//! in the normalizer processes (see `sluice_worker::isolation`), from the file's
//! path, like video.
//!
//! No demuxer is opened: FFmpeg's probe names the format from the first
//! bytes, and the whole file goes as one packet to that format's decoder,
//! opened with `max_pixels` = `max_image_pixels`, so a header that claims
//! a huge picture is refused before anything is allocated for it (a
//! demuxer's stream probing would decode it without that limit).

use std::path::Path;

use bytes::Bytes;
use ff::codec::Id;
use ff::software::scaling::{Context as Scaler, Flags};
use ff::util::frame::video::Video as VideoFrame;
use ffmpeg_next as ff;
use serde_json::json;
use sluice_common::schema::Row;
use sluice_common::settings::{OcrMode, Settings};

use sluice_worker::normalize::NormalizeError;

/// The single-image formats (as FFmpeg's probes name them) whose decoders
/// may read files here. Each has a fixture in the tests (`tests/media.rs`).
pub const IMAGE_FORMAT_WHITELIST: &str =
    "tiff_pipe,exr_pipe,j2k_pipe,psd_pipe,dpx_pipe,sgi_pipe,sunrast_pipe,xwd_pipe,pcx_pipe,qoi_pipe";

/// The whitelisted image format a probe named, without its `_pipe`.
pub fn whitelisted_image(probed: &str) -> Option<&str> {
    let name = probed.split(',').find(|n| IMAGE_FORMAT_WHITELIST.split(',').any(|w| w == *n))?;
    Some(name.trim_end_matches("_pipe"))
}

/// The decoder of each whitelisted format.
fn codec(format: &str) -> Option<Id> {
    Some(match format {
        "tiff" => Id::TIFF,
        "exr" => Id::EXR,
        "j2k" => Id::JPEG2000,
        "psd" => Id::PSD,
        "dpx" => Id::DPX,
        "sgi" => Id::SGI,
        "sunrast" => Id::SUNRAST,
        "xwd" => Id::XWD,
        "pcx" => Id::PCX,
        "qoi" => Id::QOI,
        _ => return None,
    })
}

/// The MIME type of what a demuxer read.
pub fn mime(format: &str) -> &'static str {
    match format {
        "tiff" => "image/tiff",
        "exr" => "image/x-exr",
        "j2k" => "image/jp2",
        "psd" => "image/vnd.adobe.photoshop",
        "dpx" => "image/x-dpx",
        "sgi" => "image/x-sgi",
        "sunrast" => "image/x-sun-raster",
        "xwd" => "image/x-xwindowdump",
        "pcx" => "image/x-pcx",
        "qoi" => "image/qoi",
        _ => "application/octet-stream",
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> NormalizeError {
    NormalizeError::new(format!("FFmpeg's image decoders: {what}: {e}"))
}

/// One row for an image file FFmpeg decodes: its size, a thumbnail, the
/// original bytes. Refused above `max_image_pixels`, from the header.
pub fn normalize_still(path: &Path, settings: &Settings) -> Result<Vec<Row>, NormalizeError> {
    crate::media::init();
    let data = std::fs::read(path).map_err(|e| NormalizeError::new(format!("cannot read image: {e}")))?;
    let probed = crate::media::probe_format(&data[..data.len().min(64 << 10)]);
    let format = probed.as_deref().and_then(whitelisted_image).ok_or_else(|| {
        err("not an image they read", probed.as_deref().map_or("no format recognised".to_string(), |p| format!("read as {p}")))
    })?;
    let id = codec(format).expect("every whitelisted format has a decoder");
    let decoder = ff::decoder::find(id).ok_or_else(|| err("no decoder", format!("for {}", id.name())))?;
    let mut opts = ff::Dictionary::new();
    opts.set("max_pixels", &settings.max_image_pixels.min(i64::MAX as u64).to_string());
    // OpenEXR holds linear light: shown through the sRGB curve.
    if format == "exr" {
        opts.set("apply_trc", "iec61966_2_1");
    }
    let mut decoder = ff::codec::context::Context::new_with_codec(decoder)
        .decoder()
        .open_as_with(decoder, opts)
        .and_then(|d| d.video())
        .map_err(|e| err("no decoder", e))?;
    // The size check before any allocation answers EINVAL; damage in the
    // data answers otherwise (AVERROR_INVALIDDATA, mostly).
    let refused = |e: ff::Error| match e {
        ff::Error::Other { errno } if errno == libc::EINVAL => NormalizeError::new(format!(
            "the {format} image's header gives a size above the limit of {} pixels (max_image_pixels), or no valid size; refused before decoding",
            settings.max_image_pixels
        )),
        other => err(&format!("corrupt {format} image"), other),
    };
    decoder.send_packet(&ff::Packet::copy(&data)).map_err(refused)?;
    let _ = decoder.send_eof();
    let mut frame = VideoFrame::empty();
    decoder.receive_frame(&mut frame).map_err(refused)?;
    if frame.width() == 0 || frame.height() == 0 {
        return Err(err(&format!("corrupt {format} image"), "no picture decoded"));
    }
    let pixels = u64::from(frame.width()) * u64::from(frame.height());
    if pixels > settings.max_image_pixels {
        return Err(NormalizeError::new(format!(
            "image is {}x{} = {pixels} pixels, above the limit of {} (max_image_pixels)",
            frame.width(),
            frame.height(),
            settings.max_image_pixels
        )));
    }
    let codec_name = id.name().to_string();
    let (w, h) = (frame.width(), frame.height());
    let size = settings.thumbnail_size.max(1);
    let scale = f64::min(1.0, f64::from(size) / f64::from(w.max(h)));
    let (tw, th) = (((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1));
    let mut scaler = Scaler::get(frame.format(), w, h, ff::format::Pixel::RGB24, tw, th, Flags::AREA)
        .map_err(|e| err(&format!("cannot convert {:?} pixels", frame.format()), e))?;
    let mut rgb = VideoFrame::empty();
    scaler.run(&frame, &mut rgb).map_err(|e| err("cannot scale", e))?;
    let (stride, row) = (rgb.stride(0), tw as usize * 3);
    let mut thumb = Vec::with_capacity(row * th as usize);
    for y in 0..th as usize {
        thumb.extend_from_slice(&rgb.data(0)[y * stride..y * stride + row]);
    }
    let jpeg = sluice_worker::normalize::encode_pixels(&thumb, tw as usize, row, th as usize, turbojpeg::PixelFormat::RGB, 80)
        .ok_or_else(|| NormalizeError::new("thumbnail encoding failed"))?;
    let mut row = Row {
        chunk_index: 0,
        mime_type: mime(format).to_string(),
        width: Some(w),
        height: Some(h),
        thumbnail: Some(jpeg),
        metadata: Some(json!({
            "format": format,
            "codec": codec_name,
            "color": format!("{:?}", frame.format()).to_lowercase(),
            "decoder": "ffmpeg",
        })),
        data: Some(Bytes::from(data)),
        ..Default::default()
    };
    if settings.ocr == OcrMode::Always {
        let gray = Scaler::get(frame.format(), w, h, ff::format::Pixel::GRAY8, w, h, Flags::BILINEAR)
            .and_then(|mut s| {
                let mut out = VideoFrame::empty();
                s.run(&frame, &mut out).map(|()| out)
            })
            .map_err(|e| err("cannot convert to gray for OCR", e));
        let picture = gray.as_ref().map(|g| (g.data(0), w, h, g.stride(0))).map_err(Clone::clone);
        sluice_worker::normalize::ocr::read_into(&mut row, picture, sluice_worker::normalize::ocr::OCR_DPI, settings.ocr_languages());
    }
    Ok(vec![row])
}

