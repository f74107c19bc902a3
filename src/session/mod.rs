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
mod cluster;
pub mod dispatch;
mod events;
mod handle;
mod local;
mod login;
mod pinned;
mod pinned_path;
mod replies;
mod shared;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::Auth;
use crate::command::{CommandTable, KeyRef};
use crate::context::Context;
use crate::engine::Engine;
use crate::metrics::{CommandTally, Outcome};
use crate::policy::Policy;
use crate::resp::{Decoder, Request};
use crate::stream::Stream;
use crate::upstream::{Identity, Login, Reply, ReplyRx, ReplyTx, SharedConn};
use events::{Event, Step};
use local::ReplyMode;
use pinned::Pinned;
use pinned_path::read_pinned;
use replies::Slot;

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
/// One command in this many of a pipeline has its handling time measured.
const HANDLING_SAMPLE: u32 = 16;
/// Buffers grown past this by a large value are released once empty.
const KEEP_CAPACITY: usize = 256 * 1024;
/// How long a closing session waits for its client to take the end of the stream (a
/// TLS close_notify) before dropping the connection.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a command goes upstream; a session has outstanding requests on one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Shared(Identity),
    Pinned,
    /// A one-off connection (credential checks).
    Aux,
}

pub struct Session {
    id: u64,
    /// What other sessions may ask of this one (`CLIENT UNBLOCK`, `CLIENT KILL ID`).
    control: Arc<crate::context::SessionControl>,
    /// The pinned connection's address as last told to `control`.
    pinned_at: Option<crate::context::PinnedAt>,
    ctx: Arc<Context>,
    peer: crate::stream::Peer,
    table: Arc<CommandTable>,
    /// The engine, command policy and credentials as of this batch of commands (a
    /// reload swaps them).
    engine: Arc<Engine>,
    policy: Arc<Policy>,
    auth: Arc<Auth>,
    /// Whether the client logged in (`AUTH`, `HELLO … AUTH`). Kept across reloads, as
    /// Redis keeps its clients' logins when passwords change. Without `[auth]` a client
    /// that has not logged in may still run commands if Redis serves connections
    /// without credentials (`logged_in`).
    authed: bool,
    /// The upstream user the client's commands run as: nobody (anonymous) until it
    /// logs in to Redis, or the one its `[auth]` user names.
    login: Arc<Login>,
    /// Counters of the command being handled, until its reply (or slot) takes them.
    tally: Option<Arc<CommandTally>>,
    /// The command being routed, for the slow-command log.
    current: Option<Arc<crate::command::CommandInfo>>,
    /// `[log] slow_command` (zero: off).
    slow: std::time::Duration,
    /// What the upstream told about itself that routing needs (its number of
    /// databases, whether it knows `CLIENT SETINFO`), as of this batch of commands.
    server: (u32, bool),
    /// Whether cachet's own upstream user has every right (`ServerInfo`), so that the
    /// writes a client pipelines as that user may share a transaction.
    own_unrestricted: bool,
    /// `context::swaps()` when the session last read the values a reload or a
    /// discovery may swap (its table, engine, policy, credentials, server facts and
    /// settings); `u64::MAX` before the first read.
    swaps_seen: u64,
    /// `[limits] client_output_buffer`: a subscriber (or monitor) owing more than this
    /// is disconnected, as Redis does with its pub/sub output buffer limit.
    output_limit: u64,
    db: u32,
    proto: u8,
    /// The upstream node the current command goes to (a Redis Cluster's primary
    /// serving its keys' slot; always 0 otherwise).
    node: u16,
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
    /// In front of a Redis Cluster: `MULTI` was answered but not yet sent; the first
    /// command of the transaction picks the node, then `MULTI` goes there before it
    /// (`cluster.rs`).
    deferred_multi: bool,
    /// The command being handled is a part of a split one: it gets a slot of its own,
    /// never a share of a batch (`Slot::Merge` counts slots).
    handling_part: bool,
    /// The stalled command is such a part.
    stalled_part: bool,
    /// The parts of a command split by slot (`cluster.rs`), handled before anything
    /// the client sent after it.
    parts: VecDeque<Request>,
    /// No more commands are read; the session ends once every reply is written.
    closing: bool,
    /// Scratch space for key extraction, reused across commands.
    keys: Vec<KeyRef>,
    /// A parked slot (by sequence number) waits for other clients (a fill, a
    /// tombstone): nothing the client sends later goes upstream before it is answered.
    holding: Option<u64>,
    /// The client sent more while a slot was holding: the wait ends at once (the wait
    /// would delay every later reply on this connection).
    hurry: Arc<tokio::sync::Notify>,
    hurried: bool,
    next_seq: u64,
    /// When the client last sent something or was last answered.
    last_active: Instant,
    /// Plain commands read in one go, not yet sent: one job (and one reply) for all of
    /// them instead of one each. The slot's sequence number, the bytes, the frames.
    batch: Option<(u64, BytesMut, u32)>,
    /// Writes read in one go, each planned as its own `MULTI … EXEC`, not yet sent: one
    /// transaction for all of them (`shared.rs`).
    exec_batch: Option<shared::ExecBatch>,
    /// In front of a cluster: where each command of the batch ends in its bytes, and
    /// its reply frames (so that one a redirect names can be sent again alone).
    batch_bounds: Vec<(usize, u32)>,
    /// Replies of follow-up requests for parked slots, by slot sequence number.
    resolve_tx: mpsc::UnboundedSender<(u64, Reply)>,
    /// Follow-up requests sent and not yet answered (their channel is watched only
    /// then: polling it costs every turn of the loop).
    follow_ups: usize,
}

/// Runs one client connection to its end.
pub async fn run(ctx: Arc<Context>, stream: Stream, peer: crate::stream::Peer) {
    if !stream.is_tls() {
        let _ = stream.set_nodelay(true);
    }
    let (reply_tx, reply_rx) = mpsc::unbounded_channel();
    let (resolve_tx, resolve_rx) = mpsc::unbounded_channel();
    let id = ctx.next_session_id();
    let control = Arc::new(crate::context::SessionControl::default());
    ctx.sessions.insert(id, control.clone());
    let _registered = Registered(ctx.clone(), id);
    let session = Session {
        control,
        pinned_at: None,
        id,
        table: ctx.table.load_full(),
        engine: ctx.engine.load_full(),
        policy: ctx.policy.load_full(),
        auth: ctx.auth.load_full(),
        authed: false,
        login: ctx.upstream.logins.anonymous().clone(),
        tally: None,
        current: None,
        server: (16, false),
        own_unrestricted: false,
        swaps_seen: u64::MAX,
        slow: std::time::Duration::ZERO,
        output_limit: u64::MAX,
        peer,
        db: ctx.default_db,
        proto: 2,
        node: 0,
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
        parts: VecDeque::new(),
        deferred_multi: false,
        handling_part: false,
        stalled_part: false,
        closing: false,
        keys: Vec::with_capacity(8),
        holding: None,
        hurry: Arc::new(tokio::sync::Notify::new()),
        hurried: false,
        next_seq: 0,
        last_active: Instant::now(),
        batch: None,
        exec_batch: None,
        batch_bounds: Vec::new(),
        resolve_tx,
        follow_ups: 0,
        ctx,
    };
    session.serve(stream, reply_rx, resolve_rx).await;
}

impl Session {
    async fn serve(
        mut self,
        stream: Stream,
        mut reply_rx: ReplyRx,
        mut resolve_rx: mpsc::UnboundedReceiver<(u64, Reply)>,
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
        let control = self.control.clone();
        let kill_signal = control.killed();
        tokio::pin!(kill_signal);
        if shutting_down {
            self.closing = true;
        }
        loop {
            if self.closing && self.slots.is_empty() && self.out.is_empty() {
                break;
            }
            let (want_read, deadline, wake) = self.arm();
            let pinned_at = self.pinned.as_ref().and_then(|p| p.at);
            if pinned_at != self.pinned_at {
                self.pinned_at = pinned_at;
                self.control.set_pinned(pinned_at);
            }
            let timeout = self.ctx.upstream.settings().command_timeout;
            // Only a client's own login can be revoked (cachet's and the anonymous one
            // cannot); watching costs a waiter registration per turn, so only then.
            let login = &self.login;
            let revocable = !login.is_anonymous() && login.id != self.ctx.upstream.logins.own().id;
            let event = {
                let rbuf = &mut self.rbuf;
                let out = &self.out;
                let pinned = &mut self.pinned;
                tokio::select! {
                    r = client_rd.read_buf(rbuf), if want_read => Event::ClientRead(r),
                    Some(r) = reply_rx.recv() => Event::Upstream(r),
                    Some((seq, reply)) = resolve_rx.recv(), if self.follow_ups > 0 => Event::Resolved(seq, reply),
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
                    _ = login.revoked(), if revocable => Event::Revoked,
                    _ = &mut kill_signal => Event::Killed,
                }
            };
            match self.on_event(event, &mut reply_rx, timeout).await {
                Step::Go => {}
                Step::ShuttingDown => shutting_down = true,
                Step::End => break,
            }
            // Replies that became ready go out now if the socket takes them, without
            // another turn of the loop (one wake-up per request instead of two).
            if let Err(e) = self.try_write(&client_wr) {
                tracing::debug!(session = self.id, peer = %self.peer, error = %e, "client write failed");
                break;
            }
            // That write may have taken what a client held back for not reading owed
            // (as `Event::Wrote` does): decoding goes on now, since with nothing left
            // to write and no reading armed no event would ever wake it.
            if self.paused && self.out.len() < MAX_OUT / 2 {
                self.resume().await;
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

    /// What the next wait waits for: whether to read the client (with room to read
    /// into), the dedicated connection's deadline, and the one timer for it and the
    /// idle deadline.
    fn arm(&mut self) -> (bool, Option<Instant>, Option<Instant>) {
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
        (want_read, deadline, wake)
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
        // What a reload or a discovery swapped since the last read (re-read only then:
        // six loads cost an unpipelined command about as much as its key lookup).
        let swaps = crate::context::swaps();
        if swaps != self.swaps_seen {
            self.swaps_seen = swaps;
            self.table = self.ctx.table.load_full();
            self.engine = self.ctx.engine.load_full();
            self.load_access();
            let server = self.ctx.server.load();
            self.server = (server.databases, server.has_setinfo);
            self.own_unrestricted = server.own_user_unrestricted;
            let config = self.ctx.config.load();
            self.slow = config.log.slow_command;
            self.output_limit = config.limits.client_output_buffer;
        }
        // Handling time is sampled: the first command of each read (the whole story
        // for a client that does not pipeline) and every 16th after it. Reading the
        // clock for every pipelined command cost more than the rest of its decoding.
        let mut n: u32 = 0;
        self.paused = false;
        while !self.closing && self.holding.is_none() {
            let started = n.is_multiple_of(HANDLING_SAMPLE).then(Instant::now);
            n = n.wrapping_add(1);
            // A stalled command comes back as it was routed (renamed already).
            let stalled = self.stalled.take();
            self.handling_part = match stalled {
                Some(_) => self.stalled_part,
                None => !self.parts.is_empty(),
            };
            let (req, fresh) = match stalled.or_else(|| self.parts.pop_front()) {
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
            // With nothing renamed, the command is named once, for the common case
            // and, failing that, for the full path.
            let stalled = if fresh && self.policy.renames_nothing() {
                let info = self.table.lookup(&req.args).cloned();
                match self.forward_plain_read(req, info) {
                    Ok(()) => None,
                    Err((req, info)) => self.handle_named(req, info).await,
                }
            } else {
                self.handle(req, fresh).await
            };
            match stalled {
                Some(req) => {
                    // Counted when it runs.
                    self.tally = None;
                    self.stalled = Some(req);
                    self.stalled_part = self.handling_part;
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
            if self.stalled.is_some()
                || !self.parts.is_empty()
                || !self.rbuf.is_empty()
                || self.paused
            {
                self.process().await;
            }
        }
    }

    /// The identity of the shared connection the outstanding replies come from.
    fn owed_identity(&self) -> Identity {
        match self.route {
            Some(Route::Shared(id)) => id,
            _ => self.identity(),
        }
    }

    fn identity(&self) -> Identity {
        Identity {
            db: self.db,
            proto: self.proto,
            login: self.login.id,
            node: self.node,
        }
    }

    /// Whether the client may run commands: it logged in, or it need not (no `[auth]`,
    /// and Redis serves connections that present no credentials). While cachet has not
    /// reached Redis to find out, the client's commands go on connections without
    /// credentials, and Redis refuses them itself if it must.
    fn logged_in(&self) -> bool {
        self.authed
            || (!self.auth.enabled()
                && self.ctx.upstream.logins.anonymous_access()
                    != crate::upstream::Anonymous::NeedsAuth)
    }
}

/// Removes a session from the registry when it ends, however it ends.
struct Registered(Arc<Context>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.sessions.remove(&self.1);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
