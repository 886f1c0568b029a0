//! Link the binaries with packed relative relocations (`DT_RELR`) where the
//! toolchain has them (GNU ld 2.38+ or lld 15+, glibc 2.36+: Debian 12 and
//! later). `sluice` is a position-independent executable with ~390,000
//! relative relocations: as a plain `.rela.dyn` table that is 9.3 MB the
//! loader reads at every start, resident for the life of the process.
//! Packed, it is 100 KB: the ingest process's pages of the binary went from
//! 70-71 MB to 56-57 MB at its peak and start-up from 51 to 45 ms of CPU,
//! with address-space randomization kept (a non-PIE link saves 4 MB more
//! and gives it up).

use std::io::Write;
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if linux_gnu && linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
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
