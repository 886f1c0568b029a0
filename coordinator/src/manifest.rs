//! Job inputs: directories (walked), globs, single files, and manifest files
//! (one path per line). Walking streams into a bounded channel, so the whole
//! file list is never held at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use sluice_common::{pb, sources, Error, Result};
use tokio::sync::mpsc;

/// What the user asked to ingest. Paths may be object-store URIs
/// (`s3://bucket/key` for an object, or a prefix holding objects).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub paths: Vec<String>,
    pub manifest: Option<PathBuf>,
    /// A manifest in object storage: one URI or absolute path per line
    /// (`.csv`: the first column, with an optional `uri`/`path` header).
    pub remote_manifest: Option<String>,
    /// When set, local files are read only below these directories
    /// (symlinks resolved): a job cannot reach anything else on the machine.
    pub allowed_roots: Option<Vec<PathBuf>>,
}

/// Is `path` (resolved) below one of `roots`? Roots are canonical.
pub fn within_roots(path: &Path, roots: &[PathBuf]) -> bool {
    std::fs::canonicalize(path).is_ok_and(|real| roots.iter().any(|r| real.starts_with(r)))
}

/// One entry of the walk: a file to ingest, or an input that cannot be.
#[derive(Debug, Clone)]
pub enum Planned {
    File(pb::FileRef),
    Bad { uri: String, reason: String },
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Fail fast on inputs that cannot be right (typos), before any work starts.
pub fn validate(inputs: &Inputs) -> Result<()> {
    if inputs.paths.is_empty() && inputs.manifest.is_none() && inputs.remote_manifest.is_none() {
        return Err(Error::InvalidInput("nothing to ingest: give paths, globs or --manifest".into()));
    }
    for p in inputs.paths.iter().filter(|p| !sources::is_remote(p)) {
        if !is_glob(p) && std::fs::symlink_metadata(p).is_err() {
            return Err(Error::InvalidInput(format!("input path {p} does not exist")));
        }
        if is_glob(p) {
            glob::Pattern::new(p).map_err(|e| Error::InvalidInput(format!("bad glob {p}: {e}")))?;
        }
    }
    if let Some(m) = &inputs.manifest {
        let meta = std::fs::metadata(m)
            .map_err(|e| Error::InvalidInput(format!("manifest {}: {e}", m.display())))?;
        if meta.is_dir() {
            return Err(Error::InvalidInput(format!("manifest {} is a directory, not a file", m.display())));
        }
    }
    Ok(())
}

pub fn file_uri(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", abs.display())
}

struct Walker<'a> {
    tx: &'a mpsc::Sender<Planned>,
    exclude: Option<PathBuf>,
    seen: HashSet<u64>,
    roots: Option<&'a [PathBuf]>,
}

impl Walker<'_> {
    fn emit(&mut self, p: Planned) -> bool {
        if let Planned::File(f) = &p {
            if !self.seen.insert(sluice_common::ids::uri_key(&f.uri)) {
                return true;
            }
        }
        self.tx.blocking_send(p).is_ok()
    }

    fn bad(&mut self, path: &Path, reason: String) -> bool {
        self.emit(Planned::Bad { uri: file_uri(path), reason })
    }

    /// A path named directly (argument or manifest line).
    fn named(&mut self, path: &Path, walk_dirs: bool) -> bool {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() && walk_dirs => self.dir(path),
            Ok(m) if m.is_dir() => self.bad(path, "is a directory, not a file".into()),
            Ok(m) if m.is_file() => self.file(path, &m),
            Ok(_) => self.bad(path, "not a regular file".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let reason = if std::fs::symlink_metadata(path).is_ok() { "broken symlink" } else { "no such file" };
                self.bad(path, reason.into())
            }
            Err(e) => self.bad(path, format!("cannot stat: {e}")),
        }
    }

    fn file(&mut self, path: &Path, m: &std::fs::Metadata) -> bool {
        if self.roots.is_some_and(|roots| !within_roots(path, roots)) {
            return self.bad(path, "outside the allowed roots".into());
        }
        let modified_ms = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        self.emit(Planned::File(pb::FileRef { uri: file_uri(path), size: m.len(), modified_ms, ..Default::default() }))
    }

    fn dir(&mut self, root: &Path) -> bool {
        let exclude = self.exclude.clone();
        let walk = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(move |e| {
                let hidden = e.depth() > 0 && e.file_name().to_string_lossy().starts_with('.');
                let excluded = exclude.as_ref().is_some_and(|x| std::path::absolute(e.path()).is_ok_and(|p| p == *x));
                !hidden && !excluded
            });
        for entry in walk {
            let ok = match entry {
                Ok(e) if e.file_type().is_dir() => true,
                Ok(e) => match e.metadata() {
                    Ok(m) if m.is_file() => self.file(e.path(), &m),
                    // FIFOs, sockets, devices: reported, never opened.
                    Ok(_) => self.bad(e.path(), "not a regular file".into()),
                    Err(err) => self.bad(e.path(), err.to_string()),
                },
                Err(err) => {
                    let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
                    let reason = if err.loop_ancestor().is_some() {
                        "symlink loop".to_string()
                    } else {
                        err.io_error().map_or_else(|| err.to_string(), |e| e.to_string())
                    };
                    self.bad(&path, reason)
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// Walk every input, sending files (and bad inputs) in a stable order.
/// `exclude` is skipped (the table itself, when it lives under an input).
/// Runs on a blocking thread.
pub fn walk(inputs: &Inputs, exclude: Option<PathBuf>, tx: mpsc::Sender<Planned>) -> Result<()> {
    let mut w = Walker { tx: &tx, exclude, seen: HashSet::new(), roots: inputs.allowed_roots.as_deref() };
    for p in inputs.paths.iter().filter(|p| !sources::is_remote(p)) {
        if is_glob(p) {
            let paths = glob::glob(p).map_err(|e| Error::InvalidInput(format!("bad glob {p}: {e}")))?;
            for entry in paths {
                let ok = match entry {
                    Ok(path) => w.named(&path, true),
                    Err(e) => {
                        let path = e.path().to_path_buf();
                        w.bad(&path, e.error().to_string())
                    }
                };
                if !ok {
                    return Ok(());
                }
            }
        } else if !w.named(Path::new(p), true) {
            return Ok(());
        }
    }
    if let Some(m) = &inputs.manifest {
        use std::io::BufRead;
        let base = std::env::current_dir()?;
        let reader = std::io::BufReader::new(std::fs::File::open(m)?);
        for line in reader.lines() {
            let line = line?;
            let entry = line.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            if sources::is_remote(entry) {
                // Object-store and web URIs are walked by `walk_remote`.
                continue;
            }
            let path = base.join(entry.strip_prefix("file://").unwrap_or(entry));
            if !w.named(&path, false) {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn remote_file(root: &str, m: &object_store::ObjectMeta) -> Planned {
    Planned::File(pb::FileRef {
        uri: format!("{root}{}", m.location),
        size: m.size,
        modified_ms: m.last_modified.timestamp_millis(),
        ..Default::default()
    })
}

/// One object-store URI: the object itself, or else every object below it
/// as a prefix, listed page by page as the store returns them.
async fn walk_remote_uri(uri: &str, tx: &mpsc::Sender<Planned>, seen: &mut HashSet<u64>) -> Result<bool> {
    let (store, path) = sources::open(uri)?;
    let root = sources::root_of(uri)?;
    let send = |p: Planned, seen: &mut HashSet<u64>| {
        let fresh = match &p {
            Planned::File(f) => seen.insert(sluice_common::ids::uri_key(&f.uri)),
            Planned::Bad { .. } => true,
        };
        let tx = tx.clone();
        async move { !fresh || tx.send(p).await.is_ok() }
    };
    if !uri.ends_with('/') {
        match store.head(&path).await {
            Ok(m) => return Ok(send(remote_file(&root, &m), seen).await),
            // A web server has no prefixes to fall back to.
            Err(object_store::Error::NotFound { .. }) if uri.starts_with("http://") || uri.starts_with("https://") => {
                return Ok(send(Planned::Bad { uri: uri.to_string(), reason: "no such file (404)".into() }, seen).await);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Ok(send(Planned::Bad { uri: uri.to_string(), reason: format!("cannot stat: {e}") }, seen).await),
        }
    }
    let mut listed = store.list(Some(&path));
    let mut any = false;
    while let Some(item) = listed.next().await {
        let m = item.map_err(|e| {
            if uri.starts_with("http://") || uri.starts_with("https://") {
                Error::InvalidInput(format!(
                    "cannot list {uri}: HTTP sources are listed only from WebDAV servers; name the files or use a manifest ({e})"
                ))
            } else {
                Error::Link(format!("listing {uri}: {e}"))
            }
        })?;
        any = true;
        if !send(remote_file(&root, &m), seen).await {
            return Ok(false);
        }
    }
    if !any {
        return Ok(send(Planned::Bad { uri: uri.to_string(), reason: "no such object or prefix".into() }, seen).await);
    }
    Ok(true)
}

/// The object-store parts of the inputs: URIs among the paths, and a
/// manifest kept in object storage (read as a stream, a line at a time).
pub async fn walk_remote(inputs: &Inputs, tx: mpsc::Sender<Planned>) -> Result<()> {
    let mut seen = HashSet::new();
    for uri in inputs.paths.iter().filter(|p| sources::is_remote(p)) {
        if !walk_remote_uri(uri, &tx, &mut seen).await? {
            return Ok(());
        }
    }
    if let Some(local) = &inputs.manifest {
        // The URIs a local manifest names (its paths were walked by `walk`).
        let file = tokio::fs::File::open(local).await?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(file));
        while let Some(line) = lines.next_line().await? {
            let entry = line.trim();
            if sources::is_remote(entry) && !walk_remote_uri(entry, &tx, &mut seen).await? {
                return Ok(());
            }
        }
    }
    let Some(manifest) = &inputs.remote_manifest else { return Ok(()) };
    let (store, path) = sources::open(manifest)?;
    let body = store.get(&path).await.map_err(|e| Error::InvalidInput(format!("manifest {manifest}: {e}")))?;
    let reader = tokio_util::io::StreamReader::new(body.into_stream().map(|r| r.map_err(std::io::Error::other)));
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(reader));
    let csv = manifest.ends_with(".csv");
    let mut first = true;
    while let Some(line) = lines.next_line().await.map_err(|e| Error::Link(format!("reading manifest {manifest}: {e}")))? {
        let mut entry = line.trim();
        if csv {
            entry = entry.split(',').next().unwrap_or_default().trim().trim_matches('"');
            let header = first && ["uri", "path", "url"].contains(&entry.to_ascii_lowercase().as_str());
            first = false;
            if header {
                continue;
            }
        }
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let ok = if sources::is_remote(entry) {
            walk_remote_uri(entry.trim_end_matches('/'), &tx, &mut seen).await?
        } else {
            let path = PathBuf::from(entry.strip_prefix("file://").unwrap_or(entry));
            let outside = inputs.allowed_roots.as_ref().is_some_and(|roots| !within_roots(&path, roots));
            let planned = match tokio::fs::metadata(&path).await {
                Ok(_) if outside => Planned::Bad { uri: file_uri(&path), reason: "outside the allowed roots".into() },
                Ok(m) if m.is_file() => Planned::File(pb::FileRef {
                    uri: file_uri(&path),
                    size: m.len(),
                    modified_ms: m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64),
                    ..Default::default()
                }),
                Ok(_) => Planned::Bad { uri: file_uri(&path), reason: "not a regular file".into() },
                Err(_) => Planned::Bad { uri: file_uri(&path), reason: "no such file".into() },
            };
            let fresh = match &planned {
                Planned::File(f) => seen.insert(sluice_common::ids::uri_key(&f.uri)),
                Planned::Bad { .. } => true,
            };
            !fresh || tx.send(planned).await.is_ok()
        };
        if !ok {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(inputs: &Inputs) -> Vec<Planned> {
        let (tx, mut rx) = mpsc::channel(1000);
        let inputs = inputs.clone();
        std::thread::spawn(move || walk(&inputs, None, tx).unwrap()).join().unwrap();
        let mut out = Vec::new();
        while let Ok(p) = rx.try_recv() {
            out.push(p);
        }
        out
    }

    #[test]
    fn walks_dirs_globs_and_manifests_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("a.txt"), "a").unwrap();
        std::fs::write(d.join("sub/b.txt"), "b").unwrap();
        std::fs::write(d.join(".hidden"), "h").unwrap();
        let manifest = d.join("list.txt");
        std::fs::write(&manifest, format!("{}\n# comment\n{}\n{}\n", d.join("a.txt").display(), d.join("nope").display(), d.join("sub").display())).unwrap();

        let got = collect(&Inputs { paths: vec![d.join("sub").display().to_string()], manifest: Some(manifest), ..Default::default() });
        let files: Vec<_> = got.iter().filter_map(|p| if let Planned::File(f) = p { Some(f.uri.clone()) } else { None }).collect();
        let bad: Vec<_> = got.iter().filter_map(|p| if let Planned::Bad { reason, .. } = p { Some(reason.clone()) } else { None }).collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(bad.contains(&"no such file".to_string()), "{bad:?}");
        assert!(bad.contains(&"is a directory, not a file".to_string()), "{bad:?}");

        let all = collect(&Inputs { paths: vec![d.display().to_string()], manifest: None, ..Default::default() });
        assert_eq!(all.len(), 3, "hidden files are skipped: {all:?}");

        let globbed = collect(&Inputs { paths: vec![format!("{}/*.txt", d.display())], manifest: None, ..Default::default() });
        assert_eq!(globbed.len(), 2);
    }

    #[test]
    fn missing_inputs_fail_before_work() {
        let e = validate(&Inputs { paths: vec!["/definitely/not/here".into()], manifest: None, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("does not exist"));
        assert!(validate(&Inputs::default()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_are_reported_not_followed_forever() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("d/loop")).unwrap();
        std::fs::write(dir.path().join("d/f.txt"), "x").unwrap();
        let got = collect(&Inputs { paths: vec![dir.path().display().to_string()], manifest: None, ..Default::default() });
        assert!(got.iter().any(|p| matches!(p, Planned::Bad { reason, .. } if reason == "symlink loop")), "{got:?}");
    }
}
