//! Reports set aside because another session holds their job's row locked
//! (an operator's SELECT ... FOR UPDATE, an open transaction that updated
//! it): they wait here while every other job's reports are written, and
//! are tried again every HELD_RETRY without waiting for the lock
//! (reporter.rs). A later report of a held job joins them, so one job's
//! reports are still written in the order they came; its progress is
//! coalesced as in the backlog (latest wins), so a job that reports in a
//! loop while its row is locked holds at most a start, a progress, its
//! capped log lines and an end here.
//!
//! An end held here keeps its lease: the heartbeat renews it while it can
//! and the node gives it up before another could rescue the job
//! (heartbeat.rs), as for any lease it cannot renew.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::backlog::Backlog;
use crate::batch::Report;

/// How often held reports are tried again.
pub const HELD_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct Held {
    reports: Backlog,
    /// The jobs (ids) with a report here.
    jobs: HashSet<i64>,
    /// When to try them again; None while nothing is held.
    due: Option<Instant>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// When the held reports are to be tried again (None: nothing held).
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Sets `reports` aside, to be tried again HELD_RETRY from `now`.
    pub fn hold(&mut self, reports: Vec<Report>, now: Instant) {
        if reports.is_empty() {
            return;
        }
        for report in reports {
            self.jobs.insert(report.key().0);
            self.reports.push(0, report);
        }
        self.due.get_or_insert(now + HELD_RETRY);
    }

    /// `reports` but those of held jobs, which join the others here.
    pub fn split(&mut self, reports: Vec<Report>, now: Instant) -> Vec<Report> {
        if self.jobs.is_empty() {
            return reports;
        }
        let (held, free): (Vec<Report>, Vec<Report>) = reports
            .into_iter()
            .partition(|r| self.jobs.contains(&r.key().0));
        self.hold(held, now);
        free
    }

    /// Every held report once they are due, to be tried again (those still
    /// locked come back through `hold`); nothing before.
    pub fn take_due(&mut self, now: Instant) -> Vec<Report> {
        match self.due {
            Some(at) if at <= now => {}
            _ => return Vec::new(),
        }
        self.due = None;
        self.jobs.clear();
        self.reports.take(usize::MAX).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::reports::{progress, release, start};

    fn ids(reports: &[Report]) -> Vec<i64> {
        reports.iter().map(|r| r.key().0).collect()
    }

    #[test]
    fn later_reports_of_a_held_job_join_it_in_order() {
        let t = Instant::now();
        let mut held = Held::default();
        held.hold(vec![start(1, 1, t)], t);
        let free = held.split(
            vec![
                start(2, 1, t),
                progress(1, 50),
                release(3, 1),
                release(1, 1),
            ],
            t,
        );
        assert_eq!(ids(&free), [2, 3]);
        let again = held.take_due(t + HELD_RETRY);
        assert_eq!(again, vec![start(1, 1, t), progress(1, 50), release(1, 1)]);
        assert!(held.is_empty() && held.due().is_none());
        assert_eq!(
            ids(&held.split(vec![start(1, 1, t)], t)),
            [1],
            "no job is held now"
        );
    }

    #[test]
    fn held_reports_are_due_after_the_retry_delay_not_before() {
        let t = Instant::now();
        let mut held = Held::default();
        assert!(held.take_due(t).is_empty() && held.due().is_none());
        held.hold(vec![release(1, 1)], t);
        held.hold(vec![release(2, 1)], t + HELD_RETRY / 2); // does not push the first one back
        assert_eq!(held.due(), Some(t + HELD_RETRY));
        assert!(held.take_due(t + HELD_RETRY / 2).is_empty());
        assert_eq!(ids(&held.take_due(t + HELD_RETRY)), [1, 2]);
    }

    #[test]
    fn progress_of_a_held_job_is_coalesced() {
        let t = Instant::now();
        let mut held = Held::default();
        held.hold(vec![start(1, 1, t)], t);
        for percent in 0..10_000 {
            assert!(held.split(vec![progress(1, percent % 100)], t).is_empty());
        }
        assert_eq!(
            held.take_due(t + HELD_RETRY),
            vec![start(1, 1, t), progress(1, 99)]
        );
    }
}
