//! The leases this core holds, renewed by the heartbeat task.
//!
//! A job enters at claim and leaves when Python reports its end (complete,
//! fail, release). A heartbeat sends every held (id, attempt); a held job the
//! database did not renew has lost its lease (rescued by another node, or
//! cancelled): it leaves the set at once, so it is reported once and never
//! renewed again (Python learns of it through Core.lost()).

use std::collections::{HashMap, HashSet};

use crate::batch::Pairs;

#[derive(Debug)]
struct Lease {
    attempt: i32,
    job_type: String,
}

#[derive(Debug, Default)]
pub struct InFlight {
    jobs: HashMap<i64, Lease>,
}

impl InFlight {
    pub fn add(&mut self, id: i64, attempt: i32, job_type: String) {
        self.jobs.insert(id, Lease { attempt, job_type });
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
    /// found lost, removed from the set. Jobs that ended meanwhile are no
    /// longer held, and a job re-claimed meanwhile holds another attempt, so
    /// neither is mistaken for a loss.
    pub fn take_lost(&mut self, sent: &Pairs, renewed: &HashSet<i64>) -> Vec<(i64, i32)> {
        let mut lost = Vec::new();
        for (id, attempt) in sent.ids.iter().zip(&sent.attempts) {
            if !renewed.contains(id) && self.remove(*id, *attempt).is_some() {
                lost.push((*id, *attempt));
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
    fn unrenewed_held_leases_are_lost_once_and_leave_the_set() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into());
        f.add(2, 1, "a".into());
        f.add(3, 1, "a".into());
        f.add(4, 1, "a".into());
        let sent = f.snapshot();
        assert_eq!(sent.len(), 4);
        f.remove(3, 1); // completed while the heartbeat ran
        f.remove(4, 1); // released, then claimed again while the heartbeat ran
        f.add(4, 2, "a".into());
        let renewed: HashSet<i64> = [1].into();
        assert_eq!(f.take_lost(&sent, &renewed), [(2, 1)]);
        assert_eq!(f.take_lost(&sent, &renewed), []);
        assert_eq!(f.len(), 2);
        // the next heartbeat no longer sends the lost lease
        let mut next = f.snapshot().ids;
        next.sort();
        assert_eq!(next, [1, 4]);
        // a late report of the lost attempt finds nothing held
        assert_eq!(f.remove(2, 1), None);
    }
}
