//! Flags that say how to reach a table's object store.

use std::collections::HashMap;

use anyhow::{bail, Result};
use sluice_common::storage::{complete_options, TableLocation};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct StorageArgs {
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 [env: AWS_ENDPOINT_URL]
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region [env: AWS_REGION]
    #[arg(long)]
    pub s3_region: Option<String>,
    /// S3 access key id [env: AWS_ACCESS_KEY_ID]
    #[arg(long)]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key [env: AWS_SECRET_ACCESS_KEY]
    #[arg(long)]
    pub s3_secret_access_key: Option<String>,
    /// Allow plain-HTTP endpoints
    #[arg(long)]
    pub s3_allow_http: bool,
    /// Any other object-store option, KEY=VALUE (repeatable)
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    pub storage_options: Vec<String>,
    /// Object-store options as a JSON object (kept out of the command line,
    /// where other users could read credentials); flags win
    #[arg(long, env = "SLUICE_STORAGE_OPTIONS", hide_env_values = true, value_name = "JSON")]
    pub storage_options_json: Option<String>,
}

impl StorageArgs {
    pub fn location(&self, uri: &str) -> Result<TableLocation> {
        let mut opts: HashMap<String, String> = match &self.storage_options_json {
            Some(json) => serde_json::from_str(json).map_err(|e| anyhow::anyhow!("storage options are not a JSON object of strings: {e}"))?,
            None => HashMap::new(),
        };
        for kv in &self.storage_options {
            let Some((k, v)) = kv.split_once('=') else { bail!("--storage-option {kv}: expected KEY=VALUE") };
            opts.insert(k.to_string(), v.to_string());
        }
        let flags = [
            ("aws_endpoint", &self.s3_endpoint),
            ("aws_region", &self.s3_region),
            ("aws_access_key_id", &self.s3_access_key_id),
            ("aws_secret_access_key", &self.s3_secret_access_key),
        ];
        for (k, v) in flags {
            if let Some(v) = v {
                opts.insert(k.to_string(), v.clone());
            }
        }
        if self.s3_allow_http {
            opts.insert("allow_http".into(), "true".into());
        }
        complete_options(uri, &mut opts);
        Ok(TableLocation::new(uri, opts)?)
    }
}
