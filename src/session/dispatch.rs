//! Where a decoded command goes: a pure decision from the command, the command table,
//! the policy and what the session is in. The session acts on it; this decides.
//!
//! The order of the checks is Redis's: an unknown command and a wrong number of
//! arguments are reported before a missing login; inside a transaction everything but
//! `QUIT`/`RESET` is queued upstream (where Redis answers for it); in RESP2 subscribe
//! mode Redis refuses session commands itself; then each kind goes where it belongs.

use bytes::{Bytes, BytesMut};

use super::local::{self, ReplyMode};
use crate::command::{CommandFlags, CommandInfo, CommandKind, CommandTable};
use crate::policy::Policy;
use crate::resp::{Request, reply};

/// What the session is in, as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub id: u64,
    pub authed: bool,
    /// cachet authenticates clients itself (`[auth]`).
    pub auth_enabled: bool,
    /// Inside the client's `MULTI`.
    pub in_multi: bool,
    /// A RESP2 connection in subscribe mode (once what was sent has run).
    pub resp2_subscribed: bool,
    /// The session holds a dedicated connection.
    pub pinned: bool,
    pub proto: u8,
    pub name: Option<&'a Bytes>,
    pub reply_mode: ReplyMode,
    pub databases: u32,
    /// The upstream knows `CLIENT SETINFO` (Redis 7.2+).
    pub has_setinfo: bool,
}

/// A change to the session's own state that a command makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Db(u32),
    Name(Option<Bytes>),
    ReplyMode(ReplyMode),
    /// Nothing changes (a command answered without effect, or without a reply).
    Nothing,
}

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// cachet's own command (`CACHET …`).
    Admin,
    /// Answered now; the session changes as said (applied before the reply, which
    /// `CLIENT REPLY` may suppress). `None`: no reply at all.
    Local(Change, Option<Bytes>),
    /// Refused by `[commands]` (or named a reserved key): inside the client's
    /// transaction the refusal must also abort it at `EXEC`.
    Refuse(Bytes),
    Quit,
    Reset,
    Hello,
    /// `AUTH`, checked by cachet (`[auth]`).
    AuthLocal,
    /// `AUTH`, checked against the upstream.
    AuthUpstream,
    /// Sent on the session's dedicated connection (pinning one if needed).
    Pinned {
        blocking: bool,
    },
    /// Sent on a shared connection, through the engine's plan.
    Shared,
    /// A command Redis serves while it runs a long script (`SCRIPT KILL`,
    /// `FUNCTION KILL`, `FUNCTION STATS`, `SHUTDOWN`): on a connection of its own,
    /// where nothing can be queued in front of it.
    Control,
    /// `CLIENT UNBLOCK <id>`: the id is a session's; its dedicated connection's is
    /// what Redis knows.
    ClientUnblock,
    /// `CLIENT KILL ID <id>`: ends that session.
    ClientKillId(u64),
}

/// Decides where `req` goes. `info` is its entry in `table` (`None`: unknown command).
pub fn dispatch(
    req: &Request,
    info: Option<&CommandInfo>,
    table: &CommandTable,
    policy: &Policy,
    v: &View<'_>,
) -> Route {
    use CommandKind as K;
    let first = req.args.first().map_or(&b""[..], |a| &a[..]);
    if super::admin_cmd::is_cachet(first) {
        if !v.authed {
            return Route::Local(
                Change::Nothing,
                Some(Bytes::from_static(crate::auth::NOAUTH)),
            );
        }
        return Route::Admin;
    }
    let kind = info.map_or(K::Plain, |i| i.kind);
    let arity_ok = info.is_none_or(|i| i.arity_ok(req.args.len()));
    if !v.authed
        && let Some(refusal) = crate::auth::before_login(table, info, &req.args)
    {
        return Route::Local(Change::Nothing, Some(refusal));
    }
    if let Some(err) = policy.refusal(first, info.map(|i| i.name.as_str())) {
        return Route::Refuse(err);
    }
    // Inside the client's transaction everything is queued upstream, except what ends
    // the connection itself. A malformed `RESET` goes too: Redis rejects it and that
    // rejection aborts the transaction.
    if v.in_multi && (!matches!(kind, K::Quit | K::Reset) || !arity_ok) {
        let logs_in = kind == K::Auth
            || (kind == K::Hello
                && req
                    .args
                    .iter()
                    .skip(2)
                    .any(|a| a.eq_ignore_ascii_case(b"AUTH")));
        if logs_in {
            // With `[auth]` the upstream must never see a client's password; without
            // it, a login inside the transaction would change the user of a
            // connection cachet thinks it knows. Either way cachet cannot answer
            // inside the upstream's transaction.
            return Route::Refuse(reply::error(
                "ERR cachet: AUTH and HELLO … AUTH cannot be queued in MULTI through cachet",
            ));
        }
        return Route::Pinned { blocking: false };
    }
    // In RESP2 subscribe mode Redis refuses every command but the subscribe family,
    // PING, QUIT and RESET, session commands included: let it say so.
    if v.resp2_subscribed
        && (kind == K::Auth || (local::answers(kind) && !matches!(kind, K::Quit | K::Reset)))
    {
        if v.auth_enabled && matches!(kind, K::Auth | K::Hello) {
            // Redis's refusal, said here: the upstream never sees a client's password.
            let name = info.map_or("auth", |i| i.name.as_str());
            return Route::Local(
                Change::Nothing,
                Some(reply::error(&format!(
                    "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                ))),
            );
        }
        return Route::Pinned { blocking: false };
    }
    // Redis checks arity before anything else; commands answered here must too.
    if !arity_ok && local::answers(kind) {
        let name = info.map_or("", |i| i.name.as_str());
        return Route::Local(Change::Nothing, Some(reply::wrong_arity(name)));
    }
    by_kind(req, info, kind, v)
}

/// Where a command goes by what it is, once the session's mode has had its say.
fn by_kind(req: &Request, info: Option<&CommandInfo>, kind: CommandKind, v: &View<'_>) -> Route {
    use CommandKind as K;
    match kind {
        K::Quit => Route::Quit,
        K::Reset => Route::Reset,
        K::Select => match local::select(&req.args, v.databases) {
            Ok(_) if v.pinned => Route::Pinned { blocking: false },
            Ok(db) => Route::Local(Change::Db(db), Some(Bytes::from_static(reply::OK))),
            Err(e) => Route::Local(Change::Nothing, Some(e)),
        },
        K::Hello => Route::Hello,
        K::Auth if v.auth_enabled => Route::AuthLocal,
        K::Auth => Route::AuthUpstream,
        K::ClientId | K::ClientGetName | K::ClientSetName | K::ClientReply => client(req, kind, v),
        K::ClientSetInfo if v.has_setinfo => client(req, kind, v),
        K::ClientUnblock if !v.pinned && unblock_form(&req.args) => Route::ClientUnblock,
        K::ClientKill if !v.pinned => match kill_id(&req.args) {
            Some(id) => Route::ClientKillId(id),
            None => Route::Shared,
        },
        K::Replication => Route::Local(
            Change::Nothing,
            Some(reply::error(
                "ERR cachet: replication commands (SYNC, PSYNC, REPLCONF) cannot go through a proxy; connect replicas to Redis directly",
            )),
        ),
        K::Multi
        | K::Watch
        | K::Subscribe
        | K::PSubscribe
        | K::SSubscribe
        | K::Unsubscribe
        | K::PUnsubscribe
        | K::SUnsubscribe
        | K::Monitor => Route::Pinned { blocking: false },
        K::ClientTracking
            if v.pinned
                || req
                    .args
                    .get(2)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"on")) =>
        {
            Route::Pinned { blocking: false }
        }
        _ => {
            let blocking = info.is_some_and(|i| i.is_blocking(&req.args));
            if blocking || v.pinned {
                Route::Pinned { blocking }
            } else if info.is_some_and(|i| i.flags.contains(CommandFlags::ALLOW_BUSY)) {
                Route::Control
            } else {
                Route::Shared
            }
        }
    }
}

/// `CLIENT UNBLOCK <id> [TIMEOUT|ERROR]` as Redis accepts it (anything else goes to
/// Redis, which answers its own error).
fn unblock_form(args: &[Bytes]) -> bool {
    let id_ok = args
        .get(2)
        .and_then(|a| crate::resp::request::parse_int(a))
        .is_some_and(|n| n > 0);
    let mode_ok = match args.get(3) {
        None => true,
        Some(m) => m.eq_ignore_ascii_case(b"TIMEOUT") || m.eq_ignore_ascii_case(b"ERROR"),
    };
    id_ok && mode_ok && args.len() <= 4
}

/// The id of `CLIENT KILL ID <id>` (the only filter), if that is the form.
fn kill_id(args: &[Bytes]) -> Option<u64> {
    match args {
        [_, _, filter, id] if filter.eq_ignore_ascii_case(b"ID") => {
            u64::try_from(crate::resp::request::parse_int(id)?)
                .ok()
                .filter(|&n| n > 0)
        }
        _ => None,
    }
}

/// The `CLIENT` subcommands that are the session's own.
fn client(req: &Request, kind: CommandKind, v: &View<'_>) -> Route {
    use CommandKind as K;
    let answer = |r: Bytes| Route::Local(Change::Nothing, Some(r));
    match kind {
        K::ClientId => {
            let mut out = BytesMut::new();
            reply::push_int(&mut out, v.id as i64);
            answer(out.freeze())
        }
        K::ClientGetName => answer(local::getname(v.name, v.proto)),
        K::ClientSetName => match req.args.get(2) {
            Some(name) if req.args.len() == 3 => match local::check_name(name) {
                Ok(()) => Route::Local(
                    Change::Name((!name.is_empty()).then(|| name.clone())),
                    Some(Bytes::from_static(reply::OK)),
                ),
                Err(e) => answer(e),
            },
            _ => answer(reply::wrong_arity("client|setname")),
        },
        K::ClientSetInfo => answer(match local::setinfo(&req.args) {
            Ok(()) => Bytes::from_static(reply::OK),
            Err(e) => e,
        }),
        _ => match local::reply_mode(&req.args) {
            Ok(ReplyMode::On) => Route::Local(
                Change::ReplyMode(ReplyMode::On),
                Some(Bytes::from_static(reply::OK)),
            ),
            // Redis ignores SKIP while replies are off.
            Ok(ReplyMode::Skip) if v.reply_mode == ReplyMode::Off => {
                Route::Local(Change::Nothing, None)
            }
            // Neither OFF nor SKIP is answered.
            Ok(mode) => Route::Local(Change::ReplyMode(mode), None),
            Err(e) => answer(e),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::CommandsConfig;

    fn view() -> View<'static> {
        View {
            id: 7,
            authed: true,
            auth_enabled: false,
            in_multi: false,
            resp2_subscribed: false,
            pinned: false,
            proto: 2,
            name: None,
            reply_mode: ReplyMode::On,
            databases: 16,
            has_setinfo: false,
        }
    }

    fn route_with(line: &str, v: &View<'_>, policy: &Policy) -> Route {
        let table = CommandTable::builtin();
        let req = Request::from_args(line.split(' '));
        let info = table.lookup(&req.args).cloned();
        dispatch(&req, info.as_deref(), &table, policy, v)
    }

    fn route(line: &str, v: &View<'_>) -> Route {
        route_with(line, v, &Policy::default())
    }

    fn local(r: Route) -> Option<Bytes> {
        match r {
            Route::Local(_, reply) => reply,
            other => panic!("not local: {other:?}"),
        }
    }

    #[test]
    fn data_commands_go_to_a_shared_connection_and_stateful_ones_pin() {
        let v = view();
        for line in [
            "GET k", "SET k v", "MGET a b", "EVAL x 0", "PING", "FLUSHALL",
        ] {
            assert_eq!(route(line, &v), Route::Shared, "{line}");
        }
        for line in [
            "MULTI",
            "WATCH k",
            "SUBSCRIBE c",
            "PSUBSCRIBE p*",
            "MONITOR",
            "CLIENT TRACKING on",
        ] {
            assert_eq!(route(line, &v), Route::Pinned { blocking: false }, "{line}");
        }
        for line in ["BLPOP l 0", "XREAD BLOCK 0 STREAMS s $", "WAIT 1 0"] {
            assert_eq!(route(line, &v), Route::Pinned { blocking: true }, "{line}");
        }
        assert_eq!(route("XREAD STREAMS s 0", &v), Route::Shared);
        assert_eq!(route("CLIENT TRACKING off", &v), Route::Shared);
        let pinned = View {
            pinned: true,
            ..view()
        };
        assert_eq!(route("GET k", &pinned), Route::Pinned { blocking: false });
        assert_eq!(
            route("SELECT 1", &pinned),
            Route::Pinned { blocking: false }
        );
    }

    #[test]
    fn session_state_is_answered_locally() {
        let v = view();
        assert_eq!(
            route("SELECT 3", &v),
            Route::Local(Change::Db(3), Some(Bytes::from_static(b"+OK\r\n")))
        );
        assert!(
            local(route("SELECT 16", &v))
                .unwrap()
                .starts_with(b"-ERR DB index")
        );
        assert_eq!(
            local(route("CLIENT ID", &v)).unwrap(),
            Bytes::from_static(b":7\r\n")
        );
        assert_eq!(
            route("CLIENT SETNAME app", &v),
            Route::Local(
                Change::Name(Some(Bytes::from_static(b"app"))),
                Some(Bytes::from_static(b"+OK\r\n"))
            )
        );
        assert_eq!(
            route("CLIENT REPLY OFF", &v),
            Route::Local(Change::ReplyMode(ReplyMode::Off), None)
        );
        let off = View {
            reply_mode: ReplyMode::Off,
            ..view()
        };
        assert_eq!(
            route("CLIENT REPLY SKIP", &off),
            Route::Local(Change::Nothing, None)
        );
        assert_eq!(route("HELLO 3", &v), Route::Hello);
        assert_eq!(route("QUIT", &v), Route::Quit);
        assert_eq!(route("RESET", &v), Route::Reset);
        assert_eq!(route("AUTH x", &v), Route::AuthUpstream);
        assert_eq!(route("CACHET INFO", &v), Route::Admin);
        assert!(
            local(route("SYNC", &v))
                .unwrap()
                .starts_with(b"-ERR cachet: replication")
        );
        // Arity first, as Redis does for the commands it answers itself.
        assert_eq!(
            local(route("SELECT", &v)).unwrap(),
            Bytes::from_static(b"-ERR wrong number of arguments for 'select' command\r\n")
        );
    }

    #[test]
    fn inside_a_transaction_everything_is_queued_but_quit_and_reset() {
        let v = View {
            in_multi: true,
            pinned: true,
            ..view()
        };
        for line in [
            "SELECT 1",
            "CLIENT SETNAME x",
            "HELLO 3",
            "GET k",
            "EXEC",
            "RESET x",
        ] {
            assert_eq!(route(line, &v), Route::Pinned { blocking: false }, "{line}");
        }
        // A login would change the user of the dedicated connection behind cachet's back.
        assert!(matches!(route("AUTH p", &v), Route::Refuse(_)));
        assert_eq!(route("QUIT", &v), Route::Quit);
        assert_eq!(route("RESET", &v), Route::Reset);
        let auth = View {
            auth_enabled: true,
            ..v
        };
        assert!(matches!(route("AUTH p", &auth), Route::Refuse(_)));
        assert!(matches!(route("HELLO 3 AUTH u p", &auth), Route::Refuse(_)));
    }

    #[test]
    fn resp2_subscribers_get_redis_refusals_for_session_commands() {
        let v = View {
            resp2_subscribed: true,
            pinned: true,
            ..view()
        };
        assert_eq!(route("SELECT 1", &v), Route::Pinned { blocking: false });
        assert_eq!(route("CLIENT ID", &v), Route::Pinned { blocking: false });
        assert_eq!(route("QUIT", &v), Route::Quit);
        let auth = View {
            auth_enabled: true,
            ..v
        };
        assert!(
            local(route("AUTH p", &auth))
                .unwrap()
                .starts_with(b"-ERR Can't execute 'auth'")
        );
    }

    #[test]
    fn logins_come_after_unknown_commands_and_arity() {
        let v = View {
            authed: false,
            auth_enabled: true,
            ..view()
        };
        assert_eq!(
            local(route("GET k", &v)).unwrap(),
            Bytes::from_static(crate::auth::NOAUTH)
        );
        assert!(
            local(route("GET", &v))
                .unwrap()
                .starts_with(b"-ERR wrong number")
        );
        assert!(
            local(route("NOSUCH", &v))
                .unwrap()
                .starts_with(b"-ERR unknown command")
        );
        assert_eq!(
            local(route("CACHET INFO", &v)).unwrap(),
            Bytes::from_static(crate::auth::NOAUTH)
        );
        assert_eq!(route("AUTH p", &v), Route::AuthLocal);
        assert_eq!(route("HELLO 3 AUTH u p", &v), Route::Hello);
    }

    #[test]
    fn policy_refusals_are_refusals() {
        let policy = Policy::new(&CommandsConfig {
            deny: vec!["FLUSHALL".into()],
            ..CommandsConfig::default()
        });
        assert!(matches!(
            route_with("FLUSHALL", &view(), &policy),
            Route::Refuse(_)
        ));
        assert_eq!(route_with("FLUSHDB", &view(), &policy), Route::Shared);
    }
}
