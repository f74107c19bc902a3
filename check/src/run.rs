//! One run of one profile against one target (Redis directly, or cachet): a clean
//! cache and database, the workers for `seconds`, the fault at half time, then
//! quiescence, the final audit of every key, and the check of the whole history.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::{Conn, Pool};
use super::db::Db;
use super::faults::FaultProxy;
use super::history::{Event, Op, parse_version};
use super::linearizability::check;
use super::report::{Audit, RunReport};
use super::workload::{KeyChooser, Rng, Shared, Worker};
use super::{Profile, Windows, herd};

/// A fault injected at half time (a blocking call: it restarts a process).
pub type Fault = Box<dyn FnOnce() -> Result<(), String> + Send>;

pub struct RunSpec {
    pub profile: Profile,
    /// `direct` or `cachet`.
    pub label: &'static str,
    /// Redis, or the cachets; worker `i` uses `addrs[i % n]`.
    pub addrs: Vec<SocketAddr>,
    pub seconds: f64,
    pub seed: u64,
    pub windows: Windows,
    /// Workers of one address share a pool of connections.
    pub pool: bool,
    pub fault: Option<Fault>,
    /// Resets connections through this proxy while the workers run.
    pub chaos: Option<Arc<FaultProxy>>,
    pub progress: bool,
}

/// Connections a pool of one address holds.
const POOL_SIZE: usize = 4;

pub struct RunOutcome {
    pub report: RunReport,
    pub events: Vec<Event>,
}

/// Runs `spec`; an error means the run could not be set up or audited.
pub async fn run_once(db: Arc<Db>, spec: RunSpec) -> Result<RunOutcome, String> {
    let shape = spec.profile.shape(&spec.windows);
    let first = *spec.addrs.first().ok_or("no address to run against")?;
    let mut admin = Conn::new(first)?;
    flush(&mut admin).await?;
    db.reset(shape.keys).await.map_err(|e| e.to_string())?;

    let shared = Arc::new(Shared::new(Arc::clone(&db), shape.clone()));
    let pools: Vec<Arc<Pool>> = spec
        .addrs
        .iter()
        .map(|&a| Pool::new(a, POOL_SIZE).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let pooled = shape.pooled || spec.pool;
    let mut workers = Vec::new();
    for id in 0..=shape.workers {
        let n = id as usize % spec.addrs.len();
        let conn = match (pooled, spec.addrs.get(n), pools.get(n)) {
            (true, _, Some(pool)) => Conn::pooled(Arc::clone(pool)),
            (_, Some(&addr), _) => Conn::new(addr)?,
            _ => return Err("no address for a worker".into()),
        };
        workers.push(Worker {
            id,
            conn,
            rng: Rng::new(
                spec.seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(u64::from(id)),
            ),
            events: Vec::new(),
            shared: Arc::clone(&shared),
        });
    }
    // Connected before the clock starts, so that connection errors in the figures
    // are the faults' doing.
    for w in workers.iter_mut() {
        w.conn.connect().await?;
    }
    if let Some(p) = &spec.chaos {
        p.start_chaos(spec.seed);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut herd_task = None;
    if shape.herd {
        let writer = workers.remove(0);
        // A round waits until the previous round's misses can no longer be filled.
        let spacing = spec.windows.hold_off + spec.windows.fill;
        herd_task = Some(tokio::spawn(herd::run(workers, writer, spacing)));
    } else {
        let keys = Arc::new(KeyChooser::new(shape.keys, shape.zipf));
        for w in workers {
            tasks.push(tokio::spawn(w.run(Arc::clone(&keys))));
        }
    }
    let fault = spec.fault.map(|f| {
        let at = Duration::from_secs_f64(spec.seconds / 2.0);
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        })
    });

    let deadline = started + Duration::from_secs_f64(spec.seconds);
    // On a terminal the progress line rewrites itself; in a log, one line a second.
    let tty = std::io::stderr().is_terminal();
    let mut ticks = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250).min(deadline - Instant::now())).await;
        ticks += 1;
        if spec.progress && (tty || ticks.is_multiple_of(4)) {
            eprint!(
                "{}[{} {}] {:5.1}s ops {} stale {} errors {}   {}",
                if tty { "\r" } else { "" },
                spec.profile.name(),
                spec.label,
                started.elapsed().as_secs_f64(),
                shared.ops.load(Ordering::Relaxed),
                shared.stale_online.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed),
                if tty { "" } else { "\n" },
            );
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(p) = &spec.chaos {
        p.stop_chaos();
    }

    let mut events: Vec<Event> = (0..shape.keys).map(Event::initial).collect();
    let mut herd_rounds = Vec::new();
    if let Some(t) = herd_task {
        let (ws, rounds) = t.await.map_err(|e| e.to_string())?;
        herd_rounds = rounds;
        for w in ws {
            events.extend(w.events);
        }
    }
    for t in tasks {
        let w = t.await.map_err(|e| e.to_string())?;
        events.extend(w.events);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fault_result = match fault {
        Some(f) => Some(f.await.map_err(|e| e.to_string()).and_then(|r| r)),
        None => None,
    };
    if spec.progress && tty {
        eprintln!();
    }

    // Quiescence: past hold_off (and the invalidations cachet re-sends), every key is
    // absent or the database's version.
    let settle = if spec.chaos.is_some() {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(200)
    };
    tokio::time::sleep(spec.windows.hold_off + settle).await;
    // A cachet killed with SIGKILL takes with it a delete it had read but not yet sent:
    // its client was told the delete failed (the connection dropped), and only that
    // client could send it again. Held to what the guarantee promises, the cache must
    // then not be older than the last completed invalidation, rather than the database.
    let killed_cachet = spec.label == "cachet"
        && matches!(
            spec.profile,
            Profile::CachetRestart | Profile::RestartOneOfSeveral
        );
    let audit = audit(&mut admin, &db, &shape, &shared, &mut events, killed_cachet).await?;

    let ops = shared.ops.load(Ordering::Relaxed);
    let (findings, events) = tokio::task::spawn_blocking(move || (check(&events), events))
        .await
        .map_err(|e| e.to_string())?;
    // The cache is warm once a cold start's miss records have ended (report.rs).
    let fill = spec.windows.fill.as_micros() as u64;
    let run_us = (spec.seconds * 1e6) as u64;
    let warm_from_us = if run_us >= 2 * fill { fill } else { run_us / 2 };
    let mut report = RunReport::build(
        spec.profile,
        &shape,
        spec.label,
        elapsed,
        ops,
        &events,
        &findings,
        &audit,
        &herd_rounds,
        warm_from_us,
    );
    let failed = audit.failed_delete_keys.len();
    match fault_result {
        Some(Ok(())) if failed > 0 => {
            report.note = Some(format!(
                "restarted at half time; {failed} keys keep the value from before a delete their client was told failed"
            ))
        }
        Some(Err(e)) => report.note = Some(format!("fault failed: {e}")),
        Some(Ok(())) => report.note = Some("restarted at half time".into()),
        None if matches!(
            spec.profile,
            Profile::CachetRestart | Profile::RestartOneOfSeveral
        ) =>
        {
            report.note = Some("no cachet to restart: no fault".into())
        }
        None => {}
    }
    Ok(RunOutcome { report, events })
}

/// Empties the cache (through cachet, `FLUSHDB` also voids every lease).
async fn flush(admin: &mut Conn) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        match admin.run::<()>(&redis::cmd("FLUSHDB")).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("FLUSHDB failed: {last}"))
}

/// Compares every key's cache entry with the database's current version.
async fn audit(
    admin: &mut Conn,
    db: &Db,
    shape: &super::Shape,
    shared: &Shared,
    events: &mut Vec<Event>,
    to_completed: bool,
) -> Result<Audit, String> {
    let versions = db.versions().await.map_err(|e| e.to_string())?;
    let mut out = Audit::default();
    for chunk in versions.chunks(200) {
        let mut cmd = redis::cmd("MGET");
        for (id, _) in chunk {
            cmd.arg(shape.key(*id));
        }
        let mut values = None;
        for _ in 0..50 {
            if let Ok(v) = admin.run::<Vec<Option<Vec<u8>>>>(&cmd).await {
                values = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let values = values.ok_or("the final audit could not read the cache")?;
        let now = shared.micros();
        for (&(id, db_ver), v) in chunk.iter().zip(values) {
            let cached = v.as_deref().and_then(parse_version);
            out.keys += 1;
            let floor = match shared.completed.get(id as usize) {
                Some(c) if to_completed => c.load(Ordering::Relaxed).min(db_ver),
                _ => db_ver,
            };
            match cached {
                Some(c) if c < floor => out.stale_keys.push(id),
                Some(c) if c < db_ver => out.failed_delete_keys.push(id),
                Some(c) if c > db_ver => out.future_keys.push(id),
                _ => {}
            }
            events.push(Event::new(
                u32::MAX,
                id,
                now,
                now,
                Op::Audit { cached, db: db_ver },
            ));
        }
    }
    if out.keys != u64::from(shape.keys) {
        return Err(format!(
            "the database has {} rows, not {}",
            out.keys, shape.keys
        ));
    }
    Ok(out)
}
