//! One command: where it goes (`dispatch.rs` decides) and the session acting on it.

use std::sync::Arc;

use bytes::Bytes;

use super::dispatch::{self, Change, Route as Dispatched, View};
use super::pinned::Pinned;
use super::replies::Post;
use super::{Session, admin_cmd};
use crate::command::{CommandInfo, CommandKind};
use crate::metrics::Outcome;
use crate::policy::Renamed;
use crate::resp::Request;

impl Session {
    /// Routes one command; gives it back if it must wait. `fresh`: just decoded (not
    /// a stalled command coming back), so `[commands] rename` still applies.
    pub(super) async fn handle(&mut self, req: Request, fresh: bool) -> Option<Request> {
        let req = if fresh {
            match self.policy.rename(req) {
                Renamed::Run(req) => req,
                Renamed::Unknown(err) => return self.refuse(err).await,
            }
        } else {
            req
        };
        let info = self.table.lookup(&req.args).cloned();
        self.handle_named(req, info).await
    }

    /// [`handle`](Self::handle) once the command is named (renamed already): `info`
    /// is its entry in the command table.
    pub(super) async fn handle_named(
        &mut self,
        req: Request,
        info: Option<Arc<CommandInfo>>,
    ) -> Option<Request> {
        // Kept for the slow-command log only.
        self.current = if self.slow.is_zero() {
            None
        } else {
            info.clone()
        };
        self.tally = Some(match &info {
            Some(i) => i.tally.0.clone(),
            None => self.ctx.metrics.commands.unknown.0.clone(),
        });
        let route = dispatch::dispatch(
            &req,
            info.as_deref(),
            &self.table,
            &self.policy,
            &self.view(),
        );
        let kind = info.as_ref().map_or(CommandKind::Plain, |i| i.kind);
        match route {
            Dispatched::Admin => self.admin(req),
            Dispatched::Local(change, reply) => {
                self.local(change, reply);
                None
            }
            Dispatched::Refuse(err) => self.refuse(err).await,
            Dispatched::Quit => {
                self.queue(Bytes::from_static(crate::resp::reply::OK));
                self.closing = true;
                None
            }
            Dispatched::Reset => {
                if self.inflight > 0 {
                    return Some(req);
                }
                self.reset();
                self.queue(Bytes::from_static(b"+RESET\r\n"));
                None
            }
            Dispatched::Hello => self.hello(req).await,
            Dispatched::AuthLocal => {
                self.auth_local(&req);
                None
            }
            Dispatched::AuthUpstream => self.auth_upstream(req, Post::Nothing),
            Dispatched::Pinned { .. }
                if kind == CommandKind::ClientTracking
                    && req.args.iter().any(|a| a.eq_ignore_ascii_case(b"REDIRECT")) =>
            {
                self.tracking_redirect(req).await
            }
            Dispatched::Pinned { blocking } => self.send_pinned(req, kind, blocking).await,
            Dispatched::Shared => self.send_shared(req, info.as_deref()).await,
            Dispatched::Control => self.send_control(req),
            Dispatched::ClientUnblock => self.client_unblock(req),
            Dispatched::ClientKillId(id) => {
                self.client_kill_id(id);
                None
            }
        }
    }

    /// What the session is in, as the dispatch decision needs it.
    pub(super) fn view(&self) -> View<'_> {
        View {
            id: self.id,
            authed: self.logged_in(),
            auth_enabled: self.auth.enabled(),
            in_multi: self.pinned.as_ref().is_some_and(|p| p.multi) || self.deferred_multi,
            resp2_subscribed: self.pinned.as_ref().is_some_and(Pinned::resp2_subscribed),
            pinned: self.pinned.is_some() || self.deferred_multi,
            proto: self.proto,
            name: self.name.as_ref(),
            reply_mode: self.reply_mode,
            databases: self.server.0,
            has_setinfo: self.server.1,
        }
    }

    /// `CLIENT KILL ID <id>`: closes the session with that id (`:1`), or `:0`.
    fn client_kill_id(&mut self, id: u64) {
        let killed = match self.ctx.sessions.get(&id) {
            Some(control) => {
                control.kill();
                1
            }
            None => 0,
        };
        let mut out = bytes::BytesMut::new();
        crate::resp::reply::push_int(&mut out, killed);
        self.reply(out.freeze());
    }

    /// `CACHET …`; gives `EXPLAIN` back while replies are owed on another route (it is
    /// asked of Redis on a connection of its own, after what is owed).
    fn admin(&mut self, req: Request) -> Option<Request> {
        let explaining = req.args.len() == 3
            && req
                .args
                .get(1)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"EXPLAIN"));
        if explaining && self.inflight > 0 && self.route != Some(super::Route::Aux) {
            return Some(req);
        }
        self.admin_now(&req);
        None
    }

    fn admin_now(&mut self, req: &Request) {
        self.tally = Some(self.ctx.metrics.commands.cachet.0.clone());
        if req.args.len() == 3
            && req
                .args
                .get(1)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"EXPLAIN"))
            && let Some(key) = req.args.get(2)
        {
            self.explain(key.clone());
            return;
        }
        let r = admin_cmd::answer(&self.ctx, &self.engine, &req.args);
        // A reload applies from the next command on.
        self.engine = self.ctx.engine.load_full();
        self.load_access();
        self.reply(r);
    }

    /// `CACHET EXPLAIN <key>`: asks Redis for the key's state (as cachet's own user),
    /// then answers with what it means.
    fn explain(&mut self, key: Bytes) {
        let engine = self.engine.clone();
        let Some(query) = admin_cmd::explain_query(&engine, &key) else {
            let r = admin_cmd::explain(&engine, &key, None);
            self.reply(r);
            return;
        };
        let ctx = self.ctx.clone();
        let tx = self.reply_tx.clone();
        let db = self.db;
        tokio::spawn(async move {
            let upstream = &ctx.upstream;
            let own = upstream.logins.own().clone();
            let id = upstream.own(db, 2);
            let limit = upstream.settings().command_timeout;
            let result = async {
                let mut conn = upstream.connect_as_identity(&own, id).await?;
                tokio::time::timeout(
                    limit,
                    crate::upstream::connect::roundtrip(&mut conn, &query),
                )
                .await
                .map_err(|_| crate::upstream::UpstreamError::Timeout(limit))?
            }
            .await;
            let _ =
                tx.send(result.map(|replies| admin_cmd::explain(&engine, &key, Some(&replies))));
        });
        self.route = Some(super::Route::Aux);
        self.await_reply(
            crate::engine::Settle::Forward,
            None,
            super::replies::Post::Nothing,
        );
    }

    /// A command answered by the session itself.
    fn local(&mut self, change: Change, reply: Option<Bytes>) {
        match change {
            Change::Db(db) => self.db = db,
            Change::Name(name) => self.name = name,
            Change::ReplyMode(mode) => self.reply_mode = mode,
            Change::Nothing => {}
        }
        match reply {
            Some(r) => self.reply(r),
            None => {
                if let Some(t) = self.tally.take() {
                    t.count(Outcome::Ok);
                }
            }
        }
    }
}
