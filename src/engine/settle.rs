//! What a reply becomes: the client's reply, or one more request whose reply settles
//! the command instead (a miss to record after a plain read, a wait for another
//! client's fill, a script re-sent with its body after `NOSCRIPT`). Pure: it takes the
//! reply and the time, and returns values; the session sends what it is told.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::reads::ReadState;
use super::stores::StoreReply;
use super::{Engine, Translate};
use crate::resp::request::encode_command;

/// How a command's reply becomes the client's.
#[derive(Debug, Default)]
pub enum Settle {
    /// The reply is the client's.
    #[default]
    Forward,
    /// A rewritten command: the reply is translated back (`translate.rs`).
    Translate(Translate),
    /// A `GET` of a `cache` key (`reads.rs`): the key, the client's protocol and the
    /// key's rule.
    Get(Bytes, u8, super::RuleOf),
    /// A `GET` that missed, or an `MGET`, of `cache` keys (`reads.rs`).
    Read(Box<ReadState>),
    /// A `SET` or one of its relatives judged by a script (`stores.rs`).
    Store(Box<StoreReply>),
}

/// The outcome of settling one reply.
#[derive(Debug)]
pub enum Settled {
    /// The client's reply.
    Reply(Bytes),
    /// Not yet: send this, and settle its reply in turn.
    Again(FollowUp),
}

/// A request cachet sends on a command's behalf before the client is answered.
#[derive(Debug)]
pub struct FollowUp {
    pub data: Bytes,
    pub frames: u32,
    pub settle: Settle,
    /// Sent after this long.
    pub delay: Duration,
    /// `data` calls one of cachet's scripts by SHA.
    pub script: bool,
    /// The command waits for other clients (a fill, a tombstone): nothing the client
    /// sends later may go upstream before it is answered.
    pub holds_later: bool,
    /// Runs as cachet's own upstream user (recording a miss is cachet's work; the
    /// client's read already passed its ACL), not as the client's.
    pub own: bool,
}

/// What settling may take into account besides the reply.
#[derive(Debug, Clone, Copy)]
pub struct SettleContext<'a> {
    pub now: Instant,
    /// Nothing the client sent after this command has gone upstream yet, so the
    /// command may wait (for another client's fill) without reordering the client's
    /// own pipeline.
    pub may_wait: bool,
    /// The bytes sent, when they called one of cachet's scripts by SHA.
    pub sent: Option<&'a Bytes>,
}

impl Engine {
    /// Turns the reply of a planned command (or of a follow-up) into the client's reply
    /// or the next request.
    pub fn settle(&self, settle: Settle, reply: Bytes, cx: SettleContext<'_>) -> Settled {
        if reply.starts_with(b"-NOSCRIPT")
            && let Some(again) = cx.sent.and_then(|s| self.eval_fallback(s))
        {
            self.stats
                .noscript_recoveries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A miss's record is cachet's own; a store runs as the client.
            let own = matches!(settle, Settle::Read(_) | Settle::Get(..));
            return Settled::Again(FollowUp {
                data: again,
                frames: 1,
                settle,
                delay: Duration::ZERO,
                script: false,
                holds_later: false,
                own,
            });
        }
        match settle {
            Settle::Forward => Settled::Reply(reply),
            Settle::Translate(t) => Settled::Reply(t.apply(reply)),
            Settle::Get(key, proto, rule) => self.settle_get(key, proto, rule, reply, cx),
            Settle::Read(state) => self.settle_read(*state, reply, cx),
            Settle::Store(s) => self.settle_store(&s, reply),
        }
    }

    /// The same script call with the script's body (`EVAL`), for `NOSCRIPT` recovery;
    /// `None` unless `data` is an `EVALSHA` of one of cachet's scripts.
    pub fn eval_fallback(&self, data: &Bytes) -> Option<Bytes> {
        let args = crate::resp::Decoder::new(crate::resp::Limits::default())
            .decode(&mut BytesMut::from(&data[..]))
            .ok()??
            .args;
        if !args.first()?.eq_ignore_ascii_case(b"EVALSHA") {
            return None;
        }
        let script = self.scripts.by_sha(args.get(1)?)?;
        let mut eval = vec![Bytes::from_static(b"EVAL"), script.body.clone()];
        eval.extend(args.into_iter().skip(2));
        let mut out = BytesMut::new();
        encode_command(&mut out, &eval);
        Some(out.freeze())
    }
}

/// `part` (a sub-slice of `whole`) as a `Bytes` sharing `whole`'s buffer.
pub(crate) fn slice_of(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    whole.slice(start..start + part.len())
}

/// A null in the client's protocol.
pub(crate) fn null(proto: u8) -> Bytes {
    Bytes::from_static(if proto >= 3 { b"_\r\n" } else { b"$-1\r\n" })
}

/// Whether a reply frame is a null (RESP2 `$-1`/`*-1`, RESP3 `_`, or a Lua `false`
/// that reached a RESP3 client as `#f`).
pub(crate) fn is_null(frame: &[u8]) -> bool {
    frame.starts_with(b"$-1\r\n")
        || frame.starts_with(b"*-1\r\n")
        || frame.starts_with(b"_\r\n")
        || frame.starts_with(b"#f\r\n")
}
