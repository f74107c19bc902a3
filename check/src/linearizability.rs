//! Per-key linearizability of reads against the committed version order.
//!
//! Versions come from the database (`ver = ver + 1 … RETURNING ver`), so per key they
//! follow commit order. A write of version `w` is *complete* when its whole sequence
//! (commit and invalidation) returned with the invalidation successful. A read that
//! began at `t` and returned version `v` is:
//! - **stale** if some write of a version `> v` completed before `t` (its age is `t`
//!   minus the commit time of the first version after `v`);
//! - a **read-your-writes** violation if, moreover, that worker itself completed such
//!   a write before `t`;
//! - **from the future** if no write of version `v` had even begun before the read
//!   ended (a corrupt value or a broken checker).
//!
//! A fill whose database read predates a commit is never stale by itself: only what a
//! later read returns is judged, so a stale fill that the cache rejected costs nothing.
//! Per key, reads are swept in order of start time against completions sorted by
//! end time: `O(n log n)`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::history::{Event, Op};

/// What the check found on one key.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct KeyFindings {
    pub reads: u64,
    pub stale: u64,
    pub future: u64,
    pub ryw: u64,
    pub max_age_us: u64,
}

impl KeyFindings {
    pub fn violated(&self) -> bool {
        self.stale + self.future + self.ryw > 0
    }
}

/// One stale read, with what made it stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleRead {
    pub key: u32,
    pub worker: u32,
    pub start_us: u64,
    /// The version the read returned.
    pub ver: i64,
    /// The highest version whose write had completed before the read began.
    pub newer: i64,
    pub age_us: u64,
}

/// What the check found on a whole history.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Reads judged: cache hits and database reads.
    pub reads: u64,
    pub stale_reads: u64,
    pub future_reads: u64,
    pub ryw_violations: u64,
    /// The age of every stale read.
    pub ages_us: Vec<u64>,
    /// Every key that was read or written.
    pub keys: BTreeMap<u32, KeyFindings>,
    /// The first stale reads found (at most [`EXAMPLES`]), by key.
    pub examples: Vec<StaleRead>,
}

/// How many stale reads are kept as examples.
pub const EXAMPLES: usize = 10;

impl Findings {
    /// Keys with at least one stale, future or read-your-writes violation.
    pub fn violating_keys(&self) -> impl Iterator<Item = (&u32, &KeyFindings)> {
        self.keys.iter().filter(|(_, f)| f.violated())
    }
}

struct Write {
    worker: u32,
    ver: i64,
    start_us: u64,
    end_us: u64,
    commit_us: u64,
    invalidated: bool,
}

struct Read {
    worker: u32,
    ver: i64,
    start_us: u64,
    end_us: u64,
}

/// Checks a history (events of any number of keys and workers, in any order).
pub fn check(events: &[Event]) -> Findings {
    let mut by_key: BTreeMap<u32, (Vec<Write>, Vec<Read>)> = BTreeMap::new();
    for e in events {
        let (writes, reads) = by_key.entry(e.key).or_default();
        match e.op {
            Op::Hit { ver } | Op::DbRead { ver } => reads.push(Read {
                worker: e.worker,
                ver,
                start_us: e.start_us,
                end_us: e.end_us,
            }),
            Op::Write {
                ver,
                commit_us,
                invalidated,
            } => writes.push(Write {
                worker: e.worker,
                ver,
                start_us: e.start_us,
                end_us: e.end_us,
                commit_us,
                invalidated,
            }),
            _ => {}
        }
    }
    let mut out = Findings::default();
    for (key, (writes, mut reads)) in by_key {
        let f = check_key(key, &writes, &mut reads, &mut out);
        out.keys.insert(key, f);
    }
    out
}

fn check_key(key: u32, writes: &[Write], reads: &mut [Read], out: &mut Findings) -> KeyFindings {
    let mut f = KeyFindings {
        reads: reads.len() as u64,
        ..KeyFindings::default()
    };
    let commits: BTreeMap<i64, u64> = writes.iter().map(|w| (w.ver, w.commit_us)).collect();

    // Stale and read-your-writes: completions known before each read began.
    let mut done: Vec<(u64, i64, u32)> = writes
        .iter()
        .filter(|w| w.invalidated)
        .map(|w| (w.end_us, w.ver, w.worker))
        .collect();
    done.sort_unstable();
    reads.sort_by_key(|r| r.start_us);
    let mut done = done.into_iter().peekable();
    let mut floor = i64::MIN;
    let mut own: HashMap<u32, i64> = HashMap::new();
    for r in reads.iter() {
        while let Some(&(end, ver, worker)) = done.peek() {
            if end >= r.start_us {
                break;
            }
            floor = floor.max(ver);
            let o = own.entry(worker).or_insert(ver);
            *o = (*o).max(ver);
            done.next();
        }
        if r.ver < floor {
            let first_newer = commits.range(r.ver + 1..).next().map_or(0, |(_, c)| *c);
            let age = r.start_us.saturating_sub(first_newer);
            f.stale += 1;
            f.max_age_us = f.max_age_us.max(age);
            out.stale_reads += 1;
            out.ages_us.push(age);
            if out.examples.len() < EXAMPLES {
                out.examples.push(StaleRead {
                    key,
                    worker: r.worker,
                    start_us: r.start_us,
                    ver: r.ver,
                    newer: floor,
                    age_us: age,
                });
            }
            if own.get(&r.worker).is_some_and(|&o| o > r.ver) {
                f.ryw += 1;
                out.ryw_violations += 1;
            }
        }
    }

    // From the future: versions whose write had not begun before the read ended.
    let mut started: Vec<(u64, i64)> = writes.iter().map(|w| (w.start_us, w.ver)).collect();
    started.sort_unstable();
    reads.sort_by_key(|r| r.end_us);
    let mut started = started.into_iter().peekable();
    let mut highest = i64::MIN;
    for r in reads.iter() {
        while let Some(&(start, ver)) = started.peek() {
            if start > r.end_us {
                break;
            }
            highest = highest.max(ver);
            started.next();
        }
        if r.ver > highest {
            f.future += 1;
            out.future_reads += 1;
        }
    }
    out.reads += f.reads;
    f
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
