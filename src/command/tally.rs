//! A command's reply counters, carried by its [`CommandInfo`](super::CommandInfo) so
//! that counting one costs an atomic add. `metrics.rs` registers and exposes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One command's replies, by outcome.
#[derive(Debug, Default)]
pub struct CommandTally {
    ok: AtomicU64,
    error: AtomicU64,
}

impl CommandTally {
    pub fn count(&self, outcome: Outcome) {
        self.count_many(outcome, 1);
    }

    /// Counts `n` commands of one outcome.
    pub fn count_many(&self, outcome: Outcome, n: u64) {
        let c = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Error => &self.error,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Ok => self.ok.load(Ordering::Relaxed),
            Outcome::Error => self.error.load(Ordering::Relaxed),
        }
    }
}

/// A command's counters as carried by its `CommandInfo`. Equality ignores it: two
/// descriptions of a command are the same command whatever they have counted.
#[derive(Debug, Clone, Default)]
pub struct Tally(pub Arc<CommandTally>);

impl PartialEq for Tally {
    fn eq(&self, _: &Tally) -> bool {
        true
    }
}

impl Eq for Tally {}

/// How a command ended, as its reply tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Error,
}

impl Outcome {
    /// An error reply (`-…` or RESP3 `!…`) is an error; anything else is not.
    pub fn of_reply(reply: &[u8]) -> Outcome {
        match reply.first() {
            Some(b'-' | b'!') => Outcome::Error,
            _ => Outcome::Ok,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}
