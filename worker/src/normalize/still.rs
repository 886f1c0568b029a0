//! Images the `image` crate does not read (OpenEXR, JPEG 2000, Photoshop,
//! DPX, SGI, Sun Raster, XWD, PCX, QOI, and TIFF variants) through
//! FFmpeg's image decoders. FFmpeg is C code fed untrusted files: this runs
//! in the normalizer processes (see `crate::isolation`), from the file's
//! path, like video.

use std::path::Path;

use bytes::Bytes;
use ffmpeg_next as ff;
use ff::media::Type as Medium;
use ff::software::scaling::{Context as Scaler, Flags};
use ff::util::frame::video::Video as VideoFrame;
use serde_json::json;
use sluice_common::schema::Row;
use sluice_common::settings::{OcrMode, Settings};

use super::NormalizeError;

/// The single-image demuxers FFmpeg may use here, each judging a file by
/// its content; never `image2`, whose file name patterns open other files.
/// Each has a fixture in the tests (`tests/media.rs`).
pub const IMAGE_FORMAT_WHITELIST: &str =
    "tiff_pipe,exr_pipe,j2k_pipe,psd_pipe,dpx_pipe,sgi_pipe,sunrast_pipe,xwd_pipe,pcx_pipe,qoi_pipe";

/// The whitelisted image demuxer a probe named, without its `_pipe`.
pub fn whitelisted_image(probed: &str) -> Option<&str> {
    let name = probed.split(',').find(|n| IMAGE_FORMAT_WHITELIST.split(',').any(|w| w == *n))?;
    Some(name.trim_end_matches("_pipe"))
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
    super::media::init();
    let mut opts = ff::Dictionary::new();
    opts.set("protocol_whitelist", "file");
    opts.set("format_whitelist", IMAGE_FORMAT_WHITELIST);
    let mut ictx = ff::format::input_with_dictionary(&path, opts).map_err(|e| err("not an image they read", e))?;
    let format = ictx.format().name().trim_end_matches("_pipe").to_string();
    let stream = ictx.streams().best(Medium::Video).ok_or_else(|| err("no picture", format!("the {format} file holds none")))?;
    let index = stream.index();
    let context = ff::codec::context::Context::from_parameters(stream.parameters()).map_err(|e| err("no decoder", e))?;
    let mut dopts = ff::Dictionary::new();
    // OpenEXR holds linear light: shown through the sRGB curve.
    if format == "exr" {
        dopts.set("apply_trc", "iec61966_2_1");
    }
    let id = stream.parameters().id();
    let codec = ff::decoder::find(id).ok_or_else(|| err("no decoder", format!("for {}", id.name())))?;
    let mut decoder = context.decoder().open_as_with(codec, dopts).and_then(|d| d.video()).map_err(|e| err("no decoder", e))?;
    let codec = decoder.id().name().to_string();
    let (w, h) = (decoder.width(), decoder.height());
    let pixels = u64::from(w) * u64::from(h);
    if pixels > settings.max_image_pixels {
        return Err(NormalizeError::new(format!(
            "image is {w}x{h} = {pixels} pixels, above the limit of {} (max_image_pixels); refused as a possible decompression bomb",
            settings.max_image_pixels
        )));
    }
    let mut frame = VideoFrame::empty();
    let mut got = false;
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        decoder.send_packet(&packet).map_err(|e| err(&format!("corrupt {format} image"), e))?;
        if decoder.receive_frame(&mut frame).is_ok() {
            got = true;
            break;
        }
    }
    if !got {
        let _ = decoder.send_eof();
        got = decoder.receive_frame(&mut frame).is_ok();
    }
    if !got || frame.width() == 0 || frame.height() == 0 {
        return Err(err(&format!("corrupt {format} image"), "no picture decoded"));
    }
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
    let jpeg = super::encode_pixels(&thumb, tw as usize, row, th as usize, turbojpeg::PixelFormat::RGB, 80)
        .ok_or_else(|| NormalizeError::new("thumbnail encoding failed"))?;
    let data = std::fs::read(path).map_err(|e| NormalizeError::new(format!("cannot read image: {e}")))?;
    let mut row = Row {
        chunk_index: 0,
        mime_type: mime(&format).to_string(),
        width: Some(w),
        height: Some(h),
        thumbnail: Some(jpeg),
        metadata: Some(json!({
            "format": format,
            "codec": codec,
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
        super::ocr::read_into(&mut row, picture, super::ocr::OCR_DPI, settings.ocr_languages());
    }
    Ok(vec![row])
}

/// An image file from its path (in a normalizer process): the `image`
/// crate first, then FFmpeg's image decoders; both reasons if neither
/// reads it.
pub fn normalize_image_file(path: &Path, settings: &Settings) -> Result<Vec<Row>, NormalizeError> {
    let bytes = Bytes::from(std::fs::read(path).map_err(|e| NormalizeError::new(format!("cannot read image: {e}")))?);
    match super::normalize_image(bytes.clone(), "", settings) {
        Ok(rows) => Ok(rows),
        Err(first) if super::worth_another_decoder(&bytes) => {
            normalize_still(path, settings).map_err(|second| NormalizeError::new(format!("{first}; {second}")))
        }
        Err(first) => Err(first),
    }
}
