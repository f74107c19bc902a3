//! Soak mode (ignored by default): a cachet process under mixed load for
//! `CACHET_SOAK_SECS` seconds (default 3600), with clients connecting and disconnecting
//! all along, while its resident memory and open descriptors are sampled every few
//! seconds. After a warm-up both must stay flat. Every reply is checked.
//!
//!     CACHET_SOAK_SECS=60 cargo test --test soak -- --ignored --nocapture

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::process::CachetProcess;
use support::raw::{Raw, cmd, words};
use support::redis::RedisServer;

/// One client's workload; `i` counts its iterations.
fn step(kind: usize, worker: usize, i: u64, c: &mut Raw, addr: std::net::SocketAddr) {
    match kind {
        // Strict writes and reads, and a counter that must never skip or repeat.
        0 => {
            let key = format!("soak:{worker}:{}", i % 100);
            assert_eq!(
                c.call(&cmd(&[b"SET", key.as_bytes(), b"value"])),
                b"+OK\r\n"
            );
            assert_eq!(c.call(&cmd(&[b"GET", key.as_bytes()])), b"$5\r\nvalue\r\n");
            let n = c.call(&words(&format!("INCR soak:counter:{worker}")));
            assert_eq!(n, format!(":{}\r\n", i + 1).into_bytes());
        }
        // Pipelines of 50 commands.
        1 => {
            let key = format!("soak:pipe:{worker}");
            let mut p = Vec::new();
            for j in 0..25 {
                p.extend(words(&format!("SET {key} {j}")));
                p.extend(words(&format!("GET {key}")));
            }
            c.send(&p);
            for j in 0..25 {
                assert_eq!(c.frame(), b"+OK\r\n");
                let v = j.to_string();
                assert_eq!(c.frame(), format!("${}\r\n{v}\r\n", v.len()).into_bytes());
            }
        }
        // Cache-aside in a `cache` keyspace: miss, fill, hit; and invalidations.
        2 => {
            let key = format!(":1:item:{}", i % 50);
            let r = c.call(&words(&format!("GET {key}")));
            if r == b"$-1\r\n" {
                assert_eq!(c.call(&words(&format!("SET {key} v EX 60"))), b"+OK\r\n");
            } else {
                assert_eq!(r, b"$1\r\nv\r\n");
            }
            if i.is_multiple_of(10) {
                assert!(c.call(&words(&format!("DEL {key}"))).starts_with(b":"));
            }
        }
        // Transactions (a pinned connection each time).
        3 => {
            assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
            assert_eq!(c.call(&words("INCR soak:tx")), b"+QUEUED\r\n");
            assert!(c.call(&words("EXEC")).starts_with(b"*1\r\n:"));
        }
        // Subscribe and unsubscribe; block briefly.
        4 => {
            c.send(&words("SUBSCRIBE soak:news"));
            assert!(c.frame().starts_with(b"*3\r\n$9\r\nsubscribe"));
            c.send(&words("UNSUBSCRIBE soak:news"));
            assert!(c.frame().starts_with(b"*3\r\n$11\r\nunsubscribe"));
            assert_eq!(c.call(&words("BLPOP soak:empty 0.01")), b"*-1\r\n");
        }
        // Churn: a new connection for a few commands, then gone.
        _ => {
            let mut fresh = Raw::connect(addr);
            assert_eq!(fresh.call(&words("PING")), b"+PONG\r\n");
            assert_eq!(
                fresh.call(&words(&format!("SET soak:churn:{worker} {i}"))),
                b"+OK\r\n"
            );
            if i.is_multiple_of(2) {
                fresh.send(&words("QUIT"));
                assert_eq!(fresh.frame(), b"+OK\r\n");
            }
        }
    }
}

#[test]
#[ignore = "long-running; CACHET_SOAK_SECS=60 cargo test --test soak -- --ignored --nocapture"]
fn soak_memory_and_descriptors_stay_flat() {
    let secs: u64 = std::env::var("CACHET_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    let duration = Duration::from_secs(secs);
    let every = (duration / 30).clamp(Duration::from_secs(2), Duration::from_secs(60));
    let redis = RedisServer::start();
    let cachet = CachetProcess::start(&redis.url());
    let addr = cachet.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..12)
        .map(|w| {
            let (stop, ops) = (stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut c = Raw::connect(addr);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    step(w % 6, w, i, &mut c, addr);
                    i += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
                    // Reconnect now and then: long-lived clients come and go too.
                    if w % 6 != 0 && i % 500 == 0 {
                        c = Raw::connect(addr);
                    }
                }
            })
        })
        .collect();

    let start = Instant::now();
    let mut samples: Vec<(Duration, u64, usize, u64)> = Vec::new();
    println!("soak: {secs} s, sampling every {every:?}");
    println!("{:>8} {:>10} {:>5} {:>10}", "t", "RSS KiB", "fds", "ops");
    while start.elapsed() < duration {
        std::thread::sleep(every.min(duration.saturating_sub(start.elapsed())));
        assert!(
            !workers.iter().any(|w| w.is_finished()),
            "a worker failed (see its panic above)"
        );
        let s = (
            start.elapsed(),
            cachet.rss_kib(),
            cachet.open_fds(),
            ops.load(Ordering::Relaxed),
        );
        println!("{:>7.0?} {:>10} {:>5} {:>10}", s.0, s.1, s.2, s.3);
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }

    // After the first fifth (warm-up: buffers, pools, allocator arenas), memory may
    // not grow by more than 8 MiB plus 5% and descriptors by more than the churn.
    let warm = samples.len() / 5;
    let (rss_warm, fds_warm) = samples
        .iter()
        .take(warm.max(1))
        .fold((0, 0), |(r, f), s| (r.max(s.1), f.max(s.2)));
    let rss_max = samples.iter().skip(warm).map(|s| s.1).max().unwrap_or(0);
    let fds_max = samples.iter().skip(warm).map(|s| s.2).max().unwrap_or(0);
    let total = ops.load(Ordering::Relaxed);
    println!(
        "soak: {total} operations; RSS after warm-up {rss_warm} KiB, max {rss_max} KiB; \
         fds after warm-up {fds_warm}, max {fds_max}"
    );
    assert!(
        samples.len() >= 5,
        "too short to judge: {} samples",
        samples.len()
    );
    assert!(total > 1000, "the load ran: {total} operations");
    assert!(
        rss_max <= rss_warm + 8 * 1024 + rss_warm / 20,
        "RSS grew from {rss_warm} KiB to {rss_max} KiB"
    );
    assert!(
        fds_max <= fds_warm + 16,
        "fds grew from {fds_warm} to {fds_max}"
    );
}
