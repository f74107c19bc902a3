//! The hot-key herd: in rounds, one writer updates the hot row and invalidates it,
//! waits out cachet's `hold_off` and fill window (so that the previous round's misses
//! can no longer be filled, and a new fill can be stored), then every worker misses
//! the key at once; the database reads of each round are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Barrier;

use super::workload::Worker;

/// The hot key.
const HOT: u32 = 0;

/// Runs rounds until the run is told to stop; returns the workers (with their
/// histories) and the database reads of each round.
pub async fn run(
    workers: Vec<Worker>,
    mut writer: Worker,
    spacing: Duration,
) -> (Vec<Worker>, Vec<u64>) {
    let shared = Arc::clone(&writer.shared);
    let barrier = Arc::new(Barrier::new(workers.len() + 1));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut w in workers {
        let (barrier, done) = (Arc::clone(&barrier), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            loop {
                barrier.wait().await;
                if done.load(Ordering::Acquire) {
                    return w;
                }
                w.get_or_fill(HOT, false).await;
                w.shared.ops.fetch_add(1, Ordering::Relaxed);
                barrier.wait().await;
            }
        }));
    }
    let mut rounds = Vec::new();
    loop {
        let stop = shared.stop.load(Ordering::Relaxed);
        if stop {
            done.store(true, Ordering::Release);
        } else {
            writer.write(HOT).await;
            shared.ops.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(spacing + Duration::from_millis(50)).await;
            shared.db_reads.store(0, Ordering::Relaxed);
        }
        barrier.wait().await;
        if stop {
            break;
        }
        barrier.wait().await;
        rounds.push(shared.db_reads.load(Ordering::Relaxed));
    }
    let mut out = vec![writer];
    for t in tasks {
        if let Ok(w) = t.await {
            out.push(w);
        }
    }
    (out, rounds)
}
