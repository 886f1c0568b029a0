//! Logs to stderr: `SLUICE_LOG` filters (tracing's env-filter syntax),
//! `SLUICE_LOG_FORMAT=json` writes one JSON object per line (job and shard
//! ids as fields).

pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
}
