//! Video: split into independently playable segments of about
//! `segment_seconds`, cut at keyframes, by stream copy (no re-encode), each
//! with a JPEG thumbnail of its first frame.
//!
//! Untrusted input is opened with a protocol and format whitelist. A file is
//! validated completely before any of its rows are emitted: segments are
//! muxed into memory (FFmpeg writes through a custom AVIO context, no file
//! in between), and only once the last packet has been read (and the file is
//! not truncated) are they handed out. What a file holds meanwhile is
//! bounded: past [`held_limit`] bytes, finished segments wait in a temporary
//! file instead, so a long video costs disk, not memory.

use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Once};

use bytes::Bytes;
use ffmpeg_next as ff;
use ff::codec::Id;
use ff::format::context::{Input, Output, StreamIo};
use ff::media::Type as Medium;
use ff::software::scaling::{Context as Scaler, Flags};
use ff::util::frame::video::Video as VideoFrame;
use ff::{Packet, Rational};
use image::RgbImage;
use serde_json::{json, Value};
use sluice_common::schema::Row;
use sluice_common::settings::Settings;

use super::NormalizeError;

/// Demuxers untrusted files may use; nothing else is probed. Containers
/// and raw streams of regular files, never protocols, devices or playlists
/// (which open other files or URLs). Each has a fixture in the tests
/// (`tests/media.rs`).
pub const FORMAT_WHITELIST: &str =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,mpeg,mpegvideo,m4v,ogg,asf,nut,mxf,dv,h264,hevc";

/// The whitelisted demuxer FFmpeg takes these first bytes of a file for,
/// from its content alone (raw H.264/HEVC, MXF, NUT, DV, ASF, MPEG
/// streams: the formats without magic other tools know). Only a probe
/// more than a quarter sure counts.
pub fn sniff_container(head: &[u8]) -> Option<String> {
    use std::ffi::{c_int, CStr};
    init();
    let padding = ff::ffi::AVPROBE_PADDING_SIZE as usize;
    let mut buf = Vec::with_capacity(head.len() + padding);
    buf.extend_from_slice(head);
    buf.resize(head.len() + padding, 0);
    #[allow(unsafe_code)]
    // SAFETY: the probe data points at `buf`, which outlives the call and
    // holds the zeroed padding FFmpeg's probes may read past `buf_size`; an
    // empty file name and no MIME type make it judge by content alone. The
    // format it returns is static and its name a C string.
    let name = unsafe {
        let mut pd: ff::ffi::AVProbeData = std::mem::zeroed();
        pd.filename = c"".as_ptr();
        pd.buf = buf.as_mut_ptr();
        pd.buf_size = c_int::try_from(head.len()).ok()?;
        let mut score = (ff::ffi::AVPROBE_SCORE_MAX / 4) as c_int;
        let format = ff::ffi::av_probe_input_format2(&pd, 1, &mut score);
        if format.is_null() || (*format).name.is_null() {
            return None;
        }
        CStr::from_ptr((*format).name).to_str().ok()?.to_string()
    };
    name.split(',').find(|n| FORMAT_WHITELIST.split(',').any(|w| w == *n)).map(str::to_string)
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

fn err(what: &str, e: impl std::fmt::Display) -> NormalizeError {
    NormalizeError::new(format!("{what}: {e}"))
}

/// Container for stream-copied segments, by codec.
fn container(video: Id, audio: Option<Id>) -> (&'static str, &'static str, &'static str) {
    let mp4_video = matches!(video, Id::H264 | Id::HEVC | Id::MPEG4 | Id::AV1);
    let mp4_audio = matches!(audio, None | Some(Id::AAC) | Some(Id::MP3) | Some(Id::AC3));
    let webm_video = matches!(video, Id::VP8 | Id::VP9 | Id::AV1);
    let webm_audio = matches!(audio, None | Some(Id::OPUS) | Some(Id::VORBIS));
    if mp4_video && mp4_audio {
        ("mp4", "mp4", "video/mp4")
    } else if webm_video && webm_audio {
        ("webm", "webm", "video/webm")
    } else {
        ("matroska", "mkv", "video/x-matroska")
    }
}

/// Clockwise rotation in degrees from the stream's display matrix, if any.
#[allow(unsafe_code)]
fn rotation(stream: &ff::format::stream::Stream) -> i32 {
    for side in stream.side_data() {
        if side.kind() == ff::codec::packet::side_data::Type::DisplayMatrix && side.data().len() >= 36 {
            // SAFETY: a display matrix is nine i32 values; the length is checked above.
            let theta = unsafe { ff::ffi::av_display_rotation_get(side.data().as_ptr() as *const i32) };
            if theta.is_finite() {
                return (-theta.round() as i32).rem_euclid(360);
            }
        }
    }
    0
}

/// Bytes FFmpeg's muxer writes (and seeks in, to patch headers), shared
/// with the segment that takes them once the muxer is done.
#[derive(Clone)]
struct SharedBuf(Arc<parking_lot::Mutex<Cursor<Vec<u8>>>>);

impl SharedBuf {
    fn with_capacity(n: usize) -> Self {
        Self(Arc::new(parking_lot::Mutex::new(Cursor::new(Vec::with_capacity(n)))))
    }
    fn take(&self) -> Vec<u8> {
        std::mem::take(self.0.lock().get_mut())
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for SharedBuf {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.0.lock().seek(pos)
    }
}

/// Most bytes of finished segments one file keeps in memory while it is
/// validated: half of the row budget's share of one normalizer. Past it,
/// segments wait in a temporary file.
fn held_limit(settings: &Settings) -> u64 {
    settings.memory_budget_bytes / u64::from(settings.normalization_workers.max(1)) / 2
}

/// Finished segments of one file, in memory up to a limit, then spilled to
/// one temporary file.
struct Held {
    limit: u64,
    in_memory: u64,
    spill: Option<std::fs::File>,
    spilled_at: u64,
}

/// Where one finished segment's bytes wait.
enum Waiting {
    Memory(Vec<u8>),
    /// Offset and length in the spill file.
    Spilled(u64, u64),
}

impl Held {
    fn keep(&mut self, bytes: Vec<u8>) -> Result<Waiting, NormalizeError> {
        let len = bytes.len() as u64;
        if self.spill.is_none() && self.in_memory + len <= self.limit {
            self.in_memory += len;
            return Ok(Waiting::Memory(bytes));
        }
        if self.spill.is_none() {
            self.spill = Some(tempfile::tempfile().map_err(|e| err("no temporary space", e))?);
        }
        let file = self.spill.as_mut().expect("just made");
        file.write_all(&bytes).map_err(|e| err("cannot hold segment", e))?;
        let at = self.spilled_at;
        self.spilled_at += len;
        Ok(Waiting::Spilled(at, len))
    }

    fn take(&self, b: Waiting) -> Result<Vec<u8>, NormalizeError> {
        match b {
            Waiting::Memory(v) => Ok(v),
            Waiting::Spilled(at, len) => {
                use std::os::unix::fs::FileExt;
                let mut v = vec![0; len as usize];
                let file = self.spill.as_ref().expect("spilled");
                file.read_exact_at(&mut v, at).map_err(|e| err("cannot read back segment", e))?;
                Ok(v)
            }
        }
    }
}

/// One segment being written.
struct Segment {
    index: u32,
    buf: SharedBuf,
    octx: Output,
    /// Input stream index -> output stream index.
    map: Vec<Option<usize>>,
    start: f64,
    offset: Vec<i64>,
    thumbnail: Option<Vec<u8>>,
}

/// A finished segment waiting to be emitted.
struct Done {
    index: u32,
    bytes: Waiting,
    start: f64,
    end: f64,
    thumbnail: Option<Vec<u8>>,
}

struct Job {
    ictx: Input,
    video: usize,
    audio: Option<usize>,
    tbs: Vec<Rational>,
    muxer: &'static str,
    /// Expected bytes of one segment, to size its buffer.
    segment_bytes: usize,
    decoder: ff::decoder::Video,
    /// Made for the first thumbnail, kept for the file's others (frames of
    /// one stream share their size and format).
    scaler: Option<Scaler>,
    rotation: i32,
    thumb: u32,
}

impl Job {
    /// `start` is relative to the file's first keyframe; `cut` is the input
    /// time of the segment's first keyframe, subtracted from every packet.
    fn open_segment(&mut self, index: u32, start: f64, cut: f64) -> Result<Segment, NormalizeError> {
        let buf = SharedBuf::with_capacity(self.segment_bytes);
        let io = StreamIo::from_write_seek_with_capacity(buf.clone(), 256 * 1024).map_err(|e| err("cannot create segment", e))?;
        let mut octx = ff::format::output_to_stream(io, None, Some(self.muxer)).map_err(|e| err("cannot create segment", e))?;
        let mut map = vec![None; self.tbs.len()];
        for (n, ist_index) in std::iter::once(self.video).chain(self.audio).enumerate() {
            let ist = self.ictx.stream(ist_index).expect("stream exists");
            let mut ost = octx.add_stream(ff::encoder::find(Id::None)).map_err(|e| err("cannot add stream", e))?;
            ost.set_parameters(ist.parameters());
            #[allow(unsafe_code)]
            // SAFETY: the parameters belong to the stream just added; a zero tag lets the muxer pick its own.
            unsafe {
                (*ost.parameters().as_mut_ptr()).codec_tag = 0;
            }
            map[ist_index] = Some(n);
        }
        let mut opts = ff::Dictionary::new();
        opts.set("avoid_negative_ts", "make_zero");
        octx.write_header_with(opts).map_err(|e| err("cannot start segment", e))?;
        let offset = self.tbs.iter().map(|tb| (cut / f64::from(*tb)).round() as i64).collect();
        Ok(Segment { index, buf, octx, map, start, offset, thumbnail: None })
    }

    /// First decodable frame of a keyframe packet, as a JPEG thumbnail.
    fn thumbnail(&mut self, packet: &Packet) -> Option<Vec<u8>> {
        self.decoder.send_packet(packet).ok()?;
        let _ = self.decoder.send_eof();
        let mut frame = VideoFrame::empty();
        let got = self.decoder.receive_frame(&mut frame).is_ok();
        self.decoder.flush();
        if !got || frame.width() == 0 || frame.height() == 0 {
            return None;
        }
        let (w, h) = (frame.width(), frame.height());
        let scale = f64::from(self.thumb) / f64::from(w.max(h));
        let (tw, th) = if scale < 1.0 {
            (((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1))
        } else {
            (w, h)
        };
        let fits = |s: &Scaler| s.input().format == frame.format() && (s.input().width, s.input().height) == (w, h);
        if !self.scaler.as_ref().is_some_and(fits) {
            self.scaler = Some(Scaler::get(frame.format(), w, h, ff::format::Pixel::RGB24, tw, th, Flags::BILINEAR).ok()?);
        }
        let scaler = self.scaler.as_mut()?;
        let mut rgb = VideoFrame::empty();
        scaler.run(&frame, &mut rgb).ok()?;
        let stride = rgb.stride(0);
        let row = tw as usize * 3;
        let mut pixels = Vec::with_capacity(row * th as usize);
        for y in 0..th as usize {
            pixels.extend_from_slice(&rgb.data(0)[y * stride..y * stride + row]);
        }
        let mut img = image::DynamicImage::ImageRgb8(RgbImage::from_raw(tw, th, pixels)?);
        img = match self.rotation {
            90 => img.rotate90(),
            180 => img.rotate180(),
            270 => img.rotate270(),
            _ => img,
        };
        super::encode_jpeg(&img.to_rgb8(), 80)
    }
}

fn close(mut seg: Segment, end: f64, held: &mut Held) -> Result<Done, NormalizeError> {
    seg.octx.write_trailer().map_err(|e| err("cannot finish segment", e))?;
    // Dropping the context flushes what its I/O buffer still holds.
    drop(seg.octx);
    let bytes = held.keep(seg.buf.take())?;
    Ok(Done { index: seg.index, bytes, start: seg.start, end, thumbnail: seg.thumbnail })
}

/// Split a video file into segment rows. `emit` receives rows one segment at
/// a time, and only after the whole file proved readable.
pub fn normalize_video(
    path: &Path,
    settings: &Settings,
    emit: &mut dyn FnMut(Vec<Row>) -> Result<(), NormalizeError>,
) -> Result<(), NormalizeError> {
    init();
    let mut opts = ff::Dictionary::new();
    opts.set("protocol_whitelist", "file");
    opts.set("format_whitelist", FORMAT_WHITELIST);
    // Raw streams (H.264, HEVC, MPEG video) carry no timestamps of their own.
    opts.set("fflags", "+genpts");
    let ictx = ff::format::input_with_dictionary(&path, opts).map_err(|e| err("cannot open video", e))?;

    let header_duration = (ictx.duration() > 0).then(|| ictx.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE));
    if let Some(d) = header_duration {
        if d > f64::from(settings.max_video_seconds) {
            return Err(NormalizeError::new(format!(
                "video is {d:.0}s long, above the limit of {}s (max_video_seconds)",
                settings.max_video_seconds
            )));
        }
    }
    let vstream = ictx.streams().best(Medium::Video).ok_or_else(|| NormalizeError::new("no video stream"))?;
    let video = vstream.index();
    let audio = ictx.streams().best(Medium::Audio).map(|s| s.index());
    let vpar = vstream.parameters();
    let video_codec = vpar.id();
    let audio_codec = audio.map(|a| ictx.stream(a).expect("exists").parameters().id());
    let decoder = ff::codec::context::Context::from_parameters(vpar)
        .and_then(|c| {
            let mut d = c.decoder();
            // It decodes one keyframe a segment for a thumbnail of a few
            // hundred pixels: the deblocking filter would not show.
            d.skip_loop_filter(ff::Discard::All);
            d.video()
        })
        .map_err(|e| err("no decoder for the video stream", e))?;
    let (width, height) = (decoder.width(), decoder.height());
    let header_frames = vstream.frames();
    let rate = vstream.avg_frame_rate();
    // A raw stream has no average rate; its demuxer assumes one (25 fps).
    let rate = if rate.denominator() != 0 && rate.numerator() != 0 { rate } else { vstream.rate() };
    let fps = if rate.denominator() != 0 { f64::from(rate) } else { 0.0 };
    let format_name = job_format_name(&ictx);
    let rot = rotation(&vstream);
    let (muxer, ext, mime) = container(video_codec, audio_codec);
    let tbs: Vec<Rational> = ictx.streams().map(|s| s.time_base()).collect();
    let bit_rate = ictx.bit_rate();
    // A segment's size from the bit rate, with room for the container; at
    // most 64 MiB up front (the buffer grows past it if it must).
    let segment_bytes = ((bit_rate.max(0) as f64 / 8.0 * (settings.segment_seconds + 2.0) * 1.05) as usize).min(64 << 20);

    let mut held = Held { limit: held_limit(settings), in_memory: 0, spill: None, spilled_at: 0 };
    let mut job = Job {
        ictx,
        video,
        audio,
        tbs,
        muxer,
        segment_bytes,
        decoder,
        scaler: None,
        rotation: rot,
        thumb: settings.thumbnail_size,
    };

    let segment_seconds = settings.segment_seconds;
    let mut done: Vec<Done> = Vec::new();
    let mut current: Option<Segment> = None;
    let mut origin: Option<f64> = None;
    let mut last_end = 0.0f64;
    let (mut untimed, mut untimed_thumbnail) = (0u64, None);
    loop {
        let mut packet = Packet::empty();
        match packet.read(&mut job.ictx) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(e) => return Err(err(&format!("read error after {last_end:.2}s"), e)),
        }
        let index = packet.stream();
        let tb = job.tbs[index];
        let Some(ts) = packet.pts().or(packet.dts()) else {
            // Raw H.264/HEVC streams carry no timestamps: counted, and the
            // first keyframe kept for a thumbnail, in case none has any.
            if index == video {
                untimed += 1;
                if untimed_thumbnail.is_none() && packet.is_key() {
                    untimed_thumbnail = job.thumbnail(&packet);
                }
            }
            continue;
        };
        let t = ts as f64 * f64::from(tb);
        if index == video {
            let end = t + packet.duration().max(0) as f64 * f64::from(tb);
            if packet.is_key() {
                let origin = *origin.get_or_insert(t);
                let rel = t - origin;
                let cut = current.as_ref().is_none_or(|s| rel >= s.start - 1e-9 + segment_seconds);
                if cut {
                    let next = done.len() as u32 + u32::from(current.is_some());
                    if let Some(seg) = current.take() {
                        done.push(close(seg, rel, &mut held)?);
                    }
                    let mut seg = job.open_segment(next, rel, t)?;
                    seg.thumbnail = job.thumbnail(&packet);
                    current = Some(seg);
                }
            }
            if let Some(o) = origin {
                last_end = last_end.max(end - o);
            }
        }
        let Some(seg) = current.as_mut() else { continue };
        let Some(out_index) = seg.map[index] else { continue };
        let offset = seg.offset[index];
        if let Some(p) = packet.pts() {
            packet.set_pts(Some(p - offset));
        }
        if let Some(d) = packet.dts() {
            packet.set_dts(Some(d - offset));
        }
        let ost_tb = seg.octx.stream(out_index).expect("mapped").time_base();
        packet.rescale_ts(tb, ost_tb);
        packet.set_position(-1);
        packet.set_stream(out_index);
        packet.write_interleaved(&mut seg.octx).map_err(|e| err("cannot write segment", e))?;
    }
    if current.is_none() && untimed > 0 {
        if untimed_thumbnail.is_none() {
            return Err(NormalizeError::new(format!("no decodable video: the {format_name} stream's first keyframe does not decode")));
        }
        let whole = Whole { format: &format_name, frames: untimed, fps, codec: video_codec, width, height, thumbnail: untimed_thumbnail };
        return store_whole(path, whole, settings, emit);
    }
    let Some(seg) = current.take() else {
        return Err(NormalizeError::new("no decodable video: no keyframe found"));
    };
    done.push(close(seg, last_end, &mut held)?);

    // What the headers promise: the container's duration, and the video
    // stream's frame count (AVI: when the index at the end is cut off,
    // FFmpeg derives the duration from the data it has, but the stream
    // header still says how many frames there were).
    let promised_by_frames = (header_frames > 0 && fps > 0.0).then(|| header_frames as f64 / fps);
    let promised = header_duration.into_iter().chain(promised_by_frames).fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
    if let Some(d) = promised {
        if last_end + (0.02 * d).max(1.0) < d {
            return Err(NormalizeError::new(format!(
                "truncated video: data ends at {last_end:.2}s but the header says {d:.2}s"
            )));
        }
    }

    let file_meta = json!({
        "duration": header_duration.unwrap_or(last_end),
        "fps": fps,
        "video_codec": video_codec.name(),
        "audio_codec": audio_codec.map(|a| a.name()),
        "width": width,
        "height": height,
        "rotation": rot,
        "bit_rate": bit_rate,
        "has_audio": audio.is_some(),
        "segments": done.len(),
        "container": ext,
    });
    let (w, h) = if rot == 90 || rot == 270 { (height, width) } else { (width, height) };
    for seg in done {
        let bytes = held.take(seg.bytes)?;
        let mut meta: Value = file_meta.clone();
        meta["segment"] = json!(seg.index);
        emit(vec![Row {
            chunk_index: seg.index,
            mime_type: mime.to_string(),
            start_seconds: Some(seg.start),
            end_seconds: Some(seg.end),
            data: Some(Bytes::from(bytes)),
            thumbnail: seg.thumbnail,
            width: Some(w),
            height: Some(h),
            metadata: Some(meta),
            ..Default::default()
        }])?;
    }
    Ok(())
}

fn job_format_name(ictx: &ff::format::context::Input) -> String {
    ictx.format().name().split(',').next().unwrap_or_default().to_string()
}

/// A video stream without timestamps, to be stored whole.
struct Whole<'a> {
    format: &'a str,
    frames: u64,
    fps: f64,
    codec: Id,
    width: u32,
    height: u32,
    thumbnail: Option<Vec<u8>>,
}

/// A raw video stream (no container, no timestamps) cannot be cut into
/// segments by stream copy: the file is stored whole as one row, which
/// players read as it is, with what the stream says of itself. Only up to
/// the bytes one file may hold in memory.
fn store_whole(
    path: &Path,
    whole: Whole<'_>,
    settings: &Settings,
    emit: &mut dyn FnMut(Vec<Row>) -> Result<(), NormalizeError>,
) -> Result<(), NormalizeError> {
    let size = std::fs::metadata(path).map_err(|e| err("cannot read video", e))?.len();
    let limit = held_limit(settings);
    if size > limit {
        return Err(NormalizeError::new(format!(
            "raw {} stream without timestamps: it cannot be cut into segments, and at {size} bytes it is above the {limit} bytes one file may hold to be stored whole",
            whole.format
        )));
    }
    let duration = if whole.fps > 0.0 { whole.frames as f64 / whole.fps } else { 0.0 };
    if duration > f64::from(settings.max_video_seconds) {
        return Err(NormalizeError::new(format!(
            "video is {duration:.0}s long, above the limit of {}s (max_video_seconds)",
            settings.max_video_seconds
        )));
    }
    let data = std::fs::read(path).map_err(|e| err("cannot read video", e))?;
    let mime = match whole.format {
        "h264" => "video/h264",
        "hevc" => "video/h265",
        _ => "application/octet-stream",
    };
    let meta = json!({
        "duration": duration,
        "fps": whole.fps,
        "frames": whole.frames,
        "video_codec": whole.codec.name(),
        "audio_codec": null,
        "width": whole.width,
        "height": whole.height,
        "has_audio": false,
        "segments": 1,
        "segment": 0,
        "container": whole.format,
        "stored_whole": true,
    });
    emit(vec![Row {
        chunk_index: 0,
        mime_type: mime.to_string(),
        start_seconds: Some(0.0),
        end_seconds: Some(duration),
        data: Some(Bytes::from(data)),
        thumbnail: whole.thumbnail,
        width: Some(whole.width),
        height: Some(whole.height),
        metadata: Some(meta),
        ..Default::default()
    }])
}

/// Benchmark baseline: the plainest ffmpeg-next remux (every stream copied
/// to one output file, no segmenting, hashing or thumbnails). Returns the
/// input size in bytes.
pub fn bare_remux(input: &Path, output: &Path) -> Result<u64, NormalizeError> {
    init();
    let mut ictx = ff::format::input(&input).map_err(|e| err("open", e))?;
    let mut octx = ff::format::output(&output).map_err(|e| err("create", e))?;
    let mut map = Vec::new();
    for ist in ictx.streams() {
        let mut ost = octx.add_stream(ff::encoder::find(Id::None)).map_err(|e| err("stream", e))?;
        ost.set_parameters(ist.parameters());
        #[allow(unsafe_code)]
        // SAFETY: the parameters belong to the stream just added.
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
        map.push(ist.time_base());
    }
    octx.write_header().map_err(|e| err("header", e))?;
    loop {
        let mut packet = Packet::empty();
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(e) => return Err(err("read", e)),
        }
        let i = packet.stream();
        let ost_tb = octx.stream(i).expect("mapped").time_base();
        packet.rescale_ts(map[i], ost_tb);
        packet.set_position(-1);
        packet.write_interleaved(&mut octx).map_err(|e| err("write", e))?;
    }
    octx.write_trailer().map_err(|e| err("trailer", e))?;
    Ok(std::fs::metadata(input).map_err(|e| err("stat", e))?.len())
}
