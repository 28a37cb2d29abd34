//! The reports waiting to be written, in queue order, with progress
//! coalesced per job: a progress report replaces the one of the same
//! (id, attempt) still waiting (the latest wins); log lines are all kept.
//! So however long the database cannot be written, the backlog holds at
//! most a start, one progress report, the log lines (at most [node]
//! job_log_lines and one more: leases.rs) and an end per job this node
//! holds, and the producer claims nothing new meanwhile (claim.rs): its
//! memory stays flat.

use std::collections::{HashMap, VecDeque};

use crate::batch::{Key, Report};

#[derive(Debug, Default)]
pub struct Backlog {
    /// (sequence number, report); a coalesced slot keeps its first number.
    queue: VecDeque<(u64, Report)>,
    /// Position (counted since the start) of the queue's first slot.
    first: u64,
    /// Position of the waiting progress report of each job.
    progress: HashMap<Key, u64>,
    /// Sequence number of the last report pushed.
    last: u64,
}

impl Backlog {
    pub fn push(&mut self, seq: u64, report: Report) {
        self.last = seq;
        if let Report::Progress(_) = &report {
            let key = report.key();
            if let Some(&at) = self.progress.get(&key) {
                self.queue[(at - self.first) as usize].1 = report;
                return;
            }
            self.progress
                .insert(key, self.first + self.queue.len() as u64);
        }
        self.queue.push_back((seq, report));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }

    /// The first `max` reports at most, and the sequence number up to which
    /// every report pushed is among them: once they are written, flush()
    /// waiters up to it are done.
    pub fn take(&mut self, max: usize) -> (u64, Vec<Report>) {
        let n = max.min(self.queue.len());
        let mut taken = Vec::with_capacity(n);
        let mut upto = self.last;
        for (offset, (seq, report)) in self.queue.drain(..n).enumerate() {
            if let Report::Progress(_) = &report {
                let key = report.key();
                if self.progress.get(&key) == Some(&(self.first + offset as u64)) {
                    self.progress.remove(&key);
                }
            }
            upto = seq;
            taken.push(report);
        }
        self.first += n as u64;
        if self.queue.is_empty() {
            upto = self.last;
        }
        (upto, taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Progress, Release, Start};
    use std::time::Instant;

    fn progress(id: i64, percent: i16) -> Report {
        Report::Progress(Progress {
            id,
            attempt: 1,
            percent,
            message: Some(format!("{percent}%")),
        })
    }

    fn percents(reports: &[Report]) -> Vec<(i64, i16)> {
        reports
            .iter()
            .filter_map(|r| match r {
                Report::Progress(p) => Some((p.id, p.percent)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn progress_in_a_loop_keeps_one_slot_per_job_the_latest() {
        let mut b = Backlog::default();
        let t = Instant::now();
        b.push(
            1,
            Report::Start(Start {
                id: 1,
                attempt: 1,
                at: t,
            }),
        );
        for seq in 2..100_002 {
            b.push(seq, progress(1, (seq % 101) as i16));
            b.push(seq, progress(2, 7));
        }
        assert_eq!(b.len(), 3);
        let (upto, reports) = b.take(10);
        assert_eq!(upto, 100_001);
        assert_eq!(percents(&reports), [(1, (100_001 % 101) as i16), (2, 7)]);
        assert!(b.is_empty() && b.progress.is_empty());
    }

    #[test]
    fn log_lines_are_never_coalesced() {
        let mut b = Backlog::default();
        let t = Instant::now();
        b.push(1, progress(1, 10));
        b.push(2, crate::batch::reports::log(1, "a", t));
        b.push(3, progress(1, 20));
        b.push(4, crate::batch::reports::log(1, "b", t));
        let (upto, reports) = b.take(10);
        assert_eq!(upto, 4);
        let lines: Vec<&str> = reports
            .iter()
            .filter_map(|r| match r {
                Report::Log(l) => Some(l.message.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!((reports.len(), lines), (3, vec!["a", "b"]));
        assert_eq!(percents(&reports), [(1, 20)]);
    }

    #[test]
    fn another_attempt_is_another_job() {
        let mut b = Backlog::default();
        b.push(1, progress(1, 10));
        let mut next_attempt = progress(1, 20);
        if let Report::Progress(p) = &mut next_attempt {
            p.attempt = 2;
        }
        b.push(2, next_attempt);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_partial_take_says_up_to_which_report_all_are_taken() {
        let mut b = Backlog::default();
        b.push(1, progress(1, 10));
        b.push(2, Report::Release(Release { id: 9, attempt: 1 }));
        b.push(3, progress(2, 10));
        b.push(4, progress(1, 30)); // coalesced into the first slot
        let (upto, first) = b.take(2);
        assert_eq!(upto, 2);
        assert_eq!(percents(&first), [(1, 30)]);
        // the job's slot was taken: its next progress gets a new one
        b.push(5, progress(1, 50));
        b.push(6, progress(2, 60));
        assert_eq!(b.len(), 2);
        let (upto, rest) = b.take(10);
        assert_eq!(upto, 6);
        assert_eq!(percents(&rest), [(2, 60), (1, 50)]);
        assert_eq!(b.take(10), (6, vec![]));
    }
}
