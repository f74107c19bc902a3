//! A session's login and protocol: `AUTH` (against `[auth]`, or checked upstream on a
//! connection of its own), `HELLO` (protocol, name, `AUTH`), `RESET`, and the access
//! rules a reload may swap.

use bytes::Bytes;

use super::replies::Post;
use super::{Route, Session, local};
use crate::resp::{Request, reply};
use crate::upstream::{Identity, UpstreamError, connect};

impl Session {
    /// `AUTH` checked by cachet (`[auth]`).
    pub(super) fn auth_local(&mut self, req: &Request) {
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
    }

    /// `AUTH`, checked against the upstream on a connection of its own: the reply is
    /// the upstream's own, and no shared connection changes user.
    pub(super) fn auth_upstream(&mut self, req: Request, post: Post) -> Option<Request> {
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
        self.route = Some(Route::Aux);
        self.await_reply(crate::engine::Settle::Forward, None, post);
        None
    }

    pub(super) async fn hello(&mut self, req: Request) -> Option<Request> {
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
            let post = Post::Hello {
                proto,
                setname: hello.setname,
            };
            return self.auth_upstream(auth, post).map(|_| req);
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
        self.proto = proto;
        if let Some(name) = hello.setname {
            self.name = (!name.is_empty()).then_some(name);
        }
        let r = local::hello_reply(&self.ctx.server.load(), proto, self.id);
        self.reply(r);
        None
    }

    /// `RESET`: back to a fresh connection's state.
    pub(super) fn reset(&mut self) {
        // Redis logs a reset client in as `default` only when that user needs no
        // password, which is never the case while cachet authenticates clients.
        self.authed = !self.auth.enabled();
        self.pinned = None;
        self.db = self.ctx.default_db;
        self.proto = 2;
        self.name = None;
        self.reply_mode = local::ReplyMode::On;
    }

    /// A refused login: counted, and logged without what was tried.
    pub(super) fn auth_failed(&self) {
        self.ctx
            .metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(session = self.id, peer = %self.peer, "client login refused");
    }

    /// The command policy and credentials a reload may have swapped.
    pub(super) fn load_access(&mut self) {
        self.policy = self.ctx.policy.load_full();
        self.auth = self.ctx.auth.load_full();
        // With `[auth]` removed nobody needs a login any more (Redis: a `default` user
        // without a password serves clients that never authenticated).
        if !self.auth.enabled() {
            self.authed = true;
        }
    }
}
