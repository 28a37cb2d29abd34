//! The leases this core holds, renewed by the heartbeat task.
//!
//! A job enters at claim and leaves when Python reports its end (complete,
//! fail, release). A heartbeat sends every held (id, attempt); a held job the
//! database did not renew has lost its lease (rescued by another node, or
//! cancelled). Each loss is counted once.

use std::collections::{HashMap, HashSet};

use crate::batch::Pairs;

#[derive(Debug)]
struct Lease {
    attempt: i32,
    job_type: String,
    lost: bool,
}

#[derive(Debug, Default)]
pub struct InFlight {
    jobs: HashMap<i64, Lease>,
}

impl InFlight {
    pub fn add(&mut self, id: i64, attempt: i32, job_type: String) {
        self.jobs.insert(
            id,
            Lease {
                attempt,
                job_type,
                lost: false,
            },
        );
    }

    /// Ends the lease of (id, attempt); returns its job type (for the retry
    /// policy), or None when this attempt is not held.
    pub fn remove(&mut self, id: i64, attempt: i32) -> Option<String> {
        match self.jobs.get(&id) {
            Some(lease) if lease.attempt == attempt => self.jobs.remove(&id).map(|l| l.job_type),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// The heartbeat statement's columns.
    pub fn snapshot(&self) -> Pairs {
        let mut pairs = Pairs::default();
        for (id, lease) in &self.jobs {
            pairs.push(*id, lease.attempt);
        }
        pairs
    }

    /// After a heartbeat that sent `sent` and renewed `renewed`: the leases
    /// newly found lost. Jobs that ended meanwhile are no longer held, so a
    /// completion racing the heartbeat is not mistaken for a loss.
    pub fn mark_lost(&mut self, sent: &Pairs, renewed: &HashSet<i64>) -> Vec<(i64, i32)> {
        let mut lost = Vec::new();
        for (id, attempt) in sent.ids.iter().zip(&sent.attempts) {
            if renewed.contains(id) {
                continue;
            }
            if let Some(lease) = self.jobs.get_mut(id) {
                if lease.attempt == *attempt && !lease.lost {
                    lease.lost = true;
                    lost.push((*id, *attempt));
                }
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_needs_the_held_attempt() {
        let mut f = InFlight::default();
        f.add(1, 2, "email".into());
        assert_eq!(f.remove(1, 1), None);
        assert_eq!(f.remove(1, 2).as_deref(), Some("email"));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn unrenewed_held_leases_are_lost_once() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into());
        f.add(2, 1, "a".into());
        f.add(3, 1, "a".into());
        let sent = f.snapshot();
        assert_eq!(sent.len(), 3);
        f.remove(3, 1); // completed while the heartbeat ran
        let renewed: HashSet<i64> = [1].into();
        assert_eq!(f.mark_lost(&sent, &renewed), [(2, 1)]);
        assert_eq!(f.mark_lost(&sent, &renewed), []);
        assert_eq!(f.len(), 2);
    }
}
