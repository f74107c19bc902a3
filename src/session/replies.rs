//! The session's reply queue: one slot per command in the order the client sent them,
//! filled as replies arrive (from a shared connection, the dedicated one, a follow-up
//! request, or the session itself) and written out from the front as soon as the front
//! is ready. What a reply becomes is the engine's decision (`Engine::settle`); this
//! only keeps the order and the counts.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::Session;
use crate::engine::settle::SettleContext;
use crate::engine::{Settle, Settled};
use crate::metrics::{CommandTally, Outcome};
use crate::resp::Scanner;
use crate::upstream::Reply;

/// Batch replies up to this size are checked for errors with two byte searches; larger
/// ones are scanned frame by frame, which skips over bulk payloads.
const FAST_TALLY_BYTES: usize = 4096;

/// A reply still owed to the client, in request order.
#[derive(Debug)]
pub(super) enum Slot {
    /// Known now, but behind an upstream reply.
    Ready(Bytes),
    /// The next `parts` slots answer one client command split by slot (a Redis
    /// Cluster's `MGET` across slots, `cluster.rs`): written as one reply once all are
    /// ready.
    Merge(Box<super::cluster::Split>),
    /// Coming from upstream; not written if `discard`.
    Await {
        /// Identifies the slot to replies that come back out of order (`parked`).
        seq: u64,
        discard: bool,
        post: Post,
        settle: Settle,
        /// Waiting for a follow-up request's reply rather than the next upstream
        /// reply (a miss being recorded or waited on, a script re-sent after
        /// `NOSCRIPT`). Later replies go to later slots meanwhile.
        parked: bool,
        /// The bytes sent, when they call one of cachet's scripts by SHA.
        sent: Option<Bytes>,
        /// Client commands this slot answers: more than one for a batch of plain
        /// commands sent upstream as one job (their replies are simply concatenated).
        count: u32,
        /// When it was sent, and what (for the slow-command log; only when it is on).
        sent_at: Option<(Instant, Arc<crate::command::CommandInfo>, usize)>,
        /// The counters of the commands this slot answers, counted when it settles.
        tallies: Tallies,
        /// In front of a Redis Cluster: what to send again if the reply says the
        /// key's slot moved (`cluster.rs`).
        resend: Option<Box<super::cluster::Resend>>,
    },
}

/// Session state to update when an awaited reply arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Post {
    Nothing,
    /// `AUTH` verified upstream: on success, run as that user.
    Login(Box<super::login::Credentials>),
    /// An empty reply means the upstream closed the connection (`SHUTDOWN`): close
    /// the client's too, without a reply.
    CloseIfEmpty,
    /// A cluster's `SCAN` on the `index`th of `nodes` primaries: the node's cursor
    /// becomes the client's (`cluster.rs`).
    ScanCursor {
        index: usize,
        nodes: usize,
    },
    /// `HELLO … AUTH` verified upstream: on success, run as that user, switch
    /// protocol, set the name and answer with the `HELLO` reply instead.
    Hello {
        proto: u8,
        setname: Option<Bytes>,
        login: Box<super::login::Credentials>,
    },
}

/// The counters of the commands a slot answers (usually one; a batch has several),
/// consecutive commands of one counter kept as one entry with their number: a
/// pipeline of `GET`s is one entry however long it is.
#[derive(Debug, Default)]
pub(super) enum Tallies {
    #[default]
    None,
    One(Arc<CommandTally>),
    Many(Vec<(Arc<CommandTally>, u32)>),
}

impl Tallies {
    pub(super) fn push(&mut self, t: Arc<CommandTally>) {
        match self {
            Tallies::None => *self = Tallies::One(t),
            Tallies::One(first) => {
                let mut runs = Vec::with_capacity(4);
                if Arc::ptr_eq(first, &t) {
                    runs.push((t, 2));
                } else {
                    runs.push((first.clone(), 1));
                    runs.push((t, 1));
                }
                *self = Tallies::Many(runs);
            }
            Tallies::Many(runs) => match runs.last_mut() {
                Some((last, n)) if Arc::ptr_eq(last, &t) => *n += 1,
                _ => runs.push((t, 1)),
            },
        }
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
            Tallies::Many(runs)
                if !is_error
                    && bytes.len() <= FAST_TALLY_BYTES
                    && !matches!(bytes.first(), Some(b'-' | b'!'))
                    && memchr::memmem::find(bytes, b"\r\n-").is_none()
                    && memchr::memmem::find(bytes, b"\r\n!").is_none() =>
            {
                for (t, n) in runs {
                    t.count_many(Outcome::Ok, u64::from(n));
                }
            }
            Tallies::Many(runs) => {
                let mut rest = bytes;
                for (t, n) in runs {
                    for _ in 0..n {
                        let outcome = if is_error {
                            Outcome::Error
                        } else {
                            match Scanner::default().scan(rest) {
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
}

impl Session {
    /// Appends a slot for a command just sent.
    pub(super) fn await_reply(&mut self, settle: Settle, sent: Option<Bytes>, post: Post) {
        let discard = !self.handling_part && self.take_discard();
        self.next_seq += 1;
        self.slots.push_back(Slot::Await {
            seq: self.next_seq,
            discard,
            post,
            settle,
            parked: false,
            sent,
            count: 1,
            resend: None,
            tallies: self.tally.take().map_or(Tallies::None, Tallies::One),
            sent_at: match self.current.take() {
                Some(info) if !self.slow.is_zero() => Some((Instant::now(), info, self.keys.len())),
                _ => None,
            },
        });
        self.inflight += 1;
        self.outstanding += 1;
    }

    /// An upstream reply (shared connection or credential check) for the oldest slot.
    pub(super) fn on_upstream(&mut self, r: Reply) {
        match r {
            Ok(b) => self.deliver(b, false),
            Err(e) => self.deliver(e.reply(), true),
        }
    }

    /// Gives `bytes` (a complete reply) to the oldest slot waiting for an upstream
    /// reply, then writes out every reply now ready at the front.
    pub(super) fn deliver(&mut self, bytes: Bytes, is_error: bool) {
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

    /// A follow-up request's reply for the parked slot `seq`.
    pub(super) fn on_resolved(&mut self, seq: u64, reply: Reply) {
        self.follow_ups = self.follow_ups.saturating_sub(1);
        let Some(idx) = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Await { seq: q, .. } if *q == seq))
        else {
            return;
        };
        if self.holding == Some(seq) {
            self.holding = None;
        }
        match reply {
            Ok(b) => self.complete(idx, b, false),
            Err(e) => self.complete(idx, e.reply(), true),
        }
    }

    /// Settles slot `idx` with a reply: the engine says what the client gets, or what
    /// to send next on its behalf.
    pub(super) fn complete(&mut self, idx: usize, bytes: Bytes, is_error: bool) {
        let last = idx + 1 == self.slots.len() && self.stalled.is_none() && !self.hurried;
        let Some(Slot::Await { seq, post, .. }) = self.slots.get_mut(idx) else {
            return;
        };
        let seq = *seq;
        if is_error {
            let post = std::mem::replace(post, Post::Nothing);
            self.finish(idx, bytes, post, true);
            return;
        }
        if self.redirected(idx, &bytes) {
            return;
        }
        let Some(Slot::Await { settle, sent, .. }) = self.slots.get_mut(idx) else {
            return;
        };
        let settle = std::mem::take(settle);
        let sent_before = sent.take();
        let settle = match settle {
            // The common cases: the reply is the client's as it is, or as a rule
            // rewrites it (what `Engine::settle` makes of them when no script was sent,
            // without the clock it reads for the others).
            Settle::Forward | Settle::Translate(_) if sent_before.is_none() => {
                let bytes = match settle {
                    Settle::Translate(t) => t.apply(bytes),
                    _ => bytes,
                };
                let post = match self.slots.get_mut(idx) {
                    Some(Slot::Await { post, .. }) => std::mem::replace(post, Post::Nothing),
                    _ => Post::Nothing,
                };
                self.finish(idx, bytes, post, false);
                return;
            }
            other => other,
        };
        let cx = SettleContext {
            now: Instant::now(),
            may_wait: last,
            sent: sent_before.as_ref(),
        };
        match self.engine.settle(settle, bytes, cx) {
            Settled::Reply(b) => {
                let post = match self.slots.get_mut(idx) {
                    Some(Slot::Await { post, .. }) => std::mem::replace(post, Post::Nothing),
                    _ => Post::Nothing,
                };
                self.finish(idx, b, post, false);
            }
            Settled::Again(f) => {
                if let Some(Slot::Await {
                    settle,
                    parked,
                    sent,
                    ..
                }) = self.slots.get_mut(idx)
                {
                    *settle = f.settle;
                    *parked = true;
                    *sent = f.script.then(|| f.data.clone());
                }
                if f.holds_later && !self.hurried {
                    self.holding = Some(seq);
                } else {
                    self.holding = None;
                }
                if self.holding.is_none() {
                    self.hurried = false;
                }
                let node = self.slot_node(idx);
                if node.is_some() {
                    self.keep_follow_up_for_redirect(idx, &f.data, f.frames, f.own);
                }
                self.follow_up(seq, f.data, f.frames, f.delay, f.own, node);
            }
        }
    }

    /// Slot `idx` has its final reply.
    fn finish(&mut self, idx: usize, bytes: Bytes, post: Post, is_error: bool) {
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
                    duration_ms = took.as_millis() as u64,
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
            Post::ScanCursor { index, nodes } if !is_error => {
                super::cluster::client_cursor(bytes, index, nodes)
            }
            Post::CloseIfEmpty if bytes.is_empty() => {
                self.closing = true;
                bytes
            }
            Post::Login(credentials) if !is_error && bytes.starts_with(b"+OK") => {
                match self.logged_in_upstream(*credentials) {
                    Ok(()) => bytes,
                    Err(e) => e,
                }
            }
            Post::Hello {
                proto,
                setname,
                login,
            } if !is_error && bytes.starts_with(b"+OK") => match self.logged_in_upstream(*login) {
                Ok(()) => {
                    self.proto = proto;
                    if let Some(name) = setname {
                        self.name = (!name.is_empty()).then_some(name);
                    }
                    super::local::hello_reply(&self.ctx.server.load(), proto, self.id)
                }
                Err(e) => e,
            },
            _ => bytes,
        };
        if let Some(slot) = self.slots.get_mut(idx) {
            *slot = Slot::Ready(if discard { Bytes::new() } else { bytes });
            self.inflight -= 1;
            self.outstanding = self.outstanding.saturating_sub(count as usize);
        }
        self.last_active = Instant::now();
        self.write_ready();
    }

    /// Moves every reply ready at the front of the queue to the client's buffer.
    fn write_ready(&mut self) {
        loop {
            match self.slots.front() {
                Some(Slot::Ready(_)) => {
                    if let Some(Slot::Ready(b)) = self.slots.pop_front() {
                        self.out.extend_from_slice(&b);
                    }
                }
                Some(Slot::Merge(split)) => {
                    let n = split.parts;
                    let ready = self.slots.len() > n
                        && self
                            .slots
                            .iter()
                            .skip(1)
                            .take(n)
                            .all(|s| matches!(s, Slot::Ready(_)));
                    if !ready {
                        return;
                    }
                    let Some(Slot::Merge(split)) = self.slots.pop_front() else {
                        return;
                    };
                    let parts: Vec<Bytes> = self
                        .slots
                        .drain(..n)
                        .filter_map(|s| match s {
                            Slot::Ready(b) => Some(b),
                            _ => None,
                        })
                        .collect();
                    // The client asked for no reply, or every part was discarded.
                    if !split.discard && parts.iter().any(|p| !p.is_empty()) {
                        self.out.extend_from_slice(&split.merge(&parts));
                    }
                }
                _ => return,
            }
        }
    }

    /// Whether the next reply is suppressed by `CLIENT REPLY`.
    pub(super) fn take_discard(&mut self) -> bool {
        use super::local::ReplyMode;
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    /// A reply of this session's own, subject to `CLIENT REPLY` (a part of a split
    /// command always answers into its slot: the merge decides).
    pub(super) fn reply(&mut self, bytes: Bytes) {
        if let Some(t) = self.tally.take() {
            t.count(Outcome::of_reply(&bytes));
        }
        if self.handling_part {
            self.slots.push_back(Slot::Ready(bytes));
            self.write_ready();
        } else if !self.take_discard() {
            self.queue(bytes);
        }
    }

    /// Queues bytes for the client behind whatever is owed before them.
    pub(super) fn queue(&mut self, bytes: Bytes) {
        if let Some(t) = self.tally.take() {
            t.count(Outcome::of_reply(&bytes));
        }
        if self.slots.is_empty() {
            self.out.extend_from_slice(&bytes);
        } else {
            self.slots.push_back(Slot::Ready(bytes));
            // The last part of a split command may be answered here.
            if matches!(self.slots.front(), Some(Slot::Merge(_))) {
                self.write_ready();
            }
        }
    }
}
