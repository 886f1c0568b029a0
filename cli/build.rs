//! Link the binaries with packed relative relocations (`DT_RELR`) where the
//! toolchain has them (GNU ld 2.38+ or lld 15+, glibc 2.36+: Debian 12 and
//! later). `sluice` is a position-independent executable with ~390,000
//! relative relocations: as a plain `.rela.dyn` table that is 9.3 MB the
//! loader reads at every start, resident for the life of the process.
//! Packed, it is 100 KB: the ingest process's pages of the binary went from
//! 70-71 MB to 56-57 MB at its peak and start-up from 51 to 45 ms of CPU,
//! with address-space randomization kept (a non-PIE link saves 4 MB more
//! and gives it up).
//!
//! And lay out the code an ingest runs together, first in the binary, from
//! the symbol ordering files `scripts/code-layout.py` writes to
//! `layout/<profile>/<binary>.order.gz`: see [`code_layout`].

use std::io::Write;
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if linux_gnu && linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    code_layout();
}

const BINARIES: [&str; 3] = ["sluice", "sluice-normalizer", "sluice-normalizer-media"];

/// Hand each binary's symbol ordering file for this profile to the linker.
///
/// The kernel maps a program's code 64 KB at a time around each page it
/// runs, so the code resident in a process is every 64 KB window its
/// functions fall in. In the compiler's order the ~12 MB `sluice` runs in
/// an ingest are spread over ~640 of them (~42 MB resident); laid out
/// together, ~17 MB. Only lld reads these files: rustc links with it on
/// x86_64 Linux since 1.90 unless told to use another linker. Names the
/// binary does not have are skipped: the names hash the crates' build
/// settings and the compiler's version, so a file made with another rustc
/// lays out nothing (a warning says so).
fn code_layout() {
    // The whole directory: a file added to it counts as a change.
    println!("cargo:rerun-if-changed=layout");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let (Some(out), Some(profile)) = (std::env::var_os("OUT_DIR"), profile()) else { return };
    let Some(rustc) = lld_rustc() else { return };
    let dir = std::path::Path::new("layout").join(&profile);
    for bin in BINARIES {
        let packed = dir.join(format!("{bin}.order.gz"));
        let Ok(file) = std::fs::File::open(&packed) else { continue };
        let mut names = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut names) {
            println!("cargo:warning=cannot read {}: {e}", packed.display());
            continue;
        }
        // The first line says which compiler the layout was made with.
        let made_with = names.lines().next().and_then(|l| l.strip_prefix("# ")).unwrap_or("an unknown rustc");
        if made_with != rustc {
            println!(
                "cargo:warning={} was made with {made_with}, this is {rustc}: its code stays in the compiler's order \
                 (scripts/code-layout.py makes a new one)",
                packed.display()
            );
            continue;
        }
        let order = std::path::Path::new(&out).join(format!("{bin}.order"));
        if std::fs::write(&order, names).is_err() {
            continue;
        }
        println!("cargo:rustc-link-arg-bin={bin}=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bin={bin}=-Wl,--no-warn-symbol-ordering");
    }
}

/// The profile being built, from `OUT_DIR` (`<target>/[<triple>/]<profile>/build/<pkg>/out`).
fn profile() -> Option<String> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR")?);
    Some(out.ancestors().nth(3)?.file_name()?.to_str()?.to_string())
}

/// The compiler's version (`rustc 1.95.0 (59807616e 2026-04-14)`) if it
/// links the binaries with its own lld: on x86_64-unknown-linux-gnu from
/// 1.90 on, unless a linker or linker features are set.
fn lld_rustc() -> Option<String> {
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let overridden = std::env::var_os("RUSTC_LINKER").is_some()
        || ["linker", "link-self-contained", "fuse-ld"].iter().any(|flag| flags.contains(flag));
    if target != "x86_64-unknown-linux-gnu" || overridden {
        return None;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let version = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let minor: u32 = version.strip_prefix("rustc 1.")?.split('.').next()?.parse().ok()?;
    (minor >= 90).then_some(version)
}

/// Whether the C toolchain links a program with the flag (an older linker
/// refuses it, or ignores it with a warning, which is harmless).
fn linker_packs_relocations() -> bool {
    let Some(out) = std::env::var_os("OUT_DIR") else { return false };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let probe = std::path::Path::new(&out).join("relr-probe");
    let Ok(mut child) = Command::new(cc)
        .args(["-x", "c", "-", "-o"])
        .arg(&probe)
        .arg("-Wl,-z,pack-relative-relocs")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let fed = child.stdin.take().is_some_and(|mut stdin| stdin.write_all(b"int main(void) { return 0; }\n").is_ok());
    child.wait().is_ok_and(|status| status.success()) && fed
}
