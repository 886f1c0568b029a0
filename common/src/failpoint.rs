//! Named crash points for tests: `SLUICE_FAILPOINTS=after_commit=2` aborts
//! the process (like `kill -9`, no cleanup) the 2nd time `after_commit` is hit.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

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

/// Abort the process here if this failpoint's countdown reaches zero.
pub fn hit(name: &str) {
    let mut map = armed().lock().expect("not poisoned");
    if let Some(left) = map.get_mut(name) {
        *left = left.saturating_sub(1);
        if *left == 0 {
            eprintln!("failpoint {name} hit: aborting");
            std::process::abort();
        }
    }
}
