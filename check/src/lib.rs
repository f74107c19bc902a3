//! `cachet-check`: runs a cache-aside application's workload (Django's Redis cache
//! backend command sequences) against a real database and Redis, directly and through
//! cachet, and reports exactly how stale the cache got (DESIGN section 8).
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

pub mod client;
pub mod db;
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
use self::report::{ProfileReport, RunReport};
use self::run::{Fault, RunSpec};
use self::spawn::Proc;

/// A fault profile: a workload shape, and for two of them a process restarted mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Random delay between the database read and the fill.
    SlowFill,
    /// The writer deletes the key inside its transaction, before `COMMIT`.
    PreCommitDelete,
    /// The writer `SET`s the new value after `COMMIT`, with a random delay.
    WriteThrough,
    /// Hundreds of workers miss one hot key at once.
    Herd,
    /// The Redis process is restarted mid-run (`--spawn` only).
    UpstreamRestart,
    /// cachet is killed with SIGKILL and restarted mid-run (`--spawn` only).
    CachetRestart,
    /// Skewed keys, mixed operations, no faults.
    Zipf,
}

impl Profile {
    pub const ALL: [Profile; 7] = [
        Profile::SlowFill,
        Profile::PreCommitDelete,
        Profile::WriteThrough,
        Profile::Herd,
        Profile::UpstreamRestart,
        Profile::CachetRestart,
        Profile::Zipf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::SlowFill => "slow-fill",
            Profile::PreCommitDelete => "pre-commit-delete",
            Profile::WriteThrough => "write-through",
            Profile::Herd => "herd",
            Profile::UpstreamRestart => "upstream-restart",
            Profile::CachetRestart => "cachet-restart",
            Profile::Zipf => "zipf",
        }
    }

    /// Profiles whose race must show directly against Redis (or the checker has lost
    /// its teeth).
    pub fn racy(self) -> bool {
        matches!(
            self,
            Profile::SlowFill | Profile::PreCommitDelete | Profile::WriteThrough
        )
    }

    /// Profiles that restart a process, which needs `--spawn`.
    pub fn needs_spawn(self) -> bool {
        matches!(self, Profile::UpstreamRestart | Profile::CachetRestart)
    }

    /// The workload: few hot keys and many workers where a race must show within
    /// seconds.
    pub fn shape(self) -> Shape {
        let base = Shape {
            keys: 4,
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
        };
        match self {
            Profile::SlowFill => Shape {
                fill_delay_ms: (5, 50),
                ..base
            },
            Profile::PreCommitDelete => Shape {
                write_ratio: 0.15,
                hold_ms: (3, 10),
                invalidation: Invalidation::PreCommitDelete,
                ..base
            },
            Profile::WriteThrough => Shape {
                write_ratio: 0.3,
                hold_ms: (0, 20),
                invalidation: Invalidation::WriteThrough,
                ..base
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
        }
    }
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
}

/// Where to run: Redis directly and cachet, and (with `--spawn`) the processes that
/// the restart profiles restart.
pub struct Targets {
    pub direct: SocketAddr,
    pub proxy: SocketAddr,
    /// The Redis at `direct`.
    pub direct_redis: Option<Arc<Mutex<Proc>>>,
    /// The Redis behind cachet.
    pub redis: Option<Arc<Mutex<Proc>>>,
    /// cachet at `proxy`.
    pub cachet: Option<Arc<Mutex<Proc>>>,
}

/// What the suite runs.
pub struct Options {
    pub profiles: Vec<Profile>,
    pub seconds: f64,
    pub seed: u64,
    /// cachet's `hold_off`: the run waits this (and a margin) before the final audit.
    pub hold_off: Duration,
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
        let restart = |label: &str| match (profile, label) {
            (Profile::UpstreamRestart, "direct") => targets.direct_redis.clone(),
            (Profile::UpstreamRestart, _) => targets.redis.clone(),
            (Profile::CachetRestart, "cachet") => targets.cachet.clone(),
            _ => None,
        };
        if profile.needs_spawn() && restart("cachet").is_none() {
            report.skipped = Some("needs --spawn".into());
            out.push(report);
            continue;
        }
        for (label, addr) in [("direct", targets.direct), ("cachet", targets.proxy)] {
            // The direct run of cachet-restart has no cachet to restart.
            let fault: Option<Fault> = restart(label).map(restarter);
            let spec = RunSpec {
                profile,
                label,
                addr,
                seconds: opts.seconds,
                seed: opts.seed.wrapping_add(i as u64 * 1000),
                hold_off: opts.hold_off,
                fault,
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

fn restarter(p: Arc<Mutex<Proc>>) -> Fault {
    Box::new(move || match p.lock() {
        Ok(mut p) => p.restart(),
        Err(_) => Err("process handle poisoned".into()),
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
