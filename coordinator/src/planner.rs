//! Groups planned files into shards, by count and bytes, one open shard per
//! kind so workers see files of one kind together.

use std::collections::HashMap;

use sluice_common::protocol::FileRef;
use sluice_common::schema::Kind;

/// Files are grouped by the kind their name suggests.
fn bucket(uri: &str) -> Kind {
    Kind::from_name(uri).unwrap_or(Kind::Other)
}

pub struct ShardPlanner {
    job_id: String,
    max_files: usize,
    max_bytes: u64,
    open: HashMap<Kind, (Vec<FileRef>, u64)>,
    next: u64,
}

impl ShardPlanner {
    pub fn new(job_id: &str, max_files: usize, max_bytes: u64) -> Self {
        Self { job_id: job_id.to_string(), max_files: max_files.max(1), max_bytes: max_bytes.max(1), open: HashMap::new(), next: 0 }
    }

    /// Name a full shard. Its files get the shard's id when the shard is
    /// handed to a worker, not here: a queued shard's files don't each
    /// carry a copy of it.
    fn seal(&mut self, files: Vec<FileRef>) -> (String, Vec<FileRef>) {
        self.next += 1;
        (format!("{}-{:06}", self.job_id, self.next), files)
    }

    /// Add a file; returns a shard when one fills up.
    pub fn push(&mut self, file: FileRef) -> Option<(String, Vec<FileRef>)> {
        let b = bucket(&file.uri);
        let entry = self.open.entry(b).or_default();
        entry.1 += file.size;
        entry.0.push(file);
        if entry.0.len() >= self.max_files || entry.1 >= self.max_bytes {
            let (files, _) = self.open.remove(&b).expect("just inserted");
            return Some(self.seal(files));
        }
        None
    }

    /// The remaining partly filled shards.
    pub fn finish(&mut self) -> Vec<(String, Vec<FileRef>)> {
        let mut rest: Vec<_> = self.open.drain().map(|(_, (files, _))| files).collect();
        rest.sort_by(|a, b| a[0].uri.cmp(&b[0].uri));
        rest.into_iter().map(|files| self.seal(files)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(uri: &str, size: u64) -> FileRef {
        FileRef { uri: uri.into(), size, ..Default::default() }
    }

    #[test]
    fn shards_split_by_count_bytes_and_kind() {
        let mut p = ShardPlanner::new("j", 2, 100);
        assert!(p.push(f("a.txt", 1)).is_none());
        assert!(p.push(f("b.png", 1)).is_none());
        let (id, files) = p.push(f("c.txt", 1)).unwrap();
        assert_eq!(id, "j-000001");
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|x| x.uri.ends_with(".txt")));
        let (_, big) = p.push(f("d.png", 500)).unwrap();
        assert_eq!(big.len(), 2);
        assert!(p.finish().is_empty());
    }
}
