//! What the dashboard shows of a job beyond its counters: a bounded history
//! of its progress (for rates over time), its load on each worker, and the
//! table versions it committed. Everything here has a fixed bound, whatever
//! the job's size: a history of [`HISTORY_SAMPLES`] samples that thins out
//! as the job gets longer, one entry per worker, the last [`COMMITS_KEPT`]
//! commits.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use sluice_common::protocol::Checkpoint;

/// Samples a job's history holds at most.
pub const HISTORY_SAMPLES: usize = 2048;
/// How often a running job is sampled (until its history is full; then
/// every other sample goes and the spacing doubles).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Commits a job remembers (newest).
pub const COMMITS_KEPT: usize = 1000;
/// A worker's rate is counted over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A job's cumulative counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the job started.
    pub seconds: f64,
    /// Files finished: ingested, failed or skipped.
    pub files: u64,
    pub failed: u64,
    /// Rows committed to the table.
    pub rows: u64,
    /// Bytes of source files read.
    pub bytes: u64,
}

/// Samples spaced at least `every` apart, the whole job in at most `cap`.
#[derive(Debug)]
pub struct History {
    every: Duration,
    cap: usize,
    samples: Vec<Sample>,
}

impl History {
    pub fn new(every: Duration, cap: usize) -> Self {
        Self { every, cap: cap.max(2), samples: Vec::new() }
    }

    /// Record `sample` if it is due. The last sample is always replaced by
    /// a newer one, so the history ends at the latest figures.
    pub fn record(&mut self, sample: Sample) {
        let due = match self.samples.as_slice() {
            [] => true,
            [.., before, _] => sample.seconds - before.seconds >= self.every.as_secs_f64(),
            [_] => true,
        };
        if !due {
            // Too soon after the one before the last: the last moves on.
            *self.samples.last_mut().expect("not empty") = sample;
            return;
        }
        if self.samples.len() >= self.cap {
            // Full: keep every other sample (the first and the newest stay).
            let newest = *self.samples.last().expect("full");
            let mut kept: Vec<Sample> = self.samples.iter().step_by(2).copied().collect();
            if kept.last() != Some(&newest) {
                kept.push(newest);
            }
            self.samples = kept;
            self.every *= 2;
        }
        self.samples.push(sample);
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Files a second over about the last `window` (from the history).
    pub fn recent_rate(&self, window: Duration) -> Option<f64> {
        let last = self.samples.last()?;
        let from = self.samples.iter().rev().find(|s| last.seconds - s.seconds >= window.as_secs_f64()).or(self.samples.first())?;
        let dt = last.seconds - from.seconds;
        (dt > 0.0).then(|| (last.files - from.files) as f64 / dt)
    }
}

/// What one worker did for a job.
#[derive(Debug, Default)]
struct WorkerLoad {
    shards_taken: u64,
    shards_finished: u64,
    files_done: u64,
    files_failed: u64,
    rows: u64,
    bytes: u64,
    first_seen: Option<Instant>,
    last_checkpoint: Option<Instant>,
    /// (when, files) of the checkpoints within the rate window.
    recent: VecDeque<(Instant, u64)>,
    ended: bool,
    lost: bool,
}

/// A worker's part in a job, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub worker_id: String,
    /// working (holds shards), idle, ended (stopped this job when told to),
    /// done (the job is over), lost (declared dead)
    pub state: &'static str,
    pub shards_taken: u64,
    pub shards_held: u32,
    pub shards_finished: u64,
    pub files_done: u64,
    pub files_failed: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Files a second over the last 10 seconds.
    pub files_per_second: f64,
    /// Since the worker last polled the coordinator; `None` once it is gone.
    pub seconds_since_seen: Option<f64>,
    pub seconds_since_checkpoint: Option<f64>,
}

/// A commit the job made.
#[derive(Debug, Clone, Serialize)]
pub struct CommitView {
    pub version: u64,
    pub rows: u64,
    pub files: u64,
    pub failed: u64,
    pub fragments: u64,
    /// When it landed (milliseconds since the Unix epoch).
    pub committed_ms: i64,
}

/// The dashboard's view of one job.
#[derive(Debug)]
pub struct JobWatch {
    history: Mutex<History>,
    workers: Mutex<BTreeMap<String, WorkerLoad>>,
    commits: Mutex<VecDeque<CommitView>>,
    commits_total: Mutex<u64>,
}

impl Default for JobWatch {
    fn default() -> Self {
        Self {
            history: Mutex::new(History::new(SAMPLE_EVERY, HISTORY_SAMPLES)),
            workers: Mutex::default(),
            commits: Mutex::default(),
            commits_total: Mutex::default(),
        }
    }
}

impl JobWatch {
    pub fn sample(&self, sample: Sample) {
        self.history.lock().record(sample);
    }

    /// (spacing in seconds, the samples).
    pub fn history(&self) -> (f64, Vec<Sample>) {
        let h = self.history.lock();
        (h.every().as_secs_f64(), h.samples().to_vec())
    }

    /// Files a second over about the last 30 seconds.
    pub fn files_per_second(&self) -> Option<f64> {
        self.history.lock().recent_rate(Duration::from_secs(30))
    }

    pub fn took(&self, worker_id: &str, shards: usize) {
        if shards == 0 {
            return;
        }
        let mut workers = self.workers.lock();
        let w = workers.entry(worker_id.to_string()).or_default();
        w.shards_taken += shards as u64;
        w.first_seen.get_or_insert_with(Instant::now);
    }

    pub fn checkpoint(&self, cp: &Checkpoint) {
        let now = Instant::now();
        let mut workers = self.workers.lock();
        let w = workers.entry(cp.worker_id.clone()).or_default();
        let files = (cp.completed.len() + cp.failed.len()) as u64;
        w.files_done += cp.completed.len() as u64;
        w.files_failed += cp.failed.len() as u64;
        w.rows += cp.rows;
        w.bytes += cp.bytes;
        w.shards_finished += cp.shards_finished.len() as u64;
        w.first_seen.get_or_insert(now);
        w.last_checkpoint = Some(now);
        w.recent.push_back((now, files));
        while w.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            w.recent.pop_front();
        }
    }

    pub fn ended(&self, worker_id: &str) {
        self.workers.lock().entry(worker_id.to_string()).or_default().ended = true;
    }

    pub fn lost(&self, worker_id: &str) {
        if let Some(w) = self.workers.lock().get_mut(worker_id) {
            w.lost = true;
        }
    }

    /// Every worker that took part. `held` gives the shards a worker holds
    /// now; `seen` the seconds since it last polled (`None`: unknown).
    pub fn workers(&self, job_running: bool, held: impl Fn(&str) -> u32, seen: impl Fn(&str) -> Option<f64>) -> Vec<WorkerView> {
        let now = Instant::now();
        self.workers
            .lock()
            .iter()
            .map(|(id, w)| {
                let shards_held = if w.lost { 0 } else { held(id) };
                let state = match () {
                    _ if w.lost => "lost",
                    _ if w.ended => "ended",
                    _ if !job_running => "done",
                    _ if shards_held > 0 => "working",
                    _ => "idle",
                };
                let in_window: u64 =
                    w.recent.iter().filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW).map(|(_, n)| n).sum();
                let span = w.first_seen.map_or(RATE_WINDOW, |t| now.duration_since(t).min(RATE_WINDOW));
                WorkerView {
                    worker_id: id.clone(),
                    state,
                    shards_taken: w.shards_taken,
                    shards_held,
                    shards_finished: w.shards_finished,
                    files_done: w.files_done,
                    files_failed: w.files_failed,
                    rows: w.rows,
                    bytes: w.bytes,
                    files_per_second: if span.is_zero() { 0.0 } else { in_window as f64 / span.as_secs_f64() },
                    seconds_since_seen: if w.lost { None } else { seen(id) },
                    seconds_since_checkpoint: w.last_checkpoint.map(|t| now.duration_since(t).as_secs_f64()),
                }
            })
            .collect()
    }

    pub fn committed(&self, version: u64, rows: u64, files: u64, failed: u64, fragments: u64) {
        let committed_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut commits = self.commits.lock();
        if commits.len() == COMMITS_KEPT {
            commits.pop_front();
        }
        commits.push_back(CommitView { version, rows, files, failed, fragments, committed_ms });
        *self.commits_total.lock() += 1;
    }

    /// (commits made, the newest kept first).
    pub fn commits(&self) -> (u64, Vec<CommitView>) {
        (*self.commits_total.lock(), self.commits.lock().iter().rev().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64, files: u64) -> Sample {
        Sample { seconds, files, failed: 0, rows: files * 2, bytes: files * 100 }
    }

    #[test]
    fn a_history_stays_bounded_spans_the_whole_job_and_ends_at_the_latest_figures() {
        let mut h = History::new(Duration::from_secs(1), 64);
        for i in 0..10_000u64 {
            h.record(at(i as f64 * 0.25, i));
        }
        let s = h.samples();
        assert!(s.len() <= 64, "{} samples", s.len());
        assert!(s.len() >= 32, "thinned too far: {}", s.len());
        assert_eq!(s[0].seconds, 0.0, "the start stays");
        assert_eq!(s.last().unwrap().files, 9_999, "the newest figures are there");
        assert!(s.windows(2).all(|w| w[1].seconds > w[0].seconds), "in order");
        // Evenly spread: no gap much wider than the spacing now in force.
        let every = h.every().as_secs_f64();
        assert!(every >= 32.0, "spacing doubled as the job grew: {every}");
        assert!(s.windows(2).all(|w| w[1].seconds - w[0].seconds <= 2.0 * every + 1e-9));
        // 4 files a second throughout.
        let rate = h.recent_rate(Duration::from_secs(30)).unwrap();
        assert!((rate - 4.0).abs() < 0.01, "{rate}");
    }

    #[test]
    fn samples_closer_than_the_spacing_move_the_last_one_on() {
        let mut h = History::new(Duration::from_secs(1), 8);
        h.record(at(0.0, 0));
        h.record(at(0.3, 1));
        h.record(at(0.6, 2));
        assert_eq!(h.samples().len(), 2);
        assert_eq!(h.samples()[1].files, 2);
        h.record(at(1.2, 3));
        assert_eq!(h.samples().iter().map(|s| s.files).collect::<Vec<_>>(), vec![0, 2, 3]);
    }

    #[test]
    fn workers_show_their_share_their_rate_and_their_state() {
        let watch = JobWatch::default();
        watch.took("a", 2);
        watch.took("b", 1);
        let mut cp = Checkpoint::empty("j", "a", 1);
        cp.rows = 30;
        cp.completed = (0..10)
            .map(|i| sluice_common::protocol::FileCompleted {
                uri: format!("f{i}"),
                shard_id: "s".into(),
                kind: sluice_common::schema::Kind::Text,
                rows: 3,
                bytes: 10,
            })
            .collect();
        cp.shards_finished = vec!["s".into()];
        watch.checkpoint(&cp);
        watch.lost("b");
        let views = watch.workers(true, |id| if id == "a" { 1 } else { 5 }, |_| Some(0.5));
        let a = views.iter().find(|w| w.worker_id == "a").unwrap();
        assert_eq!((a.state, a.files_done, a.rows, a.shards_taken, a.shards_finished, a.shards_held), ("working", 10, 30, 2, 1, 1));
        assert!(a.files_per_second > 0.0);
        let b = views.iter().find(|w| w.worker_id == "b").unwrap();
        assert_eq!((b.state, b.shards_held, b.seconds_since_seen), ("lost", 0, None));
        assert_eq!(watch.workers(false, |_| 0, |_| None)[0].state, "done");
        watch.ended("a");
        assert_eq!(watch.workers(true, |_| 0, |_| None)[0].state, "ended");
    }

    #[test]
    fn only_the_newest_commits_are_kept() {
        let watch = JobWatch::default();
        for v in 0..(COMMITS_KEPT as u64 + 5) {
            watch.committed(v + 2, 10, 5, 0, 1);
        }
        let (total, kept) = watch.commits();
        assert_eq!(total, COMMITS_KEPT as u64 + 5);
        assert_eq!(kept.len(), COMMITS_KEPT);
        assert_eq!(kept[0].version, COMMITS_KEPT as u64 + 6, "newest first");
    }
}
