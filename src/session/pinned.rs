//! A session's dedicated upstream connection, held while the client is in a stateful
//! mode that cannot share a connection: a transaction (`MULTI`, `WATCH`), the subscribe
//! family (RESP2 subscribe mode and RESP3 pushes), `MONITOR`, `CLIENT TRACKING`, and
//! blocking commands.
//!
//! Everything the session sends here is answered here, in order, so replies need no
//! matching beyond counting: each command expects a known number of reply frames, and
//! every other frame (a published message, a tracking invalidation, a monitor line) is
//! an out-of-band push passed straight to the client. The state kept here is what tells
//! the session when the connection holds no more server-side state and can go back to
//! the idle pool.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::command::CommandKind;
use crate::resp::reply::{elements, int_value, push_header, string_value};
use crate::resp::request::encode_command;
use crate::resp::{Request, Scanner};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::upstream::{Identity, UpstreamError};

/// What a reply changes once it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnReply {
    Nothing,
    /// A command sent inside `MULTI`: counts it if the upstream queued it, remembering
    /// where a command that changes the connection's mode sits in the transaction.
    Queued(Option<Change>),
    /// A command sent inside `MULTI` followed by this many of cachet's own, whose places
    /// in the `EXEC` array are not the client's.
    QueuedWith(usize),
    /// `EXEC`: the transaction is over; apply the mode changes queued inside it that
    /// succeeded.
    Exec,
    /// `SELECT` outside a transaction: the session's database on success.
    Select(u32),
    /// `CLIENT TRACKING on|off` on success.
    Tracking(bool),
    /// `MONITOR` on success: from here on every frame is a monitor line.
    Monitor,
}

/// A command queued in a transaction that changes the connection's mode when `EXEC`
/// runs it (Redis queues all of these, and applies each only if its own reply in the
/// `EXEC` array says it succeeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Select(u32),
    /// The subscribe family: the confirmation in the `EXEC` array is applied as if it
    /// had come alone.
    Subscription(CommandKind),
    Tracking(bool),
    Monitor,
}

#[derive(Debug)]
struct Expect {
    frames: u32,
    blocking: bool,
    sent_at: Instant,
    on_reply: OnReply,
    /// Leading reply frames of cachet's own commands, not the client's.
    hidden: u32,
    /// Reply frames to collect for the client; the ones after them are cachet's own.
    keep: u32,
    /// Trailing `EXEC` array elements of cachet's own commands (its invalidations).
    trim_tail: usize,
    /// The reply frames so far (a command may produce several).
    collected: BytesMut,
    /// Invalidations to send once the reply is in (a blocking write).
    after: Vec<Vec<Bytes>>,
}

/// How cachet rewrites one command sent on the pinned connection (the engine's
/// `Queued`, as this connection sends it).
#[derive(Debug, Default)]
pub struct Rewrite {
    /// Sent instead of the client's bytes, when set.
    pub data: Option<Bytes>,
    /// Reply frames of `data` beyond the client's one (all collected for the client:
    /// the session settles them).
    pub extra_frames: u32,
    /// Inside a transaction: cachet's commands queued right after the client's.
    pub after: Vec<Vec<Bytes>>,
    /// Invalidation commands: queued for `EXEC` inside a transaction, appended after a
    /// write while `WATCH`ing, or sent after a blocking write's reply.
    pub invalidations: Vec<Vec<Bytes>>,
}

/// What the session must do with a frame read from the pinned connection.
#[derive(Debug)]
pub enum Incoming {
    /// Out-of-band: write to the client as it comes.
    Push(Bytes),
    /// The complete reply of the oldest outstanding command.
    Reply(Bytes),
    /// A frame that is part of a reply still being collected.
    Nothing,
}

/// A change to the session's own state caused by a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    Select(u32),
    /// Invalidations to send now (after a blocking write).
    Invalidate(Vec<Vec<Bytes>>),
}

#[derive(Debug)]
pub struct Pinned {
    /// How the upstream knows the connection (`CLIENT UNBLOCK`, `CLIENT TRACKING …
    /// REDIRECT` of other sessions).
    pub at: Option<crate::context::PinnedAt>,
    rd: ReadHalf,
    wr: WriteHalf,
    buf: BytesMut,
    scanner: Scanner,
    pub identity: Identity,
    expect: VecDeque<Expect>,
    /// Inside the client's `MULTI`: every command is queued upstream.
    pub multi: bool,
    watching: bool,
    tracking: bool,
    monitor: bool,
    /// Subscriptions as they will stand once everything sent has run: channels,
    /// patterns, shard channels. They predict how many confirmations an argument-less
    /// `UNSUBSCRIBE` produces.
    subs: [HashSet<Bytes>; 3],
    /// Subscription counts as the upstream last confirmed them (channels + patterns,
    /// shard channels): in RESP2, a connection with any is in subscribe mode.
    confirmed: [i64; 2],
    /// Commands the upstream answered `+QUEUED` in the current transaction: the index
    /// of the next one's reply in the `EXEC` array.
    queued: usize,
    /// Positions in the `EXEC` array of cachet's own commands queued after a client's.
    hidden_queued: Vec<usize>,
    /// Mode changes queued in the current transaction, with their index in the `EXEC`
    /// array. A `SELECT` that fails inside `EXEC` (an index out of range) leaves the
    /// database as it was, so each one's own reply decides.
    queued_changes: Vec<(usize, Change)>,
    /// The connection's state differs from a fresh one in ways not tracked here.
    dirty: bool,
    effects: Vec<SessionEffect>,
    /// Invalidations of the writes queued in the current transaction, sent just
    /// before its `EXEC`.
    queued_invalidations: Vec<Vec<Bytes>>,
    /// This session's place in the pinned-sessions gauge, released with the connection.
    pub gauge: Option<crate::metrics::PinGauge>,
}

const CONFIRMATIONS: [&[u8]; 6] = [
    b"subscribe",
    b"unsubscribe",
    b"psubscribe",
    b"punsubscribe",
    b"ssubscribe",
    b"sunsubscribe",
];

impl Pinned {
    /// A dedicated connection; `upstream_id` is its `CLIENT ID` where its address
    /// cannot tell it apart (a Unix socket).
    pub fn new(conn: Stream, identity: Identity, upstream_id: Option<u64>) -> Pinned {
        let at = match (conn.local_addr(), upstream_id) {
            (Some(addr), _) => Some(crate::context::PinnedAt::Addr(addr)),
            (None, id) => id.map(crate::context::PinnedAt::Id),
        };
        let (rd, wr) = conn.split();
        Pinned {
            at,
            rd,
            wr,
            buf: BytesMut::with_capacity(4096),
            scanner: Scanner::default(),
            identity,
            expect: VecDeque::new(),
            multi: false,
            watching: false,
            tracking: false,
            monitor: false,
            subs: Default::default(),
            confirmed: [0, 0],
            queued: 0,
            hidden_queued: Vec::new(),
            queued_changes: Vec::new(),
            dirty: false,
            effects: Vec::new(),
            queued_invalidations: Vec::new(),
            gauge: None,
        }
    }

    /// Sends one command and returns how many reply frames it will produce (0 in monitor
    /// mode, where nothing is a reply any more).
    pub async fn send(
        &mut self,
        req: &Request,
        kind: CommandKind,
        blocking: bool,
        rewrite: Rewrite,
    ) -> Result<u32, UpstreamError> {
        let was_multi = self.multi;
        let (frames, on_reply) = self.expectation(req, kind, rewrite.after.len());
        let mut expect = Expect {
            frames,
            blocking: blocking && !was_multi,
            sent_at: Instant::now(),
            on_reply,
            hidden: 0,
            keep: frames,
            trim_tail: 0,
            collected: BytesMut::new(),
            after: Vec::new(),
        };
        let mut out = BytesMut::new();
        if was_multi {
            match kind {
                CommandKind::Exec => {
                    // The transaction's invalidations run inside it, just before EXEC.
                    let inval = std::mem::take(&mut self.queued_invalidations);
                    for c in &inval {
                        encode_command(&mut out, c);
                    }
                    let n = inval.len() as u32;
                    expect.hidden = n;
                    expect.frames += n;
                    expect.keep = expect.frames;
                    expect.trim_tail = inval.len();
                }
                CommandKind::Discard => {
                    self.queued_invalidations.clear();
                    self.hidden_queued.clear();
                }
                _ => self.queued_invalidations.extend(rewrite.invalidations),
            }
            // A rewrite inside a transaction is one command queued in its place,
            // followed by cachet's own (whose `+QUEUED` are not the client's).
            out.extend_from_slice(rewrite.data.as_deref().unwrap_or(&req.raw));
            for c in &rewrite.after {
                encode_command(&mut out, c);
            }
            expect.frames += rewrite.after.len() as u32;
        } else if blocking {
            out.extend_from_slice(&req.raw);
            expect.after = rewrite.invalidations;
        } else if let Some(data) = rewrite.data {
            out.extend_from_slice(&data);
            expect.frames += rewrite.extra_frames;
            expect.keep = expect.frames;
        } else {
            out.extend_from_slice(&req.raw);
            // While WATCHing, a MULTI of cachet's own would end the client's watch: the
            // invalidation follows the write instead of wrapping it.
            for c in &rewrite.invalidations {
                encode_command(&mut out, c);
            }
            expect.frames += rewrite.invalidations.len() as u32;
        }
        self.wr
            .write_all_flushed(&out)
            .await
            .map_err(|e| UpstreamError::Io(e.to_string()))?;
        if frames == 0 {
            return Ok(0);
        }
        self.expect.push_back(expect);
        Ok(1)
    }

    /// Whether the client is `WATCH`ing keys outside a transaction.
    pub fn watching(&self) -> bool {
        self.watching && !self.multi
    }

    /// Inside the client's transaction: one `+QUEUED` (or an error) each, whatever the
    /// command; what the ones that change the connection's mode will change at `EXEC`.
    fn expect_queued(&mut self, args: &[Bytes], kind: CommandKind, after: usize) -> (u32, OnReply) {
        use CommandKind as K;
        match kind {
            K::Exec => {
                self.multi = false;
                self.watching = false;
                return (1, OnReply::Exec);
            }
            K::Discard => {
                self.multi = false;
                self.watching = false;
                return (1, OnReply::Nothing);
            }
            K::Select => {
                // Whatever its outcome, the connection may leave this transaction
                // in another database than its identity says: never reuse it.
                self.dirty = true;
                let db = args
                    .first()
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok());
                return (1, OnReply::Queued(db.map(Change::Select)));
            }
            K::Subscribe
            | K::PSubscribe
            | K::SSubscribe
            | K::Unsubscribe
            | K::PUnsubscribe
            | K::SUnsubscribe => {
                self.dirty = true;
                return (1, OnReply::Queued(Some(Change::Subscription(kind))));
            }
            K::ClientTracking => {
                self.dirty = true;
                let on = args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"on"));
                return (1, OnReply::Queued(Some(Change::Tracking(on))));
            }
            K::Monitor => {
                self.dirty = true;
                return (1, OnReply::Queued(Some(Change::Monitor)));
            }
            K::Hello | K::ClientSetName | K::ClientReply => {
                self.dirty = true;
            }
            _ => {}
        }
        if after > 0 {
            return (1, OnReply::QueuedWith(after));
        }
        (1, OnReply::Queued(None))
    }

    fn expectation(&mut self, req: &Request, kind: CommandKind, after: usize) -> (u32, OnReply) {
        use CommandKind as K;
        if self.monitor {
            return (0, OnReply::Nothing);
        }
        let args = req.args.get(1..).unwrap_or_default();
        if self.multi {
            return self.expect_queued(args, kind, after);
        }
        match kind {
            K::Multi => {
                self.multi = true;
                self.queued = 0;
                self.hidden_queued.clear();
                self.queued_changes.clear();
            }
            K::Watch => self.watching = true,
            // `EXEC` and `DISCARD` outside a transaction are errors that leave the
            // client's watches in place; only `UNWATCH` ends them here.
            K::Unwatch => self.watching = false,
            K::Select => {
                self.dirty = true;
                if let Some(db) = args
                    .first()
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
                {
                    return (1, OnReply::Select(db));
                }
            }
            K::ClientTracking => {
                self.dirty = true;
                let on = args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"on"));
                return (1, OnReply::Tracking(on));
            }
            K::Monitor => {
                self.dirty = true;
                return (1, OnReply::Monitor);
            }
            K::Hello | K::ClientSetName | K::ClientReply => self.dirty = true,
            K::Subscribe | K::PSubscribe | K::SSubscribe => {
                let set = self.set_of(kind);
                for a in args {
                    set.insert(a.clone());
                }
                return (args.len().max(1) as u32, OnReply::Nothing);
            }
            K::Unsubscribe | K::PUnsubscribe | K::SUnsubscribe => {
                let set = self.set_of(kind);
                let n = if args.is_empty() {
                    let n = set.len();
                    set.clear();
                    n
                } else {
                    for a in args {
                        set.remove(a);
                    }
                    args.len()
                };
                return (n.max(1) as u32, OnReply::Nothing);
            }
            _ => {}
        }
        (1, OnReply::Nothing)
    }

    fn set_of(&mut self, kind: CommandKind) -> &mut HashSet<Bytes> {
        use CommandKind as K;
        let [channels, patterns, shard] = &mut self.subs;
        match kind {
            K::PSubscribe | K::PUnsubscribe => patterns,
            K::SSubscribe | K::SUnsubscribe => shard,
            _ => channels,
        }
    }

    /// Reads more bytes from the upstream.
    pub async fn read(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(16 * 1024);
        }
        self.rd.read_buf(&mut self.buf).await
    }

    /// The next complete frame, classified.
    pub fn next_frame(&mut self) -> Result<Option<Incoming>, UpstreamError> {
        let frame = match self.scanner.scan(&self.buf) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
        };
        let bytes = self.buf.split_to(frame.len).freeze();
        if frame.kind == b'-' && bytes.starts_with(b"-READONLY") {
            // The address reaches a replica now (a failover): the connection is not
            // given back to the idle pool, so the next session connects afresh.
            self.dirty = true;
        }
        if self.monitor {
            return Ok(Some(Incoming::Push(bytes)));
        }
        let confirmation = self.confirmation(&bytes, frame.kind);
        let is_reply = match frame.kind {
            b'>' => confirmation,
            b'*' if self.identity.proto == 2 && self.in_subscribe_mode() => {
                confirmation || !is_message(&bytes)
            }
            _ => true,
        };
        if !is_reply {
            return Ok(Some(Incoming::Push(bytes)));
        }
        let Some(front) = self.expect.front_mut() else {
            // A reply nobody asked for: the connection is out of step; treat as broken.
            return Err(UpstreamError::Protocol("unexpected reply".into()));
        };
        front.frames = front.frames.saturating_sub(1);
        if front.hidden > 0 {
            front.hidden -= 1;
        } else if front.keep > 0 {
            front.keep -= 1;
            front.collected.extend_from_slice(&bytes);
        }
        if front.frames > 0 {
            return Ok(Some(Incoming::Nothing));
        }
        let Some(done) = self.expect.pop_front() else {
            return Ok(Some(Incoming::Nothing));
        };
        let mut reply = done.collected.freeze();
        // Mode changes queued in a transaction are found by their place in the whole
        // `EXEC` array: applied before cachet's own elements are taken out.
        self.apply(done.on_reply, &reply);
        if done.on_reply == OnReply::Exec {
            // Every `+QUEUED` before this reply has been read: the places of cachet's
            // own commands in the array are known.
            let mut positions = std::mem::take(&mut self.hidden_queued);
            if let Some(len) = elements(&reply).map(|el| el.len()) {
                positions.extend(len.saturating_sub(done.trim_tail)..len);
            }
            if !positions.is_empty() {
                reply = trim_exec(reply, &positions);
            }
        }
        if !done.after.is_empty() {
            self.effects.push(SessionEffect::Invalidate(done.after));
        }
        Ok(Some(Incoming::Reply(reply)))
    }

    /// Whether `frame` confirms a (un)subscription; records the confirmed count if so.
    fn confirmation(&mut self, frame: &[u8], kind: u8) -> bool {
        if kind != b'>' && kind != b'*' {
            return false;
        }
        let Some(el) = elements(frame) else {
            return false;
        };
        let (Some(name), Some(count)) = (
            el.first().and_then(|e| string_value(e)),
            el.get(2).and_then(|e| int_value(e)),
        ) else {
            return false;
        };
        let Some(i) = CONFIRMATIONS
            .iter()
            .position(|c| name.eq_ignore_ascii_case(c))
        else {
            return false;
        };
        if el.len() != 3 {
            return false;
        }
        let slot = if i >= 4 { 1 } else { 0 };
        if let Some(c) = self.confirmed.get_mut(slot) {
            *c = count;
        }
        true
    }

    /// A subscribe-family confirmation that arrived inside an `EXEC` array: records the
    /// confirmed count and the channel, as `expectation` would have at send time.
    fn apply_subscription(&mut self, kind: CommandKind, frame: &[u8]) {
        let Some(&tag) = frame.first() else { return };
        if !self.confirmation(frame, tag) {
            return;
        }
        let Some(channel) = elements(frame).and_then(|el| {
            el.get(1)
                .and_then(|c| string_value(c))
                .map(Bytes::copy_from_slice)
        }) else {
            return;
        };
        use CommandKind as K;
        let subscribe = matches!(kind, K::Subscribe | K::PSubscribe | K::SSubscribe);
        let set = self.set_of(kind);
        if subscribe {
            set.insert(channel);
        } else {
            set.remove(&channel);
        }
    }

    /// Whether a RESP2 connection will be in subscribe mode once everything sent has
    /// run (predicted, so that a pipeline is judged in order).
    pub fn resp2_subscribed(&self) -> bool {
        self.identity.proto == 2 && self.subs.iter().any(|s| !s.is_empty())
    }

    fn in_subscribe_mode(&self) -> bool {
        self.confirmed.iter().any(|&c| c > 0)
    }

    fn apply(&mut self, on_reply: OnReply, reply: &[u8]) {
        let ok = reply.starts_with(b"+OK");
        match on_reply {
            OnReply::Nothing => {}
            OnReply::Queued(change) => {
                if reply.starts_with(b"+QUEUED") {
                    if let Some(change) = change {
                        self.queued_changes.push((self.queued, change));
                    }
                    self.queued += 1;
                }
            }
            OnReply::QueuedWith(after) => {
                if reply.starts_with(b"+QUEUED") {
                    self.queued += 1;
                    self.hidden_queued.extend(self.queued..self.queued + after);
                    self.queued += after;
                }
            }
            OnReply::Exec => {
                let changes = std::mem::take(&mut self.queued_changes);
                self.queued = 0;
                // An aborted transaction (`*-1`, `-EXECABORT`) ran nothing.
                let ran = reply.first() == Some(&b'*') && !reply.starts_with(b"*-1");
                if !ran || changes.is_empty() {
                    return;
                }
                let results = elements(reply).unwrap_or_default();
                let mut db = None;
                for (i, change) in changes {
                    let Some(result) = results.get(i) else {
                        continue;
                    };
                    let ok = result.starts_with(b"+OK");
                    match change {
                        Change::Select(n) if ok => db = Some(n),
                        Change::Tracking(on) if ok => self.tracking = on,
                        Change::Monitor if ok => self.monitor = true,
                        Change::Subscription(kind) => self.apply_subscription(kind, result),
                        _ => {}
                    }
                }
                if let Some(db) = db {
                    self.effects.push(SessionEffect::Select(db));
                }
            }
            OnReply::Select(db) => {
                if ok {
                    self.effects.push(SessionEffect::Select(db));
                }
            }
            OnReply::Tracking(on) => {
                if ok {
                    self.tracking = on;
                }
            }
            OnReply::Monitor => {
                if ok {
                    self.monitor = true;
                }
            }
        }
    }

    /// Session state changes produced by replies since the last call.
    pub fn take_effects(&mut self) -> Vec<SessionEffect> {
        std::mem::take(&mut self.effects)
    }

    /// When the oldest outstanding non-blocking command is overdue.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let front = self.expect.front()?;
        if front.blocking || self.monitor {
            return None;
        }
        Some(front.sent_at + timeout)
    }

    /// Whether the connection holds server-side state the client relies on (losing
    /// the connection then means the client's session is broken).
    pub fn stateful(&self) -> bool {
        self.multi
            || self.watching
            || self.tracking
            || self.monitor
            || self.subs.iter().any(|s| !s.is_empty())
            || self.in_subscribe_mode()
    }

    /// Whether a blocking command is outstanding outside a transaction.
    pub fn blocked(&self) -> bool {
        self.expect.iter().any(|e| e.blocking)
    }

    /// Whether a blocking command is outstanding (it may wait indefinitely).
    pub fn waiting_long(&self) -> bool {
        self.monitor || self.expect.iter().any(|e| e.blocking) || self.stateful()
    }

    /// Whether the client is a subscriber or monitor, or blocked: Redis's `timeout`
    /// does not apply to those, and neither does cachet's `idle_timeout`.
    pub fn exempt_from_idle_timeout(&self) -> bool {
        self.monitor
            || self.expect.iter().any(|e| e.blocking)
            || self.subs.iter().any(|s| !s.is_empty())
            || self.in_subscribe_mode()
            || self.tracking
    }

    /// Nothing outstanding and no state: the session can go back to shared connections.
    pub fn done(&self) -> bool {
        self.expect.is_empty() && !self.stateful()
    }

    /// The connection, if it is as clean as a freshly set-up one.
    pub fn into_reusable(self) -> Option<Stream> {
        if self.dirty || !self.done() || !self.buf.is_empty() {
            return None;
        }
        self.rd.unsplit(self.wr)
    }
}

/// Drops the elements of an `EXEC` array at `positions` (the replies of cachet's own
/// commands); anything else (nil for a failed `WATCH`, `EXECABORT`) is the client's.
fn trim_exec(reply: Bytes, positions: &[usize]) -> Bytes {
    let Some(el) = elements(&reply) else {
        return reply;
    };
    if reply.first() != Some(&b'*') || positions.iter().any(|&p| p >= el.len()) {
        return reply;
    }
    let keep = el.len() - positions.len();
    let mut out = BytesMut::with_capacity(reply.len());
    push_header(&mut out, b'*', keep as i64);
    for (i, e) in el.iter().enumerate() {
        if !positions.contains(&i) {
            out.extend_from_slice(e);
        }
    }
    out.freeze()
}

fn is_message(frame: &[u8]) -> bool {
    elements(frame)
        .and_then(|el| el.first().and_then(|e| string_value(e)).map(<[u8]>::to_vec))
        .is_some_and(|n| {
            n.eq_ignore_ascii_case(b"message")
                || n.eq_ignore_ascii_case(b"pmessage")
                || n.eq_ignore_ascii_case(b"smessage")
        })
}
