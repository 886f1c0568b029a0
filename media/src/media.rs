//! Video and audio: split into independently playable segments of about
//! `segment_seconds`, cut at keyframes, by stream copy (no re-encode). A
//! video segment has a JPEG thumbnail of its first frame; an audio segment
//! the file's cover art, if it has any.
//!
//! Untrusted input is opened with a protocol and format whitelist. A file is
//! validated completely before any of its rows are emitted: each segment is
//! muxed into a memfd of its own (FFmpeg writes through a custom AVIO
//! context, no file on disk in between), and only once the last packet has
//! been read (and the file is not truncated) are they handed out, the memfd
//! sealed and passed on as it is (a normalizer process hands it to the
//! worker by descriptor: the muxer's bytes are not copied again). What a
//! file holds meanwhile is bounded: past [`held_limit`] bytes, finished
//! segments wait in a temporary file instead, so a long video costs disk,
//! not memory (they are read back into a memfd each as they go out, and
//! handed over the same way).

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Once;

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
use sluice_common::schema::{Kind, Row};
use sluice_common::settings::Settings;

use sluice_worker::normalize::{NormalizeError, Piece};

/// Demuxers untrusted files may use; nothing else is probed. Containers
/// and raw streams of regular files, never protocols, devices or playlists
/// (which open other files or URLs). Each has a fixture in the tests
/// (`tests/media.rs`).
pub const FORMAT_WHITELIST: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,mpeg,mpegvideo,m4v,ogg,asf,nut,mxf,dv,h264,hevc,\
     mp3,aac,flac,wav,aiff,ac3";

/// The whitelisted demuxers of audio-only files; a file of one of them is
/// taken for audio until its streams are seen.
const AUDIO_FORMATS: &[&str] = &["mp3", "aac", "flac", "wav", "aiff", "ac3"];

/// The demuxer FFmpeg takes these first bytes of a file for, from its
/// content alone, if a probe is more than a quarter sure (its names, comma
/// separated).
pub fn probe_format(head: &[u8]) -> Option<String> {
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
    unsafe {
        let mut pd: ff::ffi::AVProbeData = std::mem::zeroed();
        pd.filename = c"".as_ptr();
        pd.buf = buf.as_mut_ptr();
        pd.buf_size = c_int::try_from(head.len()).ok()?;
        let mut score = (ff::ffi::AVPROBE_SCORE_MAX / 4) as c_int;
        let format = ff::ffi::av_probe_input_format2(&pd, 1, &mut score);
        if format.is_null() || (*format).name.is_null() {
            return None;
        }
        Some(CStr::from_ptr((*format).name).to_str().ok()?.to_string())
    }
}

/// The whitelisted demuxer a probe named (raw H.264/HEVC, MXF, NUT, DV,
/// ASF, MPEG streams, MP3 without an ID3 tag: the formats without magic
/// other tools know), and whether that is video or audio.
pub fn whitelisted_container(probed: &str) -> Option<(Kind, String)> {
    let name = probed.split(',').find(|n| FORMAT_WHITELIST.split(',').any(|w| w.trim() == *n))?;
    let kind = if AUDIO_FORMATS.contains(&name) { Kind::Audio } else { Kind::Video };
    Some((kind, name.to_string()))
}

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

fn err(what: &str, e: impl std::fmt::Display) -> NormalizeError {
    NormalizeError::new(format!("{what}: {e}"))
}

/// The muxer, file extension and MIME type of stream-copied segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Container {
    muxer: &'static str,
    ext: &'static str,
    mime: &'static str,
}

const MATROSKA_VIDEO: Container = Container { muxer: "matroska", ext: "mkv", mime: "video/x-matroska" };
const MATROSKA_AUDIO: Container = Container { muxer: "matroska", ext: "mka", mime: "audio/x-matroska" };

/// Container for stream-copied video segments, by codec: MP4 or WebM where
/// both codecs fit, else Matroska.
fn video_container(video: Id, audio: Option<Id>) -> Container {
    let mp4_video = matches!(video, Id::H264 | Id::HEVC | Id::MPEG4 | Id::AV1);
    let mp4_audio = matches!(audio, None | Some(Id::AAC) | Some(Id::MP3) | Some(Id::AC3));
    let webm_video = matches!(video, Id::VP8 | Id::VP9 | Id::AV1);
    let webm_audio = matches!(audio, None | Some(Id::OPUS) | Some(Id::VORBIS));
    if mp4_video && mp4_audio {
        Container { muxer: "mp4", ext: "mp4", mime: "video/mp4" }
    } else if webm_video && webm_audio {
        Container { muxer: "webm", ext: "webm", mime: "video/webm" }
    } else {
        MATROSKA_VIDEO
    }
}

/// Container for stream-copied audio segments: the codec's usual file,
/// else Matroska (which takes nearly every codec).
fn audio_container(audio: Id) -> Container {
    match audio {
        Id::AAC | Id::ALAC => Container { muxer: "ipod", ext: "m4a", mime: "audio/mp4" },
        Id::MP3 => Container { muxer: "mp3", ext: "mp3", mime: "audio/mpeg" },
        Id::OPUS | Id::VORBIS => Container { muxer: "ogg", ext: "ogg", mime: "audio/ogg" },
        Id::FLAC => Container { muxer: "flac", ext: "flac", mime: "audio/flac" },
        Id::AC3 => Container { muxer: "ac3", ext: "ac3", mime: "audio/ac3" },
        // WAVE takes little-endian PCM; the rest falls back to Matroska.
        id if id.name().starts_with("pcm_") => Container { muxer: "wav", ext: "wav", mime: "audio/wav" },
        _ => MATROSKA_AUDIO,
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

/// Most bytes of finished segments one file keeps in memory while it is
/// validated: half of the row budget's share of one normalizer. Past it,
/// segments wait in a temporary file.
fn held_limit(settings: &Settings) -> u64 {
    settings.memory_budget_bytes / u64::from(settings.normalization_workers.max(1)) / 2
}

/// Most finished segments one file keeps in memory, each in a memfd (a
/// descriptor) of its own: a long file of a low bit rate would otherwise
/// hold hundreds of descriptors within the byte limit (1,024 is a common
/// limit for a process).
const HELD_MEMFDS: usize = 128;

/// Finished segments of one file, in memory up to a limit (of bytes and of
/// [`HELD_MEMFDS`] segments), then spilled to one temporary file.
struct Held {
    limit: u64,
    in_memory: u64,
    memfds: usize,
    spill: Option<std::fs::File>,
    spilled_at: u64,
}

/// Where one finished segment's bytes wait.
enum Waiting {
    /// In the memfd it was muxed into, of this many bytes.
    Memory(std::fs::File, u64),
    /// Offset and length in the spill file.
    Spilled(u64, u64),
}

impl Held {
    fn keep(&mut self, memfd: std::fs::File, len: u64) -> Result<Waiting, NormalizeError> {
        if self.spill.is_none() && self.in_memory + len <= self.limit && self.memfds < HELD_MEMFDS {
            self.in_memory += len;
            self.memfds += 1;
            return Ok(Waiting::Memory(memfd, len));
        }
        if self.spill.is_none() {
            self.spill = Some(tempfile::tempfile().map_err(|e| err("no temporary space", e))?);
        }
        let file = self.spill.as_mut().expect("just made");
        let mut from = memfd;
        from.seek(SeekFrom::Start(0)).map_err(|e| err("cannot hold segment", e))?;
        let copied = std::io::copy(&mut from, file).map_err(|e| err("cannot hold segment", e))?;
        if copied != len {
            return Err(NormalizeError::new(format!("cannot hold segment: {copied} of its {len} bytes spilled")));
        }
        let at = self.spilled_at;
        self.spilled_at += len;
        Ok(Waiting::Spilled(at, len))
    }

    /// A finished segment's bytes in a memfd, and how many: the one it was
    /// muxed into, or a new one it is read back into from the spill file.
    fn take(&self, b: Waiting) -> Result<(std::fs::File, u64), NormalizeError> {
        match b {
            Waiting::Memory(memfd, len) => Ok((memfd, len)),
            Waiting::Spilled(at, len) => {
                let back = |e| err("cannot read back segment", e);
                let file = self.spill.as_ref().expect("spilled");
                let memfd = sluice_worker::handover::memfd().map_err(back)?;
                let mut chunk = vec![0; (256 << 10).min(len as usize)];
                let mut done = 0u64;
                while done < len {
                    let n = chunk.len().min((len - done) as usize);
                    file.read_exact_at(&mut chunk[..n], at + done).map_err(back)?;
                    memfd.write_all_at(&chunk[..n], done).map_err(back)?;
                    done += n as u64;
                }
                Ok((memfd, len))
            }
        }
    }
}

/// One segment being written.
struct Segment {
    index: u32,
    /// The memfd the muxer writes into (through a descriptor of its own).
    memfd: std::fs::File,
    octx: Output,
    /// Input stream index -> output stream index.
    map: Vec<Option<usize>>,
    start: f64,
    offset: Vec<i64>,
    thumbnail: Option<Ticket>,
    /// The sample rate of a FLAC segment, whose header is fixed at the end.
    flac_rate: Option<u32>,
}

/// A finished segment waiting to be emitted.
struct Done {
    index: u32,
    bytes: Waiting,
    start: f64,
    end: f64,
    thumbnail: Option<Ticket>,
}

struct Job {
    ictx: Input,
    /// Input streams copied into segments, in output order: first the one
    /// segments are cut on (the video, or the audio of an audio file).
    copied: Vec<usize>,
    tbs: Vec<Rational>,
    container: Container,
    /// What the preferred container refused, once it did (segments then
    /// go into Matroska).
    refused: Option<String>,
    /// Segment thumbnails, decoded beside the muxing.
    thumbs: Thumbnails,
    thumb: u32,
}

impl Job {
    /// `start` is relative to the file's first keyframe; `cut` is the input
    /// time of the segment's first keyframe, subtracted from every packet.
    /// When the preferred container refuses the streams, Matroska takes them
    /// (for this and the file's later segments).
    fn open_segment(&mut self, index: u32, start: f64, cut: f64) -> Result<Segment, NormalizeError> {
        match self.try_open_segment(index, start, cut) {
            Ok(seg) => Ok(seg),
            Err(refused) if self.container.muxer != "matroska" => {
                let first = self.container;
                self.container = if first.mime.starts_with("audio/") { MATROSKA_AUDIO } else { MATROSKA_VIDEO };
                self.refused = Some(format!("{} refused the streams ({refused})", first.ext));
                self.try_open_segment(index, start, cut)
                    .map_err(|e| NormalizeError::new(format!("{}, and so did Matroska ({e})", self.refused.as_deref().unwrap_or_default())))
            }
            Err(e) => Err(e),
        }
    }

    fn try_open_segment(&mut self, index: u32, start: f64, cut: f64) -> Result<Segment, NormalizeError> {
        let memfd = sluice_worker::handover::memfd().map_err(|e| err("cannot create segment", e))?;
        let writer = memfd.try_clone().map_err(|e| err("cannot create segment", e))?;
        let io = StreamIo::from_write_seek_with_capacity(writer, 256 * 1024).map_err(|e| err("cannot create segment", e))?;
        let mut octx = ff::format::output_to_stream(io, None, Some(self.container.muxer)).map_err(|e| err("cannot create segment", e))?;
        let mut map = vec![None; self.tbs.len()];
        for (n, &ist_index) in self.copied.iter().enumerate() {
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
        // Left at its default, the muxer flushes its I/O buffer after every
        // packet: a write into the memfd per packet (~1.3 KB each here)
        // instead of one per 256 KiB.
        opts.set("flush_packets", "0");
        octx.write_header_with(opts).map_err(|e| err("cannot start segment", e))?;
        let offset = self.tbs.iter().map(|tb| (cut / f64::from(*tb)).round() as i64).collect();
        let flac_rate = (self.container.muxer == "flac").then(|| audio_shape(&self.ictx.stream(self.copied[0]).expect("exists")).0);
        Ok(Segment { index, memfd, octx, map, start, offset, thumbnail: None, flac_rate })
    }
}

/// Where a segment's thumbnail will be, once decoded.
#[derive(Debug, Clone, Copy)]
struct Ticket(usize);

/// Thumbnails of keyframes, decoded and encoded on a thread of their own
/// while the segments are muxed (a keyframe's decode costs more than
/// muxing its segment): asked for by ticket as segments start, taken when
/// the rows go out, after the whole file was read. At most a few keyframes
/// wait for the thread; past them, asking waits.
struct Thumbnails {
    ask: Option<std::sync::mpsc::SyncSender<Packet>>,
    got: Option<std::sync::mpsc::Receiver<Option<Vec<u8>>>>,
    asked: usize,
    /// What the thread sent so far, by ticket.
    ready: Vec<Option<Vec<u8>>>,
}

impl Thumbnails {
    /// Start the thread for `decoder` (none: an audio file, no thumbnails).
    fn start(decoder: Option<ff::decoder::Video>, rotation: i32, size: u32) -> Result<Self, NormalizeError> {
        let Some(mut decoder) = decoder else { return Ok(Self { ask: None, got: None, asked: 0, ready: Vec::new() }) };
        let (ask, packets) = std::sync::mpsc::sync_channel::<Packet>(4);
        let (done, got) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("thumbnails".into())
            .spawn(move || {
                let mut maker = ThumbnailMaker::default();
                for packet in packets {
                    if done.send(keyframe_thumbnail(&mut decoder, &mut maker, &packet, rotation, size)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| err("cannot start the thumbnail thread", e))?;
        Ok(Self { ask: Some(ask), got: Some(got), asked: 0, ready: Vec::new() })
    }

    /// Ask for the thumbnail of a keyframe packet.
    fn ask(&mut self, packet: &Packet) -> Option<Ticket> {
        self.ask.as_ref()?.send(packet.clone()).ok()?;
        self.asked += 1;
        Some(Ticket(self.asked - 1))
    }

    /// The thumbnail a ticket stands for, once decoded (none if its frame
    /// did not decode).
    fn take(&mut self, ticket: Option<Ticket>) -> Option<Vec<u8>> {
        let Ticket(n) = ticket?;
        while self.ready.len() <= n {
            self.ready.push(self.got.as_ref()?.recv().ok()?);
        }
        self.ready[n].take()
    }
}

/// First decodable frame of a keyframe packet, as a JPEG thumbnail.
fn keyframe_thumbnail(decoder: &mut ff::decoder::Video, maker: &mut ThumbnailMaker, packet: &Packet, rotation: i32, thumb: u32) -> Option<Vec<u8>> {
    decoder.send_packet(packet).ok()?;
    let _ = decoder.send_eof();
    let mut frame = VideoFrame::empty();
    let got = decoder.receive_frame(&mut frame).is_ok();
    decoder.flush();
    if !got || frame.width() == 0 || frame.height() == 0 {
        return None;
    }
    let (w, h) = (frame.width(), frame.height());
    let scale = f64::from(thumb) / f64::from(w.max(h));
    let (tw, th) = if scale < 1.0 {
        (((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1))
    } else {
        (w, h)
    };
    // An upright frame stays in YCbCr 4:2:0, what a JPEG stores: scaled
    // plane by plane and moved to full range, then compressed as planes.
    // swscale scales other layouts to that; a turned frame goes through
    // RGB to be turned.
    if rotation == 0 {
        if let Some(planes) = scale_420(&frame, tw, th) {
            let widths = [tw, tw.div_ceil(2), tw.div_ceil(2)].map(|w| w as i32);
            return maker.jpeg()?.compress([&planes[0], &planes[1], &planes[2]], widths, (tw, th), THUMBNAIL_QUALITY);
        }
    }
    let target = if rotation == 0 { ff::format::Pixel::YUVJ420P } else { ff::format::Pixel::RGB24 };
    let fits = |s: &Scaler| s.input().format == frame.format() && (s.input().width, s.input().height) == (w, h) && s.output().format == target;
    if !maker.scaler.as_ref().is_some_and(fits) {
        maker.scaler = Some(Scaler::get(frame.format(), w, h, target, tw, th, Flags::BILINEAR).ok()?);
    }
    let scaler = maker.scaler.as_mut()?;
    let mut scaled = VideoFrame::empty();
    scaler.run(&frame, &mut scaled).ok()?;
    if rotation == 0 {
        let strides = [0, 1, 2].map(|i| scaled.stride(i) as i32);
        return maker.jpeg()?.compress([scaled.data(0), scaled.data(1), scaled.data(2)], strides, (tw, th), THUMBNAIL_QUALITY);
    }
    let stride = scaled.stride(0);
    let row = tw as usize * 3;
    let mut pixels = Vec::with_capacity(row * th as usize);
    for y in 0..th as usize {
        pixels.extend_from_slice(&scaled.data(0)[y * stride..y * stride + row]);
    }
    let img = image::DynamicImage::ImageRgb8(RgbImage::from_raw(tw, th, pixels)?);
    let img = match rotation {
        90 => img.rotate90(),
        180 => img.rotate180(),
        270 => img.rotate270(),
        _ => img,
    };
    sluice_worker::normalize::encode_jpeg(&img.to_rgb8(), THUMBNAIL_QUALITY as u8)
}

/// JPEG quality of segment thumbnails.
const THUMBNAIL_QUALITY: i32 = 80;

/// What the thumbnail thread keeps from one keyframe to the next: frames
/// of one stream share their size and format.
#[derive(Default)]
struct ThumbnailMaker {
    scaler: Option<Scaler>,
    jpeg: Option<PlanesJpeg>,
}

impl ThumbnailMaker {
    /// The compressor, made at the first thumbnail that needs it.
    fn jpeg(&mut self) -> Option<&mut PlanesJpeg> {
        if self.jpeg.is_none() {
            self.jpeg = PlanesJpeg::new();
        }
        self.jpeg.as_mut()
    }
}

/// libjpeg-turbo compressing YCbCr 4:2:0 planes as they are: no color
/// conversion and no chroma subsampling of its own, which RGB pixels cost
/// it, and none for swscale to make RGB first. On the Deeplake corpus's
/// videos (120 thumbnails of 640x360 keyframes, one normalization worker,
/// three alternating ingests) the thumbnail threads took 168-181 ms of CPU
/// against 196-212 ms through RGB; decoding the keyframes is most of what
/// is left.
struct PlanesJpeg(turbojpeg::raw::tjhandle);

impl PlanesJpeg {
    fn new() -> Option<Self> {
        #[allow(unsafe_code)]
        // SAFETY: no arguments; a null handle is refused below.
        let handle = unsafe { turbojpeg::raw::tjInitCompress() };
        (!handle.is_null()).then_some(Self(handle))
    }

    /// The JPEG of full-range 4:2:0 planes (Y, Cb, Cr) of a `width` x
    /// `height` image, `strides` bytes a row.
    fn compress(&mut self, planes: [&[u8]; 3], strides: [i32; 3], (width, height): (u32, u32), quality: i32) -> Option<Vec<u8>> {
        let (w, h) = (i32::try_from(width).ok()?, i32::try_from(height).ok()?);
        let rows = [h, (h + 1) / 2, (h + 1) / 2];
        let columns = [w, (w + 1) / 2, (w + 1) / 2];
        let whole = (0..3).all(|i| strides[i] >= columns[i] && planes[i].len() >= (strides[i] * (rows[i] - 1) + columns[i]) as usize);
        if w == 0 || h == 0 || !whole {
            return None;
        }
        let mut pointers = planes.map(<[u8]>::as_ptr);
        let (mut jpeg, mut len): (*mut std::ffi::c_uchar, std::ffi::c_ulong) = (std::ptr::null_mut(), 0);
        #[allow(unsafe_code)]
        // SAFETY: three planes of a 4:2:0 image of `w` x `h`, each slice
        // holding its rows at its stride (checked above); libjpeg-turbo
        // only reads them, and allocates the output, handed back with
        // tjFree once copied.
        unsafe {
            let failed = turbojpeg::raw::tjCompressFromYUVPlanes(
                self.0,
                pointers.as_mut_ptr(),
                w,
                strides.as_ptr(),
                h,
                turbojpeg::raw::TJSAMP_TJSAMP_420 as i32,
                &mut jpeg,
                &mut len,
                quality,
                0,
            ) != 0;
            let out = (!failed && !jpeg.is_null()).then(|| std::slice::from_raw_parts(jpeg, len as usize).to_vec());
            if !jpeg.is_null() {
                turbojpeg::raw::tjFree(jpeg);
            }
            out
        }
    }
}

impl Drop for PlanesJpeg {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: the handle came from tjInitCompress and is destroyed once.
        unsafe {
            turbojpeg::raw::tjDestroy(self.0);
        }
    }
}

/// A frame of 8-bit 4:2:0 samples (what nearly every H.264, HEVC, VP9 and
/// AV1 video decodes to) scaled to `tw` x `th`, plane by plane, in full
/// range: Y, Cb, Cr, each packed. None for other layouts.
fn scale_420(frame: &VideoFrame, tw: u32, th: u32) -> Option<[Vec<u8>; 3]> {
    let full = match frame.format() {
        ff::format::Pixel::YUVJ420P => true,
        ff::format::Pixel::YUV420P => frame.color_range() == ff::util::color::Range::JPEG,
        _ => return None,
    };
    let (w, h) = (frame.width(), frame.height());
    // Video range (Y 16-235, Cb and Cr 16-240) stretched to 0-255.
    let stretch = |v: usize, low: f32, span: f32, mid: f32| ((v as f32 - low) * 255.0 / span + mid).round().clamp(0.0, 255.0) as u8;
    let luma: [u8; 256] = std::array::from_fn(|v| stretch(v, 16.0, 219.0, 0.0));
    let chroma: [u8; 256] = std::array::from_fn(|v| stretch(v, 128.0, 224.0, 128.0));
    let mut planes: [Vec<u8>; 3] = Default::default();
    for (i, plane) in planes.iter_mut().enumerate() {
        let (from, to) = if i == 0 { ((w, h), (tw, th)) } else { ((w.div_ceil(2), h.div_ceil(2)), (tw.div_ceil(2), th.div_ceil(2))) };
        *plane = sluice_worker::normalize::scale_plane(frame.data(i), frame.stride(i), from, to)?;
        if !full {
            let lut = if i == 0 { &luma } else { &chroma };
            plane.iter_mut().for_each(|v| *v = lut[*v as usize]);
        }
    }
    Some(planes)
}

fn close(mut seg: Segment, end: f64, held: &mut Held) -> Result<Done, NormalizeError> {
    seg.octx.write_trailer().map_err(|e| err("cannot finish segment", e))?;
    // Dropping the context flushes what its I/O buffer still holds.
    drop(seg.octx);
    let len = seg.memfd.metadata().map_err(|e| err("cannot finish segment", e))?.len();
    if let Some(rate) = seg.flac_rate {
        let samples = ((end - seg.start).max(0.0) * f64::from(rate)).round() as u64;
        let mut head = [0u8; 42];
        if len >= head.len() as u64 {
            seg.memfd.read_exact_at(&mut head, 0).map_err(|e| err("cannot finish segment", e))?;
            fix_flac_streaminfo(&mut head, samples);
            seg.memfd.write_all_at(&head, 0).map_err(|e| err("cannot finish segment", e))?;
        }
    }
    let bytes = held.keep(seg.memfd, len)?;
    Ok(Done { index: seg.index, bytes, start: seg.start, end, thumbnail: seg.thumbnail })
}

/// A stream-copied FLAC segment starts with the source's STREAMINFO, which
/// gives the whole source's sample count and MD5: set the segment's own
/// count, and the MD5 to zero ("not known"), so players show its length and
/// checkers do not report a mismatch.
fn fix_flac_streaminfo(bytes: &mut [u8], samples: u64) {
    // "fLaC", a block header of type 0 (STREAMINFO), then 10 bytes of block
    // and frame sizes, 28 bits of rate, channels and depth, 36 bits of
    // sample count and 16 bytes of MD5.
    if bytes.len() < 42 || &bytes[..4] != b"fLaC" || bytes[4] & 0x7f != 0 || samples >= 1 << 36 {
        return;
    }
    bytes[21] = (bytes[21] & 0xf0) | (samples >> 32) as u8;
    bytes[22..26].copy_from_slice(&(samples as u32).to_be_bytes());
    bytes[26..42].fill(0);
}

/// Open a media file as FFmpeg's `avformat_open_input` and
/// `avformat_find_stream_info` do, but with every stream's probing decoder
/// held to `max_pixels`: a header claiming a huge picture is refused before
/// a frame is allocated for it (ffmpeg-next's `input_with_dictionary` gives
/// the probe no options).
fn open_input(path: &Path, options: ff::Dictionary, max_pixels: u64) -> Result<Input, ff::Error> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| ff::Error::InvalidData)?;
    let limit = std::ffi::CString::new(max_pixels.min(i64::MAX as u64).to_string()).expect("digits");
    #[allow(unsafe_code)]
    // SAFETY: as ffmpeg-next's own `input_with_dictionary`: the context is
    // opened from a C string that outlives the call, the option dictionary
    // is handed over and what is left of it taken back (and freed); one
    // dictionary per stream is made for the probe and freed after it; on
    // failure the context is closed, on success wrapped (and closed by the
    // wrapper when dropped).
    unsafe {
        let mut ctx = std::ptr::null_mut();
        let mut opts = options.disown();
        let opened = ff::ffi::avformat_open_input(&mut ctx, cpath.as_ptr(), std::ptr::null(), &mut opts);
        drop(ff::Dictionary::own(opts));
        if opened < 0 {
            return Err(ff::Error::from(opened));
        }
        let mut per_stream: Vec<*mut ff::ffi::AVDictionary> = vec![std::ptr::null_mut(); (*ctx).nb_streams as usize];
        for d in per_stream.iter_mut() {
            ff::ffi::av_dict_set(d, c"max_pixels".as_ptr(), limit.as_ptr(), 0);
        }
        let found = ff::ffi::avformat_find_stream_info(ctx, per_stream.as_mut_ptr());
        for d in per_stream.iter_mut() {
            ff::ffi::av_dict_free(d);
        }
        if found < 0 {
            ff::ffi::avformat_close_input(&mut ctx);
            return Err(ff::Error::from(found));
        }
        Ok(Input::wrap(ctx))
    }
}

/// Hold a decoder to pictures of at most `max_pixels` (checked from the
/// stream's header before a frame is allocated).
fn limit_pixels(ctx: &mut ff::codec::context::Context, max_pixels: u64) {
    #[allow(unsafe_code)]
    // SAFETY: a plain field of a codec context not yet opened.
    unsafe {
        (*ctx.as_mut_ptr()).max_pixels = max_pixels.min(i64::MAX as u64) as i64;
    }
}

/// The video stream to cut on: the best one that is not cover art.
fn pick_video(ictx: &Input) -> Option<usize> {
    let art = |s: &ff::format::stream::Stream| s.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC);
    match ictx.streams().best(Medium::Video) {
        Some(s) if !art(&s) => Some(s.index()),
        _ => ictx.streams().find(|s| s.parameters().medium() == Medium::Video && !art(s)).map(|s| s.index()),
    }
}

/// Cover art (an attached picture: one packet holding a JPEG or PNG).
fn cover_art(ictx: &Input) -> Option<usize> {
    ictx.streams().find(|s| s.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC)).map(|s| s.index())
}

/// A picture's bytes (cover art) as a thumbnail. A cover that would take
/// more than 64 MiB decoded gets none (covers are a few hundred pixels).
fn picture_thumbnail(bytes: &[u8], size: u32) -> Option<Vec<u8>> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(64 << 20);
    reader.limits(limits);
    let rgb = reader.decode().ok()?.to_rgb8();
    sluice_worker::normalize::thumbnail_jpeg(rgb.as_raw(), rgb.width(), rgb.height(), turbojpeg::PixelFormat::RGB, size)
}

/// The file's tags (title, artist, album, ...), keys in lower case: the
/// container's, then those of stream `stream` it lacks (Ogg and FLAC keep
/// them on the stream). At most 64, each value cut at 1,000 characters.
fn tags(ictx: &Input, stream: usize) -> Value {
    let mut out = serde_json::Map::new();
    let stream_tags = ictx.stream(stream).map(|s| s.metadata().iter().map(|(k, v)| (k.to_lowercase(), v.to_string())).collect::<Vec<_>>());
    let file_tags = ictx.metadata().iter().map(|(k, v)| (k.to_lowercase(), v.to_string())).collect::<Vec<_>>();
    for (k, v) in file_tags.into_iter().chain(stream_tags.into_iter().flatten()) {
        if out.len() == 64 {
            break;
        }
        out.entry(k).or_insert_with(|| Value::String(v.chars().take(1000).collect()));
    }
    Value::Object(out)
}

/// What an audio stream's parameters say: sample rate and channel count.
fn audio_shape(stream: &ff::format::stream::Stream) -> (u32, u32) {
    let par = stream.parameters();
    #[allow(unsafe_code)]
    // SAFETY: the parameters belong to an open stream; plain integer fields.
    let (rate, channels) = unsafe { ((*par.as_ptr()).sample_rate, (*par.as_ptr()).ch_layout.nb_channels) };
    (rate.max(0) as u32, channels.max(0) as u32)
}

/// The container's duration, unless FFmpeg only guessed it from the bit
/// rate (a VBR MP3 without a Xing header): a guess cannot prove a file cut.
fn trusted_duration(ictx: &Input) -> Option<f64> {
    #[allow(unsafe_code)]
    // SAFETY: an open input context; a plain enum field.
    let guessed = unsafe {
        (*ictx.as_ptr()).duration_estimation_method == ff::ffi::AVDurationEstimationMethod::AVFMT_DURATION_FROM_BITRATE
    };
    (ictx.duration() > 0 && !guessed).then(|| ictx.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE))
}

/// Split a video or audio file into segment rows. What kind the file is
/// (video if it has a video stream that is not cover art, else audio) goes
/// to `out` first, as [`Piece::Kind`]; then rows, one segment at a time,
/// and only after the whole file proved readable.
///
/// `named` is what the file was taken for before it was opened (by its
/// magic bytes or name), for the words of an error before its streams are
/// known.
pub fn normalize_media(
    path: &Path,
    named: Kind,
    settings: &Settings,
    out: &mut dyn FnMut(Piece) -> Result<(), NormalizeError>,
) -> Result<(), NormalizeError> {
    init();
    let mut opts = ff::Dictionary::new();
    opts.set("protocol_whitelist", "file");
    opts.set("format_whitelist", FORMAT_WHITELIST);
    // Raw streams (H.264, HEVC, MPEG video) carry no timestamps of their own.
    opts.set("fflags", "+genpts");
    let ictx = open_input(path, opts, settings.max_image_pixels).map_err(|e| err(&format!("cannot open {named}"), e))?;

    let header_duration = (ictx.duration() > 0).then(|| ictx.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE));
    if let Some(d) = header_duration {
        if d > f64::from(settings.max_video_seconds) {
            return Err(NormalizeError::new(format!(
                "{named} is {d:.0}s long, above the limit of {}s (max_video_seconds)",
                settings.max_video_seconds
            )));
        }
    }
    let video = pick_video(&ictx);
    let audio = ictx.streams().best(Medium::Audio).map(|s| s.index());
    let (kind, lead) = match (video, audio) {
        (Some(v), _) => (Kind::Video, v),
        (None, Some(a)) => (Kind::Audio, a),
        (None, None) => {
            return Err(NormalizeError::new(format!("no audio or video stream (read as {})", job_format_name(&ictx))));
        }
    };
    out(Piece::Kind(kind))?;
    let art = if kind == Kind::Audio { cover_art(&ictx) } else { None };
    let lead_stream = ictx.stream(lead).expect("exists");
    let video_codec = video.map(|v| ictx.stream(v).expect("exists").parameters().id());
    let audio_codec = audio.map(|a| ictx.stream(a).expect("exists").parameters().id());
    if video.is_some() {
        let par = lead_stream.parameters();
        #[allow(unsafe_code)]
        // SAFETY: the parameters belong to an open stream; plain integer fields.
        let (w, h) = unsafe { ((*par.as_ptr()).width.max(0) as u64, (*par.as_ptr()).height.max(0) as u64) };
        if w * h > settings.max_image_pixels {
            return Err(NormalizeError::new(format!(
                "video frames are {w}x{h} = {} pixels, above the limit of {} (max_image_pixels); refused as a possible decompression bomb",
                w * h,
                settings.max_image_pixels
            )));
        }
    }
    let decoder = match video {
        None => None,
        Some(_) => Some(
            ff::codec::context::Context::from_parameters(lead_stream.parameters())
                .and_then(|mut c| {
                    limit_pixels(&mut c, settings.max_image_pixels);
                    let mut d = c.decoder();
                    // It decodes one keyframe a segment for a thumbnail of a few
                    // hundred pixels: the deblocking filter would not show.
                    d.skip_loop_filter(ff::Discard::All);
                    d.video()
                })
                .map_err(|e| err("no decoder for the video stream", e))?,
        ),
    };
    let (width, height) = decoder.as_ref().map_or((0, 0), |d| (d.width(), d.height()));
    let header_frames = lead_stream.frames();
    let rate = lead_stream.avg_frame_rate();
    // A raw stream has no average rate; its demuxer assumes one (25 fps).
    let rate = if rate.denominator() != 0 && rate.numerator() != 0 { rate } else { lead_stream.rate() };
    let fps = if video.is_some() && rate.denominator() != 0 { f64::from(rate) } else { 0.0 };
    let (sample_rate, channels) = audio.map_or((0, 0), |a| audio_shape(&ictx.stream(a).expect("exists")));
    let format_name = job_format_name(&ictx);
    let rot = if video.is_some() { rotation(&lead_stream) } else { 0 };
    let container = match (video_codec, audio_codec) {
        (Some(v), a) => video_container(v, a),
        (None, a) => audio_container(a.expect("an audio stream")),
    };
    let tbs: Vec<Rational> = ictx.streams().map(|s| s.time_base()).collect();
    let bit_rate = ictx.bit_rate();
    let tags = tags(&ictx, lead);
    let trusted = trusted_duration(&ictx);

    let mut held = Held { limit: held_limit(settings), in_memory: 0, memfds: 0, spill: None, spilled_at: 0 };
    let copied = std::iter::once(lead).chain(audio.filter(|a| *a != lead)).collect();
    let mut job = Job {
        ictx,
        copied,
        tbs,
        container,
        refused: None,
        thumbs: Thumbnails::start(decoder, rot, settings.thumbnail_size)?,
        thumb: settings.thumbnail_size,
    };

    let segment_seconds = settings.segment_seconds;
    let mut done: Vec<Done> = Vec::new();
    let mut current: Option<Segment> = None;
    let mut origin: Option<f64> = None;
    let mut last_end = 0.0f64;
    let (mut untimed, mut untimed_thumbnail) = (0u64, None);
    let mut art_thumbnail = None;
    // Streams no segment container takes: the file is read through (to
    // validate it and learn its length), then stored whole.
    let mut uncopyable: Option<(NormalizeError, Option<Ticket>)> = None;
    loop {
        let mut packet = Packet::empty();
        match packet.read(&mut job.ictx) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(e) => return Err(err(&format!("read error after {last_end:.2}s"), e)),
        }
        let index = packet.stream();
        if Some(index) == art {
            if art_thumbnail.is_none() {
                art_thumbnail = packet.data().and_then(|b| picture_thumbnail(b, job.thumb));
            }
            continue;
        }
        let tb = job.tbs[index];
        let Some(ts) = packet.pts().or(packet.dts()) else {
            // Raw H.264/HEVC streams carry no timestamps: counted, and the
            // first keyframe kept for a thumbnail, in case none has any.
            if index == lead && video.is_some() {
                untimed += 1;
                if untimed_thumbnail.is_none() && packet.is_key() {
                    untimed_thumbnail = job.thumbs.ask(&packet).and_then(|t| job.thumbs.take(Some(t)));
                }
            }
            continue;
        };
        let t = ts as f64 * f64::from(tb);
        if index == lead {
            let end = t + packet.duration().max(0) as f64 * f64::from(tb);
            if packet.is_key() && uncopyable.is_none() {
                let origin = *origin.get_or_insert(t);
                let rel = t - origin;
                let cut = current.as_ref().is_none_or(|s| rel >= s.start - 1e-9 + segment_seconds);
                if cut {
                    let next = done.len() as u32 + u32::from(current.is_some());
                    if let Some(seg) = current.take() {
                        done.push(close(seg, rel, &mut held)?);
                    }
                    match job.open_segment(next, rel, t) {
                        Ok(mut seg) => {
                            seg.thumbnail = job.thumbs.ask(&packet);
                            current = Some(seg);
                        }
                        Err(e) if next == 0 => uncopyable = Some((e, job.thumbs.ask(&packet))),
                        Err(e) => return Err(e),
                    }
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
    let promised_by_frames = (header_frames > 0 && fps > 0.0).then(|| header_frames as f64 / fps);
    if current.is_none() && uncopyable.is_none() && untimed > 0 {
        if untimed_thumbnail.is_none() {
            return Err(NormalizeError::new(format!("no decodable video: the {format_name} stream's first keyframe does not decode")));
        }
        let duration = if fps > 0.0 { untimed as f64 / fps } else { 0.0 };
        let whole = Whole {
            format: &format_name,
            duration,
            frames: Some(untimed),
            fps,
            codec: video_codec.unwrap_or(Id::None),
            width,
            height,
            thumbnail: untimed_thumbnail,
            why: "raw stream without timestamps",
        };
        return store_whole(path, whole, settings, &mut |rows| out(Piece::Rows(rows)));
    }
    if let Some((refused, thumbnail)) = uncopyable {
        check_complete(kind, last_end, trusted, promised_by_frames)?;
        let whole = Whole {
            format: &format_name,
            duration: trusted.unwrap_or(last_end),
            frames: None,
            fps,
            codec: video_codec.or(audio_codec).unwrap_or(Id::None),
            width,
            height,
            thumbnail: job.thumbs.take(thumbnail).or(art_thumbnail),
            why: &refused.0,
        };
        return store_whole(path, whole, settings, &mut |rows| out(Piece::Rows(rows)));
    }
    check_declared_size(path, &format_name, kind)?;
    let Some(seg) = current.take() else {
        return Err(NormalizeError::new(match kind {
            Kind::Audio => "no audio: the audio stream holds no packets",
            _ => "no decodable video: no keyframe found",
        }));
    };
    done.push(close(seg, last_end, &mut held)?);
    check_complete(kind, last_end, trusted, promised_by_frames)?;

    let container = job.container;
    let mut file_meta = json!({
        "duration": trusted.unwrap_or(last_end),
        "audio_codec": audio_codec.map(|a| a.name()),
        "bit_rate": bit_rate,
        "segments": done.len(),
        "container": container.ext,
        "format": format_name,
        "tags": tags,
    });
    if kind == Kind::Video {
        file_meta["fps"] = json!(fps);
        file_meta["video_codec"] = json!(video_codec.map(|v| v.name()));
        file_meta["width"] = json!(width);
        file_meta["height"] = json!(height);
        file_meta["rotation"] = json!(rot);
        file_meta["has_audio"] = json!(audio.is_some());
    }
    if audio.is_some() {
        file_meta["sample_rate"] = json!(sample_rate);
        file_meta["channels"] = json!(channels);
    }
    if let Some(why) = &job.refused {
        file_meta["remuxed"] = json!(why);
    }
    let (w, h) = if rot == 90 || rot == 270 { (height, width) } else { (width, height) };
    let dims = |n: u32| (kind == Kind::Video).then_some(n);
    for seg in done {
        let mut meta: Value = file_meta.clone();
        meta["segment"] = json!(seg.index);
        let row = Row {
            chunk_index: seg.index,
            mime_type: container.mime.to_string(),
            start_seconds: Some(seg.start),
            end_seconds: Some(seg.end),
            thumbnail: job.thumbs.take(seg.thumbnail).or_else(|| art_thumbnail.clone()),
            width: dims(w),
            height: dims(h),
            metadata: Some(meta),
            ..Default::default()
        };
        let (memfd, len) = held.take(seg.bytes)?;
        out(Piece::sealed_row(memfd, len, row).map_err(|e| err("cannot hand over segment", e))?)?;
    }
    Ok(())
}

/// What the headers promise (the container's duration, and the video
/// stream's frame count: when an AVI's index at the end is cut off, FFmpeg
/// derives the duration from the data it has, but the stream header still
/// says how many frames there were) against where the data ends.
fn check_complete(kind: Kind, last_end: f64, duration: Option<f64>, by_frames: Option<f64>) -> Result<(), NormalizeError> {
    let promised = duration.into_iter().chain(by_frames).fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
    match promised {
        Some(d) if last_end + (0.02 * d).max(1.0) < d => {
            Err(NormalizeError::new(format!("truncated {kind}: data ends at {last_end:.2}s but the header says {d:.2}s")))
        }
        _ => Ok(()),
    }
}

/// Some headers give no duration FFmpeg trusts once the file is cut (ASF:
/// WMV and WMA; WAVE, whose length FFmpeg takes from the bit rate) but do
/// give the file's size: a file shorter than that is truncated. (ASF
/// broadcasts and streamed WAVE, whose size is not known when the header is
/// written, say so or give 0 or 0xFFFFFFFF.)
fn check_declared_size(path: &Path, format: &str, kind: Kind) -> Result<(), NormalizeError> {
    use std::io::Read;
    const FILE_PROPERTIES: [u8; 16] = [0xA1, 0xDC, 0xAB, 0x8C, 0x47, 0xA9, 0xCF, 0x11, 0x8E, 0xE4, 0x00, 0xC0, 0x0C, 0x20, 0x53, 0x65];
    if format != "asf" && format != "wav" {
        return Ok(());
    }
    let mut head = Vec::with_capacity(64 << 10);
    let file = std::fs::File::open(path).map_err(|e| err("cannot read media", e))?;
    let actual = file.metadata().map_err(|e| err("cannot read media", e))?.len();
    file.take(64 << 10).read_to_end(&mut head).map_err(|e| err("cannot read media", e))?;
    let u64_at = |o: usize| head.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let u32_at = |o: usize| head.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let promised = if format == "asf" {
        // GUID, object size, file id (16), file size (8), ..., flags at +88.
        let Some(at) = head.windows(16).position(|w| w == FILE_PROPERTIES) else { return Ok(()) };
        match (u64_at(at + 40), u32_at(at + 88)) {
            (Some(size), Some(flags)) if flags & 1 == 0 => size,
            _ => return Ok(()),
        }
    } else {
        // "RIFF", the size of what follows, "WAVE".
        match (head.get(..4), u32_at(4), head.get(8..12)) {
            (Some(b"RIFF"), Some(size), Some(b"WAVE")) if size != 0 && size != u32::MAX => u64::from(size) + 8,
            _ => return Ok(()),
        }
    };
    if promised > actual {
        let name = if format == "asf" { "ASF" } else { "WAVE" };
        return Err(NormalizeError::new(format!("truncated {kind}: the {name} header says {promised} bytes, the file has {actual}")));
    }
    Ok(())
}

fn job_format_name(ictx: &ff::format::context::Input) -> String {
    ictx.format().name().split(',').next().unwrap_or_default().to_string()
}

/// A stream that cannot be cut into segments, to be stored whole.
struct Whole<'a> {
    format: &'a str,
    duration: f64,
    /// Frames counted (a raw stream's only measure of its length).
    frames: Option<u64>,
    fps: f64,
    codec: Id,
    width: u32,
    height: u32,
    thumbnail: Option<Vec<u8>>,
    /// Why it is not in segments.
    why: &'a str,
}

/// A raw video stream (no container, no timestamps), or streams no
/// segment container takes, cannot be cut into segments by stream copy:
/// the file is stored whole as one row, which players read as it is, with
/// what the stream says of itself. Only up to the bytes one file may hold
/// in memory.
fn store_whole(
    path: &Path,
    whole: Whole<'_>,
    settings: &Settings,
    emit: &mut dyn FnMut(Vec<Row>) -> Result<(), NormalizeError>,
) -> Result<(), NormalizeError> {
    let size = std::fs::metadata(path).map_err(|e| err("cannot read media", e))?.len();
    let limit = held_limit(settings);
    if size > limit {
        return Err(NormalizeError::new(format!(
            "{} ({}): it cannot be cut into segments, and at {size} bytes it is above the {limit} bytes one file may hold to be stored whole",
            whole.format, whole.why
        )));
    }
    let duration = whole.duration;
    if duration > f64::from(settings.max_video_seconds) {
        return Err(NormalizeError::new(format!(
            "media is {duration:.0}s long, above the limit of {}s (max_video_seconds)",
            settings.max_video_seconds
        )));
    }
    let data = std::fs::read(path).map_err(|e| err("cannot read media", e))?;
    let mime = match whole.format {
        "h264" => "video/h264".to_string(),
        "hevc" => "video/h265".to_string(),
        other => format!("video/x-{other}"),
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
        "stored_whole_because": whole.why,
    });
    emit(vec![Row {
        chunk_index: 0,
        mime_type: mime,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Many small segments: at most [`HELD_MEMFDS`] wait in memfds, the
    /// rest in the spill file, and every one comes back as it went in.
    #[test]
    fn many_small_segments_hold_few_descriptors_and_come_back_whole() {
        use std::io::Write;
        let mut held = Held { limit: 1 << 30, in_memory: 0, memfds: 0, spill: None, spilled_at: 0 };
        let segment = |i: usize| format!("segment {i} ").repeat(i % 7 + 1).into_bytes();
        let waiting: Vec<Waiting> = (0..HELD_MEMFDS + 40)
            .map(|i| {
                let mut memfd = sluice_worker::handover::memfd().unwrap();
                memfd.write_all(&segment(i)).unwrap();
                held.keep(memfd, segment(i).len() as u64).unwrap()
            })
            .collect();
        assert_eq!(waiting.iter().filter(|w| matches!(w, Waiting::Memory(..))).count(), HELD_MEMFDS);
        for (i, w) in waiting.into_iter().enumerate() {
            let (memfd, len) = held.take(w).unwrap();
            let mut bytes = vec![0; len as usize];
            memfd.read_exact_at(&mut bytes, 0).unwrap();
            assert_eq!(memfd.metadata().unwrap().len(), len);
            assert_eq!(bytes, segment(i), "segment {i}");
        }
    }

    /// Half red, half white, in 4:2:0 planes of the given range.
    fn red_and_white(format: ff::format::Pixel, (w, h): (u32, u32)) -> VideoFrame {
        let full = format == ff::format::Pixel::YUVJ420P;
        // BT.601 red and white, video range or full range.
        let (red, white): ([u8; 3], [u8; 3]) = if full { ([76, 85, 255], [255, 128, 128]) } else { ([81, 90, 240], [235, 128, 128]) };
        let mut frame = VideoFrame::new(format, w, h);
        for plane in 0..3 {
            let (pw, ph) = if plane == 0 { (w, h) } else { (w.div_ceil(2), h.div_ceil(2)) };
            let stride = frame.stride(plane);
            let data = frame.data_mut(plane);
            for y in 0..ph as usize {
                for x in 0..pw as usize {
                    data[y * stride + x] = if x < pw as usize / 2 { red[plane] } else { white[plane] };
                }
            }
        }
        frame
    }

    /// Thumbnails made from YCbCr planes show the frame's colors, from
    /// video-range and full-range frames, of even and odd sizes.
    #[test]
    fn planar_thumbnails_keep_the_frames_colors() {
        let mut jpeg = PlanesJpeg::new().unwrap();
        for format in [ff::format::Pixel::YUV420P, ff::format::Pixel::YUVJ420P] {
            for ((w, h), (tw, th)) in [((64, 48), (32, 24)), ((67, 35), (33, 17)), ((40, 30), (40, 30))] {
                let frame = red_and_white(format, (w, h));
                let planes = scale_420(&frame, tw, th).unwrap();
                assert_eq!(planes.each_ref().map(|p| p.len()), [tw * th, tw.div_ceil(2) * th.div_ceil(2), tw.div_ceil(2) * th.div_ceil(2)].map(|n| n as usize));
                let widths = [tw, tw.div_ceil(2), tw.div_ceil(2)].map(|w| w as i32);
                let bytes = jpeg.compress([&planes[0], &planes[1], &planes[2]], widths, (tw, th), THUMBNAIL_QUALITY).unwrap();
                let image = turbojpeg::decompress(&bytes, turbojpeg::PixelFormat::RGB).unwrap();
                assert_eq!((image.width, image.height), (tw as usize, th as usize));
                let at = |x: usize, y: usize| &image.pixels[y * image.pitch + x * 3..][..3];
                let near = |got: &[u8], want: [u8; 3]| got.iter().zip(want).all(|(g, w)| (i32::from(*g) - i32::from(w)).abs() <= 10);
                let (left, right, mid) = (tw as usize / 8, tw as usize * 7 / 8, th as usize / 2);
                assert!(near(at(left, mid), [255, 0, 0]), "{format:?} {w}x{h}: red side is {:?}", at(left, mid));
                assert!(near(at(right, mid), [255, 255, 255]), "{format:?} {w}x{h}: white side is {:?}", at(right, mid));
            }
        }
        // Another layout is left to swscale.
        assert!(scale_420(&VideoFrame::new(ff::format::Pixel::YUV444P, 16, 16), 8, 8).is_none());
        // Planes too short for their size are refused, not read past.
        assert!(jpeg.compress([&[0; 10], &[0; 2], &[0; 2]], [8, 4, 4], (8, 8), 80).is_none());
    }

    #[test]
    fn a_flac_segment_header_gets_its_own_sample_count_and_no_md5() {
        let mut head = b"fLaC\x00\x00\x00\x22".to_vec();
        // Block sizes, frame sizes; 44.1 kHz, mono, 16 bits; 0x1_2345_6789 samples; an MD5.
        head.extend([0x10, 0x00, 0x10, 0x00, 0, 0, 0x10, 0, 0x20, 0]);
        head.extend([0x0a, 0xc4, 0x40, 0xf1, 0x23, 0x45, 0x67, 0x89]);
        head.extend([0xab; 16]);
        head.extend(b"frames");
        let mut fixed = head.clone();
        fix_flac_streaminfo(&mut fixed, 442_368);
        assert_eq!(&fixed[..21], &head[..21], "everything before the count is kept");
        assert_eq!(fixed[21], 0xf0, "rate, channels and depth bits kept, count's top bits cleared");
        assert_eq!(&fixed[22..26], &442_368u32.to_be_bytes());
        assert!(fixed[26..42].iter().all(|b| *b == 0));
        assert_eq!(&fixed[42..], b"frames");
        // Not a FLAC header: untouched.
        let mut other = head.clone();
        other[0] = b'X';
        fix_flac_streaminfo(&mut other, 1);
        assert_eq!(other[..4], *b"XLaC");
        assert_eq!(other[22..], head[22..]);
    }
}
