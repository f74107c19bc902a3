//! One client connection: read commands, route each one, answer in order.
//!
//! A session is one task. It decodes what the client sent, answers session-state
//! commands itself, and sends the rest upstream: to its shared connection, or to a
//! pinned one while it is in a stateful mode. Replies are queued in the order the
//! commands arrived and written to the client in batches.
//!
//! Ordering rule: a session has requests outstanding on at most one upstream connection
//! at a time. Before it sends to a different one (another database, a pinned
//! connection), it waits until everything outstanding is answered. That keeps a
//! client's pipeline in order across connections (`SET k 1`, `SELECT`, `MOVE`, `MULTI`)
//! and lets every upstream reply arrive on one channel in request order.

mod admin_cmd;
mod local;
mod pinned;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::Auth;
use crate::command::KeyRef;
use crate::command::{CommandKind, CommandTable};
use crate::consistency::cache::{Finish, Leases};
use crate::consistency::retry::{Retry, RetryTicket};
use crate::consistency::{Engine, Translate};
use crate::context::Context;
use crate::key_lock::{Held, LockTimeout};
use crate::metrics::{CommandTally, Outcome, PinReason};
use crate::policy::{Policy, Renamed};
use crate::resp::{Decoder, Request, reply};
use crate::stream::Stream;
use crate::upstream::{Identity, Job, Reply, ReplyRx, ReplyTx, SharedConn, UpstreamError, connect};
use local::ReplyMode;
use pinned::{Incoming, Pinned, Rewrite, SessionEffect};

/// Commands accepted ahead of their replies before cachet stops reading the client.
const MAX_QUEUED: usize = 16 * 1024;
/// Reply bytes waiting for a slow client before cachet stops reading it, and stops
/// sending what it already read.
const MAX_OUT: usize = 8 * 1024 * 1024;
/// Commands outstanding at once before any reply told how large replies are.
const FIRST_WINDOW: usize = 16;
/// Read buffer of a connection that sends in bulk.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer of every connection until a read fills it.
const FIRST_READ: usize = 1024;
/// Batch replies up to this size are checked for errors with two byte searches; larger
/// ones are scanned frame by frame, which skips over bulk payloads.
const FAST_TALLY_BYTES: usize = 4096;
/// Largest buffer reserved up front for a batch of plain commands.
const MAX_BATCH_HINT: usize = 64 * 1024;
/// One command in this many of a pipeline has its handling time measured.
const HANDLING_SAMPLE: u32 = 16;
/// Buffers grown past this by a large value are released once empty.
const KEEP_CAPACITY: usize = 256 * 1024;
/// How long a closing session waits for its client to take the end of the stream (a
/// TLS close_notify) before dropping the connection.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A reply still owed to the client, in request order.
#[derive(Debug)]
enum Slot {
    /// Known now, but behind an upstream reply.
    Ready(Bytes),
    /// Coming from upstream as `frames` frames; not written if `discard`.
    Await {
        /// Identifies the slot to replies that come back out of order (see `parked`).
        seq: u64,
        discard: bool,
        post: Post,
        translate: Translate,
        /// Waiting for something other than the next upstream reply: a coalesced miss
        /// waiting for another client's fill, or a script re-run after `NOSCRIPT`.
        /// Later replies go to later slots meanwhile.
        parked: bool,
        /// The request as sent, kept for script commands (`NOSCRIPT` recovery).
        sent: Option<Bytes>,
        /// Client commands this slot answers: more than one for a batch of plain
        /// commands sent upstream as one job (their replies are simply concatenated).
        count: u32,
        /// When it was sent, and what (for the slow-command log; only when it is on).
        sent_at: Option<(Instant, Arc<crate::command::CommandInfo>, usize)>,
        /// The counters of the commands this slot answers, counted when it settles.
        tallies: Tallies,
    },
}

/// The counters of the commands a slot answers (usually one; a batch has several).
#[derive(Debug, Default)]
enum Tallies {
    #[default]
    None,
    One(Arc<CommandTally>),
    Many(Vec<Arc<CommandTally>>),
}

impl Tallies {
    fn push(&mut self, t: Arc<CommandTally>) {
        *self = match std::mem::take(self) {
            Tallies::None => Tallies::One(t),
            Tallies::One(first) => Tallies::Many(vec![first, t]),
            Tallies::Many(mut v) => {
                v.push(t);
                Tallies::Many(v)
            }
        };
    }

    /// Counts each command's outcome from its reply frame in `bytes`.
    fn count(self, bytes: &[u8], is_error: bool) {
        match self {
            Tallies::None => {}
            Tallies::One(t) => t.count(if is_error {
                Outcome::Error
            } else {
                Outcome::of_reply(bytes)
            }),
            // No frame can start with an error marker: every command succeeded,
            // without scanning the replies frame by frame.
            Tallies::Many(v)
                if !is_error
                    && bytes.len() <= FAST_TALLY_BYTES
                    && !matches!(bytes.first(), Some(b'-' | b'!'))
                    && memchr::memmem::find(bytes, b"\r\n-").is_none()
                    && memchr::memmem::find(bytes, b"\r\n!").is_none() =>
            {
                for t in v {
                    t.count(Outcome::Ok);
                }
            }
            Tallies::Many(v) => {
                let mut rest = bytes;
                for t in v {
                    let outcome = if is_error {
                        Outcome::Error
                    } else {
                        match crate::resp::Scanner::default().scan(rest) {
                            Ok(Some(f)) => {
                                rest = rest.get(f.len..).unwrap_or_default();
                                Outcome::of_reply(&[f.kind])
                            }
                            _ => Outcome::Ok,
                        }
                    };
                    t.count(outcome);
                }
            }
        }
    }
}

/// Session state to update when an awaited reply arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Post {
    Nothing,
    /// `HELLO … AUTH` verified upstream: on success, switch protocol, set the name and
    /// answer with the `HELLO` reply instead.
    Hello {
        proto: u8,
        setname: Option<Bytes>,
    },
}

/// Where a command goes upstream; a session has outstanding requests on one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Shared(Identity),
    Pinned,
    /// A one-off connection (credential checks).
    Aux,
}

/// Why the loop woke.
enum Event {
    ClientRead(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Upstream(Reply),
    Resolved(u64, Bytes, bool),
    PinnedRead(std::io::Result<usize>),
    PinnedTimeout,
    Shutdown,
    /// The client sent nothing for `idle_timeout`.
    Idle,
}

pub struct Session {
    id: u64,
    ctx: Arc<Context>,
    peer: SocketAddr,
    table: Arc<CommandTable>,
    /// The engine, command policy and credentials as of this batch of commands (a
    /// reload swaps them).
    engine: Arc<Engine>,
    policy: Arc<Policy>,
    auth: Arc<Auth>,
    /// Whether the client may run commands: logged in with `AUTH`/`HELLO … AUTH`, or
    /// connected while `[auth]` was off. Kept across reloads, as Redis keeps its
    /// clients' logins when passwords change.
    authed: bool,
    /// Counters of the command being handled, until its reply (or slot) takes them.
    tally: Option<Arc<CommandTally>>,
    /// The command being routed, for the slow-command log.
    current: Option<Arc<crate::command::CommandInfo>>,
    /// `[log] slow_command` (zero: off).
    slow: std::time::Duration,
    /// `[limits] client_output_buffer`: a subscriber (or monitor) owing more than this
    /// is disconnected, as Redis does with its pub/sub output buffer limit.
    output_limit: u64,
    db: u32,
    proto: u8,
    name: Option<Bytes>,
    reply_mode: ReplyMode,
    decoder: Decoder,
    rbuf: BytesMut,
    /// How much room a read gets: `FIRST_READ` until a read fills it, then `READ_CHUNK`.
    read_size: usize,
    /// Average reply size per command so far (0: nothing answered yet); sizes how many
    /// commands may be outstanding (see `may_send_more`).
    reply_size: usize,
    /// Decoding (and reading) stopped by `may_send_more`: resumed as replies arrive
    /// and the client reads them.
    paused: bool,
    out: BytesMut,
    slots: VecDeque<Slot>,
    /// `Await` slots in `slots`.
    inflight: usize,
    /// Client commands those slots answer (a batch slot answers several).
    outstanding: usize,
    route: Option<Route>,
    shared: Option<(Identity, SharedConn)>,
    reply_tx: ReplyTx,
    pinned: Option<Pinned>,
    /// A command that must wait until everything outstanding is answered.
    stalled: Option<Request>,
    /// No more commands are read; the session ends once every reply is written.
    closing: bool,
    /// Scratch space for key extraction, reused across commands.
    keys: Vec<KeyRef>,
    /// Leases this connection holds on `cache` keys.
    leases: Leases,
    next_seq: u64,
    /// When the client last sent something or was last answered.
    last_active: Instant,
    /// Plain commands read in one go, not yet sent: one job (and one reply) for all of
    /// them instead of one each. The slot's sequence number, the bytes, the frames.
    batch: Option<(u64, BytesMut, u32)>,
    /// Replies of parked slots, by slot sequence number; `true` when the reply still
    /// needs finishing by the engine.
    resolve_tx: mpsc::UnboundedSender<(u64, Bytes, bool)>,
}

/// Runs one client connection to its end.
pub async fn run(ctx: Arc<Context>, stream: Stream, peer: SocketAddr) {
    if !stream.is_tls() {
        let _ = stream.set_nodelay(true);
    }
    let (reply_tx, reply_rx) = mpsc::unbounded_channel();
    let (resolve_tx, resolve_rx) = mpsc::unbounded_channel();
    let id = ctx.next_session_id();
    let session = Session {
        id,
        table: ctx.table.load_full(),
        engine: ctx.engine.load_full(),
        policy: ctx.policy.load_full(),
        auth: ctx.auth.load_full(),
        authed: !ctx.auth.load().enabled(),
        tally: None,
        current: None,
        slow: std::time::Duration::ZERO,
        output_limit: u64::MAX,
        peer,
        db: ctx.default_db,
        proto: 2,
        name: None,
        reply_mode: ReplyMode::On,
        decoder: Decoder::new(**ctx.limits.load()),
        rbuf: BytesMut::new(),
        read_size: FIRST_READ,
        reply_size: 0,
        paused: false,
        out: BytesMut::new(),
        slots: VecDeque::new(),
        inflight: 0,
        outstanding: 0,
        route: None,
        shared: None,
        reply_tx,
        pinned: None,
        stalled: None,
        closing: false,
        keys: Vec::with_capacity(8),
        leases: Leases::new(),
        next_seq: 0,
        last_active: Instant::now(),
        batch: None,
        resolve_tx,
        ctx,
    };
    session.serve(stream, reply_rx, resolve_rx).await;
}

impl Session {
    async fn serve(
        mut self,
        stream: Stream,
        mut reply_rx: ReplyRx,
        mut resolve_rx: mpsc::UnboundedReceiver<(u64, Bytes, bool)>,
    ) {
        let (mut client_rd, mut client_wr) = stream.split();
        let mut shutdown = self.ctx.shutdown.clone();
        let mut shutting_down = *shutdown.borrow();
        // One future for the whole session: creating a watch notification per loop
        // turn showed up in profiles.
        let shutdown_signal = async move {
            let _ = shutdown.changed().await;
        };
        tokio::pin!(shutdown_signal);
        if shutting_down {
            self.closing = true;
        }
        loop {
            if self.closing && self.slots.is_empty() && self.out.is_empty() {
                break;
            }
            let want_read = !self.closing
                && self.stalled.is_none()
                && !self.paused
                && self.slots.len() < MAX_QUEUED
                && self.out.len() < MAX_OUT;
            if want_read && self.rbuf.capacity() - self.rbuf.len() < FIRST_READ / 2 {
                // A connection gets a small buffer until it fills one: a client that
                // sends a command at a time (or a partial frame, or nothing) never
                // holds a full read chunk.
                let want = self
                    .decoder
                    .wants(&self.rbuf)
                    .clamp(self.read_size, 1 << 20);
                self.rbuf.reserve(want);
            }
            let timeout = self.ctx.upstream.settings().command_timeout;
            let deadline = self.pinned.as_ref().and_then(|p| p.deadline(timeout));
            let idle = self.idle_deadline();
            // One timer for both deadlines (at most one is usually set).
            let wake = match (deadline, idle) {
                (Some(d), Some(i)) => Some(d.min(i)),
                (d, i) => d.or(i),
            };
            let event = {
                let rbuf = &mut self.rbuf;
                let out = &self.out;
                let pinned = &mut self.pinned;
                tokio::select! {
                    r = client_rd.read_buf(rbuf), if want_read => Event::ClientRead(r),
                    Some(r) = reply_rx.recv() => Event::Upstream(r),
                    Some((seq, bytes, finish)) = resolve_rx.recv() => Event::Resolved(seq, bytes, finish),
                    // With nothing left to write, a TLS client may still be owed a flush.
                    r = client_wr.write_or_flush(out), if !out.is_empty() || client_wr.needs_flush() => Event::Wrote(r),
                    r = read_pinned(pinned), if pinned.is_some() => Event::PinnedRead(r),
                    _ = sleep_until(wake), if wake.is_some() => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            Event::PinnedTimeout
                        } else {
                            Event::Idle
                        }
                    }
                    _ = &mut shutdown_signal, if !shutting_down => Event::Shutdown,
                }
            };
            match event {
                Event::ClientRead(Ok(0)) => {
                    self.closing = true;
                    if self.pinned.as_ref().is_some_and(Pinned::blocked) {
                        self.hang_up_blocked();
                    }
                }
                Event::ClientRead(Ok(n)) => {
                    if self.rbuf.len() == self.rbuf.capacity() {
                        // The read filled the buffer: this client sends in bulk.
                        self.read_size = READ_CHUNK;
                    }
                    self.ctx
                        .metrics
                        .bytes_in
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    self.last_active = Instant::now();
                    self.process().await
                }
                Event::Idle => {
                    tracing::debug!(session = self.id, peer = %self.peer, "idle timeout; closing the connection");
                    break;
                }
                Event::ClientRead(Err(e)) => {
                    tracing::debug!(session = self.id, peer = %self.peer, error = %e, "client read failed");
                    break;
                }
                Event::Wrote(Ok(n)) => {
                    self.wrote(n);
                    // Decoding held back for a client that was not reading goes on
                    // once it has read half (nothing is read meanwhile, so every
                    // command already received runs before a hang-up is seen).
                    if self.paused && self.out.len() < MAX_OUT / 2 {
                        self.resume().await;
                    }
                }
                Event::Wrote(Err(e)) => {
                    tracing::debug!(session = self.id, peer = %self.peer, error = %e, "client write failed");
                    break;
                }
                Event::Upstream(r) => {
                    self.on_upstream(r);
                    // Replies already queued go out with this one, in one write.
                    while let Ok(r) = reply_rx.try_recv() {
                        self.on_upstream(r);
                    }
                    self.resume().await;
                }
                Event::Resolved(seq, bytes, finish) => {
                    self.on_resolved(seq, bytes, finish);
                    self.resume().await;
                }
                Event::PinnedRead(Ok(n)) if n > 0 => {
                    self.on_pinned_data();
                    if self.out.len() as u64 > self.output_limit
                        && self
                            .pinned
                            .as_ref()
                            .is_some_and(Pinned::exempt_from_idle_timeout)
                    {
                        tracing::warn!(
                            session = self.id,
                            peer = %self.peer,
                            owed_bytes = self.out.len(),
                            "client output buffer limit reached (a subscriber not reading); closing the connection"
                        );
                        break;
                    }
                    self.resume().await;
                }
                Event::PinnedRead(Ok(_)) => {
                    self.pinned_failed(UpstreamError::Io("connection closed by upstream".into()));
                    self.resume().await;
                }
                Event::PinnedRead(Err(e)) => {
                    self.pinned_failed(UpstreamError::Io(e.to_string()));
                    self.resume().await;
                }
                Event::PinnedTimeout => {
                    self.pinned_failed(UpstreamError::Timeout(timeout));
                    self.resume().await;
                }
                Event::Shutdown => {
                    shutting_down = true;
                    self.closing = true;
                    // A subscriber or a blocked command would hold shutdown for the
                    // whole grace period; end them now.
                    if self.pinned.as_ref().is_some_and(Pinned::waiting_long) {
                        self.pinned_failed(UpstreamError::Unavailable(
                            "cachet is shutting down".into(),
                        ));
                    }
                }
            }
            // Replies that became ready go out now if the socket takes them, without
            // another turn of the loop (one wake-up per request instead of two).
            if let Err(e) = self.try_write(&client_wr) {
                tracing::debug!(session = self.id, peer = %self.peer, error = %e, "client write failed");
                break;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_CAPACITY {
                self.rbuf = BytesMut::new();
            }
        }
        // A TLS client that stopped reading never lets close_notify (or what rustls
        // still holds) out: waiting for it would keep this task, its descriptor and
        // its `max_clients` slot, and hold graceful shutdown for the grace period.
        let _ = tokio::time::timeout(CLOSE_WAIT, client_wr.shutdown()).await;
    }

    /// `n` bytes of `out` reached the client.
    fn wrote(&mut self, n: usize) {
        self.ctx
            .metrics
            .bytes_out
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.out.advance(n);
        if self.out.is_empty() && self.out.capacity() > KEEP_CAPACITY {
            self.out = BytesMut::new();
        }
    }

    /// Writes what the client socket takes without waiting.
    fn try_write(&mut self, wr: &crate::stream::WriteHalf) -> std::io::Result<()> {
        while !self.out.is_empty() {
            match wr.try_write(&self.out) {
                Ok(n) => self.wrote(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether another command may be decoded and sent. A client that pipelines
    /// requests for large replies and does not read them would otherwise make cachet
    /// hold every reply: commands stay undecoded in the read buffer while the client
    /// owes `MAX_OUT`, and no more are outstanding than `MAX_OUT` of replies at the
    /// average reply size seen so far (`FIRST_WINDOW` before the first reply).
    fn may_send_more(&mut self) -> bool {
        self.paused = !self.window_open();
        !self.paused
    }

    fn window_open(&self) -> bool {
        if self.out.len() >= MAX_OUT {
            return false;
        }
        if self.inflight == 0 {
            return true;
        }
        let window = match self.reply_size {
            0 => FIRST_WINDOW,
            size => (MAX_OUT / size).clamp(FIRST_WINDOW / 4, MAX_QUEUED),
        };
        self.outstanding < window
    }

    /// When an idle client is disconnected: `idle_timeout` after its last bytes, unless
    /// it waits on something (replies owed, a subscription, a blocking command).
    fn idle_deadline(&self) -> Option<Instant> {
        let limit = self.ctx.idle_timeout;
        if limit.is_zero()
            || !self.slots.is_empty()
            || !self.out.is_empty()
            || self
                .pinned
                .as_ref()
                .is_some_and(Pinned::exempt_from_idle_timeout)
        {
            return None;
        }
        Some(self.last_active + limit)
    }

    /// Decodes and routes buffered commands until the buffer is empty or a command must
    /// wait for outstanding replies.
    async fn process(&mut self) {
        self.process_buffered().await;
        self.flush_batch();
    }

    async fn process_buffered(&mut self) {
        self.table = self.ctx.table.load_full();
        self.engine = self.ctx.engine.load_full();
        self.load_access();
        let config = self.ctx.config.load();
        self.slow = config.log.slow_command;
        self.output_limit = config.limits.client_output_buffer;
        // Handling time is sampled: the first command of each read (the whole story
        // for a client that does not pipeline) and every 16th after it. Reading the
        // clock for every pipelined command cost more than the rest of its decoding.
        let mut n: u32 = 0;
        self.paused = false;
        while !self.closing {
            let started = n.is_multiple_of(HANDLING_SAMPLE).then(Instant::now);
            n = n.wrapping_add(1);
            // A stalled command comes back as it was routed (renamed already).
            let (req, fresh) = match self.stalled.take() {
                Some(req) => (req, false),
                None if !self.rbuf.is_empty() && !self.may_send_more() => return,
                None => match self.decoder.decode(&mut self.rbuf) {
                    Ok(Some(req)) => (req, true),
                    Ok(None) => return,
                    Err(e) => {
                        self.ctx
                            .metrics
                            .protocol_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(session = self.id, peer = %self.peer, error = %e, "protocol error; closing the connection");
                        self.queue(e.reply());
                        self.closing = true;
                        return;
                    }
                },
            };
            let stalled = self.handle(req, fresh).await;
            match stalled {
                Some(req) => {
                    // Counted when it runs.
                    self.tally = None;
                    self.stalled = Some(req);
                    return;
                }
                None => {
                    // A command without a reply (`CLIENT REPLY OFF`, a pinned command
                    // answered by pushes) still ran.
                    if let Some(t) = self.tally.take() {
                        t.count(Outcome::Ok);
                    }
                    if let Some(started) = started {
                        self.ctx.metrics.latency.observe(started.elapsed());
                    }
                }
            }
        }
    }

    /// Continues with buffered commands once a reply or a pinned connection's end may
    /// have lifted a wait.
    async fn resume(&mut self) {
        if self.inflight == 0 {
            if self.pinned.as_ref().is_some_and(Pinned::done) {
                self.unpin();
            }
            if self.stalled.is_some() || !self.rbuf.is_empty() || self.paused {
                self.process().await;
            }
        }
    }

    /// Routes one command; gives it back if it must wait. `fresh`: just decoded (not
    /// a stalled command coming back), so `[commands] rename` still applies.
    async fn handle(&mut self, req: Request, fresh: bool) -> Option<Request> {
        use CommandKind as K;
        let req = if fresh {
            match self.policy.rename(req) {
                Renamed::Run(req) => req,
                Renamed::Unknown(err) => return self.refuse(err).await,
            }
        } else {
            req
        };
        let first = req.args.first().map_or(&b""[..], |a| &a[..]);
        if admin_cmd::is_cachet(first) {
            if !self.authed {
                self.reply(Bytes::from_static(crate::auth::NOAUTH));
                return None;
            }
            self.tally = Some(self.ctx.metrics.commands.cachet.0.clone());
            let r = admin_cmd::answer(&self.ctx, &self.engine, &req.args);
            // A reload applies from the next command on.
            self.engine = self.ctx.engine.load_full();
            self.load_access();
            self.reply(r);
            return None;
        }
        let info = self.table.lookup(&req.args).cloned();
        self.current = info.clone();
        self.tally = Some(match &info {
            Some(i) => i.tally.0.clone(),
            None => self.ctx.metrics.commands.unknown.0.clone(),
        });
        let kind = info.as_ref().map_or(K::Plain, |i| i.kind);
        let arity_ok = info.as_ref().is_none_or(|i| i.arity_ok(req.args.len()));
        if !self.authed
            && let Some(refusal) =
                crate::auth::before_login(&self.table, info.as_deref(), &req.args)
        {
            self.reply(refusal);
            return None;
        }
        if let Some(err) = self
            .policy
            .refusal(first, info.as_ref().map(|i| i.name.as_str()))
        {
            return self.refuse(err).await;
        }
        // Inside the client's transaction everything is queued upstream, except what
        // ends the connection itself. A malformed `RESET` goes too: Redis rejects it
        // and that rejection aborts the transaction.
        if self.pinned.as_ref().is_some_and(|p| p.multi)
            && (!matches!(kind, K::Quit | K::Reset) || !arity_ok)
        {
            let logs_in = kind == K::Auth
                || (kind == K::Hello
                    && req
                        .args
                        .iter()
                        .skip(2)
                        .any(|a| a.eq_ignore_ascii_case(b"AUTH")));
            if self.auth.enabled() && logs_in {
                // The upstream must never see a client's password, and cachet
                // cannot answer inside the upstream's transaction.
                return self
                    .refuse(reply::error(
                        "ERR cachet: AUTH and HELLO … AUTH cannot be queued in MULTI when cachet authenticates clients ([auth])",
                    ))
                    .await;
            }
            return self.send_pinned(req, kind, false).await;
        }
        // In RESP2 subscribe mode Redis refuses every command but the subscribe family,
        // PING, QUIT and RESET, session commands included: let it say so.
        if self.pinned.as_ref().is_some_and(Pinned::resp2_subscribed)
            && (kind == K::Auth || (local::answers(kind) && !matches!(kind, K::Quit | K::Reset)))
        {
            if self.auth.enabled() && matches!(kind, K::Auth | K::Hello) {
                // Redis's refusal, said here: the upstream never sees a client's
                // password.
                let name = info.as_ref().map_or("auth", |i| i.name.as_str());
                self.reply(reply::error(&format!(
                    "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                )));
                return None;
            }
            return self.send_pinned(req, kind, false).await;
        }
        // Redis checks arity before anything else; commands answered here must too.
        if !arity_ok && local::answers(kind) {
            if let Some(i) = &info {
                self.reply(reply::wrong_arity(&i.name));
            }
            return None;
        }
        match kind {
            K::Quit => {
                self.queue(Bytes::from_static(reply::OK));
                self.closing = true;
                None
            }
            K::Reset => {
                if self.inflight > 0 {
                    return Some(req);
                }
                self.reset();
                self.queue(Bytes::from_static(b"+RESET\r\n"));
                None
            }
            K::Select => {
                let info = self.ctx.server.load();
                match local::select(&req.args, &info) {
                    Ok(db) if self.pinned.is_some() => {
                        let _ = db;
                        self.send_pinned(req, kind, false).await
                    }
                    Ok(db) => {
                        self.db = db;
                        self.reply(Bytes::from_static(reply::OK));
                        None
                    }
                    Err(e) => {
                        self.reply(e);
                        None
                    }
                }
            }
            K::Hello => self.hello(req).await,
            K::Auth if self.auth.enabled() => {
                let r = match self.auth.auth_command(&req.args) {
                    Ok(ok) => {
                        self.authed = true;
                        ok
                    }
                    Err(e) => {
                        if e.starts_with(b"-WRONGPASS") {
                            self.auth_failed();
                        }
                        e
                    }
                };
                self.reply(r);
                None
            }
            K::Auth => self.auth(req, Post::Nothing),
            K::ClientId => {
                let mut out = BytesMut::new();
                reply::push_int(&mut out, self.id as i64);
                self.reply(out.freeze());
                None
            }
            K::ClientGetName => {
                let r = local::getname(self.name.as_ref(), self.proto);
                self.reply(r);
                None
            }
            K::ClientSetName => {
                let r = match req.args.get(2) {
                    Some(name) if req.args.len() == 3 => match local::check_name(name) {
                        Ok(()) => {
                            self.name = (!name.is_empty()).then(|| name.clone());
                            Bytes::from_static(reply::OK)
                        }
                        Err(e) => e,
                    },
                    _ => reply::wrong_arity("client|setname"),
                };
                self.reply(r);
                None
            }
            K::ClientSetInfo if self.ctx.server.load().has_setinfo => {
                let r = match local::setinfo(&req.args) {
                    Ok(()) => Bytes::from_static(reply::OK),
                    Err(e) => e,
                };
                self.reply(r);
                None
            }
            K::ClientReply => {
                match local::reply_mode(&req.args) {
                    Ok(ReplyMode::On) => {
                        self.reply_mode = ReplyMode::On;
                        self.queue(Bytes::from_static(reply::OK));
                    }
                    // Redis ignores SKIP while replies are off.
                    Ok(ReplyMode::Skip) if self.reply_mode == ReplyMode::Off => {}
                    // Neither OFF nor SKIP is answered.
                    Ok(mode) => self.reply_mode = mode,
                    Err(e) => self.reply(e),
                }
                None
            }
            K::Replication => {
                self.reply(reply::error(
                    "ERR cachet: replication commands (SYNC, PSYNC, REPLCONF) cannot go through a proxy; connect replicas to Redis directly",
                ));
                None
            }
            K::Multi
            | K::Watch
            | K::Subscribe
            | K::PSubscribe
            | K::SSubscribe
            | K::Unsubscribe
            | K::PUnsubscribe
            | K::SUnsubscribe
            | K::Monitor => self.send_pinned(req, kind, false).await,
            K::ClientTracking
                if self.pinned.is_some()
                    || req
                        .args
                        .get(2)
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"on")) =>
            {
                self.send_pinned(req, kind, false).await
            }
            _ => {
                let blocking = info.as_ref().is_some_and(|i| i.is_blocking(&req.args));
                if blocking || self.pinned.is_some() {
                    self.send_pinned(req, kind, blocking).await
                } else {
                    self.send_shared(req, info.as_deref()).await
                }
            }
        }
    }

    /// A command refused by `[commands]` (denied, renamed away, a script). Inside the
    /// client's transaction the refusal must also abort it at `EXEC`, as Redis's own
    /// queueing errors do: the upstream is sent a command it cannot queue, and its
    /// error is answered as the refusal.
    async fn refuse(&mut self, err: Bytes) -> Option<Request> {
        if !self.pinned.as_ref().is_some_and(|p| p.multi) {
            self.reply(err);
            return None;
        }
        let poison = Request::from_args([&b"cachet-denied-command"[..]]);
        let rewrite = Rewrite {
            translate: Translate::Replace(err),
            ..Rewrite::default()
        };
        let p = self.pinned.as_mut()?;
        match p.send(&poison, CommandKind::Plain, false, rewrite).await {
            Ok(0) => {}
            Ok(_) => self.await_reply(Route::Pinned, Post::Nothing),
            Err(e) => {
                self.reply(e.reply());
                self.pinned_failed(e);
            }
        }
        None
    }

    /// Sends a command over the session's shared connection, through the rewrite stage.
    async fn send_shared(
        &mut self,
        req: Request,
        info: Option<&crate::command::CommandInfo>,
    ) -> Option<Request> {
        let id = self.identity();
        let route = Route::Shared(id);
        if self.inflight > 0 && self.route != Some(route) {
            return Some(req);
        }
        if !matches!(&self.shared, Some((cid, _)) if *cid == id) {
            self.shared = Some((id, self.ctx.upstream.shared(id, self.id)));
        }
        let cache = Some((&mut self.leases, self.id, self.proto));
        let plan = match self.engine.plan(&req, info, &mut self.keys, cache) {
            Ok(plan) => plan,
            Err(refusal) => {
                self.reply(refusal);
                return None;
            }
        };
        // cachet's own script calls are kept for NOSCRIPT recovery (a client's own
        // command is forwarded as it came, and its NOSCRIPT is the client's).
        let script = plan.data.as_ptr() != req.raw.as_ptr() && is_script_call(&plan.data);
        if plan.translate.is_none()
            && plan.written.is_empty()
            && plan.retry.is_none()
            && !script
            && self.reply_mode == ReplyMode::On
        {
            self.batch_plain(route, &plan.data, plan.frames);
            return None;
        }
        self.flush_batch();
        let held = if plan.written.is_empty() {
            None
        } else {
            let owner = self.shared.as_ref().map_or(0, |(_, c)| c.id());
            match self.take_tokens(owner, &plan.written).await {
                Some(h) => Some(h),
                None => return None,
            }
        };
        let sent = script.then(|| plan.data.clone());
        let on_fail = plan.retry.map(|data| RetryTicket {
            retry: Retry {
                data,
                frames: plan.retry_frames,
                db: self.db,
                keys: plan.written.clone(),
            },
            queue: self.engine.retries.clone(),
        });
        let job = Job {
            data: plan.data,
            frames: plan.frames,
            reply: Some(self.reply_tx.clone()),
            held,
            on_fail,
        };
        match &self.shared {
            Some((_, conn)) => conn.send(job),
            None => job.fail(&UpstreamError::Unavailable("no connection".into())),
        }
        self.await_reply(route, Post::Nothing);
        if let Some(Slot::Await {
            translate, sent: s, ..
        }) = self.slots.back_mut()
        {
            *translate = plan.translate;
            *s = sent;
        }
        None
    }

    /// Adds a plain command to the batch for the shared connection, extending the last
    /// slot when it is the batch's.
    fn batch_plain(&mut self, route: Route, data: &[u8], frames: u32) {
        if let Some((seq, buf, n)) = self.batch.as_mut()
            && let Some(Slot::Await {
                seq: last,
                count,
                tallies,
                ..
            }) = self.slots.back_mut()
            && *last == *seq
        {
            buf.extend_from_slice(data);
            *n += frames;
            *count += 1;
            self.outstanding += 1;
            if let Some(t) = self.tally.take() {
                tallies.push(t);
            }
            return;
        }
        self.flush_batch();
        self.await_reply(route, Post::Nothing);
        // Room for the rest of this read too (the commands still undecoded), so that a
        // pipeline does not grow the batch one reallocation at a time.
        let mut buf = BytesMut::with_capacity((data.len() + self.rbuf.len()).min(MAX_BATCH_HINT));
        buf.extend_from_slice(data);
        self.batch = Some((self.next_seq, buf, frames));
    }

    /// Sends the pending batch, if any.
    fn flush_batch(&mut self) {
        let Some((_, data, frames)) = self.batch.take() else {
            return;
        };
        let job = Job {
            data: data.freeze(),
            frames,
            reply: Some(self.reply_tx.clone()),
            held: None,
            on_fail: None,
        };
        match &self.shared {
            Some((_, conn)) => conn.send(job),
            None => job.fail(&UpstreamError::Unavailable("no connection".into())),
        }
    }

    /// The ordering tokens of keys a write is about to change, waiting (bounded by
    /// `command_timeout`) while another connection's writes of them are outstanding.
    /// `None` after answering the client with the timeout error.
    async fn take_tokens(&mut self, owner: u64, keys: &[Bytes]) -> Option<Held> {
        let locks = self.engine.locks.clone();
        if let Ok(h) = locks.try_acquire(owner, keys) {
            return Some(h);
        }
        self.engine
            .stats
            .key_lock_waits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let limit = self.ctx.upstream.settings().command_timeout;
        let waited = Instant::now();
        let result = locks.acquire(owner, keys, limit).await;
        self.ctx.metrics.key_lock_wait.observe(waited.elapsed());
        match result {
            Ok(h) => Some(h),
            Err(LockTimeout) => {
                self.engine
                    .stats
                    .key_lock_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.reply(reply::error(&format!(
                    "ERR cachet: timed out after {} waiting for earlier writes of the same key",
                    connect::fmt_duration(limit)
                )));
                None
            }
        }
    }

    /// Sends a command over the pinned connection, pinning one first if needed.
    async fn send_pinned(
        &mut self,
        req: Request,
        kind: CommandKind,
        blocking: bool,
    ) -> Option<Request> {
        // Replies are matched to slots in order: nothing may go out on the pinned
        // connection while another route (a credential check) still owes a reply.
        if self.inflight > 0 && self.route != Some(Route::Pinned) {
            return Some(req);
        }
        if self.pinned.is_none() {
            match self.ctx.upstream.pin(self.identity()).await {
                Ok(conn) => {
                    let mut p = Pinned::new(conn, self.identity());
                    p.gauge = Some(self.ctx.metrics.pinned(pin_reason(kind, blocking)));
                    self.pinned = Some(p);
                }
                Err(e) => {
                    self.reply(e.reply());
                    return None;
                }
            }
        }
        let rewrite = match self.pinned_rewrite(&req, blocking) {
            Ok(r) => r,
            Err(refusal) => {
                self.reply(refusal);
                return None;
            }
        };
        // The reply is translated (and leases recorded) by the session, as for a
        // shared connection; the pinned connection hands over the reply's frames.
        let mut rewrite = rewrite;
        let translate = std::mem::take(&mut rewrite.translate);
        let sent = rewrite.data.as_ref().filter(|d| is_script_call(d)).cloned();
        let p = self.pinned.as_mut()?;
        match p.send(&req, kind, blocking, rewrite).await {
            Ok(0) => {}
            Ok(_) => {
                self.await_reply(Route::Pinned, Post::Nothing);
                if let Some(Slot::Await {
                    translate: t,
                    sent: s,
                    ..
                }) = self.slots.back_mut()
                {
                    *t = translate;
                    *s = sent;
                }
            }
            Err(e) => {
                self.reply(e.reply());
                self.pinned_failed(e);
            }
        }
        None
    }

    /// How a command on the pinned connection is rewritten for invalidate-plus-set:
    /// inside the client's transaction its invalidations join the transaction; a
    /// blocking write (which `MULTI` would stop from blocking) is invalidated after its
    /// reply; otherwise as on a shared connection.
    fn pinned_rewrite(&mut self, req: &Request, blocking: bool) -> Result<Rewrite, Bytes> {
        let Some(info) = self.table.lookup(&req.args).cloned() else {
            return Ok(Rewrite::default());
        };
        let engine = self.engine.clone();
        self.keys.clear();
        info.keys(&req.args, &mut self.keys);
        engine.check_reserved(req, &self.keys)?;
        let (multi, watching) = self
            .pinned
            .as_ref()
            .map_or((false, false), |p| (p.multi, p.watching()));
        if multi || blocking || watching {
            if !info.is_write() {
                // A listing inside the transaction answers within the EXEC array.
                let data = engine.hidden_listing(req, &info);
                return Ok(Rewrite {
                    data,
                    ..Rewrite::default()
                });
            }
            let inval = engine.invalidations(req, &info, &self.keys);
            engine.stats.invalidations(inval.published);
            return Ok(Rewrite {
                invalidations: inval.commands,
                ..Rewrite::default()
            });
        }
        // As on a shared connection, leases included: a tracking client or a RESP3
        // subscriber reading and filling `cache` keys follows the same rules.
        let cache = Some((&mut self.leases, self.id, self.proto));
        let plan = engine.plan(req, Some(&info), &mut self.keys, cache)?;
        Ok(Rewrite {
            data: Some(plan.data),
            extra_frames: plan.frames.saturating_sub(1),
            translate: plan.translate,
            invalidations: Vec::new(),
        })
    }

    fn await_reply(&mut self, route: Route, post: Post) {
        let discard = self.take_discard();
        self.next_seq += 1;
        self.slots.push_back(Slot::Await {
            seq: self.next_seq,
            discard,
            post,
            translate: Translate::None,
            parked: false,
            sent: None,
            count: 1,
            tallies: self.tally.take().map_or(Tallies::None, Tallies::One),
            sent_at: match self.current.take() {
                Some(info) if !self.slow.is_zero() => Some((Instant::now(), info, self.keys.len())),
                _ => None,
            },
        });
        self.inflight += 1;
        self.outstanding += 1;
        self.route = Some(route);
    }

    /// `AUTH`, checked against the upstream on a connection of its own: the reply is
    /// the upstream's own, and no shared connection changes user.
    fn auth(&mut self, req: Request, post: Post) -> Option<Request> {
        if self.inflight > 0 && self.route != Some(Route::Aux) {
            return Some(req);
        }
        let mut settings = self.ctx.upstream.settings().clone();
        settings.username = None;
        settings.password = None;
        settings.preload = Vec::new();
        let tx = self.reply_tx.clone();
        let args = req.args.clone();
        tokio::spawn(async move {
            let result = async {
                let mut conn = connect::connect(&settings, Identity { db: 0, proto: 2 }).await?;
                // `connect` is bounded by `connect_timeout`; the check by
                // `command_timeout`, as any command is.
                let limit = settings.command_timeout;
                let mut replies =
                    tokio::time::timeout(limit, connect::roundtrip(&mut conn, &[args]))
                        .await
                        .map_err(|_| UpstreamError::Timeout(limit))??;
                replies.pop().ok_or(UpstreamError::Lost)
            }
            .await;
            let _ = tx.send(result);
        });
        self.await_reply(Route::Aux, post);
        None
    }

    async fn hello(&mut self, req: Request) -> Option<Request> {
        let hello = match local::parse_hello(&req.args) {
            Ok(h) => h,
            Err(e) => {
                self.reply(e);
                return None;
            }
        };
        let proto = hello.proto.unwrap_or(self.proto);
        if self.auth.enabled() {
            if let Some((user, pass)) = &hello.auth {
                if !self.auth.check(Some(user), pass) {
                    self.auth_failed();
                    self.reply(Bytes::from_static(crate::auth::WRONGPASS));
                    return None;
                }
                self.authed = true;
            }
            if !self.authed {
                self.reply(Bytes::from_static(crate::auth::NOAUTH_HELLO));
                return None;
            }
        } else if let Some((user, pass)) = hello.auth {
            let auth = Request::from_args([&b"AUTH"[..], &user, &pass]);
            return self
                .auth(
                    auth,
                    Post::Hello {
                        proto,
                        setname: hello.setname,
                    },
                )
                .map(|_| req);
        }
        if proto != self.proto && self.pinned.is_some() {
            // Replies still owed on the pinned connection may end its mode (a blocking
            // command's reply, `UNWATCH`, the last unsubscription), as Redis would
            // have before it runs this `HELLO`: decide once they are in.
            if self.inflight > 0 {
                return Some(req);
            }
            // The pinned connection speaks the old protocol; switching it mid-mode
            // would change its framing under the client's feet.
            self.reply(reply::error(
                "ERR cachet: HELLO cannot change the protocol inside a transaction, subscription or monitor session",
            ));
            return None;
        }
        self.apply_hello(proto, hello.setname);
        None
    }

    fn apply_hello(&mut self, proto: u8, setname: Option<Bytes>) {
        self.proto = proto;
        if let Some(name) = setname {
            self.name = (!name.is_empty()).then_some(name);
        }
        let r = local::hello_reply(&self.ctx.server.load(), proto, self.id);
        self.reply(r);
    }

    /// `RESET`: back to a fresh connection's state.
    fn reset(&mut self) {
        // Redis logs a reset client in as `default` only when that user needs no
        // password, which is never the case while cachet authenticates clients.
        self.authed = !self.auth.enabled();
        self.pinned = None;
        self.db = self.ctx.default_db;
        self.proto = 2;
        self.name = None;
        self.reply_mode = ReplyMode::On;
    }

    /// A refused login: counted, and logged without what was tried.
    fn auth_failed(&self) {
        self.ctx
            .metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(session = self.id, peer = %self.peer, "client login refused");
    }

    /// The command policy and credentials a reload may have swapped.
    fn load_access(&mut self) {
        self.policy = self.ctx.policy.load_full();
        self.auth = self.ctx.auth.load_full();
        // With `[auth]` removed nobody needs a login any more (Redis: a `default` user
        // without a password serves clients that never authenticated).
        if !self.auth.enabled() {
            self.authed = true;
        }
    }

    fn identity(&self) -> Identity {
        Identity {
            db: self.db,
            proto: self.proto,
        }
    }

    /// Whether the next reply is suppressed by `CLIENT REPLY`.
    fn take_discard(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    /// A reply of this session's own, subject to `CLIENT REPLY`.
    fn reply(&mut self, bytes: Bytes) {
        if let Some(t) = self.tally.take() {
            t.count(Outcome::of_reply(&bytes));
        }
        if !self.take_discard() {
            self.queue(bytes);
        }
    }

    /// Queues bytes for the client behind whatever is owed before them.
    fn queue(&mut self, bytes: Bytes) {
        if let Some(t) = self.tally.take() {
            t.count(Outcome::of_reply(&bytes));
        }
        if self.slots.is_empty() {
            self.out.extend_from_slice(&bytes);
        } else {
            self.slots.push_back(Slot::Ready(bytes));
        }
    }

    /// An upstream reply (shared connection or credential check) for the oldest slot.
    fn on_upstream(&mut self, r: Reply) {
        match r {
            Ok(b) => self.deliver(b, false),
            Err(e) => self.deliver(e.reply(), true),
        }
    }

    /// Gives `bytes` (a complete reply) to the oldest slot waiting for an upstream
    /// reply, then writes out every reply now ready at the front.
    fn deliver(&mut self, bytes: Bytes, is_error: bool) {
        let Some(idx) = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Await { parked: false, .. }))
        else {
            tracing::error!(session = self.id, "reply without a request; dropped");
            return;
        };
        self.complete(idx, bytes, is_error);
    }

    /// A parked slot's reply arrived.
    fn on_resolved(&mut self, seq: u64, bytes: Bytes, finish: bool) {
        let Some(idx) = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Await { seq: q, .. } if *q == seq))
        else {
            return;
        };
        if finish {
            self.complete(idx, bytes, false);
        } else {
            self.settle(idx, bytes, Post::Nothing, false);
        }
    }

    /// Finishes slot `idx` with its upstream reply: translation, lease bookkeeping, or
    /// parking it (coalescing, `NOSCRIPT` recovery).
    fn complete(&mut self, idx: usize, bytes: Bytes, is_error: bool) {
        let Some(Slot::Await {
            seq,
            discard,
            post,
            translate,
            parked,
            sent,
            ..
        }) = self.slots.get_mut(idx)
        else {
            return;
        };
        let seq = *seq;
        let _ = discard;
        if is_error {
            let post = std::mem::replace(post, Post::Nothing);
            self.settle(idx, bytes, post, true);
            return;
        }
        if bytes.starts_with(b"-NOSCRIPT")
            && let Some(fallback) = sent.take().and_then(|s| self.engine.eval_fallback(&s))
        {
            *parked = true;
            self.engine
                .stats
                .noscript_recoveries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.spawn_retry(seq, fallback);
            return;
        }
        let t = std::mem::take(translate);
        let post = std::mem::replace(post, Post::Nothing);
        let bytes = match self.engine.finish(&t, bytes) {
            Finish::Reply(b) => b,
            Finish::Leased {
                reply,
                key,
                token,
                valid_for,
            } => {
                // An empty token records a miss within hold_off: no lease was granted,
                // and this connection's fill will be dropped.
                let granted = !token.is_empty();
                self.leases.hold(key.clone(), token, valid_for);
                if granted {
                    self.engine.lease_granted(key);
                }
                reply
            }
            Finish::LeasedMany {
                reply,
                keys,
                held_off,
                token,
            } => {
                let engine = self.engine.clone();
                for key in keys {
                    self.leases
                        .hold(key.clone(), token.clone(), engine.lease_ttl());
                    engine.lease_granted(key);
                }
                for key in held_off {
                    let hold_off = engine.hold_off_of(&key);
                    self.leases.hold(key, Bytes::new(), hold_off);
                }
                reply
            }
            Finish::Coalesce { key } => {
                if let Some(Slot::Await { parked, .. }) = self.slots.get_mut(idx) {
                    *parked = true;
                }
                self.spawn_coalesce(seq, key);
                return;
            }
        };
        self.settle(idx, bytes, post, false);
    }

    /// Slot `idx` has its final reply.
    fn settle(&mut self, idx: usize, bytes: Bytes, post: Post, is_error: bool) {
        if let Some(Slot::Await {
            sent_at: Some((at, info, keys)),
            count,
            ..
        }) = self.slots.get(idx)
        {
            let took = at.elapsed();
            if took >= self.slow {
                tracing::warn!(
                    session = self.id,
                    command = %info.name,
                    keys,
                    batch = *count,
                    duration_ms = took.as_secs_f64() * 1000.0,
                    "slow command"
                );
            }
        }
        let discard = matches!(self.slots.get(idx), Some(Slot::Await { discard: true, .. }));
        let count = match self.slots.get_mut(idx) {
            Some(Slot::Await { count, tallies, .. }) => {
                std::mem::take(tallies).count(&bytes, is_error);
                *count
            }
            _ => 1,
        };
        let size = (bytes.len() / count.max(1) as usize).max(1);
        self.reply_size = match self.reply_size {
            0 => size,
            avg => (avg * 7 + size) / 8,
        };
        // A batch that failed owes its client one error per command.
        let bytes = if is_error && count > 1 {
            let mut all = BytesMut::with_capacity(bytes.len() * count as usize);
            for _ in 0..count {
                all.extend_from_slice(&bytes);
            }
            all.freeze()
        } else {
            bytes
        };
        let bytes = match post {
            Post::Hello { proto, setname } if !is_error && bytes.starts_with(b"+OK") => {
                self.proto = proto;
                if let Some(name) = setname {
                    self.name = (!name.is_empty()).then_some(name);
                }
                local::hello_reply(&self.ctx.server.load(), proto, self.id)
            }
            _ => bytes,
        };
        if let Some(slot) = self.slots.get_mut(idx) {
            *slot = Slot::Ready(if discard { Bytes::new() } else { bytes });
            self.inflight -= 1;
            self.outstanding = self.outstanding.saturating_sub(count as usize);
        }
        self.last_active = Instant::now();
        while let Some(Slot::Ready(_)) = self.slots.front() {
            if let Some(Slot::Ready(b)) = self.slots.pop_front() {
                self.out.extend_from_slice(&b);
            }
        }
    }

    /// Waits (up to `coalesce_wait`) for another client's fill of `key`, polling the
    /// key, and resolves slot `seq` with the value or nil.
    fn spawn_coalesce(&mut self, seq: u64, key: Bytes) {
        // The command's own database and protocol: the session's may have changed
        // since (a pipelined SELECT or HELLO), but not its route while this is owed.
        let id = self.owed_identity();
        let conn = self.ctx.upstream.shared(id, self.id);
        let tx = self.resolve_tx.clone();
        let ctx = self.ctx.clone();
        let proto = id.proto;
        tokio::spawn(async move {
            let engine = ctx.engine.load_full();
            let wait = engine.coalesce_wait;
            let deadline = Instant::now() + wait;
            let step = (wait / 10).max(std::time::Duration::from_millis(2));
            let mut get = BytesMut::new();
            crate::resp::request::encode_command(&mut get, &[Bytes::from_static(b"GET"), key]);
            let get = get.freeze();
            loop {
                tokio::time::sleep_until((Instant::now() + step).min(deadline)).await;
                let (rtx, mut rrx) = mpsc::unbounded_channel();
                conn.send(Job {
                    data: get.clone(),
                    frames: 1,
                    reply: Some(rtx),
                    held: None,
                    on_fail: None,
                });
                let stats = &engine.stats;
                match rrx.recv().await {
                    Some(Ok(b)) if b.first() == Some(&b'$') && !b.starts_with(b"$-1") => {
                        stats
                            .coalesce_filled
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = tx.send((seq, b, false));
                        return;
                    }
                    Some(Ok(b)) if b.first() == Some(&b'-') => {
                        let _ = tx.send((seq, b, false));
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send((seq, e.reply(), false));
                        return;
                    }
                    _ => {}
                }
                if Instant::now() >= deadline {
                    stats
                        .coalesce_timed_out
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut nil = BytesMut::new();
                    reply::push_null(&mut nil, proto);
                    let _ = tx.send((seq, nil.freeze(), false));
                    return;
                }
            }
        });
    }

    /// The identity of the shared connection the outstanding replies come from.
    fn owed_identity(&self) -> Identity {
        match self.route {
            Some(Route::Shared(id)) => id,
            _ => self.identity(),
        }
    }

    /// Re-runs a script command with its body after `NOSCRIPT`.
    fn spawn_retry(&mut self, seq: u64, data: Bytes) {
        let conn = self.ctx.upstream.shared(self.owed_identity(), self.id);
        let tx = self.resolve_tx.clone();
        tokio::spawn(async move {
            let (rtx, mut rrx) = mpsc::unbounded_channel();
            conn.send(Job {
                data,
                frames: 1,
                reply: Some(rtx),
                held: None,
                on_fail: None,
            });
            let r = match rrx.recv().await {
                Some(Ok(b)) => (seq, b, true),
                Some(Err(e)) => (seq, e.reply(), false),
                None => (seq, UpstreamError::Lost.reply(), false),
            };
            let _ = tx.send(r);
        });
    }

    /// Frames arrived on the pinned connection.
    fn on_pinned_data(&mut self) {
        loop {
            let Some(p) = self.pinned.as_mut() else {
                return;
            };
            match p.next_frame() {
                Ok(Some(Incoming::Push(bytes))) => {
                    let prefix = self.engine.prefix();
                    if let Some(b) = crate::consistency::reserved::hide_in_push(bytes, prefix) {
                        self.out.extend_from_slice(&b);
                    }
                }
                Ok(Some(Incoming::Nothing)) => {}
                Ok(Some(Incoming::Reply(bytes))) => {
                    let effects = p.take_effects();
                    self.deliver(bytes, false);
                    for e in effects {
                        match e {
                            SessionEffect::Select(db) => self.db = db,
                            SessionEffect::Invalidate(commands) => self.invalidate_now(commands),
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.pinned_failed(e);
                    return;
                }
            }
        }
    }

    /// Sends invalidations nobody waits for on the shared connection (after a blocking
    /// write, which could not share an atomic unit with them).
    fn invalidate_now(&mut self, commands: Vec<Vec<Bytes>>) {
        if commands.is_empty() {
            return;
        }
        let mut data = BytesMut::new();
        for c in &commands {
            crate::resp::request::encode_command(&mut data, c);
        }
        let conn = self.ctx.upstream.shared(self.identity(), self.id);
        conn.send(Job {
            data: data.freeze(),
            frames: commands.len() as u32,
            reply: None,
            held: None,
            on_fail: None,
        });
    }

    /// The pinned connection broke or stalled: every reply it owed becomes an error. If
    /// it held server-side state (a transaction, subscriptions) the client's session
    /// is gone with it, so the client connection is closed after the errors, as if
    /// Redis itself had dropped it.
    fn pinned_failed(&mut self, err: UpstreamError) {
        let Some(p) = self.pinned.take() else { return };
        tracing::warn!(session = self.id, peer = %self.peer, error = %err, "pinned upstream connection failed");
        let stateful = p.stateful();
        drop(p);
        let reply = err.reply();
        while self
            .slots
            .iter()
            .any(|s| matches!(s, Slot::Await { parked: false, .. }))
        {
            self.deliver(reply.clone(), true);
        }
        if stateful {
            self.closing = true;
        }
    }

    /// The client hung up while blocked. Redis would drop it at once, cancelling the
    /// blocked command; left running upstream, the command would still pop an element
    /// (or a stream entry) for nobody. Closing the dedicated connection cancels it; the
    /// replies still owed have no reader.
    fn hang_up_blocked(&mut self) {
        self.pinned = None;
        self.batch = None;
        self.slots.clear();
        self.inflight = 0;
        self.outstanding = 0;
        self.stalled = None;
        self.route = None;
    }

    fn unpin(&mut self) {
        if let Some(p) = self.pinned.take() {
            let id = p.identity;
            if let Some(conn) = p.into_reusable() {
                self.ctx.upstream.unpin(id, conn);
            }
        }
        self.route = None;
    }
}

/// Why a command takes a dedicated connection, for the metrics.
fn pin_reason(kind: CommandKind, blocking: bool) -> PinReason {
    use CommandKind as K;
    match kind {
        _ if blocking => PinReason::Blocking,
        K::Multi => PinReason::Transaction,
        K::Watch => PinReason::Watch,
        K::Subscribe | K::PSubscribe | K::SSubscribe => PinReason::Subscribe,
        K::Monitor => PinReason::Monitor,
        K::ClientTracking => PinReason::Tracking,
        _ => PinReason::Other,
    }
}

async fn read_pinned(pinned: &mut Option<Pinned>) -> std::io::Result<usize> {
    match pinned {
        Some(p) => p.read().await,
        None => std::future::pending().await,
    }
}

/// Whether encoded command `data` calls a script by SHA (kept for `NOSCRIPT` recovery
/// when cachet rewrote the command into it).
fn is_script_call(data: &[u8]) -> bool {
    crate::resp::request::command_name(data) == Some(&b"EVALSHA"[..])
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
