//! Text from pictures of text: Tesseract, through its C API, loaded when
//! first needed (`libtesseract.so.5`, or `SLUICE_TESSERACT_PATH`), so the
//! binary runs where Tesseract is not installed and only OCR says it is
//! missing. It runs where the decoders run: in the normalizer processes.
//!
//! One Tesseract instance a process, made on first use for the languages
//! asked for and kept (loading a language's model takes longer than reading
//! a page). Tesseract is told to write its diagnostics nowhere: a normalizer
//! process's stdout carries its answers. Normalizer processes are started
//! with `OMP_THREAD_LIMIT=1` (see `crate::isolation`).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use super::NormalizeError;

/// Pixels per inch pages are rendered at for OCR: what Tesseract is trained
/// for (smaller print is misread at the 150 of page renders).
pub const OCR_DPI: u32 = 300;

const INSTALL_HINT: &str = "OCR needs Tesseract: `apt-get install tesseract-ocr tesseract-ocr-eng` (or set \
     SLUICE_TESSERACT_PATH to a libtesseract.so.5)";

/// What Tesseract read from one picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    pub text: String,
    /// Tesseract's mean word confidence, 0 to 100.
    pub confidence: i32,
}

type Create = unsafe extern "C" fn() -> *mut c_void;
type Delete = unsafe extern "C" fn(*mut c_void);
type Init3 = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;
type SetVariable = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;
type SetImage = unsafe extern "C" fn(*mut c_void, *const u8, c_int, c_int, c_int, c_int);
type SetResolution = unsafe extern "C" fn(*mut c_void, c_int);
type GetText = unsafe extern "C" fn(*mut c_void) -> *mut c_char;
type MeanConf = unsafe extern "C" fn(*mut c_void) -> c_int;
type DeleteText = unsafe extern "C" fn(*const c_char);
type Clear = unsafe extern "C" fn(*mut c_void);

/// The C API functions sluice calls.
struct Api {
    _lib: libloading::Library,
    create: Create,
    delete: Delete,
    init3: Init3,
    set_variable: SetVariable,
    set_image: SetImage,
    set_resolution: SetResolution,
    get_text: GetText,
    mean_conf: MeanConf,
    delete_text: DeleteText,
    clear: Clear,
}

fn api() -> Result<&'static Api, NormalizeError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| NormalizeError::new(e.clone()))
}

fn load() -> Result<Api, String> {
    // OpenMP reads its thread limit at process start (normalizer processes
    // are started with OMP_THREAD_LIMIT=1); a process that was not is told.
    if std::env::var_os("OMP_THREAD_LIMIT").is_none() {
        tracing::warn!("OCR in a process started without OMP_THREAD_LIMIT=1: Tesseract's OpenMP threads may oversubscribe the cores");
    }
    let path = std::env::var("SLUICE_TESSERACT_PATH").unwrap_or_else(|_| "libtesseract.so.5".into());
    #[allow(unsafe_code)]
    // SAFETY: loading libtesseract runs its initializers, which only set up
    // the library; each symbol is looked up with the signature capi.h
    // declares for it, and the library is kept alive with the pointers.
    unsafe {
        let lib = libloading::Library::new(&path).map_err(|e| format!("{INSTALL_HINT} ({path}: {e})"))?;
        let sym = |name: &[u8]| -> Result<*const c_void, String> {
            lib.get::<*const c_void>(name)
                .map(|s| *s)
                .map_err(|e| format!("{path} lacks {}: {e}", String::from_utf8_lossy(&name[..name.len() - 1])))
        };
        Ok(Api {
            create: std::mem::transmute::<*const c_void, Create>(sym(b"TessBaseAPICreate\0")?),
            delete: std::mem::transmute::<*const c_void, Delete>(sym(b"TessBaseAPIDelete\0")?),
            init3: std::mem::transmute::<*const c_void, Init3>(sym(b"TessBaseAPIInit3\0")?),
            set_variable: std::mem::transmute::<*const c_void, SetVariable>(sym(b"TessBaseAPISetVariable\0")?),
            set_image: std::mem::transmute::<*const c_void, SetImage>(sym(b"TessBaseAPISetImage\0")?),
            set_resolution: std::mem::transmute::<*const c_void, SetResolution>(sym(b"TessBaseAPISetSourceResolution\0")?),
            get_text: std::mem::transmute::<*const c_void, GetText>(sym(b"TessBaseAPIGetUTF8Text\0")?),
            mean_conf: std::mem::transmute::<*const c_void, MeanConf>(sym(b"TessBaseAPIMeanTextConf\0")?),
            delete_text: std::mem::transmute::<*const c_void, DeleteText>(sym(b"TessDeleteText\0")?),
            clear: std::mem::transmute::<*const c_void, Clear>(sym(b"TessBaseAPIClear\0")?),
            _lib: lib,
        })
    }
}

/// One initialized Tesseract, for one set of languages.
struct Engine {
    handle: *mut c_void,
    languages: String,
}

// SAFETY: a TessBaseAPI may be used from any thread, one at a time; the
// mutex around the one engine sees to that.
#[allow(unsafe_code)]
unsafe impl Send for Engine {}

impl Engine {
    fn new(api: &Api, languages: &str) -> Result<Engine, NormalizeError> {
        let langs = CString::new(languages).map_err(|_| NormalizeError::new("OCR languages hold a NUL byte"))?;
        #[allow(unsafe_code)]
        // SAFETY: a fresh handle, initialized once with C strings that
        // outlive the calls; deleted here if initialization fails.
        unsafe {
            let handle = (api.create)();
            if handle.is_null() {
                return Err(NormalizeError::new("Tesseract could not be started"));
            }
            (api.set_variable)(handle, c"debug_file".as_ptr(), c"/dev/null".as_ptr());
            if (api.init3)(handle, std::ptr::null(), langs.as_ptr()) != 0 {
                (api.delete)(handle);
                return Err(NormalizeError::new(format!(
                    "Tesseract cannot load the languages {languages:?}: install their data (Debian: tesseract-ocr-<lang>, e.g. tesseract-ocr-deu)"
                )));
            }
            (api.set_variable)(handle, c"debug_file".as_ptr(), c"/dev/null".as_ptr());
            Ok(Engine { handle, languages: languages.to_string() })
        }
    }
}

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

/// Read the text of an 8-bit grayscale picture (`stride` bytes a row),
/// taken at `dpi` pixels per inch, in `languages` (Tesseract's names joined
/// by `+`, e.g. `eng+deu`).
pub fn recognize(gray: &[u8], width: u32, height: u32, stride: usize, dpi: u32, languages: &str) -> Result<Recognized, NormalizeError> {
    let (w, h) = (c_int::try_from(width).ok(), c_int::try_from(height).ok());
    let (Some(w), Some(h), Ok(s)) = (w, h, c_int::try_from(stride)) else {
        return Err(NormalizeError::new(format!("a {width}x{height} picture is too large for OCR")));
    };
    if width == 0 || height == 0 || stride < width as usize || gray.len() < stride * height as usize {
        return Err(NormalizeError::new("OCR got an empty or short picture"));
    }
    let api = api()?;
    let mut engine = ENGINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if engine.as_ref().is_none_or(|e| e.languages != languages) {
        if let Some(old) = engine.take() {
            #[allow(unsafe_code)]
            // SAFETY: the handle was made by `create` and is not used again.
            unsafe {
                (api.delete)(old.handle)
            };
        }
        *engine = Some(Engine::new(api, languages)?);
    }
    let handle = engine.as_ref().expect("just made").handle;
    #[allow(unsafe_code)]
    // SAFETY: an initialized handle, used under the lock; Tesseract copies
    // the picture (which `gray` holds for `stride` x `height` bytes, checked
    // above) before SetImage returns; the text it returns is freed with
    // TessDeleteText after it is copied.
    unsafe {
        (api.set_image)(handle, gray.as_ptr(), w, h, 1, s);
        (api.set_resolution)(handle, c_int::try_from(dpi).unwrap_or(300));
        let text = (api.get_text)(handle);
        if text.is_null() {
            (api.clear)(handle);
            return Err(NormalizeError::new("Tesseract could not read the picture"));
        }
        let out = CStr::from_ptr(text).to_string_lossy().into_owned();
        (api.delete_text)(text);
        let confidence = (api.mean_conf)(handle);
        (api.clear)(handle);
        Ok(Recognized { text: out, confidence })
    }
}

/// Read a picture's text into its row: the text and `"text_source":
/// "ocr"` with Tesseract's confidence, languages, resolution and seconds;
/// if OCR cannot run, the reason in `ocr_error` (the row keeps what text it
/// had, and the file is not failed for it).
pub fn read_into(row: &mut sluice_common::schema::Row, picture: Result<(&[u8], u32, u32, usize), NormalizeError>, dpi: u32, languages: &str) {
    let (started, cpu_started) = (std::time::Instant::now(), thread_cpu_seconds());
    let read = picture.and_then(|(gray, w, h, stride)| recognize(gray, w, h, stride, dpi, languages));
    let cpu = thread_cpu_seconds() - cpu_started;
    let meta = row.metadata.get_or_insert_with(|| serde_json::json!({}));
    match read {
        Ok(read) => {
            meta["text_source"] = serde_json::json!("ocr");
            meta["ocr_confidence"] = serde_json::json!(read.confidence);
            meta["ocr_languages"] = serde_json::json!(languages);
            meta["ocr_dpi"] = serde_json::json!(dpi);
            let ms = |s: f64| (s * 1000.0).round() / 1000.0;
            meta["ocr_seconds"] = serde_json::json!(ms(started.elapsed().as_secs_f64()));
            // One thread does all of it (OMP_THREAD_LIMIT=1): its CPU time.
            meta["ocr_cpu_seconds"] = serde_json::json!(ms(cpu));
            row.text = Some(read.text);
        }
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| tracing::warn!(error = %e, "OCR cannot run; pictures of text keep no text"));
            meta["ocr_error"] = serde_json::json!(e.0);
        }
    }
}

/// CPU seconds this thread has used.
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    if ok {
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    } else {
        0.0
    }
}

/// 8-bit gray from 3 or 4 bytes a pixel in `order` (BGR(x) or RGB(x)),
/// rows unpadded (ITU-R BT.601 weights).
pub fn to_gray(pixels: &[u8], bytes_per_pixel: usize, bgr: bool) -> Vec<u8> {
    pixels
        .chunks_exact(bytes_per_pixel)
        .map(|p| {
            let (r, g, b) = if bgr { (p[2], p[1], p[0]) } else { (p[0], p[1], p[2]) };
            ((u32::from(r) * 299 + u32::from(g) * 587 + u32::from(b) * 114 + 500) / 1000) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_weights_colors_as_luma() {
        assert_eq!(to_gray(&[255, 255, 255, 0, 0, 0, 0, 0], 4, true), vec![255, 0]);
        // Pure blue in BGRx and in RGB.
        assert_eq!(to_gray(&[255, 0, 0, 0], 4, true), vec![29]);
        assert_eq!(to_gray(&[0, 0, 255], 3, false), vec![29]);
    }

    #[test]
    fn short_or_empty_pictures_are_refused_before_tesseract() {
        assert!(recognize(&[0; 10], 4, 4, 4, 300, "eng").unwrap_err().0.contains("short"));
        assert!(recognize(&[], 0, 0, 0, 300, "eng").is_err());
    }
}
