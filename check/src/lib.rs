//! `cachet-check`: runs a cache-aside application's workload (Django's Redis cache
//! backend command sequences) against a real database and Redis, directly and through
//! cachet, and reports exactly how stale the cache got (the proxy's docs/design.md,
//! "How it is proven").
//!
//! | concern | file |
//! |---|---|
//! | profiles and their workload shapes, the whole suite | `mod.rs` |
//! | the workers' command sequences | `workload.rs` |
//! | the hot-key herd's rounds | `herd.rs` |
//! | one run: reset, workers, fault, quiesce, audit, check | `run.rs` |
//! | the database (SQLite or PostgreSQL) | `db.rs` |
//! | a worker's Redis connection | `client.rs` |
//! | events of a run, cached value format | `history.rs` |
//! | per-key linearizability of reads | `linearizability.rs` |
//! | figures, table, JSON, verdict | `report.rs` |
//! | `redis-server` and `cachet` child processes (`--spawn`) | `spawn.rs` |
//! | a proxy that resets connections (`dropped-invalidation`) | `faults.rs` |

pub mod client;
pub mod db;
pub mod faults;
pub mod herd;
pub mod history;
pub mod linearizability;
pub mod report;
pub mod run;
pub mod spawn;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use self::db::Db;
use self::faults::FaultProxy;
use self::report::{ProfileReport, RunReport};
use self::run::{Fault, RunSpec};
use self::spawn::Proc;

/// A fault profile: a workload shape, and for some of them a fault at half time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Random delay between the database read and the fill.
    SlowFill,
    /// Fills slower than `hold_off`, as slow as half the fill window.
    SlowFillPastHoldOff,
    /// Fills slower than `lease_ttl` (within the fill window).
    LeaseExpiry,
    /// The writer deletes the key inside its transaction, before `COMMIT`.
    PreCommitDelete,
    /// The writer `SET`s the new value after `COMMIT`, with a random delay (keys in a
    /// `write_through = "collapse"` keyspace).
    WriteThrough,
    /// Django's `get_many`, then `set_many` as redis-py's transaction pipeline
    /// (`MULTI`, `MSET`, `EXPIRE` each, `EXEC`).
    SetManyPipeline,
    /// Workers of several cachets miss the same keys (at least two cachets).
    MultiSidecar,
    /// Every worker's commands go to any connection of a pool its cachet's workers
    /// share, as Django's cache does with threads.
    Pooled,
    /// Connections to Redis are reset every few hundred milliseconds: invalidations
    /// are lost (`--spawn` only).
    DroppedInvalidation,
    /// Hundreds of workers miss one hot key at once.
    Herd,
    /// The Redis process is restarted mid-run (`--spawn` only).
    UpstreamRestart,
    /// cachet is killed with SIGKILL and restarted mid-run (`--spawn` only).
    CachetRestart,
    /// One of several cachets is killed and restarted mid-run (`--spawn`, at least two).
    RestartOneOfSeveral,
    /// Skewed keys, mixed operations, no faults.
    Zipf,
    /// Many keys, each written less than once per ten seconds, skewed reads from
    /// pooled workers: the hit rate through cachet against Redis's.
    ReadMostly,
}

impl Profile {
    pub const ALL: [Profile; 15] = [
        Profile::SlowFill,
        Profile::SlowFillPastHoldOff,
        Profile::LeaseExpiry,
        Profile::PreCommitDelete,
        Profile::WriteThrough,
        Profile::SetManyPipeline,
        Profile::MultiSidecar,
        Profile::Pooled,
        Profile::DroppedInvalidation,
        Profile::Herd,
        Profile::UpstreamRestart,
        Profile::CachetRestart,
        Profile::RestartOneOfSeveral,
        Profile::Zipf,
        Profile::ReadMostly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::SlowFill => "slow-fill",
            Profile::SlowFillPastHoldOff => "slow-fill-past-hold-off",
            Profile::LeaseExpiry => "lease-expiry",
            Profile::PreCommitDelete => "pre-commit-delete",
            Profile::WriteThrough => "write-through",
            Profile::SetManyPipeline => "set-many-pipeline",
            Profile::MultiSidecar => "multi-sidecar",
            Profile::Pooled => "pooled",
            Profile::DroppedInvalidation => "dropped-invalidation",
            Profile::Herd => "herd",
            Profile::UpstreamRestart => "upstream-restart",
            Profile::CachetRestart => "cachet-restart",
            Profile::RestartOneOfSeveral => "restart-one-of-several",
            Profile::Zipf => "zipf",
            Profile::ReadMostly => "read-mostly",
        }
    }

    /// Profiles whose race must show directly against Redis (or the checker has lost
    /// its teeth).
    pub fn racy(self) -> bool {
        !matches!(self, Profile::Herd | Profile::Zipf | Profile::ReadMostly)
    }

    /// Profiles that need processes the checker started itself (`--spawn`).
    pub fn needs_spawn(self) -> bool {
        matches!(
            self,
            Profile::UpstreamRestart
                | Profile::CachetRestart
                | Profile::RestartOneOfSeveral
                | Profile::DroppedInvalidation
        )
    }

    /// Profiles that run against a Redis Cluster: not those that restart or cut off
    /// the one Redis behind the cachets, nor the transaction of several keys in
    /// different slots (which a cluster refuses, with or without cachet).
    pub fn runs_on_a_cluster(self) -> bool {
        !matches!(
            self,
            Profile::UpstreamRestart | Profile::DroppedInvalidation | Profile::SetManyPipeline
        )
    }

    /// Profiles that run with a Sentinel upstream: not the one that cuts off the
    /// Redis behind the cachets through the fault proxy (the cachets reach the primary
    /// Sentinel names). `upstream-restart` fails the primary over instead.
    pub fn runs_behind_sentinel(self) -> bool {
        !matches!(self, Profile::DroppedInvalidation)
    }

    /// Profiles that need at least two cachets.
    pub fn needs_several(self) -> bool {
        matches!(self, Profile::MultiSidecar | Profile::RestartOneOfSeveral)
    }

    /// The workload: few hot keys and many workers where a race must show within
    /// seconds. `w` are cachet's windows (slow fills are drawn across them).
    pub fn shape(self, w: &Windows) -> Shape {
        let ms = |d: Duration| d.as_millis() as u64;
        let base = Shape {
            keys: 4,
            key_prefix: ":1:item:",
            workers: 24,
            write_ratio: 0.1,
            mget_ratio: 0.0,
            add_ratio: 0.0,
            zipf: None,
            fill_delay_ms: (0, 2),
            think_ms: (0, 2),
            hold_ms: (0, 0),
            invalidation: Invalidation::Delete,
            herd: false,
            pooled: false,
            set_many: false,
            writes_per_sec: None,
        };
        let slow = Shape {
            fill_delay_ms: (5, 50),
            ..base.clone()
        };
        match self {
            Profile::SlowFill => slow,
            Profile::SlowFillPastHoldOff => Shape {
                workers: 32,
                write_ratio: 0.05,
                fill_delay_ms: (ms(w.hold_off), ms(w.hold_off).max(ms(w.fill) / 2)),
                ..base
            },
            Profile::LeaseExpiry => Shape {
                workers: 32,
                write_ratio: 0.05,
                fill_delay_ms: (ms(w.lease), ms(w.lease).max(ms(w.fill) * 4 / 5)),
                ..base
            },
            Profile::PreCommitDelete => Shape {
                write_ratio: 0.15,
                hold_ms: (3, 10),
                invalidation: Invalidation::PreCommitDelete,
                ..base
            },
            Profile::WriteThrough => Shape {
                key_prefix: ":1:wt:",
                write_ratio: 0.3,
                hold_ms: (0, 20),
                invalidation: Invalidation::WriteThrough,
                ..base
            },
            Profile::SetManyPipeline => Shape {
                mget_ratio: 0.9,
                write_ratio: 0.1,
                set_many: true,
                ..slow
            },
            Profile::MultiSidecar | Profile::RestartOneOfSeveral => Shape {
                workers: 30,
                ..slow
            },
            Profile::Pooled => Shape {
                pooled: true,
                ..slow
            },
            Profile::DroppedInvalidation => Shape {
                keys: 8,
                write_ratio: 0.2,
                ..slow
            },
            Profile::Herd => Shape {
                keys: 1,
                workers: 300,
                fill_delay_ms: (2, 5),
                herd: true,
                ..base
            },
            Profile::UpstreamRestart | Profile::CachetRestart => Shape {
                keys: 16,
                write_ratio: 0.15,
                mget_ratio: 0.1,
                fill_delay_ms: (1, 20),
                ..base
            },
            Profile::Zipf => Shape {
                keys: 1000,
                workers: 32,
                write_ratio: 0.1,
                mget_ratio: 0.1,
                add_ratio: 0.3,
                zipf: Some(1.1),
                ..base
            },
            Profile::ReadMostly => Shape {
                keys: 2000,
                workers: 32,
                write_ratio: 0.0,
                mget_ratio: 0.1,
                zipf: Some(1.0),
                fill_delay_ms: (1, 5),
                think_ms: (0, 1),
                pooled: true,
                // Each key written about once a minute on average.
                writes_per_sec: Some(2000.0 / 60.0),
                ..base
            },
        }
    }
}

/// cachet's windows, as the run knows them: `hold_off`, `lease_ttl`, `fill_window`.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub hold_off: Duration,
    pub lease: Duration,
    pub fill: Duration,
}

/// How a write invalidates the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// `DEL` after `COMMIT` (Django's `cache.delete`).
    Delete,
    /// `DEL` inside the transaction, `hold_ms` before `COMMIT`.
    PreCommitDelete,
    /// `SET` of the new value `hold_ms` after `COMMIT`.
    WriteThrough,
}

/// A profile's workload.
#[derive(Debug, Clone)]
pub struct Shape {
    pub keys: u32,
    /// Cache keys are this and the row id (`:1:item:7`).
    pub key_prefix: &'static str,
    pub workers: u32,
    /// Fractions of operations that are writes and `get_many`s; the rest are `get`s.
    pub write_ratio: f64,
    pub mget_ratio: f64,
    /// Fraction of fills that are `cache.add` (`SET … NX`).
    pub add_ratio: f64,
    pub zipf: Option<f64>,
    /// Delay between the database read and the fill.
    pub fill_delay_ms: (u64, u64),
    /// Pause between a worker's operations.
    pub think_ms: (u64, u64),
    /// Pre-commit delete: `DEL` to `COMMIT`; write-through: `COMMIT` to `SET`.
    pub hold_ms: (u64, u64),
    pub invalidation: Invalidation,
    pub herd: bool,
    /// The workers of one cachet share a pool of connections (any command on any).
    pub pooled: bool,
    /// `get_many` misses are filled with `set_many` in a transaction.
    pub set_many: bool,
    /// One writer at a fixed rate instead of `write_ratio`.
    pub writes_per_sec: Option<f64>,
}

impl Shape {
    pub fn key(&self, n: u32) -> String {
        format!("{}{n}", self.key_prefix)
    }
}

/// Where to run: Redis directly and one or more cachets, and (with `--spawn`) the
/// processes that the restart profiles restart and the proxies that drop connections.
pub struct Targets {
    pub direct: SocketAddr,
    /// The cachets; workers are spread over them.
    pub proxies: Vec<SocketAddr>,
    /// The Redis at `direct`.
    pub direct_redis: Option<Arc<Mutex<Proc>>>,
    /// The Redis behind the cachets.
    pub redis: Option<Arc<Mutex<Proc>>>,
    /// The cachets at `proxies`.
    pub cachets: Vec<Arc<Mutex<Proc>>>,
    /// In front of the direct Redis (`direct` is its address) and of the cachets'
    /// upstream.
    pub faults: Option<(Arc<FaultProxy>, Arc<FaultProxy>)>,
    /// The cachets' upstream is a Redis Cluster (these nodes); the direct runs still
    /// use one Redis (the workers' client routes to one address).
    pub cluster: Vec<Proc>,
    /// The cachets' upstream is the primary a sentinel names: a primary, its replica
    /// and the sentinel (last), watching [`SENTINEL_MASTER`].
    pub sentinel: Vec<Proc>,
}

/// The name the spawned sentinel knows the primary by.
pub const SENTINEL_MASTER: &str = "cachet-check";

/// What the suite runs.
pub struct Options {
    pub profiles: Vec<Profile>,
    pub seconds: f64,
    pub seed: u64,
    /// cachet's windows: slow fills are drawn across them, and the run waits past
    /// `hold_off` before the final audit.
    pub windows: Windows,
    /// Workers of one cachet share connection pools in every profile.
    pub pool: bool,
    pub history: Option<PathBuf>,
    /// Print a progress line on stderr.
    pub progress: bool,
}

/// Runs every profile directly and through cachet; histories go to `opts.history`.
pub async fn run_suite(opts: &Options, targets: &Targets, db: Arc<Db>) -> Vec<ProfileReport> {
    let mut history = opts.history.as_ref().map(|p| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .map_err(|e| format!("{}: {e}", p.display()))
    });
    let mut out = Vec::new();
    for (i, &profile) in opts.profiles.iter().enumerate() {
        let mut report = ProfileReport::new(profile);
        if profile.needs_spawn() && targets.redis.is_none() {
            report.skipped = Some("needs --spawn".into());
            out.push(report);
            continue;
        }
        if !targets.cluster.is_empty() && !profile.runs_on_a_cluster() {
            report.skipped = Some("not with --cluster".into());
            out.push(report);
            continue;
        }
        if !targets.sentinel.is_empty() && !profile.runs_behind_sentinel() {
            report.skipped = Some("not with --sentinel".into());
            out.push(report);
            continue;
        }
        if profile.needs_several() && targets.proxies.len() < 2 {
            report.skipped = Some("needs --proxies 2 or more".into());
            out.push(report);
            continue;
        }
        let seed = opts.seed.wrapping_add(i as u64 * 1000);
        let runs: [(&'static str, Vec<SocketAddr>); 2] = [
            ("direct", vec![targets.direct]),
            ("cachet", targets.proxies.clone()),
        ];
        for (label, addrs) in runs {
            let spec = RunSpec {
                profile,
                label,
                addrs,
                seconds: opts.seconds,
                seed,
                windows: opts.windows,
                pool: opts.pool,
                fault: fault_of(profile, label, targets),
                chaos: match (profile, &targets.faults) {
                    (Profile::DroppedInvalidation, Some((direct, upstream))) => {
                        Some(Arc::clone(if label == "direct" {
                            direct
                        } else {
                            upstream
                        }))
                    }
                    _ => None,
                },
                progress: opts.progress,
            };
            let result = run::run_once(Arc::clone(&db), spec).await;
            let run = match result {
                Ok(outcome) => {
                    if let Some(Ok(w)) = history.as_mut() {
                        write_history(w, profile, label, &outcome.events);
                    }
                    outcome.report
                }
                Err(e) => RunReport::failed(profile, label, e),
            };
            if label == "direct" {
                report.direct = Some(run);
            } else {
                report.cachet = Some(run);
            }
        }
        out.push(report);
    }
    if let Some(Err(e)) = history {
        eprintln!("cachet-check: history not written: {e}");
    }
    out
}

/// The process a profile restarts at half time, for one of its runs.
fn fault_of(profile: Profile, label: &str, t: &Targets) -> Option<Fault> {
    if let (Profile::UpstreamRestart, "cachet", Some(sentinel)) =
        (profile, label, t.sentinel.last())
    {
        // Behind Sentinel the upstream's fault is a failover to the replica.
        let port = sentinel.port;
        return Some(Box::new(move || Proc::fail_over(port, SENTINEL_MASTER)));
    }
    let procs: Vec<Arc<Mutex<Proc>>> = match (profile, label) {
        (Profile::UpstreamRestart, "direct") => t.direct_redis.iter().cloned().collect(),
        (Profile::UpstreamRestart, _) => t.redis.iter().cloned().collect(),
        // The direct runs of these have no cachet to restart.
        (Profile::CachetRestart, "cachet") => t.cachets.clone(),
        (Profile::RestartOneOfSeveral, "cachet") => t.cachets.iter().take(1).cloned().collect(),
        _ => return None,
    };
    (!procs.is_empty()).then(|| restarter(procs))
}

fn restarter(procs: Vec<Arc<Mutex<Proc>>>) -> Fault {
    Box::new(move || {
        for p in procs {
            match p.lock() {
                Ok(mut p) => p.restart()?,
                Err(_) => return Err("process handle poisoned".into()),
            }
        }
        Ok(())
    })
}

fn write_history(
    w: &mut impl std::io::Write,
    profile: Profile,
    label: &str,
    events: &[history::Event],
) {
    #[derive(Serialize)]
    struct Line<'a> {
        profile: &'static str,
        target: &'a str,
        #[serde(flatten)]
        event: &'a history::Event,
    }
    for event in events {
        let line = Line {
            profile: profile.name(),
            target: label,
            event,
        };
        if let Ok(s) = serde_json::to_string(&line) {
            let _ = writeln!(w, "{s}");
        }
    }
    let _ = w.flush();
}
