//! The worker protocol's protobuf form (`sluice.v1.CoordinatorService`),
//! used only where messages cross the network: the coordinator's gRPC
//! service and the worker's gRPC client.
//!
//! Fragments travel as Lance's own `lance.table.DataFragment` protobuf, so
//! the wire format evolves with Lance's. Decoding checks what the types
//! promise (a table location, valid settings, known kinds) and fails with
//! `InvalidInput` otherwise.

use std::time::Duration;

use super::*;
use crate::{pb, Error};

fn kind(s: &str) -> Result<Option<Kind>> {
    if s.is_empty() {
        return Ok(None);
    }
    Kind::parse(s).map(Some).ok_or_else(|| Error::InvalidInput(format!("unknown file kind {s:?}")))
}

impl From<Registration> for pb::RegisterWorkerRequest {
    fn from(r: Registration) -> Self {
        pb::RegisterWorkerRequest { worker_id: r.worker_id, leased: r.leased, ..Default::default() }
    }
}

impl From<pb::RegisterWorkerRequest> for Registration {
    fn from(r: pb::RegisterWorkerRequest) -> Self {
        Registration { worker_id: r.worker_id, leased: r.leased }
    }
}

impl From<Admission> for pb::RegisterWorkerResponse {
    fn from(a: Admission) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        pb::RegisterWorkerResponse { heartbeat_ms: ms(a.heartbeat), timeout_ms: ms(a.timeout) }
    }
}

impl From<pb::RegisterWorkerResponse> for Admission {
    /// Unset or absurdly small values take safe floors.
    fn from(r: pb::RegisterWorkerResponse) -> Self {
        Admission {
            heartbeat: Duration::from_millis(u64::from(r.heartbeat_ms.max(100))),
            timeout: Duration::from_millis(u64::from(r.timeout_ms.max(1000))),
        }
    }
}

impl From<PollRequest> for pb::PollRequest {
    fn from(r: PollRequest) -> Self {
        pb::PollRequest { worker_id: r.worker_id, free_slots: r.free_slots }
    }
}

impl From<pb::PollRequest> for PollRequest {
    fn from(r: pb::PollRequest) -> Self {
        PollRequest { worker_id: r.worker_id, free_slots: r.free_slots }
    }
}

impl From<PollResponse> for pb::PollResponse {
    fn from(r: PollResponse) -> Self {
        pb::PollResponse {
            assignments: r.assignments.into_iter().map(Into::into).collect(),
            stop_jobs: r.stop_jobs,
            reregister: r.reregister,
        }
    }
}

impl TryFrom<pb::PollResponse> for PollResponse {
    type Error = Error;

    fn try_from(r: pb::PollResponse) -> Result<Self> {
        Ok(PollResponse {
            assignments: r.assignments.into_iter().map(TryInto::try_into).collect::<Result<_>>()?,
            stop_jobs: r.stop_jobs,
            reregister: r.reregister,
        })
    }
}

impl From<FileRef> for pb::FileRef {
    fn from(f: FileRef) -> Self {
        pb::FileRef {
            uri: f.uri,
            size: f.size,
            modified_ms: f.modified_ms,
            shard_id: f.shard_id,
            replaces_previous: f.replaces_previous,
            attributes: f.attributes,
        }
    }
}

impl From<pb::FileRef> for FileRef {
    fn from(f: pb::FileRef) -> Self {
        FileRef {
            uri: f.uri,
            size: f.size,
            modified_ms: f.modified_ms,
            shard_id: f.shard_id,
            replaces_previous: f.replaces_previous,
            attributes: f.attributes,
        }
    }
}

impl From<ShardAssignment> for pb::ShardAssignment {
    fn from(a: ShardAssignment) -> Self {
        pb::ShardAssignment {
            job_id: a.job_id,
            shard_id: a.shard_id,
            generation: a.generation,
            table: Some(pb::TableRef { uri: a.table.uri, storage_options: a.table.storage_options }),
            settings: Some(pb::PipelineSettings::from(&a.settings)),
            files: a.files.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::ShardAssignment> for ShardAssignment {
    type Error = Error;

    /// The table's store options are completed from this process's
    /// environment (credentials stay where they are).
    fn try_from(a: pb::ShardAssignment) -> Result<Self> {
        let table = a.table.ok_or_else(|| Error::InvalidInput("assignment without a table".into()))?;
        let mut options = table.storage_options;
        crate::storage::complete_options(&table.uri, &mut options);
        Ok(ShardAssignment {
            job_id: a.job_id,
            shard_id: a.shard_id,
            generation: a.generation,
            table: TableLocation::new(&table.uri, options)?,
            settings: Settings::try_from(&a.settings.unwrap_or_default())?,
            files: a.files.into_iter().map(Into::into).collect(),
        })
    }
}

impl From<FileCompleted> for pb::FileCompleted {
    fn from(f: FileCompleted) -> Self {
        pb::FileCompleted { uri: f.uri, shard_id: f.shard_id, kind: f.kind.to_string(), rows: f.rows, bytes: f.bytes }
    }
}

impl TryFrom<pb::FileCompleted> for FileCompleted {
    type Error = Error;

    fn try_from(f: pb::FileCompleted) -> Result<Self> {
        let kind = kind(&f.kind)?.ok_or_else(|| Error::InvalidInput(format!("completed file {} has no kind", f.uri)))?;
        Ok(FileCompleted { uri: f.uri, shard_id: f.shard_id, kind, rows: f.rows, bytes: f.bytes })
    }
}

impl From<FileFailed> for pb::FileFailed {
    fn from(f: FileFailed) -> Self {
        pb::FileFailed { uri: f.uri, shard_id: f.shard_id, kind: f.kind.map(|k| k.to_string()).unwrap_or_default(), reason: f.reason }
    }
}

impl TryFrom<pb::FileFailed> for FileFailed {
    type Error = Error;

    fn try_from(f: pb::FileFailed) -> Result<Self> {
        Ok(FileFailed { kind: kind(&f.kind)?, uri: f.uri, shard_id: f.shard_id, reason: f.reason })
    }
}

/// A fragment as it crosses the wire: Lance's own `DataFragment` protobuf.
pub fn fragment_to_bytes(fragment: &Fragment) -> Vec<u8> {
    use prost::Message;
    lance_table::format::pb::DataFragment::from(fragment).encode_to_vec()
}

/// A fragment from its wire form ([`fragment_to_bytes`]).
pub fn fragment_from_bytes(bytes: &[u8]) -> Result<Fragment> {
    use prost::Message;
    let pb = lance_table::format::pb::DataFragment::decode(bytes)
        .map_err(|e| Error::InvalidInput(format!("not a Lance fragment: {e}")))?;
    Ok(Fragment::try_from(pb)?)
}

impl From<Checkpoint> for pb::Checkpoint {
    fn from(c: Checkpoint) -> Self {
        pb::Checkpoint {
            job_id: c.job_id,
            worker_id: c.worker_id,
            seq: c.seq,
            rows: c.rows,
            bytes: c.bytes,
            completed: c.completed.into_iter().map(Into::into).collect(),
            failed: c.failed.into_iter().map(Into::into).collect(),
            clean: c.clean,
            shards_finished: c.shards_finished,
            shard_generations: c.shard_generations,
            fragments: c.fragments.iter().map(fragment_to_bytes).collect(),
            flush_reason: c.flush_reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
            flushes: c.flushes.iter().map(|(r, n)| (r.as_str().to_string(), *n)).collect(),
        }
    }
}

impl TryFrom<pb::Checkpoint> for Checkpoint {
    type Error = Error;

    fn try_from(c: pb::Checkpoint) -> Result<Self> {
        Ok(Checkpoint {
            fragments: c.fragments.iter().map(|f| fragment_from_bytes(f)).collect::<Result<_>>()?,
            completed: c.completed.into_iter().map(TryInto::try_into).collect::<Result<_>>()?,
            failed: c.failed.into_iter().map(TryInto::try_into).collect::<Result<_>>()?,
            // An unknown reason (a newer peer) is not worth refusing rows for.
            flush_reason: FlushReason::parse(&c.flush_reason),
            flushes: c.flushes.iter().filter_map(|(r, n)| Some((FlushReason::parse(r)?, *n))).collect(),
            job_id: c.job_id,
            worker_id: c.worker_id,
            seq: c.seq,
            rows: c.rows,
            bytes: c.bytes,
            clean: c.clean,
            shards_finished: c.shards_finished,
            shard_generations: c.shard_generations,
        })
    }
}

impl From<CheckpointAck> for pb::CheckpointAck {
    fn from(a: CheckpointAck) -> Self {
        pb::CheckpointAck { accepted: a.accepted, reason: a.reason, stop: a.stop }
    }
}

impl From<pb::CheckpointAck> for CheckpointAck {
    fn from(a: pb::CheckpointAck) -> Self {
        CheckpointAck { accepted: a.accepted, reason: a.reason, stop: a.stop }
    }
}

impl From<JobEnded> for pb::JobEnded {
    fn from(e: JobEnded) -> Self {
        pb::JobEnded { job_id: e.job_id, worker_id: e.worker_id, error: e.error.unwrap_or_default() }
    }
}

impl From<pb::JobEnded> for JobEnded {
    fn from(e: pb::JobEnded) -> Self {
        JobEnded { job_id: e.job_id, worker_id: e.worker_id, error: (!e.error.is_empty()).then_some(e.error) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_and_a_checkpoint_survive_the_wire() {
        let assignment = ShardAssignment {
            job_id: "j".into(),
            shard_id: "j-000001".into(),
            generation: 3,
            table: TableLocation::new("file:///tmp/t", HashMap::new()).unwrap(),
            settings: Settings { flush_every: 7, ..Settings::default() },
            files: vec![FileRef { uri: "file:///a.txt".into(), size: 5, shard_id: "j-000001".into(), ..Default::default() }],
        };
        let back = ShardAssignment::try_from(pb::ShardAssignment::from(assignment.clone())).unwrap();
        assert_eq!((back.generation, back.settings.flush_every), (3, 7));
        assert_eq!(back.files, assignment.files);
        assert_eq!(back.table.uri, "file:///tmp/t");

        let mut cp = Checkpoint::empty("j", "w", 2);
        cp.fragments = vec![Fragment::new(4)];
        cp.completed = vec![FileCompleted { uri: "a".into(), shard_id: "s".into(), kind: Kind::Pdf, rows: 3, bytes: 9 }];
        cp.failed = vec![FileFailed { uri: "b".into(), shard_id: String::new(), kind: None, reason: "gone".into() }];
        cp.flush_reason = Some(FlushReason::ShardsDone);
        cp.flushes = HashMap::from([(FlushReason::Rows, 9), (FlushReason::ShardsDone, 1)]);
        let back = Checkpoint::try_from(pb::Checkpoint::from(cp.clone())).unwrap();
        assert_eq!(back.fragments[0].id, 4);
        assert_eq!((back.completed, back.failed, back.flush_reason), (cp.completed, cp.failed, cp.flush_reason));
        assert_eq!(back.flushes, cp.flushes);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let no_table = pb::ShardAssignment { job_id: "j".into(), ..Default::default() };
        assert!(ShardAssignment::try_from(no_table).unwrap_err().to_string().contains("without a table"));
        let bad_kind = pb::Checkpoint {
            completed: vec![pb::FileCompleted { uri: "a".into(), kind: "hologram".into(), ..Default::default() }],
            ..Default::default()
        };
        assert!(Checkpoint::try_from(bad_kind).unwrap_err().to_string().contains("hologram"));
        let bad_fragment = pb::Checkpoint { fragments: vec![vec![0xff, 0xff]], ..Default::default() };
        assert!(Checkpoint::try_from(bad_fragment).unwrap_err().to_string().contains("not a Lance fragment"));
        let ended = JobEnded::from(pb::JobEnded { job_id: "j".into(), worker_id: "w".into(), error: String::new() });
        assert_eq!(ended.error, None);
    }
}
