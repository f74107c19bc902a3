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
//! Replies are also read for what they say about the upstream itself. `-LOADING` and
//! `-MASTERDOWN` reach the client verbatim, but mark the connection as not serving
//! (readiness turns false) until a `PING` probe, sent on every new connection and every
//! [`PROBE_EVERY`] while not serving, answers `+PONG`. `-READONLY` means the address now
//! reaches a replica (a failover behind a DNS name or virtual IP): the connection stops
//! taking new jobs, lets the outstanding ones be answered, and is replaced by a fresh
//! connect, which reaches the new primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connect::{Identity, connect};
use super::{Job, Settings, UpstreamError};
use crate::metrics::Histogram;
use crate::resp::Scanner;
use crate::stream::{ReadHalf, Stream, WriteHalf};

/// Largest batch written in one go; beyond it the writer yields to let replies flow.
const MAX_BATCH_BYTES: usize = 256 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a connection whose upstream is loading or cut off from its primary probes it.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Handle to one shared connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedConn {
    tx: mpsc::UnboundedSender<Job>,
    health: Arc<Health>,
    id: u64,
}

/// What the connection task knows about its upstream, read by readiness and metrics.
#[derive(Debug, Default)]
struct Health {
    /// Connected (the last connection attempt succeeded and the socket is open).
    up: AtomicBool,
    /// Connected, but the upstream answers `-LOADING`/`-MASTERDOWN`, or has not yet
    /// answered the probe of a new connection.
    not_serving: AtomicBool,
    /// The upstream answered `-READONLY`: drain, then reconnect.
    reconnect: AtomicBool,
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
    pub fn spawn(settings: Arc<Settings>, id: Identity, rtt: Arc<Histogram>) -> SharedConn {
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health::default());
        tokio::spawn(run(settings, id, rx, health.clone(), rtt));
        SharedConn {
            tx,
            health,
            id: new_owner_id(),
        }
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
}

async fn run(
    settings: Arc<Settings>,
    id: Identity,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    health: Arc<Health>,
    rtt: Arc<Histogram>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut was_down = false;
    loop {
        if jobs.is_closed() && jobs.is_empty() {
            return;
        }
        match connect(&settings, id).await {
            Ok(stream) => {
                if was_down {
                    tracing::info!(address = %settings.address, db = id.db, proto = id.proto, "upstream connection restored");
                }
                backoff = FIRST_BACKOFF;
                health.not_serving.store(true, Ordering::Relaxed);
                health.reconnect.store(false, Ordering::Relaxed);
                health.up.store(true, Ordering::Relaxed);
                let outcome = serve(stream, &settings, &mut jobs, &health, &rtt).await;
                health.up.store(false, Ordering::Relaxed);
                match outcome {
                    Ok(()) => return,
                    Err(e) if health.reconnect.load(Ordering::Relaxed) => {
                        tracing::warn!(address = %settings.address, db = id.db, error = %e, "upstream is a read-only replica now; reconnecting");
                        was_down = true;
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
}

/// Serves jobs on one open socket until it breaks (`Err`) or every handle is gone (`Ok`).
async fn serve(
    stream: Stream,
    settings: &Settings,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    health: &Arc<Health>,
    rtt: &Histogram,
) -> Result<(), UpstreamError> {
    let (rd, wr) = stream.split();
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Pending>();
    let mut current = None;
    let timeout = settings.command_timeout;
    let result = tokio::select! {
        r = write_loop(wr, jobs, pending_tx, health) => r,
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
    mut wr: WriteHalf,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    pending: mpsc::UnboundedSender<Pending>,
    health: &Arc<Health>,
) -> Result<(), UpstreamError> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // The first tick is immediate: every new connection is probed once.
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if health.reconnect.load(Ordering::Relaxed) {
            // Draining: the reader ends the connection once everything written is
            // answered; new jobs wait in the queue for the next connection.
            return std::future::pending().await;
        }
        let first = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job,
                None => {
                    // Every handle is gone; let the reader finish what is outstanding.
                    drop(pending);
                    return std::future::pending().await;
                }
            },
            _ = probe.tick() => {
                if !health.not_serving.load(Ordering::Relaxed) {
                    continue;
                }
                probe_job(health)
            }
        };
        let now = Instant::now();
        buf.clear();
        buf.extend_from_slice(&first.data);
        let _ = pending.send(Pending {
            job: first,
            sent_at: now,
        });
        while buf.len() < MAX_BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    buf.extend_from_slice(&job.data);
                    let _ = pending.send(Pending { job, sent_at: now });
                }
                Err(_) => break,
            }
        }
        wr.write_all_flushed(&buf)
            .await
            .map_err(|e| UpstreamError::Io(e.to_string()))?;
        if buf.capacity() > 4 * MAX_BATCH_BYTES {
            // A huge value passed through; do not keep its buffer forever.
            buf = BytesMut::with_capacity(16 * 1024);
        }
    }
}

/// A `PING` whose `+PONG` marks the upstream as serving again.
fn probe_job(health: &Arc<Health>) -> Job {
    let (tx, mut rx) = mpsc::unbounded_channel::<super::Reply>();
    let health = health.clone();
    tokio::spawn(async move {
        if let Some(Ok(reply)) = rx.recv().await {
            if reply.starts_with(b"+PONG") {
                health.not_serving.store(false, Ordering::Relaxed);
            }
        }
    });
    Job {
        data: bytes::Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"),
        frames: 1,
        reply: Some(tx),
        held: None,
        on_fail: None,
    }
}

/// What an error reply says about the upstream as a whole.
fn note_reply(health: &Health, frame: &[u8]) {
    if frame.first() != Some(&b'-') {
        return;
    }
    if frame.starts_with(b"-LOADING") || frame.starts_with(b"-MASTERDOWN") {
        health.not_serving.store(true, Ordering::Relaxed);
    } else if frame.starts_with(b"-READONLY") {
        health.reconnect.store(true, Ordering::Relaxed);
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
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = Scanner::default();
    // Frames of the current job already scanned, and the bytes they span.
    let mut frames_seen: u32 = 0;
    let mut scanned: usize = 0;
    // One timer for the whole connection, not one per read: it is armed for the
    // oldest outstanding job's deadline and, when it fires early (that job was
    // answered meanwhile), re-armed for the current one's.
    let watchdog = tokio::time::sleep(timeout);
    tokio::pin!(watchdog);
    loop {
        // Hand out every complete reply in the buffer.
        loop {
            if current.is_none() {
                *current = pending.try_recv().ok();
            }
            let Some(cur) = current.as_ref() else { break };
            let Some(rest) = buf.get(scanned..) else {
                break;
            };
            let frame = match scanner.scan(rest) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
            };
            if frame.kind == b'>' {
                // No shared connection subscribes or tracks; drop a stray push.
                if scanned == 0 {
                    let _ = buf.split_to(frame.len);
                } else {
                    scanned += frame.len;
                }
                continue;
            }
            if frame.kind == b'-' {
                note_reply(health, rest.get(..frame.len).unwrap_or_default());
            }
            scanned += frame.len;
            frames_seen += 1;
            if frames_seen >= cur.job.frames.max(1) {
                let bytes = buf.split_to(scanned).freeze();
                if let Some(done) = current.take() {
                    rtt.observe(done.sent_at.elapsed());
                    done.job.complete(bytes);
                }
                scanned = 0;
                frames_seen = 0;
            }
        }
        let read = match current.as_ref() {
            Some(cur) => {
                tokio::select! {
                    r = rd.read_buf(&mut buf) => r,
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
                return Err(UpstreamError::Io("upstream answered READONLY".into()));
            }
            None => {
                tokio::select! {
                    r = rd.read_buf(&mut buf) => r,
                    p = pending.recv() => match p {
                        Some(p) => { *current = Some(p); continue; }
                        None => return Ok(()),
                    },
                }
            }
        };
        match read {
            Ok(0) => return Err(UpstreamError::Io("connection closed by upstream".into())),
            Ok(_) => {}
            Err(e) => return Err(UpstreamError::Io(e.to_string())),
        }
        if buf.capacity() - buf.len() < 4096 && buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
    }
}
