//! The `cachet-check` binary: command line, set-up (database, `--spawn` processes),
//! the suite, the table and JSON line, the exit status. The logic is in
//! `cachet_check` (this crate's library).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;

use cachet_check::db::Db;
use cachet_check::faults::FaultProxy;
use cachet_check::report::{failures, table};
use cachet_check::spawn::{self, Proc};
use cachet_check::{Options, Profile, Targets, Windows, run_suite};

/// Runs a cache-aside workload against a real database and Redis, directly and
/// through cachet, and reports how stale the cache got.
#[derive(Debug, Parser)]
#[command(name = "cachet-check", version, about)]
struct Cli {
    /// Redis, used directly (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "spawn")]
    direct: Option<SocketAddr>,
    /// cachet, in front of a Redis (HOST:PORT); repeat it for several cachets in front
    /// of the same Redis (workers are spread over them).
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "spawn")]
    proxy: Vec<SocketAddr>,
    /// Start redis-servers and the cachet next to this executable on free ports.
    #[arg(long, conflicts_with_all = ["direct", "proxy"])]
    spawn: bool,
    /// With --spawn: the cachets' upstream is a Redis Cluster of three primaries
    /// (`redis+cluster://`); profiles that restart or cut off the upstream, and the
    /// cross-slot transaction, are skipped.
    #[arg(long, requires = "spawn")]
    cluster: bool,
    /// With --spawn: the cachets' upstream is the primary a redis-sentinel names
    /// (`redis+sentinel://`), with one replica; `upstream-restart` fails the primary
    /// over (`SENTINEL FAILOVER`) instead of restarting it; `dropped-invalidation` is
    /// skipped.
    #[arg(long, requires = "spawn", conflicts_with = "cluster")]
    sentinel: bool,
    /// With --spawn: this many cachets in front of one Redis.
    #[arg(long, default_value_t = 1, value_name = "N")]
    proxies: usize,
    /// Workers of one cachet share connection pools in every profile (a miss and its
    /// fill travel on any connection, as with Django's cache and threads).
    #[arg(long)]
    pool: bool,
    /// Seconds per run (each profile runs twice: directly and through cachet).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Profiles to run (repeatable); all by default.
    #[arg(long = "profile", value_enum, value_name = "NAME")]
    profiles: Vec<Profile>,
    /// PostgreSQL URL (postgres://user@host:port/db); SQLite in a temporary file by
    /// default.
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Seed of the workers' random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Write every operation as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// cachet's hold_off in milliseconds (the final audit waits past it); with --spawn,
    /// the cachets are configured with it.
    #[arg(long, default_value_t = 500)]
    hold_off_ms: u64,
    /// cachet's lease_ttl in milliseconds (lease-expiry fills are slower).
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
    /// cachet's fill_window in milliseconds (slow fills stay within it; herd rounds
    /// are spaced by it).
    #[arg(long, default_value_t = 10000)]
    fill_window_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cachet-check: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let profiles = if cli.profiles.is_empty() {
        Profile::ALL.to_vec()
    } else {
        cli.profiles.clone()
    };
    if !(cli.seconds > 0.0 && cli.seconds.is_finite()) {
        bail!("--seconds must be positive");
    }
    let windows = Windows {
        hold_off: Duration::from_millis(cli.hold_off_ms),
        lease: Duration::from_millis(cli.lease_ms),
        fill: Duration::from_millis(cli.fill_window_ms),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let targets = runtime.block_on(targets(&cli, &windows))?;
    let sqlite_file =
        std::env::temp_dir().join(format!("cachet-check-{}.sqlite", std::process::id()));
    let db = Arc::new(match &cli.db {
        Some(url) => Db::postgres(url),
        None => Db::sqlite(&sqlite_file),
    });
    let opts = Options {
        profiles,
        seconds: cli.seconds,
        seed,
        windows,
        pool: cli.pool,
        history: cli.history.clone(),
        progress: true,
    };
    eprintln!(
        "cachet-check: direct {} cachet {:?} database {} seed {seed}{}",
        targets.direct,
        targets.proxies,
        db.describe(),
        if opts.pool { " pooled" } else { "" }
    );
    let reports = runtime.block_on(async {
        let reports = run_suite(&opts, &targets, Arc::clone(&db)).await;
        if cli.db.is_some() {
            let _ = db.drop_table().await;
        }
        reports
    });
    drop(runtime);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = sqlite_file.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let failed = failures(&reports);
    print!("{}", table(&reports));
    let json = serde_json::json!({
        "seed": seed,
        "seconds": cli.seconds,
        "proxies": targets.proxies.len(),
        "pool": cli.pool,
        "database": if cli.db.is_some() { "postgres" } else { "sqlite" },
        "pass": failed.is_empty(),
        "failures": failed,
        "profiles": reports,
    });
    println!("{json}");
    for f in &failed {
        eprintln!("FAIL: {f}");
    }
    Ok(failed.is_empty())
}

async fn targets(cli: &Cli, windows: &Windows) -> anyhow::Result<Targets> {
    if !cli.spawn {
        let Some(direct) = cli.direct else {
            bail!("give --direct and --proxy, or --spawn");
        };
        if cli.proxy.is_empty() {
            bail!("give --direct and --proxy, or --spawn");
        }
        return Ok(Targets {
            direct,
            proxies: cli.proxy.clone(),
            direct_redis: None,
            redis: None,
            cachets: Vec::new(),
            faults: None,
            cluster: Vec::new(),
            sentinel: Vec::new(),
        });
    }
    let exe = std::env::current_exe().context("locating cachet-check")?;
    let cachet_exe = exe
        .parent()
        .map(|d| d.join("cachet"))
        .context("the directory of cachet-check")?;
    if !cachet_exe.exists() {
        bail!(
            "{} not found (build it: cargo build --bin cachet)",
            cachet_exe.display()
        );
    }
    // One Redis used directly, another behind the cachets: the runs cannot disturb
    // each other, and the restart profiles restart the one they mean. Both are reached
    // through a proxy that can reset connections (dropped-invalidation).
    let direct = Proc::redis().map_err(anyhow::Error::msg)?;
    let upstream = Proc::redis().map_err(anyhow::Error::msg)?;
    let direct_faults = FaultProxy::start(direct.addr())
        .await
        .map_err(anyhow::Error::msg)?;
    let upstream_faults = FaultProxy::start(upstream.addr())
        .await
        .map_err(anyhow::Error::msg)?;
    let config = spawn::cachet_config(windows).map_err(anyhow::Error::msg)?;
    let cluster = if cli.cluster {
        Proc::cluster(3).map_err(anyhow::Error::msg)?
    } else {
        Vec::new()
    };
    let sentinel = if cli.sentinel {
        Proc::sentinel_set(cachet_check::SENTINEL_MASTER).map_err(anyhow::Error::msg)?
    } else {
        Vec::new()
    };
    let upstream_url = match (cluster.first(), sentinel.last()) {
        (Some(seed), _) => format!("redis+cluster://{}", seed.addr()),
        (None, Some(s)) => format!(
            "redis+sentinel://{}/{}/0",
            s.addr(),
            cachet_check::SENTINEL_MASTER
        ),
        (None, None) => format!("redis://{}/0", upstream_faults.addr),
    };
    let mut cachets = Vec::new();
    let mut proxies = Vec::new();
    for _ in 0..cli.proxies.max(1) {
        let c = Proc::cachet(&cachet_exe, &upstream_url, &config).map_err(anyhow::Error::msg)?;
        proxies.push(c.addr());
        cachets.push(Arc::new(Mutex::new(c)));
    }
    Ok(Targets {
        direct: direct_faults.addr,
        proxies,
        redis: Some(Arc::new(Mutex::new(upstream))),
        direct_redis: Some(Arc::new(Mutex::new(direct))),
        cachets,
        faults: Some((direct_faults, upstream_faults)),
        cluster,
        sentinel,
    })
}
