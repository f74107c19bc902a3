//! Hand-written histories, valid and invalid, including the classic races.

use super::*;
use crate::history::{Event, Op};

const R: u32 = 1; // reader
const W: u32 = 2; // writer
const W2: u32 = 3; // second writer

fn hit(worker: u32, start: u64, end: u64, ver: i64) -> Event {
    Event::new(worker, 0, start, end, Op::Hit { ver })
}

fn db_read(worker: u32, start: u64, end: u64, ver: i64) -> Event {
    Event::new(worker, 0, start, end, Op::DbRead { ver })
}

fn fill(worker: u32, start: u64, end: u64, ver: i64) -> Event {
    Event::new(worker, 0, start, end, Op::Fill { ver, nx: false })
}

fn write(worker: u32, start: u64, commit: u64, end: u64, ver: i64) -> Event {
    Event::new(
        worker,
        0,
        start,
        end,
        Op::Write {
            ver,
            commit_us: commit,
            invalidated: true,
        },
    )
}

fn with_initial(mut events: Vec<Event>) -> Vec<Event> {
    events.insert(0, Event::initial(0));
    events
}

#[test]
fn a_fresh_history_passes() {
    let h = with_initial(vec![
        hit(R, 5, 6, 1),
        write(W, 10, 12, 14, 2),
        hit(R, 20, 21, 2),
        db_read(R, 22, 23, 2),
        write(W, 30, 32, 34, 3),
        hit(R, 40, 41, 3),
    ]);
    let f = check(&h);
    assert_eq!(f.reads, 4);
    assert_eq!(f.stale_reads, 0);
    assert_eq!(f.future_reads, 0);
    assert_eq!(f.violating_keys().count(), 0);
}

#[test]
fn reads_overlapping_a_write_may_return_either_version() {
    // The write's invalidation completes at 14; reads that began before may see v1.
    let h = with_initial(vec![
        write(W, 10, 12, 14, 2),
        hit(R, 11, 20, 1),
        hit(R, 13, 15, 1),
        hit(R, 14, 16, 1), // began exactly when the DEL returned: not yet known
        hit(R, 13, 15, 2), // the new value before the writer heard back: fine
    ]);
    let f = check(&h);
    assert_eq!(f.stale_reads, 0, "{:?}", f.examples);
    assert_eq!(f.future_reads, 0);
}

#[test]
fn the_classic_slow_fill_is_caught_with_its_age() {
    // Reader misses, reads v1 from the database; the writer commits v2 (at 30) and
    // DELs (done at 35); the slow fill of v1 lands at 50; a read at 60 returns v1.
    let h = with_initial(vec![
        Event::new(R, 0, 10, 11, Op::Miss),
        db_read(R, 12, 13, 1),
        write(W, 20, 30, 35, 2),
        fill(R, 49, 50, 1),
        hit(W2, 60, 61, 1),
        hit(W2, 100, 101, 1),
    ]);
    let f = check(&h);
    assert_eq!(f.stale_reads, 2);
    assert_eq!(f.ages_us, vec![30, 70], "age counts from v2's commit");
    assert_eq!(f.ryw_violations, 0, "another worker read it");
    let e = f.examples.first().cloned();
    assert_eq!(
        e,
        Some(StaleRead {
            key: 0,
            worker: W2,
            start_us: 60,
            ver: 1,
            newer: 2,
            age_us: 30
        })
    );
    assert_eq!(f.violating_keys().count(), 1);
}

#[test]
fn a_rejected_stale_fill_is_not_a_stale_read() {
    // Same race, but the cache dropped the fill: the later read misses and reads v2.
    let h = with_initial(vec![
        Event::new(R, 0, 10, 11, Op::Miss),
        db_read(R, 12, 13, 1),
        write(W, 20, 30, 35, 2),
        fill(R, 49, 50, 1),
        Event::new(W2, 0, 60, 61, Op::Miss),
        db_read(W2, 62, 63, 2),
    ]);
    let f = check(&h);
    assert_eq!(f.stale_reads, 0);
    assert_eq!(f.violating_keys().count(), 0);
}

#[test]
fn reordered_write_through_is_caught() {
    // W commits v2, W2 commits v3; W2's SET v3 lands first, then W's SET v2.
    let h = with_initial(vec![
        write(W, 10, 12, 40, 2),
        write(W2, 13, 15, 20, 3),
        hit(R, 25, 26, 3),
        hit(R, 50, 51, 2),
    ]);
    let f = check(&h);
    assert_eq!(f.stale_reads, 1);
    assert_eq!(f.ages_us, vec![35]);
    assert_eq!(f.examples.first().map(|e| e.newer), Some(3));
}

#[test]
fn pre_commit_delete_refill_is_caught_once_the_commit_returns() {
    // W: BEGIN, UPDATE (v2), DEL at 12, COMMIT returns at 20; the sequence ends at 20.
    // A reader refills v1 between the DEL and the commit.
    let h = with_initial(vec![
        Event::new(R, 0, 13, 14, Op::Miss),
        db_read(R, 14, 15, 1),
        fill(R, 16, 17, 1),
        write(W, 10, 20, 20, 2),
        hit(W2, 18, 19, 1), // before the commit returned: not stale
        hit(W2, 25, 26, 1), // after: stale
    ]);
    let f = check(&h);
    assert_eq!(f.stale_reads, 1);
    assert_eq!(f.ages_us, vec![5]);
}

#[test]
fn a_failed_invalidation_makes_nothing_stale_until_a_later_one_completes() {
    let mut lost = write(W, 10, 12, 14, 2);
    lost.op = Op::Write {
        ver: 2,
        commit_us: 12,
        invalidated: false,
    };
    let h = with_initial(vec![
        lost,
        hit(R, 20, 21, 1),
        write(W, 30, 32, 34, 3),
        hit(R, 40, 41, 1),
        hit(R, 41, 42, 2),
    ]);
    let f = check(&h);
    assert_eq!(f.stale_reads, 2, "only the reads after v3's invalidation");
    assert_eq!(f.ages_us, vec![28, 9], "v1's age counts from v2's commit");
}

#[test]
fn read_your_writes_is_reported_per_worker() {
    let h = with_initial(vec![
        write(W, 10, 12, 14, 2),
        hit(W, 20, 21, 1),
        hit(R, 22, 23, 1),
    ]);
    let f = check(&h);
    assert_eq!(f.stale_reads, 2);
    assert_eq!(f.ryw_violations, 1);
    assert_eq!(f.keys.get(&0).map(|k| k.ryw), Some(1));
}

#[test]
fn a_version_nobody_wrote_yet_is_from_the_future() {
    let h = with_initial(vec![
        hit(R, 5, 6, 2),
        write(W, 10, 12, 14, 2),
        hit(R, 11, 13, 2),
    ]);
    let f = check(&h);
    assert_eq!(f.future_reads, 1);
    assert_eq!(f.stale_reads, 0);
    assert_eq!(f.violating_keys().count(), 1);
}

#[test]
fn keys_are_judged_separately() {
    let mut other = write(W, 10, 12, 14, 2);
    other.key = 1;
    let h = vec![
        Event::initial(0),
        Event::initial(1),
        other,
        hit(R, 20, 21, 1), // key 0 is still at v1
    ];
    let f = check(&h);
    assert_eq!(f.stale_reads, 0);
    assert_eq!(f.keys.len(), 2);
}

#[test]
fn large_histories_are_checked_quickly() {
    // 200,000 events on one key: near-linear, not quadratic.
    let mut h = vec![Event::initial(0)];
    for i in 0..100_000u64 {
        let t = i * 10;
        h.push(write(W, t, t + 2, t + 4, i as i64 + 2));
        h.push(hit(R, t + 5, t + 6, i as i64 + 2));
    }
    let started = std::time::Instant::now();
    let f = check(&h);
    assert_eq!(f.stale_reads, 0);
    assert_eq!(f.reads, 100_000);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
