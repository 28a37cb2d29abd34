//! The leases this core holds, renewed by the heartbeat task.
//!
//! A job enters at claim and leaves when Python reports its end (complete,
//! fail, release). A heartbeat sends every held (id, attempt); a held job the
//! database did not renew has lost its lease (rescued by another node, or
//! cancelled): it leaves the set at once, so it is reported once and never
//! renewed again (Python learns of it through Core.lost()).
//!
//! The set also counts, per forge_claims row, the jobs of that claim still
//! held: the end of the last one says the row can be closed. A claim whose
//! last job was a lost lease is left to the maintenance sweep (prune_claims).

use std::collections::{HashMap, HashSet};

use crate::batch::Pairs;

#[derive(Debug)]
struct Lease {
    attempt: i32,
    job_type: String,
    claim: i64,
}

/// What ending a held lease tells the caller.
#[derive(Debug, PartialEq)]
pub struct Ended {
    /// For the retry policy of a failure.
    pub job_type: String,
    /// The claim row whose last held job this was.
    pub closes: Option<i64>,
}

#[derive(Debug, Default)]
pub struct InFlight {
    jobs: HashMap<i64, Lease>,
    /// Held jobs per claim row.
    held_by_claim: HashMap<i64, usize>,
}

impl InFlight {
    pub fn add(&mut self, id: i64, attempt: i32, job_type: String, claim: i64) {
        let lease = Lease {
            attempt,
            job_type,
            claim,
        };
        if let Some(old) = self.jobs.insert(id, lease) {
            self.release_claim(old.claim);
        }
        *self.held_by_claim.entry(claim).or_default() += 1;
    }

    /// Ends the lease of (id, attempt), or None when this attempt is not held.
    pub fn remove(&mut self, id: i64, attempt: i32) -> Option<Ended> {
        match self.jobs.get(&id) {
            Some(lease) if lease.attempt == attempt => {
                let lease = self.jobs.remove(&id)?;
                let closes = self.release_claim(lease.claim);
                Some(Ended {
                    job_type: lease.job_type,
                    closes,
                })
            }
            _ => None,
        }
    }

    /// One job of `claim` is no longer held; Some(claim) if it was the last.
    fn release_claim(&mut self, claim: i64) -> Option<i64> {
        let held = self.held_by_claim.get_mut(&claim)?;
        *held -= 1;
        if *held > 0 {
            return None;
        }
        self.held_by_claim.remove(&claim);
        Some(claim)
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
        f.add(1, 2, "email".into(), 7);
        assert_eq!(f.remove(1, 1), None);
        assert_eq!(
            f.remove(1, 2),
            Some(Ended {
                job_type: "email".into(),
                closes: Some(7)
            })
        );
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn unrenewed_held_leases_are_lost_once_and_leave_the_set() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 1);
        f.add(2, 1, "a".into(), 1);
        f.add(3, 1, "a".into(), 1);
        f.add(4, 1, "a".into(), 1);
        let sent = f.snapshot();
        assert_eq!(sent.len(), 4);
        f.remove(3, 1); // completed while the heartbeat ran
        f.remove(4, 1); // released, then claimed again while the heartbeat ran
        f.add(4, 2, "a".into(), 2);
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

    #[test]
    fn a_claim_closes_with_the_end_of_its_last_held_job() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 10);
        f.add(2, 1, "a".into(), 10);
        f.add(3, 1, "a".into(), 11);
        assert_eq!(f.remove(2, 1).unwrap().closes, None);
        assert_eq!(f.remove(3, 1).unwrap().closes, Some(11));
        assert_eq!(f.remove(1, 1).unwrap().closes, Some(10));
        // claimed again before its old attempt ended (not in practice): the
        // old claim is no longer counted, and is left to the sweep
        f.add(4, 1, "a".into(), 12);
        f.add(4, 1, "a".into(), 13);
        assert_eq!(f.held_by_claim.get(&12), None);
        assert_eq!(f.remove(4, 1).unwrap().closes, Some(13));
        assert!(f.held_by_claim.is_empty());
    }
}
