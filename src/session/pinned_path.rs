//! Commands on the session's dedicated connection: pinning one, sending through the
//! engine's plan for the situation (`Engine::plan_queued`), what its replies and pushes
//! do to the session, and what its failure or the client's hang-up does to it.

use bytes::Bytes;

use super::pinned::{Incoming, Pinned, Rewrite, SessionEffect};
use super::replies::{Post, Slot};
use super::{Route, Session};
use crate::command::CommandKind;
use crate::engine::{Settle, Situation, Translate};
use crate::metrics::PinReason;
use crate::resp::Request;
use crate::upstream::UpstreamError;

impl Session {
    /// Sends a command over the pinned connection, pinning one first if needed.
    pub(super) async fn send_pinned(
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
        if self.pinned.is_none() && !self.pin(&req, kind, blocking).await {
            return None;
        }
        let (rewrite, settle) = match self.pinned_rewrite(&req, blocking) {
            Ok(r) => r,
            // Reserved keys, a lock's expiry: inside a transaction the refusal aborts
            // it at EXEC, as Redis's own queueing errors do.
            Err(refusal) => return self.refuse(refusal).await,
        };
        let adds = rewrite.data.as_ref().is_some_and(|d| *d != req.raw)
            || !rewrite.after.is_empty()
            || !rewrite.invalidations.is_empty();
        if adds && let crate::upstream::Capability::Lacks(what) = self.capability().await {
            // The user may not run what cachet adds: inside a transaction the refusal
            // aborts it, as Redis's own queueing errors do.
            let err = self.engine.lacking_reply(&self.login.user, &what);
            return self.refuse(err).await;
        }
        self.route = Some(Route::Pinned);
        let p = self.pinned.as_mut()?;
        match p.send(&req, kind, blocking, rewrite).await {
            Ok(0) => {}
            Ok(_) => {
                self.await_reply(settle, None, Post::Nothing);
                if is_subscription(kind)
                    && let Some(Slot::Await { discard, .. }) = self.slots.back_mut()
                {
                    // A subscription's confirmations are pushes, not replies: `CLIENT
                    // REPLY OFF|SKIP` does not suppress them (Redis 7 delivers them).
                    *discard = false;
                }
            }
            Err(e) => {
                self.reply(e.reply());
                self.pinned_failed(e);
            }
        }
        None
    }

    /// Takes a dedicated connection for the session (before a cluster: on the node of
    /// the command's keys). `false` when the client was answered instead: a `MULTI`
    /// deferred until its first command, a refusal, or the upstream's error.
    async fn pin(&mut self, req: &Request, kind: CommandKind, blocking: bool) -> bool {
        if self.ctx.upstream.cluster.is_some() {
            if let Some(answered) = self.defer_multi(req, kind) {
                self.reply(answered);
                return false;
            }
            // A cluster: the node serving the command's keys (`WATCH`, a blocking
            // command, a deferred transaction's first command), or the keyless node
            // (`SUBSCRIBE`).
            let info = self.table.lookup(&req.args).cloned();
            match self.cluster_node(req, info.as_deref()) {
                Ok(node) => self.node = node,
                Err(refusal) => {
                    self.reply(refusal.reply());
                    return false;
                }
            }
        }
        match self.ctx.upstream.pin(self.identity()).await {
            Ok(mut conn) => {
                let upstream_id = match conn.local_addr() {
                    Some(_) => None,
                    None => {
                        upstream_id(&mut conn, self.ctx.upstream.settings().command_timeout).await
                    }
                };
                let mut p = Pinned::new(conn, self.identity(), upstream_id);
                let reason = if self.deferred_multi {
                    PinReason::Transaction
                } else {
                    pin_reason(kind, blocking)
                };
                p.gauge = Some(self.ctx.metrics.pinned(reason));
                self.pinned = Some(p);
                if self.deferred_multi {
                    self.deferred_multi = false;
                    self.send_deferred_multi().await;
                }
                true
            }
            Err(e) => {
                self.reply(e.reply());
                false
            }
        }
    }

    /// The engine's plan for a command on the pinned connection, as the connection
    /// sends it, and how its reply settles.
    fn pinned_rewrite(
        &mut self,
        req: &Request,
        blocking: bool,
    ) -> Result<(Rewrite, Settle), Bytes> {
        let Some(info) = self.table.lookup(&req.args).cloned() else {
            return Ok((Rewrite::default(), Settle::Forward));
        };
        let situation = match self.pinned.as_ref() {
            Some(p) if p.multi => Situation::Transaction,
            _ if blocking => Situation::Blocking,
            Some(p) if p.watching() => Situation::Watching,
            _ => Situation::Other,
        };
        let scope = self.scope();
        let q = self
            .engine
            .plan_queued(req, &info, &mut self.keys, scope, situation)?;
        Ok((
            Rewrite {
                data: q.data,
                extra_frames: q.extra_frames,
                after: q.after,
                invalidations: q.invalidations,
            },
            q.settle,
        ))
    }

    /// A command refused by `[commands]` (denied, renamed away, a script). Inside the
    /// client's transaction the refusal must also abort it at `EXEC`, as Redis's own
    /// queueing errors do: the upstream is sent a command it cannot queue, and its
    /// error is answered as the refusal.
    pub(super) async fn refuse(&mut self, err: Bytes) -> Option<Request> {
        if !self.pinned.as_ref().is_some_and(|p| p.multi) {
            self.reply(err);
            return None;
        }
        let poison = Request::from_args([&b"cachet-denied-command"[..]]);
        let p = self.pinned.as_mut()?;
        match p
            .send(&poison, CommandKind::Plain, false, Rewrite::default())
            .await
        {
            Ok(0) => {}
            Ok(_) => self.await_reply(
                Settle::Translate(Translate::Replace(err)),
                None,
                Post::Nothing,
            ),
            Err(e) => {
                self.reply(e.reply());
                self.pinned_failed(e);
            }
        }
        None
    }

    /// Frames arrived on the pinned connection.
    pub(super) fn on_pinned_data(&mut self) {
        loop {
            let Some(p) = self.pinned.as_mut() else {
                return;
            };
            match p.next_frame() {
                Ok(Some(Incoming::Push(bytes))) => {
                    let prefix = self.engine.prefix();
                    if let Some(b) = crate::engine::reserved::hide_in_push(bytes, prefix) {
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

    /// The pinned connection broke or stalled: every reply it owed becomes an error. If
    /// it held server-side state (a transaction, subscriptions) the client's session
    /// is gone with it, so the client connection is closed after the errors, as if
    /// Redis itself had dropped it.
    pub(super) fn pinned_failed(&mut self, err: UpstreamError) {
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
    pub(super) fn hang_up_blocked(&mut self) {
        self.pinned = None;
        self.batch = None;
        self.exec_batch = None;
        self.slots.clear();
        self.inflight = 0;
        self.outstanding = 0;
        self.stalled = None;
        self.parts.clear();
        self.holding = None;
        self.route = None;
    }

    pub(super) fn unpin(&mut self) {
        if let Some(p) = self.pinned.take() {
            let id = p.identity;
            if let Some(conn) = p.into_reusable() {
                self.ctx.upstream.unpin(id, conn);
            }
        }
        self.route = None;
    }
}

/// The subscribe family, whose confirmations are pushes.
fn is_subscription(kind: CommandKind) -> bool {
    use CommandKind as K;
    matches!(
        kind,
        K::Subscribe
            | K::PSubscribe
            | K::SSubscribe
            | K::Unsubscribe
            | K::PUnsubscribe
            | K::SUnsubscribe
    )
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

pub(super) async fn read_pinned(pinned: &mut Option<Pinned>) -> std::io::Result<usize> {
    match pinned {
        Some(p) => p.read().await,
        None => std::future::pending().await,
    }
}

/// The `CLIENT ID` of a connection whose address cannot name it (a Unix socket);
/// `None` if it does not answer in time, which leaves the session unreachable by
/// `CLIENT UNBLOCK` and `CLIENT TRACKING … REDIRECT`, nothing worse.
async fn upstream_id(conn: &mut crate::stream::Stream, limit: std::time::Duration) -> Option<u64> {
    let ask = vec![Bytes::from_static(b"CLIENT"), Bytes::from_static(b"ID")];
    let replies = tokio::time::timeout(limit, crate::upstream::connect::roundtrip(conn, &[ask]))
        .await
        .ok()?
        .ok()?;
    let id = crate::resp::reply::int_value(replies.first()?)?;
    u64::try_from(id).ok()
}
