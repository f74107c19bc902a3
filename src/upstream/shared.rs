//! A shared upstream connection: many sessions' requests multiplexed onto one pipelined
//! socket, replies matched to requests in FIFO order.
//!
//! One task owns the socket. Its writer half drains the job queue in batches (one
//! `write` for everything queued, so many clients cost Redis few system calls) and
//! records each job as pending; its reader half frames replies and hands each job its
//! bytes. When the socket breaks or a reply is later than `command_timeout`, every
//! pending job is answered with an error at once and the task reconnects with backoff;
//! jobs arriving while the upstream is down are answered with an error immediately.

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

/// Handle to one shared connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedConn {
    tx: mpsc::UnboundedSender<Job>,
    up: Arc<AtomicBool>,
    id: u64,
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
        let up = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(settings, id, rx, up.clone(), rtt));
        SharedConn {
            tx,
            up,
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
        self.up.load(Ordering::Relaxed)
    }
}

async fn run(
    settings: Arc<Settings>,
    id: Identity,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    up: Arc<AtomicBool>,
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
                up.store(true, Ordering::Relaxed);
                let outcome = serve(stream, &settings, &mut jobs, &rtt).await;
                up.store(false, Ordering::Relaxed);
                match outcome {
                    Ok(()) => return,
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
    rtt: &Histogram,
) -> Result<(), UpstreamError> {
    let (rd, wr) = stream.split();
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Pending>();
    let mut current = None;
    let result = tokio::select! {
        r = write_loop(wr, jobs, pending_tx) => r,
        r = read_loop(rd, &mut pending_rx, &mut current, settings.command_timeout, rtt) => r,
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
) -> Result<(), UpstreamError> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let Some(first) = jobs.recv().await else {
            // Every handle is gone; let the reader finish what is outstanding.
            drop(pending);
            return std::future::pending().await;
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

async fn read_loop(
    mut rd: ReadHalf,
    pending: &mut mpsc::UnboundedReceiver<Pending>,
    current: &mut Option<Pending>,
    timeout: Duration,
    rtt: &Histogram,
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
