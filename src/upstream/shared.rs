//! A shared upstream connection: many sessions' requests multiplexed onto one pipelined
//! socket, replies matched to requests in FIFO order.
//!
//! One task owns the socket. Its writer half drains the job queue in batches (one
//! `write` for everything queued, so many clients cost Redis few system calls) and
//! records each job as pending; its reader half frames replies and hands each job its
//! bytes. When the socket breaks or a reply is later than `command_timeout`, every
//! pending job is answered with an error at once and the task reconnects with backoff;
//! jobs arriving while the upstream is down are answered with an error immediately.
//!
//! Replies are also read for what they say about the upstream itself, but only as
//! hints: a client's script can return any error it likes (`redis.error_reply`), so an
//! error reply never changes the connection by itself. It makes cachet ask the upstream
//! with a command of its own. `-LOADING` and `-MASTERDOWN` send a `PING` probe, and
//! only the probe's reply decides readiness: `-LOADING`, `-MASTERDOWN` or `-BUSY` mark
//! the connection as not serving (probed again every [`PROBE_EVERY`]), anything else,
//! even an error such as `-NOPERM` for a user without `+ping`, as serving. `-READONLY`
//! sends `ROLE`; only if the upstream says it is a replica (a failover behind a DNS name
//! or virtual IP) does the connection stop taking new jobs, let the outstanding ones be
//! answered, and get replaced by a fresh connect, which reaches the new primary. Every
//! new connection asks `ROLE` and `PING` first; one that already reached a replica
//! (cachet pointed straight at one) is replaced at most once per
//! [`REPLICA_RECONNECT_EVERY`], however many writes it refuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::connect::{Identity, connect};
use super::login::{Login, Logins};
use super::{Job, Settings, UpstreamError};
use crate::metrics::Histogram;
use crate::resp::Scanner;
use crate::resp::reply::{Role, role};
use crate::stream::{ReadHalf, Stream, WriteHalf};

/// Largest batch written in one go; beyond it the writer yields to let replies flow.
const MAX_BATCH_BYTES: usize = 256 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a connection whose upstream is loading or cut off from its primary probes it.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often a connection may be replaced because writes are refused `-READONLY` (the
/// first time at once: a failover; then at most this often: cachet configured with a
/// replica's address).
const REPLICA_RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// `last_replica_reconnect` before the first one.
const NEVER: u64 = u64::MAX;

/// Handle to one shared connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedConn {
    tx: mpsc::UnboundedSender<Job>,
    health: Arc<Health>,
    id: u64,
    /// Counts the handles: the pool's and each session's (see `held_elsewhere`).
    handles: Arc<()>,
}

/// What the connection task knows about its upstream, read by readiness and metrics.
#[derive(Debug)]
struct Health {
    /// Connected (the last connection attempt succeeded and the socket is open).
    up: AtomicBool,
    /// Connected, but the `PING` probe was answered `-LOADING`, `-MASTERDOWN` or `-BUSY`.
    not_serving: AtomicBool,
    /// `ROLE` confirmed a replica after a `-READONLY`: drain, then reconnect.
    reconnect: AtomicBool,
    /// The last `ROLE` on this connection answered `master`.
    primary: AtomicBool,
    /// The `ROLE` sent on connect answered that this connection reaches a replica.
    replica_at_connect: AtomicBool,
    /// Checks asked for by a hint, sent by the writer when it wakes.
    want_ping: AtomicBool,
    want_role: AtomicBool,
    /// Wakes the writer (a check is wanted, or it must stop) and the reader (it must
    /// end the connection once nothing is outstanding).
    wake_writer: Notify,
    wake_reader: Notify,
    /// Milliseconds after `born` of the last reconnect because of a replica, or
    /// [`NEVER`].
    born: Instant,
    last_replica_reconnect: AtomicU64,
    /// Warnings given once per shared connection rather than once per write.
    warned_replica: AtomicBool,
    warned_no_role: AtomicBool,
    /// When the oldest request still unanswered was written, in milliseconds of
    /// [`clock_ms`] (0: none is outstanding).
    outstanding_since: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(false),
            not_serving: AtomicBool::new(false),
            reconnect: AtomicBool::new(false),
            primary: AtomicBool::new(false),
            replica_at_connect: AtomicBool::new(false),
            want_ping: AtomicBool::new(false),
            want_role: AtomicBool::new(false),
            wake_writer: Notify::new(),
            wake_reader: Notify::new(),
            born: Instant::now(),
            last_replica_reconnect: AtomicU64::new(NEVER),
            warned_replica: AtomicBool::new(false),
            warned_no_role: AtomicBool::new(false),
            outstanding_since: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Asks the writer to check with `ROLE` (`role`) or `PING` soon; repeated hints
    /// before it does cost one check.
    fn hint(&self, role: bool) {
        let want = if role {
            &self.want_role
        } else {
            &self.want_ping
        };
        if !want.swap(true, Ordering::Relaxed) {
            self.wake_writer.notify_one();
        }
    }

    /// `ROLE` confirmed a replica after a hint: replace the connection, unless the last
    /// such replacement was less than [`REPLICA_RECONNECT_EVERY`] ago (the address
    /// reaches a replica from the start: whether this connection did is not known in
    /// time, the `ROLE` sent on connect is answered in a task of its own).
    fn confirmed_replica(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let last = self.last_replica_reconnect.load(Ordering::Relaxed);
        let every = u64::try_from(REPLICA_RECONNECT_EVERY.as_millis()).unwrap_or(0);
        if last != NEVER && now.saturating_sub(last) < every {
            return;
        }
        self.last_replica_reconnect.store(now, Ordering::Relaxed);
        self.reconnect.store(true, Ordering::Relaxed);
        self.wake_writer.notify_one();
        self.wake_reader.notify_one();
    }
}

/// Milliseconds since the first call, never 0 (0 means "none" where it is stored).
fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Distinguishes connections as owners of key ordering tokens.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new owner id for key ordering tokens (each shared and pinned connection has one).
pub fn new_owner_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl SharedConn {
    /// Starts the connection task. It connects in the background and lives until every
    /// handle is dropped.
    pub fn spawn(
        settings: Arc<Settings>,
        id: Identity,
        login: Arc<Login>,
        logins: Arc<Logins>,
        rtt: Arc<Histogram>,
    ) -> SharedConn {
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health::default());
        let as_who = As {
            login: Arc::downgrade(&login),
            logins,
        };
        tokio::spawn(run(settings, id, as_who, rx, health.clone(), rtt));
        SharedConn {
            tx,
            health,
            id: new_owner_id(),
            handles: Arc::new(()),
        }
    }

    /// How long the oldest request still unanswered on this connection has waited
    /// (zero when none is outstanding): a long one holds up everything behind it.
    pub fn stuck_for(&self) -> Duration {
        match self.health.outstanding_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(clock_ms().saturating_sub(since)),
        }
    }

    /// Whether a handle other than the pool's exists (a session holds this connection).
    pub fn held_elsewhere(&self) -> bool {
        Arc::strong_count(&self.handles) > 1
    }

    /// A process-unique id of this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a job. If the connection task is gone the job is answered with an error.
    pub fn send(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            job.fail(&UpstreamError::Unavailable("connection closed".into()));
        }
    }

    /// Whether the last connection attempt succeeded and the socket is open.
    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    /// Whether the connection is up and the upstream serves data (not loading its
    /// dataset, not a replica cut off from its primary).
    pub fn is_serving(&self) -> bool {
        self.is_up() && !self.health.not_serving.load(Ordering::Relaxed)
    }

    /// Something cachet sent on this connection found a replica where a primary was
    /// expected: check with `ROLE`, and reconnect as a `-READONLY` would.
    pub fn suspect_replica(&self) {
        self.health.hint(true);
    }

    /// The upstream moved: stop taking new jobs, let the outstanding ones be answered,
    /// and connect again (to wherever the target now points).
    pub fn reconnect(&self) {
        self.health.reconnect.store(true, Ordering::Relaxed);
        self.health.wake_writer.notify_one();
        self.health.wake_reader.notify_one();
    }
}

/// Who a connection logs in as, and the registry that learns what Redis says of it.
/// The login is held by the sessions logged in as it, not by their connections: one
/// that no session holds any more is gone, and its connections connect no more.
struct As {
    login: std::sync::Weak<Login>,
    logins: Arc<Logins>,
}

impl As {
    async fn connect(&self, settings: &Settings, id: Identity) -> Result<Stream, UpstreamError> {
        let Some(login) = self.login.upgrade() else {
            return Err(UpstreamError::Unavailable(
                "nobody is logged in as this connection's user any more".into(),
            ));
        };
        let r = connect(settings, id, &login).await;
        if let Err(e) = &r {
            super::login::refused(&login, &self.logins, e);
        }
        r
    }
}

async fn run(
    settings: Arc<Settings>,
    id: Identity,
    as_who: As,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    health: Arc<Health>,
    rtt: Arc<Histogram>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut was_down = false;
    // Jobs taken from the queue after the connection was told to reconnect: they go
    // first on the next one (an invalidation replayed after a failover must reach the
    // new primary, not the old one).
    let mut carried = Vec::new();
    loop {
        if jobs.is_closed() && jobs.is_empty() && carried.is_empty() {
            return;
        }
        // Cleared before connecting, not after: a move asked for while this connects
        // (it may reach the old address) replaces the new connection at once.
        health.reconnect.store(false, Ordering::Relaxed);
        match as_who.connect(&settings, id).await {
            Ok(stream) => {
                // Whether clients that never log in may run commands can change with
                // any restart or reconfiguration of the upstream: find out again.
                let (probe_settings, logins) = (settings.clone(), as_who.logins.clone());
                tokio::spawn(async move {
                    super::probe_anonymous(&probe_settings, &logins).await;
                });
                if was_down {
                    tracing::info!(address = %settings.address, db = id.db, proto = id.proto, "upstream connection restored");
                }
                backoff = FIRST_BACKOFF;
                health.not_serving.store(false, Ordering::Relaxed);
                health.primary.store(false, Ordering::Relaxed);
                health.replica_at_connect.store(false, Ordering::Relaxed);
                health.up.store(true, Ordering::Relaxed);
                let outcome =
                    serve(stream, &settings, &mut jobs, &mut carried, &health, &rtt).await;
                health.up.store(false, Ordering::Relaxed);
                health.outstanding_since.store(0, Ordering::Relaxed);
                match outcome {
                    Ok(()) => return,
                    Err(e) if health.reconnect.load(Ordering::Relaxed) => {
                        if health.replica_at_connect.load(Ordering::Relaxed) {
                            // Pointed at a replica: warned once on connect already.
                            tracing::debug!(address = %settings.address, db = id.db, "upstream is still a replica; reconnecting");
                        } else {
                            tracing::warn!(address = %settings.address, db = id.db, error = %e, "upstream is a read-only replica now, or has moved; reconnecting");
                            was_down = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(address = %settings.address, db = id.db, error = %e, "upstream connection lost");
                        was_down = true;
                    }
                }
            }
            Err(e) => {
                if !was_down {
                    tracing::warn!(address = %settings.address, db = id.db, error = %e, "upstream unavailable");
                }
                was_down = true;
                // Fail closed: while down, every queued job gets an error now, not a hang.
                for job in carried.drain(..) {
                    job.fail(&e);
                }
                let deadline = Instant::now() + backoff;
                loop {
                    tokio::select! {
                        job = jobs.recv() => match job {
                            Some(job) => job.fail(&e),
                            None => return,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A job written upstream whose reply has not fully arrived.
struct Pending {
    job: Job,
    sent_at: Instant,
    /// `sent_at` in [`clock_ms`].
    written_ms: u64,
}

/// Serves jobs on one open socket until it breaks (`Err`) or every handle is gone (`Ok`).
async fn serve(
    stream: Stream,
    settings: &Settings,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    carried: &mut Vec<Job>,
    health: &Arc<Health>,
    rtt: &Histogram,
) -> Result<(), UpstreamError> {
    let (rd, wr) = stream.split();
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Pending>();
    let mut current = None;
    let timeout = settings.command_timeout;
    let result = tokio::select! {
        r = write_loop(settings, wr, jobs, carried, pending_tx, health) => r,
        r = read_loop(rd, &mut pending_rx, &mut current, timeout, rtt, health) => r,
    };
    // Whatever was written and not answered gets an error: the command may or may not
    // have run, exactly as when a direct Redis connection breaks.
    let err = match &result {
        Ok(()) => UpstreamError::Lost,
        Err(e) => e.clone(),
    };
    if let Some(p) = current {
        p.job.fail(&err);
    }
    pending_rx.close();
    while let Ok(p) = pending_rx.try_recv() {
        p.job.fail(&err);
    }
    result
}

async fn write_loop(
    settings: &Settings,
    mut wr: WriteHalf,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    carried: &mut Vec<Job>,
    pending: mpsc::UnboundedSender<Pending>,
    health: &Arc<Health>,
) -> Result<(), UpstreamError> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Jobs to write next, in order. Every new connection is checked first: which role
    // it reaches, and whether it serves.
    let mut batch = vec![role_job(health, true), probe_job(health)];
    if let Some(observer) = &settings.on_connect {
        batch.push(identity_job(observer.clone(), settings.node.clone()));
    }
    // This connection's own checks, at the front of the first batch.
    let mut checks = batch.len();
    batch.append(carried);
    let mut probe = tokio::time::interval_at(Instant::now() + PROBE_EVERY, PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if health.reconnect.load(Ordering::Relaxed) {
            // Draining: the reader ends the connection once everything written is
            // answered; new jobs wait in the queue for the next connection, and jobs
            // not written yet go first on it (this connection's checks are dropped).
            carried.extend(batch.drain(..).skip(checks));
            return std::future::pending().await;
        }
        if batch.is_empty() {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) if health.reconnect.load(Ordering::Relaxed) => carried.push(job),
                    Some(job) => batch.push(job),
                    None => {
                        // Every handle is gone; let the reader finish what is outstanding.
                        drop(pending);
                        return std::future::pending().await;
                    }
                },
                _ = probe.tick() => {
                    if health.not_serving.load(Ordering::Relaxed) {
                        health.want_ping.store(true, Ordering::Relaxed);
                    }
                }
                _ = health.wake_writer.notified() => {}
            }
            if health.want_role.swap(false, Ordering::Relaxed) {
                batch.push(role_job(health, false));
            }
            if health.want_ping.swap(false, Ordering::Relaxed) {
                batch.push(probe_job(health));
            }
            if batch.is_empty() {
                continue;
            }
        }
        gather(&mut buf, &mut batch, jobs, carried, &pending, health);
        checks = 0;
        wr.write_all_flushed(&buf)
            .await
            .map_err(|e| UpstreamError::Io(e.to_string()))?;
        if buf.capacity() > 4 * MAX_BATCH_BYTES {
            // A huge value passed through; do not keep its buffer forever.
            buf = BytesMut::with_capacity(16 * 1024);
        }
    }
}

/// Gathers into `buf` the jobs of `batch`, then whatever else is queued (up to
/// `MAX_BATCH_BYTES`), each handed to the reader as pending in the order written.
/// A job queued after the connection was told to reconnect is `carried` to the next.
fn gather(
    buf: &mut BytesMut,
    batch: &mut Vec<Job>,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    carried: &mut Vec<Job>,
    pending: &mpsc::UnboundedSender<Pending>,
    health: &Health,
) {
    let now = Instant::now();
    let now_ms = clock_ms();
    buf.clear();
    let queue = |buf: &mut BytesMut, job: Job| {
        buf.extend_from_slice(&job.data);
        let _ = pending.send(Pending {
            job,
            sent_at: now,
            written_ms: now_ms,
        });
    };
    for job in batch.drain(..) {
        queue(buf, job);
    }
    while buf.len() < MAX_BATCH_BYTES {
        match jobs.try_recv() {
            // Read after the job: whoever asked for the reconnect did so before queueing it.
            Ok(job) if health.reconnect.load(Ordering::Relaxed) => {
                carried.push(job);
                break;
            }
            Ok(job) => queue(buf, job),
            Err(_) => break,
        }
    }
}

/// A `PING` whose reply says whether the upstream serves data. Only the states in which
/// it does not are recognised; any other reply, an error included (a user without
/// `+ping`, a renamed `PING`), means it serves.
fn probe_job(health: &Arc<Health>) -> Job {
    let (tx, mut rx) = mpsc::unbounded_channel::<super::Reply>();
    let health = health.clone();
    tokio::spawn(async move {
        if let Some(Ok(reply)) = rx.recv().await {
            let not_serving = [&b"-LOADING"[..], b"-MASTERDOWN", b"-BUSY "]
                .iter()
                .any(|e| reply.starts_with(e));
            health.not_serving.store(not_serving, Ordering::Relaxed);
        }
    });
    Job {
        data: bytes::Bytes::from_static(PING),
        frames: 1,
        reply: Some(tx),
        guard: None,
    }
}

/// A `ROLE` asked on connect (`on_connect`) or after a `-READONLY` hint.
fn role_job(health: &Arc<Health>, on_connect: bool) -> Job {
    let (tx, mut rx) = mpsc::unbounded_channel::<super::Reply>();
    let health = health.clone();
    tokio::spawn(async move {
        let Some(Ok(reply)) = rx.recv().await else {
            return;
        };
        let role = role(&reply);
        health
            .primary
            .store(role == Some(Role::Primary), Ordering::Relaxed);
        match role {
            Some(Role::Replica) if on_connect => {
                health.replica_at_connect.store(true, Ordering::Relaxed);
                if !health.warned_replica.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the upstream is a replica: writes are refused until the address reaches a primary"
                    );
                }
            }
            Some(Role::Replica) => health.confirmed_replica(),
            Some(_) => {}
            None => {
                if !health.warned_no_role.swap(true, Ordering::Relaxed) {
                    let reply = String::from_utf8_lossy(reply.get(..120).unwrap_or(&reply));
                    tracing::warn!(reply = %reply.trim_end(), "the upstream refused ROLE: a failover behind the address is not detected, and re-sent invalidations are not checked to reach a primary");
                }
            }
        }
    });
    Job {
        data: bytes::Bytes::from_static(ROLE),
        frames: 1,
        reply: Some(tx),
        guard: None,
    }
}

/// `INFO server` and `TIME` on a new connection: the upstream's run id (it changes when
/// the upstream restarts) and clock, for the observer. The clock is told as an upper
/// bound of the upstream's now: `TIME`'s reading (rounded up to the millisecond) plus
/// the time since it was asked, since Redis answered it after that.
fn identity_job(observer: super::UpstreamObserver, node: Option<Arc<str>>) -> Job {
    let (tx, mut rx) = mpsc::unbounded_channel::<super::Reply>();
    let asked = std::time::Instant::now();
    tokio::spawn(async move {
        let Some(Ok(reply)) = rx.recv().await else {
            return;
        };
        let mut scanner = Scanner::default();
        let Ok(Some(info)) = scanner.scan(&reply) else {
            return;
        };
        let (info, time) = reply.split_at(info.len.min(reply.len()));
        let run_id = crate::resp::reply::string_value(info)
            .and_then(|text| {
                text.split(|&b| b == b'\n')
                    .find_map(|line| line.strip_prefix(b"run_id:"))
            })
            .map(|id| String::from_utf8_lossy(id).trim().to_owned());
        let clock = crate::resp::reply::elements(time).and_then(|el| {
            let secs = crate::resp::reply::string_value(el.first()?)?;
            let micros = crate::resp::reply::string_value(el.get(1)?)?;
            let secs: u64 = std::str::from_utf8(secs).ok()?.parse().ok()?;
            let micros: u64 = std::str::from_utf8(micros).ok()?.parse().ok()?;
            let since = u64::try_from(asked.elapsed().as_millis()).unwrap_or(u64::MAX);
            Some((secs * 1000 + micros / 1000 + 1).saturating_add(since))
        });
        if let (Some(run_id), Some(clock)) = (run_id, clock) {
            (observer.0)(node.as_deref().unwrap_or(""), &run_id, clock);
        }
    });
    Job {
        data: bytes::Bytes::from_static(
            b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n*1\r\n$4\r\nTIME\r\n",
        ),
        frames: 2,
        reply: Some(tx),
        guard: None,
    }
}

// Statics, not consts: `is_check` compares addresses, and only a static has one.
static PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
static ROLE: &[u8] = b"*1\r\n$4\r\nROLE\r\n";

/// Whether `job` is one of cachet's own checks, whose replies are read by the check and
/// are no hint (a probe answered `-LOADING` must not ask for another at once). Checks
/// are the only jobs whose bytes are these statics; a client's `PING` is a copy.
fn is_check(job: &Job) -> bool {
    [PING, ROLE]
        .iter()
        .any(|c| std::ptr::eq(job.data.as_ptr(), c.as_ptr()))
}

/// What an error reply hints about the upstream as a whole. A client's script can
/// return any error, so this only asks for a check of cachet's own.
fn note_reply(health: &Health, frame: &[u8]) {
    if frame.starts_with(b"-LOADING") || frame.starts_with(b"-MASTERDOWN") {
        health.hint(false);
    } else if frame.starts_with(b"-READONLY") {
        health.hint(true);
    }
}

/// The reply to a command queued in a transaction.
const QUEUED: &[u8] = b"+QUEUED\r\n";

/// The reader's buffer and how far into the current job's reply it has scanned.
struct Framing {
    buf: BytesMut,
    scanner: Scanner,
    /// Frames of the current job already scanned, and the bytes they span.
    frames_seen: u32,
    scanned: usize,
}

impl Framing {
    /// Hands every complete reply in the buffer to its job, in order.
    fn hand_out(
        &mut self,
        pending: &mut mpsc::UnboundedReceiver<Pending>,
        current: &mut Option<Pending>,
        rtt: &Histogram,
        health: &Health,
    ) -> Result<(), UpstreamError> {
        loop {
            if current.is_none() {
                *current = pending.try_recv().ok();
            }
            let Some(cur) = current.as_ref() else { break };
            let Some(rest) = self.buf.get(self.scanned..) else {
                break;
            };
            if self.scanner.is_idle() && rest.starts_with(QUEUED) {
                // A transaction's `+QUEUED` replies, one per queued command, come in a
                // row: counted by comparison, each a whole frame, without the scanner.
                let wanted = cur.job.frames.max(1).saturating_sub(self.frames_seen);
                let run = rest
                    .chunks_exact(QUEUED.len())
                    .take(wanted as usize)
                    .take_while(|c| *c == QUEUED)
                    .count();
                self.scanned += run * QUEUED.len();
                self.frames_seen += run as u32;
                self.complete_if_answered(current, rtt);
                continue;
            }
            let frame = match self.scanner.scan(rest) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
            };
            if frame.kind == b'>' {
                // No shared connection subscribes or tracks; drop a stray push.
                if self.scanned == 0 {
                    let _ = self.buf.split_to(frame.len);
                } else {
                    self.scanned += frame.len;
                }
                continue;
            }
            if frame.kind == b'-' && !is_check(&cur.job) {
                note_reply(health, rest.get(..frame.len).unwrap_or_default());
            }
            self.scanned += frame.len;
            self.frames_seen += 1;
            self.complete_if_answered(current, rtt);
        }
        Ok(())
    }

    /// Hands the current job its reply once all its frames are in.
    fn complete_if_answered(&mut self, current: &mut Option<Pending>, rtt: &Histogram) {
        let Some(cur) = current.as_ref() else { return };
        if self.frames_seen < cur.job.frames.max(1) {
            return;
        }
        let bytes = self.buf.split_to(self.scanned).freeze();
        if let Some(done) = current.take() {
            rtt.observe(done.sent_at.elapsed());
            done.job.complete(bytes);
        }
        self.scanned = 0;
        self.frames_seen = 0;
    }
}

async fn read_loop(
    mut rd: ReadHalf,
    pending: &mut mpsc::UnboundedReceiver<Pending>,
    current: &mut Option<Pending>,
    timeout: Duration,
    rtt: &Histogram,
    health: &Health,
) -> Result<(), UpstreamError> {
    let mut framing = Framing {
        buf: BytesMut::with_capacity(16 * 1024),
        scanner: Scanner::default(),
        frames_seen: 0,
        scanned: 0,
    };
    // One timer for the whole connection, not one per read: it is armed for the
    // oldest outstanding job's deadline and, when it fires early (that job was
    // answered meanwhile), re-armed for the current one's.
    let watchdog = tokio::time::sleep(timeout);
    tokio::pin!(watchdog);
    loop {
        // Hand out every complete reply in the buffer.
        framing.hand_out(pending, current, rtt, health)?;
        let since = current.as_ref().map_or(0, |c| c.written_ms);
        health.outstanding_since.store(since, Ordering::Relaxed);
        let read = match current.as_ref() {
            Some(cur) => {
                tokio::select! {
                    r = rd.read_buf(&mut framing.buf) => r,
                    _ = &mut watchdog => {
                        let deadline = cur.sent_at + timeout;
                        if Instant::now() >= deadline {
                            return Err(UpstreamError::Timeout(timeout));
                        }
                        watchdog.as_mut().reset(deadline);
                        continue;
                    }
                }
            }
            None if health.reconnect.load(Ordering::Relaxed) => {
                // Everything written has been answered and the writer takes no more:
                // the connection can be replaced without failing anything.
                return Err(UpstreamError::Io("the upstream is a replica now".into()));
            }
            None => {
                tokio::select! {
                    r = rd.read_buf(&mut framing.buf) => r,
                    p = pending.recv() => match p {
                        Some(p) => { *current = Some(p); continue; }
                        None => return Ok(()),
                    },
                    _ = health.wake_reader.notified() => continue,
                }
            }
        };
        match read {
            Ok(0) => return Err(UpstreamError::Io("connection closed by upstream".into())),
            Ok(_) => {}
            Err(e) => return Err(UpstreamError::Io(e.to_string())),
        }
        if framing.buf.capacity() - framing.buf.len() < 4096 && framing.buf.len() < 4096 {
            framing.buf.reserve(16 * 1024);
        }
    }
}
