//! A session's login and protocol: `AUTH` (against `[auth]`, or checked upstream on a
//! connection of its own), `HELLO` (protocol, name, `AUTH`), `RESET`, and the access
//! rules a reload may swap. A login decides who the client's commands run as upstream
//! (docs/security.md).

use std::sync::Arc;

use bytes::Bytes;

use super::replies::Post;
use super::{Route, Session, local};
use crate::auth::RunsAs;
use crate::resp::{Request, reply};
use crate::upstream::login::TooManyUsers;
use crate::upstream::{Login, UpstreamError, connect};

impl Session {
    /// `AUTH` checked by cachet (`[auth]`): the user's commands then run as the
    /// upstream user it names, or as cachet's own.
    pub(super) fn auth_local(&mut self, req: &Request) {
        let r = match self.auth.auth_command(&req.args) {
            Ok(runs_as) => match self.runs_as(&runs_as) {
                Ok(login) => {
                    self.authed = true;
                    self.login = login;
                    Bytes::from_static(reply::OK)
                }
                Err(e) => e,
            },
            Err(e) => {
                if e.starts_with(b"-WRONGPASS") {
                    self.auth_failed();
                }
                e
            }
        };
        self.reply(r);
    }

    /// The login a local user's commands run as.
    fn runs_as(&self, runs_as: &RunsAs) -> Result<Arc<Login>, Bytes> {
        match runs_as {
            RunsAs::Own => Ok(self.ctx.upstream.logins.own().clone()),
            RunsAs::User { name, password } => self.intern(Some(name.clone()), password.clone()),
            RunsAs::Unreadable(why) => {
                tracing::warn!(error = %why, "a user's upstream password cannot be read; refusing its login");
                Err(reply::error(
                    "ERR cachet: this user's upstream password cannot be read; see cachet's log",
                ))
            }
        }
    }

    /// The login for credentials Redis (or `[auth]`) accepted.
    fn intern(&self, user: Option<Bytes>, password: Bytes) -> Result<Arc<Login>, Bytes> {
        self.ctx
            .upstream
            .login(user, password)
            .map_err(|TooManyUsers(max)| {
                reply::error(&format!(
                    "ERR cachet: too many upstream users logged in at once (upstream.max_users = {max})"
                ))
            })
    }

    /// `AUTH`, checked against the upstream on a connection of its own that presents
    /// no credentials: the reply is Redis's own, and on success the client's commands
    /// run as that user from then on.
    pub(super) fn auth_upstream(&mut self, req: Request, post: Post) -> Option<Request> {
        if self.inflight > 0 && self.route != Some(Route::Aux) {
            return Some(req);
        }
        let upstream = self.ctx.clone();
        let tx = self.reply_tx.clone();
        let args = req.args.clone();
        tokio::spawn(async move {
            let upstream = &upstream.upstream;
            let result = async {
                let anonymous = upstream.logins.anonymous().clone();
                let mut conn = upstream.connect_as(&anonymous).await?;
                // `connect` is bounded by `connect_timeout`; the check by
                // `command_timeout`, as any command is.
                let limit = upstream.settings().command_timeout;
                let mut replies =
                    tokio::time::timeout(limit, connect::roundtrip(&mut conn, &[args]))
                        .await
                        .map_err(|_| UpstreamError::Timeout(limit))??;
                replies.pop().ok_or(UpstreamError::Lost)
            }
            .await;
            let _ = tx.send(result);
        });
        let post = match post {
            Post::Nothing => Post::Login(Box::new(credentials(&req.args))),
            other => other,
        };
        self.route = Some(Route::Aux);
        self.await_reply(crate::engine::Settle::Forward, None, post);
        None
    }

    /// A command Redis serves while busy with a script (`Route::Control`): sent on a
    /// connection of its own, as the client's user, in its database and protocol, so
    /// that no request of another client can be queued in front of it. `SHUTDOWN`
    /// that succeeds ends the connection without a reply, as Redis does.
    pub(super) fn send_control(&mut self, req: Request) -> Option<Request> {
        if self.inflight > 0 && self.route != Some(Route::Aux) {
            return Some(req);
        }
        let ctx = self.ctx.clone();
        let tx = self.reply_tx.clone();
        let login = self.login.clone();
        let id = self.identity();
        let shutdown = req
            .args
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"SHUTDOWN"));
        let args = req.args.clone();
        tokio::spawn(async move {
            let upstream = &ctx.upstream;
            let result = async {
                let mut conn = upstream.connect_as_identity(&login, id).await?;
                let limit = upstream.settings().command_timeout;
                let mut replies =
                    tokio::time::timeout(limit, connect::roundtrip(&mut conn, &[args]))
                        .await
                        .map_err(|_| UpstreamError::Timeout(limit))??;
                replies.pop().ok_or(UpstreamError::Lost)
            }
            .await;
            let result = match result {
                // The server went away on `SHUTDOWN`: the client's connection ends too.
                Err(UpstreamError::Unavailable(_)) if shutdown => Ok(Bytes::new()),
                other => other,
            };
            let _ = tx.send(result);
        });
        self.route = Some(Route::Aux);
        self.await_reply(crate::engine::Settle::Forward, None, Post::CloseIfEmpty);
        None
    }

    /// `CLIENT UNBLOCK <id> [TIMEOUT|ERROR]`: `id` is a session's. Its dedicated
    /// connection (where its blocking command waits) is found in `CLIENT LIST` by
    /// address, and Redis is asked to unblock that connection, as the client's user;
    /// its reply (`:1`, `:0`) is the client's. A session that holds no dedicated
    /// connection is not blocked: `:0`, as Redis answers.
    pub(super) fn client_unblock(&mut self, req: Request) -> Option<Request> {
        if self.inflight > 0 && self.route != Some(Route::Aux) {
            return Some(req);
        }
        let target = req
            .args
            .get(2)
            .and_then(|a| crate::resp::request::parse_int(a))
            .and_then(|id| u64::try_from(id).ok())
            .and_then(|id| self.ctx.sessions.get(&id).and_then(|c| c.pinned()));
        let Some(addr) = target else {
            self.reply(Bytes::from_static(b":0\r\n"));
            return None;
        };
        let ctx = self.ctx.clone();
        let tx = self.reply_tx.clone();
        let login = self.login.clone();
        let id = self.identity();
        let mode = req.args.get(3).cloned();
        tokio::spawn(async move {
            let upstream = &ctx.upstream;
            let limit = upstream.settings().command_timeout;
            let result = async {
                let Some(upstream_id) = upstream_client_id(upstream, addr).await? else {
                    return Ok(Bytes::from_static(b":0\r\n"));
                };
                let mut unblock = vec![
                    Bytes::from_static(b"CLIENT"),
                    Bytes::from_static(b"UNBLOCK"),
                    Bytes::from(upstream_id.to_string()),
                ];
                unblock.extend(mode);
                let mut conn = upstream.connect_as_identity(&login, id).await?;
                let mut replies =
                    tokio::time::timeout(limit, connect::roundtrip(&mut conn, &[unblock]))
                        .await
                        .map_err(|_| UpstreamError::Timeout(limit))??;
                replies.pop().ok_or(UpstreamError::Lost)
            }
            .await;
            let _ = tx.send(result);
        });
        self.route = Some(Route::Aux);
        self.await_reply(crate::engine::Settle::Forward, None, Post::Nothing);
        None
    }

    /// Redis accepted `credentials`: the client runs as that user from now on. `Err`
    /// replaces Redis's `+OK` (no room for another user).
    pub(super) fn logged_in_upstream(&mut self, credentials: Credentials) -> Result<(), Bytes> {
        let (user, password) = credentials;
        let login = self.intern(user, password)?;
        self.login = login;
        self.authed = true;
        Ok(())
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
                let Some(runs_as) = self.auth.login(Some(user), pass).cloned() else {
                    self.auth_failed();
                    self.reply(Bytes::from_static(crate::auth::WRONGPASS));
                    return None;
                };
                match self.runs_as(&runs_as) {
                    Ok(login) => self.login = login,
                    Err(e) => {
                        self.reply(e);
                        return None;
                    }
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
                login: Box::new((Some(user), pass)),
            };
            return self.auth_upstream(auth, post).map(|_| req);
        } else if !self.logged_in() {
            self.reply(Bytes::from_static(crate::auth::NOAUTH_HELLO));
            return None;
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
        // Redis logs a reset client in as `default`, which serves it only when that
        // user needs no password (`logged_in` asks); never while cachet authenticates
        // clients itself.
        self.authed = false;
        self.login = self.ctx.upstream.logins.anonymous().clone();
        self.shared = None;
        self.pinned = None;
        self.deferred_multi = false;
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
    }
}

/// The id `CLIENT LIST` gives the connection at `addr` (`addr=ip:port` on its line).
/// The id Redis gives cachet's upstream connection at `addr` (cachet's side), from
/// `CLIENT LIST` asked as cachet's own user; `None` when no such connection is listed.
async fn upstream_client_id(
    upstream: &crate::upstream::Upstream,
    at: crate::context::PinnedAt,
) -> Result<Option<u64>, UpstreamError> {
    let addr = match at {
        crate::context::PinnedAt::Id(id) => return Ok(Some(id)),
        crate::context::PinnedAt::Addr(addr) => addr,
    };
    let limit = upstream.settings().command_timeout;
    let own = upstream.logins.own().clone();
    let mut conn = upstream.connect_as(&own).await?;
    let list = vec![Bytes::from_static(b"CLIENT"), Bytes::from_static(b"LIST")];
    let replies = tokio::time::timeout(limit, connect::roundtrip(&mut conn, &[list]))
        .await
        .map_err(|_| UpstreamError::Timeout(limit))??;
    Ok(replies.first().and_then(|l| client_id_at(l, addr)))
}

impl Session {
    /// `CLIENT TRACKING ON … REDIRECT <id>`: `id` is a session's, whose dedicated
    /// connection (subscribed to `__redis__:invalidate`) is to receive this client's
    /// invalidation messages. The id is translated to that connection's id upstream,
    /// and the command sent on this session's own dedicated connection. An id no
    /// session with a dedicated connection has gets Redis's own error.
    pub(super) async fn tracking_redirect(&mut self, req: Request) -> Option<Request> {
        if self.inflight > 0 {
            return Some(req);
        }
        let at = req
            .args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"REDIRECT"))
            .map(|i| i + 1);
        let Some(id) = at
            .and_then(|i| req.args.get(i))
            .and_then(|a| crate::resp::request::parse_int(a))
        else {
            // No id, or not a number: Redis says so in its own words.
            return self
                .send_pinned(req, crate::command::CommandKind::ClientTracking, false)
                .await;
        };
        let target = u64::try_from(id)
            .ok()
            .and_then(|id| self.ctx.sessions.get(&id).and_then(|c| c.pinned()));
        let no_such =
            || Bytes::from_static(b"-ERR The client ID you want redirect to does not exist\r\n");
        let (Some(at), Some(addr)) = (at, target) else {
            self.reply(no_such());
            return None;
        };
        let upstream_id = match upstream_client_id(&self.ctx.upstream, addr).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                self.reply(no_such());
                return None;
            }
            Err(e) => {
                self.reply(e.reply());
                return None;
            }
        };
        let mut args = req.args.clone();
        if let Some(a) = args.get_mut(at) {
            *a = Bytes::from(upstream_id.to_string());
        }
        let translated = Request::from_args(args.iter().map(|a| &a[..]));
        self.send_pinned(
            translated,
            crate::command::CommandKind::ClientTracking,
            false,
        )
        .await
    }
}

fn client_id_at(list: &[u8], addr: std::net::SocketAddr) -> Option<u64> {
    let text = std::str::from_utf8(crate::resp::reply::string_value(list)?).ok()?;
    let want = format!("addr={addr}");
    text.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let id = fields.next()?.strip_prefix("id=")?.parse().ok()?;
        fields.any(|f| f == want).then_some(id)
    })
}

/// A client's `AUTH` credentials: the user (`None`: the `default` user) and password.
pub(super) type Credentials = (Option<Bytes>, Bytes);

/// The credentials of a well-formed `AUTH [user] password` (Redis checks the form).
fn credentials(args: &[Bytes]) -> Credentials {
    match args {
        [_, user, password] => (Some(user.clone()), password.clone()),
        [_, password] => (None, password.clone()),
        _ => (None, Bytes::new()),
    }
}
