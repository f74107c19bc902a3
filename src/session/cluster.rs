//! A session in front of a Redis Cluster (`upstream/cluster.rs`): which node a command
//! goes to, commands that go to every primary, and replies that say a slot moved.
//!
//! A command goes to the primary serving its keys' slot; one without keys to the node
//! serving slot 0. Keys in different slots get Redis's own `-CROSSSLOT` error, as a
//! cluster node would answer. The session's ordering rule (outstanding requests on one
//! connection at a time) holds across nodes as it does across databases: a command
//! for another node waits until what is owed is answered.
//!
//! `-MOVED` and `-ASK` never reach the client: the slot's reply is parked, the same
//! bytes go to the node named (after `ASKING` for `-ASK`), and the map learns of the
//! move. A command is re-sent at most `MAX_REDIRECTS` times. `-TRYAGAIN` (a key and
//! its fill-protocol state caught half-migrated) is retried after a short wait.

use bytes::{Bytes, BytesMut};

use super::Session;
use super::replies::{Post, Slot};
use crate::command::slot::key_slot;
use crate::command::{CommandInfo, CommandKind};
use crate::engine::Settle;
use crate::resp::{Request, Scanner, reply};

use crate::upstream::cluster::{MAX_REDIRECTS, Redirect};

/// How long a command answered `-TRYAGAIN` waits before it is sent again, and how many
/// times (about two seconds in all: a slot's migration is usually much shorter).
const TRYAGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(20);
const MAX_TRYAGAIN: u16 = 100;
use crate::upstream::{Job, UpstreamError};

/// Why a command has no node to go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoNode {
    /// Its keys are in different slots (a split may still serve it).
    CrossSlot,
    /// No primary is known for the slot (the map is not read yet, or the cluster is
    /// down).
    Unserved(u16),
}

impl NoNode {
    /// What the client gets, in Redis Cluster's words.
    pub(super) fn reply(self) -> Bytes {
        match self {
            NoNode::CrossSlot => {
                reply::error("CROSSSLOT Keys in request don't hash to the same slot")
            }
            NoNode::Unserved(slot) => {
                reply::error(&format!("CLUSTERDOWN Hash slot {slot} not served"))
            }
        }
    }
}

/// What a slot needs to be sent again elsewhere.
#[derive(Debug, Clone)]
pub(super) struct Resend {
    pub data: Bytes,
    pub frames: u32,
    /// The node it went to last.
    pub node: u16,
    /// The node serving its slot, as far as it knows (where `-TRYAGAIN` re-sends).
    pub home: u16,
    pub hops: u8,
    /// `-TRYAGAIN`s so far.
    pub waits: u16,
    /// Sent as cachet's own user (an engine follow-up), not the client's.
    pub own: bool,
    /// A batch of plain commands: where each ends in `data`, and its reply frames.
    pub bounds: Vec<(usize, u32)>,
}

/// `ASKING`, encoded.
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// Commands without keys that a cluster answers per node: cachet asks every primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FanOut {
    /// `DBSIZE`: the sum.
    Sum,
    /// `KEYS`: every node's keys.
    Concat,
    /// `FLUSHDB`, `FLUSHALL`, `SCRIPT LOAD|FLUSH`, `FUNCTION LOAD|FLUSH|DELETE`: the
    /// first error, else the first node's reply.
    All,
}

impl FanOut {
    pub(super) fn of(info: &CommandInfo) -> Option<FanOut> {
        match info.name.as_str() {
            "dbsize" => Some(FanOut::Sum),
            "keys" => Some(FanOut::Concat),
            "flushdb" | "flushall" | "script|load" | "script|flush" | "function|load"
            | "function|flush" | "function|delete" | "function|restore" => Some(FanOut::All),
            _ => None,
        }
    }

    /// One reply from the nodes' replies, in node order.
    fn merge(self, replies: Vec<Bytes>) -> Bytes {
        if let Some(err) = replies
            .iter()
            .find(|r| matches!(r.first(), Some(b'-' | b'!')))
        {
            return err.clone();
        }
        match self {
            FanOut::All => replies.into_iter().next().unwrap_or_default(),
            FanOut::Sum => {
                let sum: i64 = replies.iter().filter_map(|r| reply::int_value(r)).sum();
                let mut out = BytesMut::new();
                reply::push_int(&mut out, sum);
                out.freeze()
            }
            FanOut::Concat => {
                let mut kind = b'*';
                let mut items: Vec<&[u8]> = Vec::new();
                for r in &replies {
                    kind = r.first().copied().unwrap_or(b'*');
                    items.extend(reply::elements(r).unwrap_or_default());
                }
                let mut out = BytesMut::new();
                reply::push_header(&mut out, kind, items.len() as i64);
                for i in items {
                    out.extend_from_slice(i);
                }
                out.freeze()
            }
        }
    }
}

/// How the replies of a command split by slot become the client's one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Merge {
    /// `MGET`: the values, in the client's key order.
    Values,
    /// `MSET`: `+OK` when every part says so.
    AllOk,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: the sum.
    Sum,
}

impl Merge {
    /// The merge for a command that may be split, and how many arguments go with
    /// each key (2 for `MSET`'s key and value).
    fn of(info: &CommandInfo) -> Option<(Merge, usize)> {
        match info.name.as_str() {
            "mget" => Some((Merge::Values, 1)),
            "mset" => Some((Merge::AllOk, 2)),
            "del" | "unlink" | "exists" | "touch" => Some((Merge::Sum, 1)),
            _ => None,
        }
    }
}

/// A client command sent as one command per slot (`Slot::Merge`).
#[derive(Debug)]
pub(super) struct Split {
    pub merge: Merge,
    /// How many commands (and slots) it became.
    pub parts: usize,
    /// Each of the client's keys: its part and its place in that part.
    order: KeyOrder,
    /// The client asked for no reply (`CLIENT REPLY OFF|SKIP`).
    pub discard: bool,
}

impl Split {
    /// The client's reply from the parts' replies (the first error if any failed).
    pub(super) fn merge(&self, parts: &[Bytes]) -> Bytes {
        if let Some(err) = parts
            .iter()
            .find(|r| matches!(r.first(), Some(b'-' | b'!')))
        {
            return err.clone();
        }
        match self.merge {
            Merge::AllOk => parts.first().cloned().unwrap_or_default(),
            Merge::Sum => FanOut::Sum.merge(parts.to_vec()),
            Merge::Values => {
                let elements: Vec<Vec<&[u8]>> = parts
                    .iter()
                    .map(|p| reply::elements(p).unwrap_or_default())
                    .collect();
                let mut out = BytesMut::new();
                reply::push_header(&mut out, b'*', self.order.len() as i64);
                for &(part, at) in &self.order {
                    match elements.get(part).and_then(|e| e.get(at)) {
                        Some(v) => out.extend_from_slice(v),
                        None => out.extend_from_slice(b"$-1\r\n"),
                    }
                }
                out.freeze()
            }
        }
    }
}

/// Each key of a split command: its part and its place in that part.
type KeyOrder = Vec<(usize, usize)>;

/// `args` as one command per slot, keys in their order within each; `None` when the
/// arguments do not come in whole key groups.
fn split_by_slot(args: &[Bytes], step: usize) -> Option<(Vec<Request>, KeyOrder)> {
    let name = args.first()?;
    let rest = args.get(1..)?;
    if rest.is_empty() || step == 0 || rest.len() % step != 0 {
        return None;
    }
    let mut groups: Vec<(u16, Vec<Bytes>)> = Vec::new();
    let mut order = Vec::with_capacity(rest.len() / step);
    for chunk in rest.chunks(step) {
        let slot = key_slot(chunk.first()?);
        let g = match groups.iter().position(|(s, _)| *s == slot) {
            Some(g) => g,
            None => {
                groups.push((slot, vec![name.clone()]));
                groups.len() - 1
            }
        };
        let group = &mut groups.get_mut(g)?.1;
        order.push((g, (group.len() - 1) / step));
        group.extend(chunk.iter().cloned());
    }
    let parts = groups
        .into_iter()
        .map(|(_, args)| Request::from_args(args))
        .collect();
    Some((parts, order))
}

impl Session {
    /// A multi-key command whose keys span slots (`MGET`, `MSET`, `DEL`, `UNLINK`,
    /// `EXISTS`, `TOUCH`): sent as one command per slot, each as if the client had sent
    /// it (the fill protocol judges each part), and answered as one reply in the
    /// client's key order. A split `MSET` is not atomic. Whether it was split.
    pub(super) fn split(&mut self, req: &Request, info: Option<&CommandInfo>) -> bool {
        let Some((merge, step)) = info.and_then(Merge::of) else {
            return false;
        };
        let Some((parts, order)) = split_by_slot(&req.args, step) else {
            return false;
        };
        self.tally = None;
        // `CLIENT REPLY OFF|SKIP` applies to the client's command, once: its parts
        // always answer into their slots, and the merge is dropped if it says so.
        let discard = self.take_discard();
        self.slots.push_back(Slot::Merge(Box::new(Split {
            merge,
            parts: parts.len(),
            order,
            discard,
        })));
        for p in parts.into_iter().rev() {
            self.parts.push_front(p);
        }
        true
    }

    /// A transaction in front of a cluster starts where its first command's keys live:
    /// `MULTI` is answered here and sent later (`send_deferred_multi`). The reply to
    /// give now, when `req` is `MULTI` or ends a transaction that never started.
    pub(super) fn defer_multi(&mut self, req: &Request, kind: CommandKind) -> Option<Bytes> {
        use CommandKind as K;
        let bare = req.args.len() == 1;
        match kind {
            K::Multi if bare && self.deferred_multi => {
                Some(reply::error("ERR MULTI calls can not be nested"))
            }
            K::Multi if bare => {
                self.deferred_multi = true;
                Some(Bytes::from_static(reply::OK))
            }
            K::Exec if bare && self.deferred_multi => {
                self.deferred_multi = false;
                Some(Bytes::from_static(b"*0\r\n"))
            }
            K::Discard if bare && self.deferred_multi => {
                self.deferred_multi = false;
                Some(Bytes::from_static(reply::OK))
            }
            _ => None,
        }
    }

    /// Sends the `MULTI` answered earlier on the connection just pinned; its reply
    /// (the client had it already) is dropped.
    pub(super) async fn send_deferred_multi(&mut self) {
        let multi = Request::from_args(["MULTI"]);
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        match p
            .send(&multi, CommandKind::Multi, false, Default::default())
            .await
        {
            Ok(0) => {}
            Ok(_) => {
                self.await_reply(Settle::Forward, None, Post::Nothing);
                if let Some(Slot::Await { discard, .. }) = self.slots.back_mut() {
                    *discard = true;
                }
            }
            Err(e) => self.pinned_failed(e),
        }
    }

    /// A `SCAN` in front of a cluster walks every primary in turn: the client's cursor
    /// is `node cursor × primaries + the primary's index`, so a node's cursor 0 moves
    /// the walk to the next primary and the last one's ends it. The node, the request
    /// with that node's cursor, and what rewrites the reply's cursor. `None` leaves
    /// the command as it is (an invalid cursor: Redis says so).
    pub(super) fn cluster_scan(&self, req: &Request) -> Option<(u16, Request, Post)> {
        let cluster = self.ctx.upstream.cluster.as_ref()?;
        let cursor: u64 = std::str::from_utf8(req.args.get(1)?).ok()?.parse().ok()?;
        let primaries = cluster.primaries();
        let nodes = primaries.len();
        if nodes == 0 {
            return None;
        }
        let index = (cursor % nodes as u64) as usize;
        let node = *primaries.get(index)?;
        let mut args = req.args.clone();
        if let Some(c) = args.get_mut(1) {
            *c = Bytes::from((cursor / nodes as u64).to_string());
        }
        Some((
            node,
            Request::from_args(args),
            Post::ScanCursor { index, nodes },
        ))
    }

    /// The node a command with these keys goes to, or the error the client gets
    /// (keys in different slots, a slot nobody serves). Fills `self.keys`.
    pub(super) fn cluster_node(
        &mut self,
        req: &Request,
        info: Option<&CommandInfo>,
    ) -> Result<u16, NoNode> {
        let Some(cluster) = &self.ctx.upstream.cluster else {
            return Ok(0);
        };
        self.keys.clear();
        if let Some(info) = info {
            info.keys(&req.args, &mut self.keys);
        }
        let mut slots = self
            .keys
            .iter()
            .filter_map(|k| req.args.get(k.index))
            .map(|k| key_slot(k));
        let Some(slot) = slots.next() else {
            return Ok(self.ctx.upstream.keyless_node());
        };
        if slots.any(|s| s != slot) {
            return Err(NoNode::CrossSlot);
        }
        cluster.owner(slot).ok_or(NoNode::Unserved(slot))
    }

    /// Remembers what the slot just added sent, so that a redirect can send it again.
    pub(super) fn keep_for_redirect(&mut self, data: &Bytes, frames: u32) {
        if self.ctx.upstream.cluster.is_none() {
            return;
        }
        let node = self.node;
        if let Some(Slot::Await { resend, .. }) = self.slots.back_mut() {
            *resend = Some(Box::new(Resend {
                data: data.clone(),
                frames,
                node,
                home: node,
                hops: 0,
                waits: 0,
                own: false,
                bounds: Vec::new(),
            }));
        }
    }

    /// Remembers what the batch slot `seq` sent, command by command.
    pub(super) fn keep_batch_for_redirect(
        &mut self,
        seq: u64,
        node: u16,
        data: &Bytes,
        frames: u32,
        bounds: Vec<(usize, u32)>,
    ) {
        if let Some(Slot::Await { resend, .. }) = self
            .slots
            .iter_mut()
            .rev()
            .find(|s| matches!(s, Slot::Await { seq: q, .. } if *q == seq))
        {
            *resend = Some(Box::new(Resend {
                data: data.clone(),
                frames,
                node,
                home: node,
                hops: 0,
                waits: 0,
                own: false,
                bounds,
            }));
        }
    }

    /// A batch's reply in which some commands were redirected: those are sent again
    /// (each where its reply says, in their order), and their new replies take the
    /// place of the old in the batch's reply. Whether any was.
    fn redirect_batch(&mut self, idx: usize, bytes: &Bytes) -> bool {
        let suspect = bytes.first() == Some(&b'-')
            || memchr::memmem::find(bytes, b"\r\n-MOVED ").is_some()
            || memchr::memmem::find(bytes, b"\r\n-ASK ").is_some()
            || memchr::memmem::find(bytes, b"\r\n-TRYAGAIN").is_some();
        let Some(cluster) = self.ctx.upstream.cluster.clone().filter(|_| suspect) else {
            return false;
        };
        let id = self.owed_identity();
        let Some(Slot::Await {
            seq,
            resend: Some(resend),
            parked,
            ..
        }) = self.slots.get_mut(idx)
        else {
            return false;
        };
        let Some(frames) = split_frames(bytes) else {
            return false;
        };
        let (again, wait) = redirected_commands(&cluster, resend, &frames);
        if again.is_empty() || resend.hops >= MAX_REDIRECTS || resend.waits >= MAX_TRYAGAIN {
            return false;
        }
        if wait {
            resend.waits += 1;
        } else {
            resend.hops += 1;
        }
        *parked = true;
        cluster
            .redirects
            .fetch_add(again.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let seq = *seq;
        let mut jobs = Vec::with_capacity(again.len());
        let mut waiting = Vec::with_capacity(again.len());
        for (command, first, n, node, ask) in again {
            let (data, frames) = asking_if(ask, command, n as u32);
            let conn = self
                .ctx
                .upstream
                .shared(crate::upstream::Identity { node, ..id }, self.id);
            let (rtx, rrx) = tokio::sync::mpsc::unbounded_channel();
            jobs.push((
                conn,
                Job {
                    data,
                    frames,
                    reply: Some(rtx),
                    guard: None,
                },
            ));
            waiting.push((rrx, first, n, ask));
        }
        // Sent now, in order, unless Redis asked to wait.
        let jobs = if wait {
            Some(jobs)
        } else {
            for (conn, job) in jobs {
                conn.send(job);
            }
            None
        };
        self.follow_ups += 1;
        tokio::spawn(splice_batch(
            seq,
            jobs,
            waiting,
            frames,
            self.resolve_tx.clone(),
        ));
        true
    }

    /// Slot `idx` sends a follow-up next: a redirect re-sends that instead.
    pub(super) fn keep_follow_up_for_redirect(
        &mut self,
        idx: usize,
        data: &Bytes,
        frames: u32,
        own: bool,
    ) {
        if let Some(Slot::Await {
            resend: Some(resend),
            ..
        }) = self.slots.get_mut(idx)
        {
            resend.data = data.clone();
            resend.frames = frames;
            resend.own = own;
        }
    }

    /// If `bytes` (slot `idx`'s reply) says its slot moved, sends the request again
    /// where it says and parks the slot; if it says to try again (`-TRYAGAIN`: some of
    /// its keys have migrated, some not yet), sends it again shortly to the slot's
    /// node. Whether it did.
    pub(super) fn redirected(&mut self, idx: usize, bytes: &Bytes) -> bool {
        // Cheap for a single upstream, and for any reply that is not an error or a
        // transaction block.
        if self.ctx.upstream.cluster.is_none() {
            return false;
        }
        if matches!(self.slots.get(idx), Some(Slot::Await { resend: Some(r), .. }) if r.bounds.len() > 1)
        {
            return self.redirect_batch(idx, bytes);
        }
        if !matches!(bytes.first(), Some(b'-' | b'+')) {
            return false;
        }
        let Some(again) = again_in(bytes) else {
            return false;
        };
        let Some(cluster) = self.ctx.upstream.cluster.clone() else {
            return false;
        };
        let id = self.owed_identity();
        let Some(Slot::Await {
            seq,
            resend: Some(resend),
            parked,
            ..
        }) = self.slots.get_mut(idx)
        else {
            return false;
        };
        let (node, ask, delay) = match &again {
            Again::Redirect(_) if resend.hops >= MAX_REDIRECTS => return false,
            Again::TryAgain if resend.waits >= MAX_TRYAGAIN => return false,
            // Only to nodes `CLUSTER SLOTS` named (a script can answer any error it
            // likes); an unknown one makes the map be read again, and the client
            // gets the redirect this once.
            Again::Redirect(r) if !cluster.knows(&r.address) => {
                cluster.wake.notify_one();
                return false;
            }
            Again::Redirect(r) if r.ask => (cluster.node(&r.address), true, None),
            Again::Redirect(r) => {
                resend.home = cluster.moved(r.slot, &r.address);
                (resend.home, false, None)
            }
            Again::TryAgain => (resend.home, false, Some(TRYAGAIN_AFTER)),
        };
        match again {
            Again::Redirect(_) => resend.hops += 1,
            Again::TryAgain => resend.waits += 1,
        }
        resend.node = node;
        *parked = true;
        cluster
            .redirects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = if resend.own {
            self.ctx.upstream.own_on(id.db, id.proto, node)
        } else {
            id
        };
        let seq = *seq;
        let (data, frames) = asking_if(ask, resend.data.clone(), resend.frames);
        self.send_again(
            seq,
            crate::upstream::Identity { node, ..id },
            (data, frames),
            ask,
            delay,
        );
        true
    }

    /// Sends slot `seq`'s request again on a connection of `id` (now, or after `delay`:
    /// `-TRYAGAIN`), its reply resolving the slot (without `ASKING`'s).
    fn send_again(
        &mut self,
        seq: u64,
        id: crate::upstream::Identity,
        (data, frames): (Bytes, u32),
        ask: bool,
        delay: Option<std::time::Duration>,
    ) {
        let conn = self.ctx.upstream.shared(id, self.id);
        let (rtx, mut rrx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            data,
            frames,
            reply: Some(rtx),
            guard: None,
        };
        // Sent now, not from the task: redirected commands of one pipeline reach the
        // new node in their order.
        let job = match delay {
            None => {
                conn.send(job);
                None
            }
            Some(_) => Some(job),
        };
        self.follow_ups += 1;
        let tx = self.resolve_tx.clone();
        tokio::spawn(async move {
            if let (Some(job), Some(delay)) = (job, delay) {
                tokio::time::sleep(delay).await;
                conn.send(job);
            }
            let reply = rrx.recv().await.unwrap_or(Err(UpstreamError::Lost));
            let reply = match reply {
                Ok(b) if ask => Ok(skip_first_frame(b)),
                other => other,
            };
            let _ = tx.send((seq, reply));
        });
    }

    /// The node a follow-up of slot `idx` goes to: where its request went last.
    pub(super) fn slot_node(&self, idx: usize) -> Option<u16> {
        match self.slots.get(idx) {
            Some(Slot::Await {
                resend: Some(r), ..
            }) => Some(r.node),
            _ => None,
        }
    }

    /// A command every primary must run (`FanOut`): sent to each on a connection of
    /// the session's identity, the replies merged into one. Gives the command back if
    /// replies are owed.
    pub(super) fn send_fan_out(&mut self, how: FanOut, plan: crate::engine::Plan) {
        let Some(cluster) = &self.ctx.upstream.cluster else {
            return;
        };
        let id = self.identity();
        let conns: Vec<_> = cluster
            .primaries()
            .into_iter()
            .map(|node| {
                self.ctx
                    .upstream
                    .shared(crate::upstream::Identity { node, ..id }, self.id)
            })
            .collect();
        if conns.is_empty() {
            self.reply(NoNode::Unserved(0).reply());
            return;
        }
        let tx = self.reply_tx.clone();
        let (data, frames) = (plan.data, plan.frames);
        // Each node's reply becomes the client's as the plan says (a `KEYS` without
        // cachet's keys, a `FLUSHDB` block's own reply), then they are merged.
        let translate = match plan.settle {
            Settle::Translate(t) => t,
            _ => crate::engine::Translate::None,
        };
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(conns.len());
            for conn in conns {
                let (rtx, rrx) = tokio::sync::mpsc::unbounded_channel();
                conn.send(Job {
                    data: data.clone(),
                    frames,
                    reply: Some(rtx),
                    guard: None,
                });
                waiting.push(rrx);
            }
            let mut replies = Vec::with_capacity(waiting.len());
            for mut rx in waiting {
                match rx.recv().await.unwrap_or(Err(UpstreamError::Lost)) {
                    Ok(b) => replies.push(translate.apply(b)),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(how.merge(replies)));
        });
        self.route = Some(super::Route::Aux);
        self.await_reply(Settle::Forward, None, Post::Nothing);
    }
}

/// A redirected command of a batch: its bytes, its first reply frame, its frame count,
/// the node it goes to, and whether after `ASKING`.
type Redirected = (Bytes, usize, usize, u16, bool);

/// The commands of a batch whose replies (`frames`) say to go elsewhere or try again,
/// and whether any must wait (`-TRYAGAIN`). A redirect to a node the slot map never
/// named is not followed (the map is read again).
fn redirected_commands(
    cluster: &crate::upstream::cluster::Cluster,
    resend: &Resend,
    frames: &[Bytes],
) -> (Vec<Redirected>, bool) {
    let mut again = Vec::new();
    let (mut frame, mut start) = (0usize, 0usize);
    let mut wait = false;
    for &(end, n) in &resend.bounds {
        let command = resend
            .data
            .slice(start.min(end)..end.min(resend.data.len()));
        if let Some(a) = frames.get(frame).and_then(|f| again_in(f)) {
            let target = match a {
                Again::Redirect(r) if !cluster.knows(&r.address) => {
                    cluster.wake.notify_one();
                    None
                }
                Again::Redirect(r) if r.ask => Some((cluster.node(&r.address), true)),
                Again::Redirect(r) => Some((cluster.moved(r.slot, &r.address), false)),
                Again::TryAgain => {
                    wait = true;
                    Some((resend.node, false))
                }
            };
            if let Some((node, ask)) = target {
                again.push((command, frame, n as usize, node, ask));
            }
        }
        frame += n as usize;
        start = end;
    }
    (again, wait)
}

/// Sends a batch's redirected commands (after `TRYAGAIN_AFTER` when `jobs` are given:
/// Redis asked to wait) and splices their replies into the batch's `frames`, in place,
/// as the reply of slot `seq`.
async fn splice_batch(
    seq: u64,
    jobs: Option<Vec<(crate::upstream::SharedConn, Job)>>,
    waiting: Vec<(
        tokio::sync::mpsc::UnboundedReceiver<crate::upstream::Reply>,
        usize,
        usize,
        bool,
    )>,
    frames: Vec<Bytes>,
    tx: tokio::sync::mpsc::UnboundedSender<(u64, crate::upstream::Reply)>,
) {
    if let Some(jobs) = jobs {
        tokio::time::sleep(TRYAGAIN_AFTER).await;
        for (conn, job) in jobs {
            conn.send(job);
        }
    }
    let mut replaced = std::collections::HashMap::new();
    for (mut rx, first, n, ask) in waiting {
        match rx.recv().await.unwrap_or(Err(UpstreamError::Lost)) {
            Ok(b) => {
                let b = if ask { skip_first_frame(b) } else { b };
                replaced.insert(first, (b, n));
            }
            Err(e) => {
                let _ = tx.send((seq, Err(e)));
                return;
            }
        }
    }
    let mut out = BytesMut::new();
    let mut i = 0;
    while let Some(f) = frames.get(i) {
        match replaced.get(&i) {
            Some((b, n)) => {
                out.extend_from_slice(b);
                i += n;
            }
            None => {
                out.extend_from_slice(f);
                i += 1;
            }
        }
    }
    let _ = tx.send((seq, Ok(out.freeze())));
}

/// A cluster `SCAN` reply from the `index`th of `nodes` primaries with the client's
/// cursor in place of the node's (`Session::cluster_scan`).
pub(super) fn client_cursor(reply: Bytes, index: usize, nodes: usize) -> Bytes {
    let Some(el) = reply::elements(&reply) else {
        return reply;
    };
    let (Some(cursor), Some(keys)) = (el.first(), el.get(1)) else {
        return reply;
    };
    let Some(cursor) =
        reply::string_value(cursor).and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok())
    else {
        return reply;
    };
    let next = if cursor == 0 {
        if index + 1 < nodes {
            index as u64 + 1
        } else {
            0
        }
    } else {
        match cursor
            .checked_mul(nodes as u64)
            .and_then(|c| c.checked_add(index as u64))
        {
            Some(c) => c,
            None => return reply::error("ERR cachet: SCAN cursor out of range for this cluster"),
        }
    };
    let mut out = BytesMut::with_capacity(reply.len() + 8);
    reply::push_header(&mut out, b'*', 2);
    reply::push_bulk(&mut out, next.to_string().as_bytes());
    out.extend_from_slice(keys);
    out.freeze()
}

/// What a reply says to do again.
#[derive(Debug, PartialEq, Eq)]
enum Again {
    /// `-MOVED`, `-ASK`.
    Redirect(Redirect),
    /// `-TRYAGAIN`: a multi-key request (a key and its fill-protocol state, say) in a
    /// slot being migrated, with some keys moved already.
    TryAgain,
}

/// What a reply carries in its first frame, or (a block sent as `MULTI` … `EXEC` that
/// Redis refused) in a queued command's reply: top-level frames only, never text
/// inside a value (a stored value may read `-MOVED …`).
fn again_in(bytes: &[u8]) -> Option<Again> {
    let first = |b: &[u8]| {
        if b.starts_with(b"-TRYAGAIN") {
            return Some(Again::TryAgain);
        }
        Redirect::parse(b).map(Again::Redirect)
    };
    if bytes.first() == Some(&b'-') {
        return first(bytes);
    }
    if !bytes.starts_with(b"+OK\r\n") {
        return None;
    }
    let mut at = 0;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        let f = Scanner::default().scan(rest).ok()??;
        if rest.first() == Some(&b'-') {
            return first(rest.get(..f.len)?);
        }
        at += f.len;
    }
    None
}

/// `data` (of `frames` reply frames), after `ASKING` when `ask`.
fn asking_if(ask: bool, data: Bytes, frames: u32) -> (Bytes, u32) {
    if !ask {
        return (data, frames);
    }
    let mut d = BytesMut::with_capacity(ASKING.len() + data.len());
    d.extend_from_slice(ASKING);
    d.extend_from_slice(&data);
    (d.freeze(), frames + 1)
}

/// A reply of several frames, frame by frame; `None` if it does not parse.
fn split_frames(bytes: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let f = Scanner::default().scan(bytes.get(at..)?).ok()??;
        out.push(bytes.slice(at..at + f.len));
        at += f.len;
    }
    Some(out)
}

/// The reply without its first frame (`ASKING`'s `+OK`).
fn skip_first_frame(b: Bytes) -> Bytes {
    match Scanner::default().scan(&b) {
        Ok(Some(f)) => b.slice(f.len.min(b.len())..),
        _ => b,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_found_in_blocks() {
        assert!(again_in(b"-MOVED 1 h:1\r\n").is_some());
        let block = b"+OK\r\n-MOVED 7 h:2\r\n-EXECABORT Transaction discarded\r\n";
        match again_in(block) {
            Some(Again::Redirect(r)) => assert_eq!(r.slot, 7),
            other => panic!("{other:?}"),
        }
        assert!(again_in(b"$5\r\n-MOVE\r\n").is_none());
        assert_eq!(
            again_in(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Again::TryAgain)
        );
        assert_eq!(
            &skip_first_frame(Bytes::from_static(b"+OK\r\n:1\r\n"))[..],
            b":1\r\n"
        );
    }

    #[test]
    fn splits_keep_the_clients_order() {
        let req = Request::from_args(["MGET", "a", "b", "{a}x", "c"]);
        let (parts, order) = split_by_slot(&req.args, 1).unwrap();
        assert_eq!(
            parts[0].args,
            Request::from_args(["MGET", "a", "{a}x"]).args
        );
        assert_eq!(order[0], (0, 0));
        assert_eq!(order[2], (0, 1));
        let split = Split {
            merge: Merge::Values,
            parts: parts.len(),
            order,
            discard: false,
        };
        let replies: Vec<Bytes> = parts
            .iter()
            .map(|p| {
                let mut out = BytesMut::new();
                reply::push_header(&mut out, b'*', p.args.len() as i64 - 1);
                for k in &p.args[1..] {
                    reply::push_bulk(&mut out, k);
                }
                out.freeze()
            })
            .collect();
        assert_eq!(
            &split.merge(&replies)[..],
            b"*4\r\n$1\r\na\r\n$1\r\nb\r\n$4\r\n{a}x\r\n$1\r\nc\r\n"
        );
        let mset = Request::from_args(["MSET", "a", "1", "b", "2", "{a}", "3"]);
        let (parts, _) = split_by_slot(&mset.args, 2).unwrap();
        assert_eq!(
            parts[0].args,
            Request::from_args(["MSET", "a", "1", "{a}", "3"]).args
        );
        assert!(split_by_slot(&Request::from_args(["MSET", "a"]).args, 2).is_none());
    }

    #[test]
    fn scan_cursors_walk_every_primary() {
        let reply = |c: &str| {
            let mut out = BytesMut::new();
            reply::push_header(&mut out, b'*', 2);
            reply::push_bulk(&mut out, c.as_bytes());
            out.extend_from_slice(b"*1\r\n$1\r\nk\r\n");
            out.freeze()
        };
        assert_eq!(&client_cursor(reply("7"), 1, 3)[..], &reply("22")[..]);
        assert_eq!(&client_cursor(reply("0"), 1, 3)[..], &reply("2")[..]);
        assert_eq!(&client_cursor(reply("0"), 2, 3)[..], &reply("0")[..]);
        assert!(client_cursor(reply("18446744073709551615"), 1, 3).starts_with(b"-ERR"));
    }

    #[test]
    fn fan_out_merges() {
        let sum = FanOut::Sum.merge(vec![
            Bytes::from_static(b":2\r\n"),
            Bytes::from_static(b":3\r\n"),
        ]);
        assert_eq!(&sum[..], b":5\r\n");
        let keys = FanOut::Concat.merge(vec![
            Bytes::from_static(b"*1\r\n$1\r\na\r\n"),
            Bytes::from_static(b"*0\r\n"),
            Bytes::from_static(b"*1\r\n$1\r\nb\r\n"),
        ]);
        assert_eq!(&keys[..], b"*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        let err = FanOut::All.merge(vec![
            Bytes::from_static(b"+OK\r\n"),
            Bytes::from_static(b"-ERR no\r\n"),
        ]);
        assert_eq!(&err[..], b"-ERR no\r\n");
    }
}
