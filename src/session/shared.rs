//! Commands on a shared connection: the engine's plan sent as one job, with the write's
//! ordering tokens and, if its fate becomes unknown, its invalidation re-sent; plain
//! commands read in one go share one job; follow-up requests the engine asks for are
//! sent on the command's behalf.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::replies::{Post, Slot};
use super::{Route, Session};
use crate::command::CommandInfo;
use crate::engine::{JoinedRetry, JoinedWrite, ReadPlan, Retry, Scope, Settle, Translate};
use crate::key_lock::{Held, LockTimeout};
use crate::resp::{Request, reply};
use crate::upstream::{Capability, Identity, Job, MULTI, UpstreamError, connect};

/// Before a cluster: whether a command is fanned out, and a `SCAN`'s node, cursor and
/// reply rewrite (`Session::cluster_route`).
type ClusterRoute = (Option<super::cluster::FanOut>, Option<(u16, Request, Post)>);

/// Largest buffer reserved up front for a batch of plain commands.
const MAX_BATCH_HINT: usize = 64 * 1024;

/// Most commands queued in one joined transaction (64 single-key writes): Redis serves
/// nobody else while it runs one, and a connection that breaks mid-reply fails a whole
/// transaction.
const MAX_JOINED_COMMANDS: u32 = 128;

const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";

/// Consecutive writes of one read, joined in one transaction (`Session::join_exec`).
#[derive(Debug)]
pub(super) struct ExecBatch {
    /// The sequence number of the slot that answers them all.
    seq: u64,
    /// `MULTI` and each write's commands so far (`EXEC` is added when sent).
    data: BytesMut,
    /// The database the writes ran in (their invalidations' if re-sent; the session
    /// may have switched since).
    db: u32,
    /// What each write queued.
    queued: Vec<JoinedWrite>,
    /// Commands queued in all (`MULTI` and `EXEC` aside).
    commands: u32,
    /// The run of plain `SET`s `data` ends with, if any.
    sets: Option<SetRun>,
    /// That run's invalidations, which follow it.
    set_invalidations: BytesMut,
    /// Every write's ordering tokens.
    held: Held,
    /// Every write's invalidation, joined as they come.
    retry: JoinedRetry,
}

/// What a job of writes keeps (`Session::write_guard`): dropped with the job, it
/// releases the ordering tokens; told of a failure that may have applied the writes,
/// it queues their invalidation for re-sending first.
struct WriteGuard {
    _held: Option<Held>,
    retry: Option<(Arc<crate::engine::retry::RetryQueue>, Retry)>,
}

impl crate::upstream::Guard for WriteGuard {
    fn failed(self: Box<Self>, err: &UpstreamError) {
        let WriteGuard { _held: held, retry } = *self;
        if let Some((queue, retry)) = retry
            && err.maybe_applied()
        {
            queue.submit(retry);
        }
        // The tokens go once the keys' fills are refused.
        drop(held);
    }
}

/// Whether a write's plan can share a transaction with the client's neighbouring
/// writes: `MULTI`, the command, cachet's commands, `EXEC`, with the client's reply
/// the first of the `EXEC` array, for a command Redis knows with the right number of
/// arguments (Redis refuses a wrong one when it is queued, which would refuse the
/// neighbours too). Commands an ACL rule most often denies (keyspace-wide writes,
/// administrative and module commands) go alone for the same reason.
fn joins_transaction(
    plan: &crate::engine::Plan,
    info: Option<&CommandInfo>,
    req: &Request,
) -> bool {
    use crate::command::{CommandFlags, CommandKind};
    matches!(plan.settle, Settle::Translate(Translate::Exec))
        && !plan.script
        && info.is_some_and(|i| {
            i.arity_ok(req.args.len())
                && !i
                    .flags
                    .intersects(CommandFlags::ADMIN | CommandFlags::MODULE)
                && !matches!(
                    i.kind,
                    CommandKind::FlushDb | CommandKind::FlushAll | CommandKind::SwapDb
                )
        })
}

/// A plain `SET key value` (three arguments, in an array as cachet forwards it, inline
/// commands re-encoded): where its key starts and where it ends in its bytes, which a
/// transaction of writes may join with its neighbours' in one `MSET` (`SetRun`).
fn plain_set(req: &Request, info: Option<&CommandInfo>) -> Option<(usize, usize)> {
    const HEAD: usize = b"*3\r\n$3\r\nSET\r\n".len();
    (req.args.len() == 3
        && info.is_some_and(|i| i.name == "set")
        && req.raw.starts_with(b"*3\r\n$3\r\n")
        && req.raw.len() > HEAD)
        .then_some((HEAD, req.raw.len()))
}

/// Consecutive plain `SET key value`s of a transaction of writes, sent as one `MSET`
/// followed by their invalidations: one command where there were as many as writes,
/// with the same effect (keys set in order, each without a TTL, each notified as
/// `set`), the same reply (`+OK`, the `MSET`'s for each) and the same refusals (both
/// are writes refused out of memory and on a replica; cachet's user may run both).
#[derive(Debug, Clone, Copy)]
struct SetRun {
    /// Where the writes' keys and values start in the transaction's bytes.
    start: usize,
    writes: u32,
}

impl ExecBatch {
    /// Adds a write's commands, `queued` of them: `set`, where a plain `SET`'s key and
    /// its invalidations start in them, if it is one.
    fn add(&mut self, commands: &[u8], set: Option<(usize, usize)>, queued: u32) {
        match set.and_then(|(key, cut)| Some((commands.get(key..cut)?, commands.get(cut..)?))) {
            Some((set, invalidation)) => self.push_set(set, invalidation, queued),
            None => self.push(commands, queued),
        }
    }

    /// Adds a write's commands.
    fn push(&mut self, commands: &[u8], queued: u32) {
        self.close_sets();
        self.data.extend_from_slice(commands);
        self.queued.push(JoinedWrite::own(queued));
        self.commands += queued;
    }

    /// Adds a plain `SET`: its key and value as sent (`*3 $3 SET` stripped), then its
    /// invalidations (`queued - 1` commands).
    fn push_set(&mut self, set: &[u8], invalidation: &[u8], queued: u32) {
        match &mut self.sets {
            Some(run) => {
                run.writes += 1;
                self.queued.push(JoinedWrite {
                    commands: queued - 1,
                    shares_previous: true,
                });
                self.commands += queued - 1;
            }
            None => {
                // Room for a typical pipeline's run (redis-py sends 16 or so at a time).
                self.set_invalidations.reserve(16 * invalidation.len());
                self.sets = Some(SetRun {
                    start: self.data.len(),
                    writes: 1,
                });
                self.queued.push(JoinedWrite::own(queued));
                self.commands += queued;
            }
        }
        self.data.extend_from_slice(set);
        self.set_invalidations.extend_from_slice(invalidation);
    }

    /// Ends the run of plain `SET`s, if any: its command's header (`SET` for one
    /// write) before the keys and values, its invalidations after.
    fn close_sets(&mut self) {
        let Some(run) = self.sets.take() else {
            return;
        };
        let mut mset = [0u8; 24];
        let head: &[u8] = if run.writes == 1 {
            b"*3\r\n$3\r\nSET\r\n"
        } else {
            let mut w = &mut mset[..];
            // Fewer than `MAX_JOINED_COMMANDS` writes, so at most 16 bytes.
            let written = write!(w, "*{}\r\n$4\r\nMSET\r\n", 1 + 2 * run.writes);
            debug_assert!(written.is_ok());
            let len = 24 - w.len();
            mset.get(..len).unwrap_or_default()
        };
        let end = self.data.len();
        self.data.extend_from_slice(head);
        self.data
            .copy_within(run.start..end, run.start + head.len());
        if let Some(at) = self.data.get_mut(run.start..run.start + head.len()) {
            at.copy_from_slice(head);
        }
        self.data.extend_from_slice(&self.set_invalidations);
        self.set_invalidations.clear();
    }
}

impl Session {
    /// Sends a command over the session's shared connection, as the engine plans it.
    /// Gives the command back if it must wait for replies owed on another route.
    pub(super) async fn send_shared(
        &mut self,
        req: Request,
        info: Option<&CommandInfo>,
    ) -> Option<Request> {
        let (fan_out, scan) = if self.ctx.upstream.cluster.is_some() {
            match self.cluster_route(&req, info) {
                Some(route) => route,
                None => return None,
            }
        } else {
            (None, None)
        };
        let id = self.identity();
        let route = Route::Shared(id);
        if self.inflight > 0 && (self.route != Some(route) || fan_out.is_some()) {
            return Some(req);
        }
        // A cluster's `SCAN`: the node's own cursor, the client's rewritten on reply.
        let (req, post) = match scan {
            Some((_, on_node, post)) => (on_node, post),
            None => (req, Post::Nothing),
        };
        self.bind_shared(id);
        let scope = self.scope();
        let plan = match self.engine.plan(&req, info, &mut self.keys, scope) {
            Ok(plan) => plan,
            Err(refusal) => {
                self.reply(refusal);
                return None;
            }
        };
        if let Some(how) = fan_out {
            self.send_fan_out(how, plan);
            return None;
        }
        if plan.is_plain()
            && self.reply_mode == super::local::ReplyMode::On
            && !self.handling_part
            && post == Post::Nothing
        {
            self.batch_plain(&plan.data, plan.frames);
            return None;
        }
        if (plan.script || plan.frames > 1)
            && let Capability::Lacks(what) = self.capability().await
        {
            // The user may not run what cachet adds: nothing is rewritten for it.
            if self.inflight > 0 {
                return Some(req);
            }
            self.refuse_for_rights(req, what);
            return None;
        }
        let plan = if post == Post::Nothing
            && joins_transaction(&plan, info, &req)
            && self.ctx.upstream.cluster.is_none()
            && self.own_unrestricted
            && !self.acts_for_other()
        {
            match self.join_exec(plan, &req, info) {
                None => return None,
                Some(plan) => plan,
            }
        } else {
            plan
        };
        self.send_plan(plan, post).await;
        None
    }

    /// The common case without the general routing: a plain read
    /// ([`CommandInfo::plain_read`]; `info` is the command's entry) just decoded, from
    /// a client in no mode of its own, sent as `handle` would send it: as sent in the
    /// batch for its shared connection, or as the engine's plan of a `GET` of a
    /// `cache` key (debug builds check that the dispatch decision and the engine's plan
    /// agree). Gives the request and its entry back, untouched, for `handle_named`
    /// otherwise.
    pub(super) fn forward_plain_read(
        &mut self,
        req: Request,
        info: Option<Arc<CommandInfo>>,
    ) -> Result<(), (Request, Option<Arc<CommandInfo>>)> {
        let Some(info) = info else {
            return Err((req, None));
        };
        if !info.plain_read
            || self.pinned.is_some()
            || self.deferred_multi
            || self.handling_part
            || self.reply_mode != super::local::ReplyMode::On
            || self.ctx.upstream.cluster.is_some()
            || !self.logged_in()
        {
            return Err((req, Some(info)));
        }
        let first = req.args.first().map_or(&b""[..], |a| &a[..]);
        if !info.arity_ok(req.args.len()) || self.policy.refusal(first, Some(&info.name)).is_some()
        {
            return Err((req, Some(info)));
        }
        let id = self.identity();
        if self.inflight > 0 && self.route != Some(Route::Shared(id)) {
            return Err((req, Some(info)));
        }
        // A reserved key is refused here, once (the refusal is counted).
        let verdict = self
            .engine
            .plan_read(&req, &info, &mut self.keys, self.proto);
        if matches!(verdict, Ok(ReadPlan::Other)) {
            return Err((req, Some(info)));
        }
        debug_assert_eq!(
            super::dispatch::dispatch(&req, Some(&info), &self.table, &self.policy, &self.view()),
            super::dispatch::Route::Shared
        );
        self.tally = Some(info.tally.0.clone());
        // What the slow-command log times, as `handle` keeps it.
        self.current = (!self.slow.is_zero()).then_some(info);
        self.bind_shared(id);
        match verdict {
            Ok(ReadPlan::Planned(plan)) => {
                // As `send_plan` sends it: nothing to take, nothing to check.
                self.flush_batch();
                self.send_planned(plan, None, Post::Nothing);
            }
            Ok(_) => self.batch_plain(&req.raw, 1),
            Err(refusal) => self.reply(refusal),
        }
        Ok(())
    }

    /// Sends from now on over the shared connection for `id`: the one the session
    /// has, or, while nothing of its own is outstanding, one no long request holds up.
    fn bind_shared(&mut self, id: Identity) {
        self.route = Some(Route::Shared(id));
        if !matches!(&self.shared, Some((cid, _)) if *cid == id) {
            self.shared = Some((id, self.ctx.upstream.shared(id, self.id)));
        }
        if self.inflight == 0
            && let Some((_, conn)) = &self.shared
            && let Some(other) = self.ctx.upstream.unstuck(id, conn)
        {
            // Another client's long request holds this connection up; nothing of ours
            // is outstanding on it, so moving keeps our order.
            self.shared = Some((id, other));
        }
    }

    /// Adds a write planned as its own `MULTI … EXEC` to the transaction of the writes
    /// read just before it (or starts one): one transaction for a pipeline of writes
    /// costs Redis two commands fewer per write (docs/design.md, G2), and cachet one
    /// job and one reply slot for all. Each write stays atomic with its invalidation;
    /// the transaction is larger, never split. Only for a plan that may share a
    /// transaction at all (see `send_shared`), and only when the keys' ordering tokens
    /// are free now. Gives the plan back otherwise. A plain `SET key value` (`req`,
    /// `info`) may share an `MSET` with the plain `SET`s before it if its plan is only
    /// the client's bytes and its invalidation.
    fn join_exec(
        &mut self,
        mut plan: crate::engine::Plan,
        req: &Request,
        info: Option<&CommandInfo>,
    ) -> Option<crate::engine::Plan> {
        let (Some(inner), true) = (
            plan.data
                .strip_prefix(MULTI)
                .and_then(|d| d.strip_suffix(EXEC)),
            self.reply_mode == super::local::ReplyMode::On
                && !self.handling_part
                && plan.frames >= 3,
        ) else {
            return Some(plan);
        };
        if self.exec_batch.is_none() && self.rbuf.is_empty() {
            // Nothing more was read: a write alone, sent as planned.
            return Some(plan);
        }
        // A plain `SET` whose plan is its bytes and then its re-sendable invalidation
        // (a `PUBLISH`) and nothing else: where they part.
        let set = plain_set(req, info).and_then(|(head, end)| {
            let retry = plan.retry.as_ref()?;
            let cut = inner.len().checked_sub(retry.data.len())?;
            (cut == end && inner.get(cut..)? == &retry.data[..]).then_some((head, cut))
        });
        let owner = self.shared.as_ref().map_or(0, |(_, c)| c.id());
        let locks = &self.engine.locks;
        let queued = plan.frames - 2;
        let joins = match (&self.exec_batch, self.slots.back()) {
            (Some(b), Some(Slot::Await { seq, .. })) => {
                b.seq == *seq && b.commands + queued <= MAX_JOINED_COMMANDS
            }
            _ => false,
        };
        if joins
            && let Some(b) = self.exec_batch.as_mut()
            && let Some(Slot::Await { count, tallies, .. }) = self.slots.back_mut()
        {
            // The transaction's tokens, one set released by its reply.
            if locks
                .try_acquire_into(owner, &plan.written, &mut b.held)
                .is_err()
            {
                return Some(plan);
            }
            b.add(inner, set, queued);
            if let Some(r) = plan.take_retry() {
                b.retry.push(r);
            }
            *count += 1;
            self.outstanding += 1;
            if let Some(t) = self.tally.take() {
                tallies.push(t);
            }
            return None;
        }
        // Room for a typical pipeline's writes (redis-py sends 16 or so at a time).
        let mut held = locks.none_held(16);
        if locks
            .try_acquire_into(owner, &plan.written, &mut held)
            .is_err()
        {
            return Some(plan);
        }
        self.flush_batch();
        self.await_reply(Settle::Translate(Translate::Exec), None, Post::Nothing);
        let mut data =
            // The rest of the read is likely more writes, each about doubled by its
            // invalidation (a short key and value: more than doubled).
            BytesMut::with_capacity((plan.data.len() + 3 * self.rbuf.len()).min(MAX_BATCH_HINT));
        data.extend_from_slice(MULTI);
        let mut b = ExecBatch {
            seq: self.next_seq,
            data,
            db: self.db,
            queued: Vec::with_capacity(16),
            commands: 0,
            sets: None,
            set_invalidations: BytesMut::new(),
            held,
            retry: JoinedRetry::default(),
        };
        b.add(inner, set, queued);
        if let Some(r) = plan.take_retry() {
            b.retry.push(r);
        }
        self.exec_batch = Some(b);
        None
    }

    /// Sends the pending transaction of writes: `MULTI`, each write with its
    /// invalidations, `EXEC`, as one job holding every write's tokens and re-sending
    /// every invalidation if its fate becomes unknown.
    fn flush_exec_batch(&mut self) {
        let Some(mut b) = self.exec_batch.take() else {
            return;
        };
        b.close_sets();
        b.data.extend_from_slice(EXEC);
        let frames = 2 + b.commands;
        if b.queued.len() > 1
            && let Some(Slot::Await { settle, .. }) = self
                .slots
                .iter_mut()
                .rev()
                .find(|s| matches!(s, Slot::Await { seq, .. } if *seq == b.seq))
        {
            *settle = Settle::Translate(Translate::ExecEach(b.queued));
        }
        let retry = (!b.retry.is_empty()).then(|| b.retry.finish(b.db));
        let guard = self.write_guard((!b.held.is_empty()).then_some(b.held), retry, b.db);
        self.send_job(Job {
            data: b.data.freeze(),
            frames,
            reply: Some(self.reply_tx.clone()),
            guard,
        });
    }

    /// Sends a planned command as a job of its own, with its keys' ordering tokens and
    /// its invalidation's retry, and waits for its reply in order. `None` when the
    /// tokens could not be had (the client was answered).
    async fn send_plan(&mut self, plan: crate::engine::Plan, post: Post) -> Option<()> {
        self.flush_batch();
        let held = if plan.written.is_empty() {
            None
        } else {
            let owner = self.shared.as_ref().map_or(0, |(_, c)| c.id());
            self.take_tokens(owner, &plan.written).await?
        };
        self.send_planned(plan, held, post);
        Some(())
    }

    /// Sends a plan whose ordering tokens are `held` (after any pending batch) and
    /// awaits its reply.
    fn send_planned(&mut self, mut plan: crate::engine::Plan, held: Option<Held>, post: Post) {
        let sent = plan.script.then(|| plan.data.clone());
        let guard = self.write_guard(held, plan.take_retry(), self.db);
        let kept = self
            .ctx
            .upstream
            .cluster
            .is_some()
            .then(|| plan.data.clone());
        let job = Job {
            data: plan.data,
            frames: plan.frames,
            reply: Some(self.reply_tx.clone()),
            guard,
        };
        self.send_job(job);
        self.await_reply(plan.settle, sent, post);
        if let Some(data) = kept {
            self.keep_for_redirect(&data, plan.frames);
        }
    }

    /// Before a Redis Cluster: the node the command goes to (`self.node`), whether it is
    /// fanned out to every primary, and a `SCAN`'s cursor on its node. `None` when the
    /// command was answered here (refused, or split across slots).
    fn cluster_route(&mut self, req: &Request, info: Option<&CommandInfo>) -> Option<ClusterRoute> {
        match self.cluster_node(req, info) {
            Ok(node) => self.node = node,
            Err(super::cluster::NoNode::CrossSlot)
                if !self.handling_part && self.split(req, info) =>
            {
                return None;
            }
            Err(refusal) => {
                self.reply(refusal.reply());
                return None;
            }
        }
        let mut scan = None;
        if info.is_some_and(|i| i.kind == crate::command::CommandKind::Scan) {
            scan = self.cluster_scan(req);
            if let Some((node, _, _)) = &scan {
                self.node = *node;
            }
        }
        Some((info.and_then(super::cluster::FanOut::of), scan))
    }

    /// What a job of writes keeps: their ordering tokens, and their invalidation, queued
    /// for re-sending if their fate becomes unknown (fills of their keys are refused here
    /// until it lands). `None` when it keeps nothing.
    fn write_guard(
        &self,
        held: Option<Held>,
        retry: Option<Retry>,
        db: u32,
    ) -> Option<Box<dyn crate::upstream::Guard>> {
        let retry = retry.map(|mut retry| {
            retry.db = db;
            // Kept for a while when a failover could lose the write (Sentinel).
            self.engine.retries.remember(&retry);
            (self.engine.retries.clone(), retry)
        });
        if held.is_none() && retry.is_none() {
            return None;
        }
        Some(Box::new(WriteGuard { _held: held, retry }))
    }

    fn send_job(&self, job: Job) {
        match &self.shared {
            Some((_, conn)) => conn.send(job),
            None => job.fail(&UpstreamError::Unavailable("no connection".into())),
        }
    }

    /// Adds a plain command to the batch for the shared connection, extending the last
    /// slot when it is the batch's.
    fn batch_plain(&mut self, data: &[u8], frames: u32) {
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
            if self.ctx.upstream.cluster.is_some() {
                self.batch_bounds.push((buf.len(), frames));
            }
            return;
        }
        self.flush_batch();
        self.await_reply(Settle::Forward, None, Post::Nothing);
        // Room for the rest of this read too (the commands still undecoded), so that a
        // pipeline does not grow the batch one reallocation at a time.
        let mut buf = BytesMut::with_capacity((data.len() + self.rbuf.len()).min(MAX_BATCH_HINT));
        buf.extend_from_slice(data);
        if self.ctx.upstream.cluster.is_some() {
            self.batch_bounds.push((buf.len(), frames));
        }
        self.batch = Some((self.next_seq, buf, frames));
    }

    /// Sends the pending batch or transaction of writes, if any (at most one is).
    pub(super) fn flush_batch(&mut self) {
        self.flush_exec_batch();
        let Some((seq, data, frames)) = self.batch.take() else {
            return;
        };
        let data = data.freeze();
        if self.ctx.upstream.cluster.is_some() {
            let bounds = std::mem::take(&mut self.batch_bounds);
            // The batch's node: its route's (the session may be routing a command for
            // another node by now).
            let node = match self.route {
                Some(Route::Shared(id)) => id.node,
                _ => self.node,
            };
            self.keep_batch_for_redirect(seq, node, &data, frames, bounds);
        }
        self.send_job(Job {
            data,
            frames,
            reply: Some(self.reply_tx.clone()),
            guard: None,
        });
    }

    /// The ordering tokens of keys a write is about to change, waiting (bounded by
    /// `command_timeout`) while another connection's writes of them are outstanding.
    /// `Some(None)` never happens; `None` after answering the client with the timeout.
    async fn take_tokens(&mut self, owner: u64, keys: &[Bytes]) -> Option<Option<Held>> {
        let locks = self.engine.locks.clone();
        if let Ok(h) = locks.try_acquire(owner, keys) {
            return Some(Some(h));
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
            Ok(h) => Some(Some(h)),
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

    /// Sends a request the engine asked for on behalf of the parked slot `seq`, after
    /// its delay, on a shared connection of the database and protocol the slot's
    /// command ran in (as cachet's own user, or the client's, as the engine says); its
    /// reply comes back through the resolve channel.
    pub(super) fn follow_up(
        &mut self,
        seq: u64,
        data: Bytes,
        frames: u32,
        delay: Duration,
        own: bool,
        node: Option<u16>,
    ) {
        let id = self.owed_identity();
        let id = crate::upstream::Identity {
            node: node.unwrap_or(id.node),
            ..id
        };
        let id = if own {
            self.ctx.upstream.own_on(id.db, id.proto, id.node)
        } else {
            id
        };
        let conn = self.ctx.upstream.shared(id, self.id);
        let conn = self.ctx.upstream.unstuck(id, &conn).unwrap_or(conn);
        self.follow_ups += 1;
        let tx = self.resolve_tx.clone();
        let hurry = self.hurry.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                // The client sending more ends a wait early.
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = hurry.notified() => {}
                }
            }
            let (rtx, mut rrx) = tokio::sync::mpsc::unbounded_channel();
            conn.send(Job {
                data,
                frames,
                reply: Some(rtx),
                guard: None,
            });
            let reply = rrx.recv().await.unwrap_or(Err(UpstreamError::Lost));
            let _ = tx.send((seq, reply));
        });
    }

    /// Sends invalidations nobody waits for on the shared connection (after a blocking
    /// write, which could not share an atomic unit with them).
    pub(super) fn invalidate_now(&mut self, commands: Vec<Vec<Bytes>>) {
        if commands.is_empty() {
            return;
        }
        let mut data = BytesMut::new();
        for c in &commands {
            crate::resp::request::encode_command(&mut data, c);
        }
        // cachet's own work: the write already ran, as the client.
        // (In front of a cluster, the node the write ran on: its keys' node.)
        let conn = self.ctx.upstream.shared(
            self.ctx.upstream.own_on(self.db, self.proto, self.node),
            self.id,
        );
        conn.send(Job {
            data: data.freeze(),
            frames: commands.len() as u32,
            reply: None,
            guard: None,
        });
    }
}

impl Session {
    /// Where the client's commands run, for the engine's plans.
    pub(super) fn scope(&self) -> Scope {
        Scope {
            proto: self.proto,
            db: self.db,
            check_acl: self.acts_for_other(),
        }
    }

    /// The client runs as an upstream user other than cachet's own, whose rights
    /// cachet must not exceed.
    fn acts_for_other(&self) -> bool {
        self.login.id != self.ctx.upstream.logins.own().id
    }

    /// Whether the client's user may run what cachet adds to a rewritten command
    /// (`engine/acl.rs`). Checked once for a new user (the command waits), then again
    /// at most once per `CAPABILITY_FRESH`: in the background while it is able, before
    /// the command while it is not.
    pub(super) async fn capability(&mut self) -> Capability {
        if !self.acts_for_other() {
            return Capability::Able;
        }
        let login = self.login.clone();
        let (known, due) = login.capability();
        // A user not known to be able is checked now (a refusal must not outlive the
        // grant that ends it); an able one again in the background.
        if known == Capability::Unknown || (due && known != Capability::Able) {
            self.check_capability().await;
            return login.capability().0;
        }
        if login.start_check() {
            tokio::spawn(self.check_capability_task());
        }
        known
    }

    async fn check_capability(&self) {
        self.check_capability_task().await;
    }

    /// Runs the `CAPABILITY` script as the client's user and records what it found.
    fn check_capability_task(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let conn = self.ctx.upstream.shared(self.identity(), self.id);
        let engine = self.engine.clone();
        let login = self.login.clone();
        let limit = self.ctx.upstream.settings().command_timeout;
        let mut data = BytesMut::new();
        crate::resp::request::encode_command(&mut data, &engine.capability_command());
        async move {
            let reply = ask(&conn, data.freeze(), limit).await;
            let found = match reply {
                Ok(reply) => match engine.read_capability(&reply) {
                    Some(crate::engine::acl::Checked::Able) => Some(Capability::Able),
                    Some(crate::engine::acl::Checked::Lacks(what)) => {
                        Some(Capability::Lacks(what.join(", ")))
                    }
                    // Redis answered something else (scripting refused otherwise):
                    // it will answer the rewrite the same way.
                    None => Some(Capability::Able),
                },
                Err(_) => None,
            };
            login.set_capability(found);
        }
    }

    /// A command cachet would rewrite, for a user that may not run what the rewrite
    /// adds: Redis's own refusal if Redis would refuse the command itself (asked with
    /// `ACL DRYRUN` as cachet's user, then the command sent as is), else an error that
    /// says what the user lacks. Nothing is written either way.
    fn refuse_for_rights(&mut self, req: Request, lacks: String) {
        let own = self
            .ctx
            .upstream
            .shared(self.ctx.upstream.own(self.db, 2), self.id);
        let user_conn = self.ctx.upstream.shared(self.identity(), self.id);
        let limit = self.ctx.upstream.settings().command_timeout;
        let lacking = self.engine.lacking_reply(&self.login.user, &lacks);
        let mut dryrun = vec![
            Bytes::from_static(b"ACL"),
            Bytes::from_static(b"DRYRUN"),
            self.login.user.clone(),
        ];
        dryrun.extend(req.args.iter().cloned());
        let mut data = BytesMut::new();
        crate::resp::request::encode_command(&mut data, &dryrun);
        let tx = self.reply_tx.clone();
        tokio::spawn(async move {
            let verdict = ask(&own, data.freeze(), limit).await;
            let reply = match verdict {
                // A bulk string: why Redis would refuse the command.
                Ok(v) if v.first() == Some(&b'$') && !v.starts_with(b"$-1") => {
                    ask(&user_conn, req.raw.clone(), limit).await
                }
                _ => Ok(lacking),
            };
            let _ = tx.send(reply);
        });
        self.route = Some(super::Route::Aux);
        self.await_reply(Settle::Forward, None, Post::Nothing);
    }
}

/// One request on a shared connection, and its reply.
async fn ask(
    conn: &crate::upstream::SharedConn,
    data: Bytes,
    limit: Duration,
) -> crate::upstream::Reply {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    conn.send(Job {
        data,
        frames: 1,
        reply: Some(tx),
        guard: None,
    });
    match tokio::time::timeout(limit + Duration::from_millis(100), rx.recv()).await {
        Ok(Some(r)) => r,
        Ok(None) => Err(UpstreamError::Lost),
        Err(_) => Err(UpstreamError::Timeout(limit)),
    }
}
