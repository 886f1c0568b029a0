//! `sluice-normalizer-media`: the normalizer process for video, audio,
//! the images only FFmpeg's decoders read, and probes of files without
//! magic bytes (it serves PDFs too). The only sluice binary that links
//! FFmpeg. See `sluice-normalizer` for the one without.

#[path = "../logs.rs"]
mod logs;
#[path = "../normalizer_main.rs"]
mod normalizer_main;

/// `sluice-normalizer-media bare-remux OUT_DIR FILE...`: the baseline of
/// `sluice bench-media`, the plainest ffmpeg-next remux of each file into
/// `OUT_DIR`; prints the seconds the remuxes took (not the process start).
const BARE_REMUX: &str = "bare-remux";

fn main() {
    sluice_media::install();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let [mode, out_dir, files @ ..] = args.as_slice() {
        if mode == BARE_REMUX {
            let out_dir = std::path::Path::new(out_dir);
            let started = std::time::Instant::now();
            for (i, file) in files.iter().enumerate() {
                if let Err(e) = sluice_media::bare_remux(file.as_ref(), &out_dir.join(format!("remux-{i}.mkv"))) {
                    eprintln!("bare remux of {}: {e}", file.to_string_lossy());
                    std::process::exit(1);
                }
            }
            println!("{}", started.elapsed().as_secs_f64());
            std::process::exit(0);
        }
    }
    normalizer_main::run("sluice-normalizer-media");
}
