//! Reports as queued, and the batch of one flush: a list of rows per
//! statement.
//!
//! Rules: a start is dropped when the same (id, attempt) also ends in the
//! flush (the end statement sets started_at itself); progress comes
//! deduplicated per job from the backlog (backlog.rs); log lines are kept
//! in order, all of them (their number per attempt is capped when they are
//! queued: core.rs, leases.rs). Each end, once
//! written, ends its lease and may close its claim row: those are written
//! after everything else.
//!
//! Times are Instants of when the supervisor saw the event; the statements
//! get how long ago that was when they are sent (ms_ago) and record the
//! database's now() minus that, so started_at and completed_at are when the
//! job started and ended, on the database's clock, however late the flush.
//! An end row carries its job's start too (from the lease): both are written
//! from one now(), so they are exactly ordered, and so are the jobs of one
//! statement.

use std::collections::HashSet;
use std::time::Instant;

use crate::storable::not_storable;

/// (id, attempt): one attempt of one job.
pub type Key = (i64, i32);

#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub id: i64,
    pub attempt: i32,
    pub at: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub id: i64,
    pub attempt: i32,
    pub percent: i16,
    pub message: Option<String>,
}

/// One line of a job's log (ctx.log), as it will be stored: storable.rs
/// made its text storable and bounded before it was queued.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub id: i64,
    pub attempt: i32,
    pub level: &'static str,
    pub message: String,
    /// JSON of the line's fields, if it has any.
    pub fields: Option<String>,
    pub at: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Complete {
    pub id: i64,
    pub attempt: i32,
    pub result: Option<String>,
    /// When the job started (None: not reported to this core).
    pub started: Option<Instant>,
    pub at: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fail {
    pub id: i64,
    pub attempt: i32,
    pub retryable: bool,
    pub delay_ms: f64,
    pub error: String,
    pub crashed: bool,
    /// When the job started (None: not reported to this core).
    pub started: Option<Instant>,
    pub at: Instant,
}

impl Fail {
    /// The failure that replaces a report whose data cannot be stored:
    /// ResultNotStorable with `message`, not retried (the same job would
    /// hand back the same data), no crash.
    pub fn not_storable(
        id: i64,
        attempt: i32,
        message: &str,
        started: Option<Instant>,
        at: Instant,
    ) -> Self {
        Fail {
            id,
            attempt,
            retryable: false,
            delay_ms: 0.0,
            error: not_storable(message, attempt),
            crashed: false,
            started,
            at,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub id: i64,
    pub attempt: i32,
}

/// One report from Python, as queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Start(Start),
    Progress(Progress),
    Log(LogLine),
    Complete(Complete),
    Fail(Fail),
    Release(Release),
}

impl Report {
    pub fn key(&self) -> Key {
        match self {
            Report::Start(r) => (r.id, r.attempt),
            Report::Progress(r) => (r.id, r.attempt),
            Report::Log(r) => (r.id, r.attempt),
            Report::Complete(r) => (r.id, r.attempt),
            Report::Fail(r) => (r.id, r.attempt),
            Report::Release(r) => (r.id, r.attempt),
        }
    }

    /// Whether this report ends its job's lease.
    fn ends(&self) -> bool {
        matches!(
            self,
            Report::Complete(_) | Report::Fail(_) | Report::Release(_)
        )
    }
}

/// Milliseconds from `at` to `now`, for the statements' "ago" columns.
pub fn ms_ago(now: Instant, at: Instant) -> f64 {
    now.saturating_duration_since(at).as_secs_f64() * 1000.0
}

/// One flush. A part that has been written is cleared, so retrying a
/// half-written batch re-runs only what is left.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub starts: Vec<Start>,
    pub progress: Vec<Progress>,
    pub logs: Vec<LogLine>,
    pub completes: Vec<Complete>,
    pub fails: Vec<Fail>,
    pub releases: Vec<Release>,
    /// Failures recorded in place of reports the database refused.
    pub refused: Vec<Fail>,
    /// The jobs this batch ends: their leases end once it is written.
    pub ended: Vec<Key>,
    /// Claim rows whose last held job ended in this batch.
    pub closes: Vec<i64>,
    /// Reports whose job row another session holds locked: set aside for
    /// a later flush (held.rs); their leases go on.
    pub busy: Vec<Report>,
}

impl Batch {
    /// Builds the batch from reports in queue order.
    pub fn build(reports: Vec<Report>) -> Batch {
        let ending: HashSet<Key> = reports
            .iter()
            .filter(|r| r.ends())
            .map(Report::key)
            .collect();
        let mut batch = Batch::default();
        for report in reports {
            let key = report.key();
            match report {
                Report::Start(_) if ending.contains(&key) => {}
                Report::Start(s) => batch.starts.push(s),
                Report::Progress(p) => batch.progress.push(p),
                Report::Log(l) => batch.logs.push(l),
                Report::Complete(c) => {
                    batch.ended.push(key);
                    batch.completes.push(c);
                }
                Report::Fail(f) => {
                    batch.ended.push(key);
                    batch.fails.push(f);
                }
                Report::Release(r) => {
                    batch.ended.push(key);
                    batch.releases.push(r);
                }
            }
        }
        batch
    }

    /// Sets `busy` aside: the ends among them are not written, so their
    /// leases do not end with this batch.
    pub fn set_aside(&mut self, busy: Vec<Report>) {
        let ending: HashSet<Key> = busy.iter().filter(|r| r.ends()).map(Report::key).collect();
        if !ending.is_empty() {
            self.ended.retain(|key| !ending.contains(key));
        }
        self.busy.extend(busy);
    }
}

/// Reports for tests, attempt 1 unless given.
#[cfg(test)]
pub mod reports {
    use super::*;

    pub fn start(id: i64, attempt: i32, at: Instant) -> Report {
        Report::Start(Start { id, attempt, at })
    }

    pub fn complete(id: i64, at: Instant) -> Report {
        Report::Complete(Complete {
            id,
            attempt: 1,
            result: None,
            started: None,
            at,
        })
    }

    pub fn fail(id: i64, at: Instant) -> Report {
        Report::Fail(Fail {
            id,
            attempt: 1,
            retryable: true,
            delay_ms: 250.0,
            error: "{}".into(),
            crashed: false,
            started: None,
            at,
        })
    }

    pub fn release(id: i64, attempt: i32) -> Report {
        Report::Release(Release { id, attempt })
    }

    pub fn log(id: i64, message: &str, at: Instant) -> Report {
        Report::Log(LogLine {
            id,
            attempt: 1,
            level: "info",
            message: message.into(),
            fields: None,
            at,
        })
    }

    pub fn progress(id: i64, percent: i16) -> Report {
        Report::Progress(Progress {
            id,
            attempt: 1,
            percent,
            message: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::reports::*;
    use super::*;
    use std::time::Duration;

    #[test]
    fn builds_rows_per_statement_in_order() {
        let t = Instant::now();
        let b = Batch::build(vec![
            start(1, 1, t),
            start(2, 3, t),
            complete(3, t),
            complete(4, t),
            fail(5, t),
            release(6, 1),
            progress(7, 50),
        ]);
        let starts: Vec<Key> = b.starts.iter().map(|s| (s.id, s.attempt)).collect();
        assert_eq!(starts, [(1, 1), (2, 3)]);
        let completes: Vec<i64> = b.completes.iter().map(|c| c.id).collect();
        assert_eq!(completes, [3, 4]);
        assert_eq!(b.fails[0].id, 5);
        assert_eq!(b.releases, [Release { id: 6, attempt: 1 }]);
        assert_eq!(b.progress[0].percent, 50);
        assert_eq!(b.ended, [(3, 1), (4, 1), (5, 1), (6, 1)]);
        assert!(b.refused.is_empty() && b.closes.is_empty());
    }

    #[test]
    fn an_end_drops_its_start() {
        let t = Instant::now();
        let (t1, t2) = (t + Duration::from_millis(1), t + Duration::from_millis(2));
        let b = Batch::build(vec![
            start(1, 1, t),
            progress(1, 40),
            complete(1, t1),
            start(2, 1, t1),
            fail(2, t2),
            start(3, 1, t),
            release(3, 1),
            start(4, 1, t2),
            progress(4, 20),
        ]);
        assert_eq!(
            b.starts,
            [Start {
                id: 4,
                attempt: 1,
                at: t2
            }]
        );
        assert_eq!(b.progress.len(), 2);
        assert_eq!(b.completes[0].at, t1);
        assert_eq!(b.fails[0].at, t2);
        assert_eq!(b.releases.len(), 1);
    }

    #[test]
    fn an_end_of_another_attempt_keeps_the_start() {
        let t = Instant::now();
        let b = Batch::build(vec![release(1, 1), start(1, 2, t)]);
        assert_eq!(
            b.starts,
            [Start {
                id: 1,
                attempt: 2,
                at: t
            }]
        );
    }

    #[test]
    fn reports_set_aside_keep_their_leases() {
        let t = Instant::now();
        let mut b = Batch::build(vec![complete(1, t), complete(2, t), release(3, 1)]);
        b.set_aside(vec![complete(2, t), progress(3, 10)]);
        assert_eq!(b.ended, [(1, 1), (3, 1)]);
        assert_eq!(b.busy.len(), 2);
    }

    #[test]
    fn log_lines_are_all_kept_in_order_and_end_nothing() {
        let t = Instant::now();
        let b = Batch::build(vec![
            start(1, 1, t),
            log(1, "a", t),
            log(2, "b", t),
            log(1, "c", t),
            complete(1, t),
        ]);
        let lines: Vec<(i64, &str)> = b.logs.iter().map(|l| (l.id, l.message.as_str())).collect();
        assert_eq!(lines, [(1, "a"), (2, "b"), (1, "c")]);
        assert_eq!(b.ended, [(1, 1)]);
        let mut b = Batch::build(vec![log(3, "d", t), release(3, 1)]);
        b.set_aside(vec![log(3, "d", t)]);
        assert_eq!(b.ended, [(3, 1)], "a log line set aside keeps no lease");
    }

    #[test]
    fn ms_ago_counts_from_the_event() {
        let t = Instant::now();
        assert_eq!(ms_ago(t + Duration::from_micros(1500), t), 1.5);
        assert_eq!(ms_ago(t, t + Duration::from_secs(1)), 0.0);
    }

    #[test]
    fn empty_batch() {
        assert_eq!(Batch::build(vec![]), Batch::default());
    }
}
