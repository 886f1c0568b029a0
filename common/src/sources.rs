//! Source files in object storage (`s3://`, `gs://`, `az://` URIs) or on
//! web servers (`https://`, `http://`): stores built from the URI and the
//! process environment (credentials never travel in job specs), cached per
//! bucket or host.

use std::collections::HashMap;
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};

use object_store::path::Path;
use object_store::ObjectStore;

use crate::storage::complete_options;
use crate::{Error, Result};

/// Is this a URI of an object store (rather than a local path)?
pub fn is_remote(uri: &str) -> bool {
    uri.contains("://") && !uri.starts_with("file://")
}

/// The store holding `uri` and the object's path in it.
pub fn open(uri: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let url = url::Url::parse(uri).map_err(|e| Error::InvalidInput(format!("bad URI {uri}: {e}")))?;
    let root = format!("{}://{}", url.scheme(), url.authority());
    let path = Path::from_url_path(url.path()).map_err(|e| Error::InvalidInput(format!("bad path in {uri}: {e}")))?;
    let stores = STORES.get_or_init(Mutex::default);
    if let Some(store) = stores.lock().get(&root) {
        return Ok((store.clone(), path));
    }
    let mut options = HashMap::new();
    complete_options(uri, &mut options);
    let root_url = url::Url::parse(&root).map_err(|e| Error::InvalidInput(format!("bad URI {uri}: {e}")))?;
    let (store, _) = object_store::parse_url_opts(&root_url, options)
        .map_err(|e| Error::InvalidInput(format!("cannot use {uri}: {e}")))?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    stores.lock().insert(root, store.clone());
    Ok((store, path))
}

/// `scheme://bucket/` of `uri`, to turn listed object paths back into URIs.
pub fn root_of(uri: &str) -> Result<String> {
    let url = url::Url::parse(uri).map_err(|e| Error::InvalidInput(format!("bad URI {uri}: {e}")))?;
    Ok(format!("{}://{}/", url.scheme(), url.authority()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_scheme_has_a_store() {
        for uri in ["s3://bucket/a/b.mp4", "gs://bucket/a/b.pdf", "https://example.invalid/files/c.txt", "http://127.0.0.1:1/d"] {
            let (_, path) = open(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert!(uri.ends_with(path.as_ref()), "{uri} -> {path}");
        }
        // Azure needs an account: its absence is a clear error, not a panic.
        if std::env::var("AZURE_STORAGE_ACCOUNT_NAME").is_err() {
            let err = open("az://container/x").unwrap_err().to_string();
            assert!(err.contains("cannot use az://container/x"), "{err}");
        }
        assert!(open("ftp://host/x").unwrap_err().to_string().contains("cannot use"));
    }
}
