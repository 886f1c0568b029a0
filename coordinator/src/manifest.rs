//! Job inputs: directories (walked), globs, single files, and manifest files
//! (one path per line; CSV with a header, or JSON lines, carrying per-file
//! values). Walking streams into a bounded channel, so the whole file list
//! is never held at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use sluice_common::protocol::FileRef;
use sluice_common::{sources, Error, Result};
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
    /// Per-file values of `paths` (a JSON object each, "" for none), in the
    /// same order; empty when no path has any. A directory's values go to
    /// every file below it.
    pub attributes: Vec<String>,
    /// `paths` is a list of files (the job API's inline list): one that is
    /// missing is a failed file with its reason, not a typo that stops the job.
    pub listed: bool,
}

impl Inputs {
    fn attributes_of(&self, index: usize) -> &str {
        self.attributes.get(index).map_or("", String::as_str)
    }
}

/// How a manifest's lines read, known by its name: `.csv` (the first column
/// is the path; when a header names it `path`, `uri`, `url` or `file`, the
/// other columns are per-file values), `.jsonl` / `.ndjson` (one object per
/// line: `path` and per-file values), otherwise one path or URI per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    Lines,
    Csv,
    Jsonl,
}

impl ManifestFormat {
    pub fn of(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Self::Csv
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Self::Jsonl
        } else {
            Self::Lines
        }
    }
}

/// One manifest entry: a path or URI and its per-file values (JSON object
/// text, empty when it has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: String,
    pub attributes: String,
}

/// Names a CSV manifest's first column may have in its header.
const PATH_HEADERS: [&str; 5] = ["path", "uri", "url", "file", "filename"];

/// Reads a manifest's lines into entries, remembering a CSV header.
#[derive(Debug)]
pub struct ManifestReader {
    format: ManifestFormat,
    header: Option<Vec<String>>,
    first: bool,
}

impl ManifestReader {
    pub fn new(format: ManifestFormat) -> Self {
        Self { format, header: None, first: true }
    }

    /// Column names a CSV header gave beyond the path.
    pub fn header_columns(&self) -> Option<&[String]> {
        self.header.as_deref().map(|h| &h[1..])
    }

    /// The entry on `line`: `Ok(None)` for blank lines, comments and a
    /// header, `Err` with the reason for a line that cannot be read.
    pub fn entry(&mut self, line: &str) -> std::result::Result<Option<Entry>, String> {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Ok(None);
        }
        let first = std::mem::replace(&mut self.first, false);
        match self.format {
            ManifestFormat::Lines => Ok(Some(Entry { path: trimmed.to_string(), attributes: String::new() })),
            ManifestFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(trimmed.as_bytes());
                let record = match reader.records().next() {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => return Err(format!("bad CSV line: {e}")),
                    None => return Ok(None),
                };
                let fields: Vec<&str> = record.iter().map(str::trim).collect();
                if first && PATH_HEADERS.contains(&fields[0].to_ascii_lowercase().as_str()) {
                    self.header = Some(fields.iter().map(|f| f.to_string()).collect());
                    return Ok(None);
                }
                let mut values = serde_json::Map::new();
                if let Some(header) = &self.header {
                    if fields.len() > header.len() {
                        return Err(format!("{} fields, but the header names {}", fields.len(), header.len()));
                    }
                    for (name, value) in header.iter().zip(&fields).skip(1).filter(|(_, v)| !v.is_empty()) {
                        values.insert(name.clone(), serde_json::Value::String(value.to_string()));
                    }
                }
                let attributes = if values.is_empty() { String::new() } else { serde_json::Value::Object(values).to_string() };
                Ok(Some(Entry { path: fields[0].to_string(), attributes }))
            }
            ManifestFormat::Jsonl => {
                let mut object = match serde_json::from_str::<serde_json::Value>(trimmed) {
                    Ok(serde_json::Value::Object(m)) => m,
                    Ok(_) => return Err("not a JSON object".into()),
                    Err(e) => return Err(format!("bad JSON: {e}")),
                };
                let key = ["path", "uri", "url"].into_iter().find(|k| object.contains_key(*k));
                let path = match key.and_then(|k| object.remove(k)) {
                    Some(serde_json::Value::String(p)) if !p.trim().is_empty() => p.trim().to_string(),
                    _ => return Err("no \"path\" string in the object".into()),
                };
                let attributes = if object.is_empty() { String::new() } else { serde_json::Value::Object(object).to_string() };
                Ok(Some(Entry { path, attributes }))
            }
        }
    }
}

/// A manifest line that could not be read, as a failed "file".
fn bad_line(manifest: &str, number: usize, reason: String) -> Planned {
    Planned::Bad { uri: format!("{manifest}#L{number}"), reason: format!("manifest line {number}: {reason}") }
}

/// Per-file value columns the inputs imply when the job declares none:
/// inferred from inline values, from a CSV manifest's header (text), or
/// from a JSON-lines manifest's first entry.
pub async fn attribute_columns(inputs: &Inputs) -> Result<Vec<sluice_common::insert::ColumnDef>> {
    use sluice_common::attributes;
    if inputs.attributes.iter().any(|a| !a.is_empty()) {
        let values = inputs
            .attributes
            .iter()
            .filter(|a| !a.is_empty())
            .map(|a| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(a))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        return Ok(attributes::infer(&values));
    }
    let (name, lines): (String, Vec<String>) = if let Some(m) = &inputs.manifest {
        use std::io::BufRead;
        let file = std::fs::File::open(m).map_err(|e| Error::InvalidInput(format!("manifest {}: {e}", m.display())))?;
        let lines = std::io::BufReader::new(file).lines().take(HEAD_LINES).collect::<std::io::Result<_>>()?;
        (m.display().to_string(), lines)
    } else if let Some(m) = &inputs.remote_manifest {
        let (store, path) = sources::open(m)?;
        let body = store.get(&path).await.map_err(|e| Error::InvalidInput(format!("manifest {m}: {e}")))?;
        let reader = tokio_util::io::StreamReader::new(body.into_stream().map(|r| r.map_err(std::io::Error::other)));
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(reader));
        let mut head = Vec::new();
        while head.len() < HEAD_LINES {
            match lines.next_line().await.map_err(|e| Error::Unavailable(format!("reading manifest {m}: {e}")))? {
                Some(l) => head.push(l),
                None => break,
            }
        }
        (m.clone(), head)
    } else {
        return Ok(Vec::new());
    };
    let mut reader = ManifestReader::new(ManifestFormat::of(&name));
    for line in &lines {
        if let Ok(Some(entry)) = reader.entry(line) {
            if let Some(header) = reader.header_columns() {
                return Ok(attributes::text_columns(header));
            }
            if entry.attributes.is_empty() {
                return Ok(Vec::new());
            }
            let first: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&entry.attributes)?;
            return Ok(attributes::infer([&first]));
        }
    }
    Ok(reader.header_columns().map(attributes::text_columns).unwrap_or_default())
}

/// Lines read from the head of a manifest to find its columns.
const HEAD_LINES: usize = 1000;

/// Is `path` (resolved) below one of `roots`? Roots are canonical.
pub fn within_roots(path: &Path, roots: &[PathBuf]) -> bool {
    std::fs::canonicalize(path).is_ok_and(|real| roots.iter().any(|r| real.starts_with(r)))
}

/// One entry of the walk: a file to ingest, or an input that cannot be.
#[derive(Debug, Clone)]
pub enum Planned {
    File(FileRef),
    Bad { uri: String, reason: String },
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files already planned, so that inputs naming one file twice (a
/// directory and a glob inside it, a manifest listing a line twice) plan
/// it once. A single directory, prefix or file cannot repeat a name, so
/// then nothing is kept: a job's walk holds no per-file state unless its
/// inputs need it.
struct Seen(Option<HashSet<u64>>);

impl Seen {
    fn for_inputs(inputs: &Inputs) -> Self {
        let single = inputs.paths.len() == 1
            && !is_glob(&inputs.paths[0])
            && inputs.manifest.is_none()
            && inputs.remote_manifest.is_none();
        Self((!single).then(HashSet::new))
    }

    /// Whether `p` is new (failures always are).
    fn fresh(&mut self, p: &Planned) -> bool {
        match (p, &mut self.0) {
            (Planned::File(f), Some(seen)) => seen.insert(sluice_common::ids::uri_key(&f.uri)),
            _ => true,
        }
    }
}

/// Fail fast on inputs that cannot be right (typos), before any work starts.
pub fn validate(inputs: &Inputs) -> Result<()> {
    if inputs.paths.is_empty() && inputs.manifest.is_none() && inputs.remote_manifest.is_none() {
        return Err(Error::InvalidInput("nothing to ingest: give paths, globs or --manifest".into()));
    }
    for p in inputs.paths.iter().filter(|p| !sources::is_remote(p)) {
        if !is_glob(p) && !inputs.listed && std::fs::symlink_metadata(p).is_err() {
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
    seen: Seen,
    roots: Option<&'a [PathBuf]>,
    /// Per-file values of the input being walked.
    attributes: String,
}

impl Walker<'_> {
    fn emit(&mut self, p: Planned) -> bool {
        if !self.seen.fresh(&p) {
            return true;
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
        let attributes = self.attributes.clone();
        self.emit(Planned::File(FileRef { uri: file_uri(path), size: m.len(), modified_ms, attributes, ..Default::default() }))
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
    let mut w = Walker { tx: &tx, exclude, seen: Seen::for_inputs(inputs), roots: inputs.allowed_roots.as_deref(), attributes: String::new() };
    for (i, p) in inputs.paths.iter().enumerate().filter(|(_, p)| !sources::is_remote(p)) {
        w.attributes = inputs.attributes_of(i).to_string();
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
        let name = file_uri(m);
        let mut manifest = ManifestReader::new(ManifestFormat::of(&name));
        let reader = std::io::BufReader::new(std::fs::File::open(m)?);
        for line in reader.lines() {
            let ok = match manifest.entry(&line?) {
                Ok(None) => true,
                // Reported once, by `walk_remote`, which reads every line too.
                Err(_) => true,
                // Object-store and web URIs are walked by `walk_remote`.
                Ok(Some(e)) if sources::is_remote(&e.path) => true,
                Ok(Some(e)) => {
                    w.attributes = e.attributes;
                    let path = base.join(e.path.strip_prefix("file://").unwrap_or(&e.path));
                    w.named(&path, false)
                }
            };
            if !ok {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn remote_file(root: &str, m: &object_store::ObjectMeta, attributes: &str) -> Planned {
    Planned::File(FileRef {
        uri: format!("{root}{}", m.location),
        size: m.size,
        modified_ms: m.last_modified.timestamp_millis(),
        attributes: attributes.to_string(),
        ..Default::default()
    })
}

/// One object-store URI: the object itself, or else every object below it
/// as a prefix, listed page by page as the store returns them.
async fn walk_remote_uri(uri: &str, attributes: &str, tx: &mpsc::Sender<Planned>, seen: &mut Seen) -> Result<bool> {
    let (store, path) = sources::open(uri)?;
    let root = sources::root_of(uri)?;
    let send = |p: Planned, seen: &mut Seen| {
        let fresh = seen.fresh(&p);
        let tx = tx.clone();
        async move { !fresh || tx.send(p).await.is_ok() }
    };
    if !uri.ends_with('/') {
        match store.head(&path).await {
            Ok(m) => return Ok(send(remote_file(&root, &m, attributes), seen).await),
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
                Error::Unavailable(format!("listing {uri}: {e}"))
            }
        })?;
        any = true;
        if !send(remote_file(&root, &m, attributes), seen).await {
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
    let mut seen = Seen::for_inputs(inputs);
    for (i, uri) in inputs.paths.iter().enumerate().filter(|(_, p)| sources::is_remote(p)) {
        if !walk_remote_uri(uri, inputs.attributes_of(i), &tx, &mut seen).await? {
            return Ok(());
        }
    }
    if let Some(local) = &inputs.manifest {
        // The URIs a local manifest names (its paths were walked by `walk`),
        // and its lines that cannot be read.
        let name = file_uri(local);
        let mut manifest = ManifestReader::new(ManifestFormat::of(&name));
        let file = tokio::fs::File::open(local).await?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(file));
        let mut number = 0;
        while let Some(line) = lines.next_line().await? {
            number += 1;
            let ok = match manifest.entry(&line) {
                Err(reason) => tx.send(bad_line(&name, number, reason)).await.is_ok(),
                Ok(Some(e)) if sources::is_remote(&e.path) => walk_remote_uri(&e.path, &e.attributes, &tx, &mut seen).await?,
                Ok(_) => true,
            };
            if !ok {
                return Ok(());
            }
        }
    }
    let Some(manifest) = &inputs.remote_manifest else { return Ok(()) };
    let (store, path) = sources::open(manifest)?;
    let body = store.get(&path).await.map_err(|e| Error::InvalidInput(format!("manifest {manifest}: {e}")))?;
    let reader = tokio_util::io::StreamReader::new(body.into_stream().map(|r| r.map_err(std::io::Error::other)));
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(reader));
    let mut entries = ManifestReader::new(ManifestFormat::of(manifest));
    let mut number = 0;
    while let Some(line) = lines.next_line().await.map_err(|e| Error::Unavailable(format!("reading manifest {manifest}: {e}")))? {
        number += 1;
        let entry = match entries.entry(&line) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(reason) => {
                if tx.send(bad_line(manifest, number, reason)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let ok = if sources::is_remote(&entry.path) {
            walk_remote_uri(entry.path.trim_end_matches('/'), &entry.attributes, &tx, &mut seen).await?
        } else {
            let path = PathBuf::from(entry.path.strip_prefix("file://").unwrap_or(&entry.path));
            let outside = inputs.allowed_roots.as_ref().is_some_and(|roots| !within_roots(&path, roots));
            let planned = match tokio::fs::metadata(&path).await {
                Ok(_) if outside => Planned::Bad { uri: file_uri(&path), reason: "outside the allowed roots".into() },
                Ok(m) if m.is_file() => Planned::File(FileRef {
                    uri: file_uri(&path),
                    size: m.len(),
                    modified_ms: m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64),
                    attributes: entry.attributes,
                    ..Default::default()
                }),
                Ok(_) => Planned::Bad { uri: file_uri(&path), reason: "not a regular file".into() },
                Err(_) => Planned::Bad { uri: file_uri(&path), reason: "no such file".into() },
            };
            let fresh = seen.fresh(&planned);
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
    fn overlapping_inputs_plan_a_file_once_and_a_single_input_keeps_no_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), "a").unwrap();
        std::fs::write(d.join("b.txt"), "b").unwrap();
        let manifest = d.join("list.txt");
        let a = d.join("a.txt").display().to_string();
        std::fs::write(&manifest, format!("{a}\n{a}\n")).unwrap();
        let paths = vec![d.display().to_string(), format!("{}/*.txt", d.display()), a.clone()];
        let overlapping = Inputs { paths, manifest: Some(manifest), ..Default::default() };
        let mut uris: Vec<_> = collect(&overlapping)
            .into_iter()
            .filter_map(|p| if let Planned::File(f) = p { Some(f.uri) } else { None })
            .collect();
        uris.sort();
        // The directory also holds the manifest itself.
        assert_eq!(uris.len(), 3, "each file once: {uris:?}");
        assert!(Seen::for_inputs(&overlapping).0.is_some());

        for single in [d.display().to_string(), a, "s3://bucket/prefix/".to_string()] {
            assert!(Seen::for_inputs(&Inputs { paths: vec![single.clone()], ..Default::default() }).0.is_none(), "{single}");
        }
        let glob = Inputs { paths: vec![format!("{}/*", d.display())], ..Default::default() };
        assert!(Seen::for_inputs(&glob).0.is_some(), "a glob may match a directory and the files in it");
    }

    #[test]
    fn manifests_carry_per_file_values() {
        let mut csv = ManifestReader::new(ManifestFormat::of("files.CSV"));
        assert_eq!(csv.entry("path,label,split").unwrap(), None);
        assert_eq!(csv.header_columns().unwrap(), ["label", "split"]);
        let e = csv.entry("/d/a.mp4,\"cat, black\",").unwrap().unwrap();
        assert_eq!((e.path.as_str(), e.attributes.as_str()), ("/d/a.mp4", r#"{"label":"cat, black"}"#));
        assert!(csv.entry("/d/b.mp4,x,y,z").unwrap_err().contains("header names 3"));

        // Without a header, extra CSV columns are ignored (as before).
        let mut plain = ManifestReader::new(ManifestFormat::Csv);
        assert_eq!(plain.entry("/d/a.mp4,7").unwrap().unwrap().attributes, "");

        let mut jsonl = ManifestReader::new(ManifestFormat::of("m.jsonl"));
        let e = jsonl.entry(r#"{"path": "/d/a.pdf", "pages": 3}"#).unwrap().unwrap();
        assert_eq!((e.path.as_str(), e.attributes.as_str()), ("/d/a.pdf", r#"{"pages":3}"#));
        assert!(jsonl.entry("[1]").unwrap_err().contains("not a JSON object"));
        assert!(jsonl.entry(r#"{"label": 1}"#).unwrap_err().contains("no \"path\""));
        assert_eq!(jsonl.entry("  # comment").unwrap(), None);
    }

    #[tokio::test]
    async fn columns_come_from_header_first_entry_or_inline_values() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("m.csv");
        std::fs::write(&csv, "# files\npath,label\n/a,cat\n").unwrap();
        let cols = attribute_columns(&Inputs { manifest: Some(csv), ..Default::default() }).await.unwrap();
        assert_eq!(cols.iter().map(|c| (c.name.as_str(), c.ty.as_str())).collect::<Vec<_>>(), [("label", "string")]);
        let jsonl = dir.path().join("m.jsonl");
        std::fs::write(&jsonl, "{\"path\": \"/a\", \"n\": 1, \"ok\": true}\n").unwrap();
        let cols = attribute_columns(&Inputs { manifest: Some(jsonl), ..Default::default() }).await.unwrap();
        assert_eq!(cols.iter().map(|c| (c.name.as_str(), c.ty.as_str())).collect::<Vec<_>>(), [("n", "int64"), ("ok", "bool")]);
        let inline = Inputs { paths: vec!["/a".into(), "/b".into()], attributes: vec![r#"{"s": 1}"#.into(), r#"{"s": 1.5}"#.into()], ..Default::default() };
        assert_eq!(attribute_columns(&inline).await.unwrap()[0].ty, "float64");
        assert!(attribute_columns(&Inputs { paths: vec!["/a".into()], ..Default::default() }).await.unwrap().is_empty());
    }

    #[test]
    fn walked_files_carry_their_input_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("b.txt"), "b").unwrap();
        let manifest = dir.path().join("m.jsonl");
        std::fs::write(&manifest, format!("{{\"path\": \"{}\", \"label\": \"bee\"}}\n", dir.path().join("b.txt").display())).unwrap();
        let inputs = Inputs {
            paths: vec![dir.path().join("d").display().to_string()],
            attributes: vec![r#"{"label":"dir"}"#.into()],
            manifest: Some(manifest),
            ..Default::default()
        };
        let got: Vec<(String, String)> = collect(&inputs)
            .into_iter()
            .filter_map(|p| if let Planned::File(f) = p { Some((f.uri.rsplit('/').next().unwrap().to_string(), f.attributes)) } else { None })
            .collect();
        assert_eq!(got, [("a.txt".to_string(), r#"{"label":"dir"}"#.to_string()), ("b.txt".to_string(), r#"{"label":"bee"}"#.to_string())]);
    }

    #[test]
    fn missing_inputs_fail_before_work() {
        let e = validate(&Inputs { paths: vec!["/definitely/not/here".into()], manifest: None, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("does not exist"));
        // In a list of files, a missing one fails alone, when it is walked.
        let listed = Inputs { paths: vec!["/definitely/not/here".into()], listed: true, ..Default::default() };
        validate(&listed).unwrap();
        assert!(matches!(&collect(&listed)[..], [Planned::Bad { reason, .. }] if reason == "no such file"));
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
