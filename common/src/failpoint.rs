//! Named fault points for tests. `SLUICE_FAILPOINTS=after_commit=2` makes the
//! 2nd [`hit`] of `after_commit` abort the process (like `kill -9`, no
//! cleanup); `fragment_write=3` makes the 3rd [`fails`] of `fragment_write`
//! return true, so the caller injects an error there.
//!
//! Only with the `testing` feature; without it every failpoint is inert.

#[cfg(feature = "testing")]
use parking_lot::Mutex;
#[cfg(feature = "testing")]
use std::collections::HashMap;
#[cfg(feature = "testing")]
use std::sync::OnceLock;

#[cfg(feature = "testing")]
fn armed() -> &'static Mutex<HashMap<String, u64>> {
    static ARMED: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var("SLUICE_FAILPOINTS").unwrap_or_default();
        let map = spec
            .split(',')
            .filter_map(|p| p.split_once('='))
            .filter_map(|(name, n)| Some((name.trim().to_string(), n.trim().parse().ok()?)))
            .collect();
        Mutex::new(map)
    })
}

/// Count down this failpoint; true exactly when it reaches zero.
#[cfg(feature = "testing")]
pub fn fails(name: &str) -> bool {
    let mut map = armed().lock();
    match map.get_mut(name) {
        Some(left) if *left > 0 => {
            *left -= 1;
            *left == 0
        }
        _ => false,
    }
}

/// Never: this build has no test hooks.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub fn fails(_name: &str) -> bool {
    false
}

/// Abort the process here if this failpoint's countdown reaches zero.
pub fn hit(name: &str) {
    if fails(name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}
