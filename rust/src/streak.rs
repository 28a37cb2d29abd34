//! The log discipline of a retrying task: the first error of a run of
//! failures and the recovery are logged, not every retry.

use crate::errors::CoreError;
use crate::shared::Shared;
use crate::stats::Stat;

/// Whether a task is in a run of failures. Connection failures are only
/// counted: the Db logs each outage once for the whole core.
pub struct Streak {
    what: &'static str,
    failing: bool,
}

impl Streak {
    pub fn new(what: &'static str) -> Self {
        Streak {
            what,
            failing: false,
        }
    }

    pub fn failed(&mut self, shared: &Shared, e: &CoreError) {
        shared.stats.add(Stat::Errors, 1);
        if !self.failing && !matches!(e, CoreError::Connect(_)) {
            self.failing = true;
            shared.log("error", format!("{} failed, retrying: {e}", self.what));
        }
    }

    pub fn ok(&mut self, shared: &Shared) {
        if std::mem::take(&mut self.failing) {
            shared.log("info", format!("{} recovered", self.what));
        }
    }
}
