//! Who an upstream connection is logged in as: nobody (a connection that never sent
//! `AUTH`, which Redis serves as its `default` user when that user needs no password),
//! cachet's own user (the upstream URL's credentials), or the user a client logged in
//! as. Every client's commands run on connections of its own login, so that Redis
//! itself enforces its passwords and ACLs on them (docs/security.md).
//!
//! Logins are interned: one [`Login`] per (user, password) pair in use, named by a
//! small [`LoginId`] that connection identities carry. The registry is bounded
//! (`[upstream] max_users`); a login no session and no connection uses any more is
//! forgotten.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Names a [`Login`] inside one cachet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LoginId(u32);

impl LoginId {
    /// A connection that sends no `AUTH`.
    pub const ANONYMOUS: LoginId = LoginId(0);
}

/// What a login may do through cachet's rewrites (docs/security.md, "What a user needs").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Not checked yet.
    Unknown,
    /// May run every command cachet adds to its writes, or cannot be checked (Redis
    /// before 7.0 has no `redis.acl_check_cmd`): Redis then answers for itself.
    Able,
    /// Lacks these rights (`+multi`, `&channel`, …), in words for the client's error.
    Lacks(String),
}

/// One upstream user and its password, as connections log in.
#[derive(Debug)]
pub struct Login {
    pub id: LoginId,
    /// `AUTH`'s arguments after the command: `[password]` or `[user, password]`;
    /// empty for the anonymous login.
    auth: Vec<Bytes>,
    /// The ACL user's name (`default` for a password-only `AUTH`).
    pub user: Bytes,
    /// Redis refused the credentials on a new connection (the user was deleted, or
    /// its password changed): sessions logged in as it end, as Redis ends them.
    revoked: AtomicBool,
    revoked_notify: Notify,
    capability: std::sync::Mutex<(Capability, Option<Instant>)>,
}

/// How long a checked [`Capability`] is trusted before it is checked again.
pub const CAPABILITY_FRESH: Duration = Duration::from_secs(1);

impl Login {
    fn new(id: LoginId, user: Option<Bytes>, password: Option<Bytes>) -> Login {
        let auth: Vec<Bytes> = match (&user, password) {
            (_, None) => Vec::new(),
            (None, Some(p)) => vec![p],
            (Some(u), Some(p)) => vec![u.clone(), p],
        };
        Login {
            id,
            auth,
            user: user.unwrap_or_else(|| Bytes::from_static(b"default")),
            revoked: AtomicBool::new(false),
            revoked_notify: Notify::new(),
            capability: std::sync::Mutex::new((Capability::Unknown, None)),
        }
    }

    /// A stand-in for a login the registry no longer has; revoked by its caller.
    pub(super) fn forgotten(id: LoginId) -> Login {
        Login::new(
            id,
            Some(Bytes::from_static(b"(forgotten)")),
            Some(Bytes::new()),
        )
    }

    /// The `AUTH` command a new connection sends, if any.
    pub fn auth_command(&self) -> Option<Vec<Bytes>> {
        if self.auth.is_empty() {
            return None;
        }
        let mut c = Vec::with_capacity(self.auth.len() + 1);
        c.push(Bytes::from_static(b"AUTH"));
        c.extend(self.auth.iter().cloned());
        Some(c)
    }

    pub fn is_anonymous(&self) -> bool {
        self.id == LoginId::ANONYMOUS
    }

    /// Redis no longer accepts these credentials.
    pub fn revoke(&self) {
        if !self.revoked.swap(true, Ordering::AcqRel) {
            tracing::info!(user = %String::from_utf8_lossy(&self.user), "the upstream refused a client user's credentials (user deleted or password changed); ending its sessions");
            self.revoked_notify.notify_waiters();
        }
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Completes once the login is revoked.
    pub async fn revoked(&self) {
        loop {
            let notified = self.revoked_notify.notified();
            if self.is_revoked() {
                return;
            }
            notified.await;
        }
    }

    /// The last capability checked, and whether it is due for another check.
    pub fn capability(&self) -> (Capability, bool) {
        let guard = match self.capability.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let due = guard.1.is_none_or(|at| at.elapsed() >= CAPABILITY_FRESH);
        (guard.0.clone(), due)
    }

    /// Records a check's outcome; `None` keeps the last one (the check itself failed).
    pub fn set_capability(&self, c: Option<Capability>) {
        let mut guard = match self.capability.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = c {
            guard.0 = c;
        }
        guard.1 = Some(Instant::now());
    }

    /// Marks a check as started, so that only one runs at a time; false if one is
    /// running or the last one is fresh.
    pub fn start_check(&self) -> bool {
        let mut guard = match self.capability.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let due = guard.1.is_none_or(|at| at.elapsed() >= CAPABILITY_FRESH);
        if due {
            guard.1 = Some(Instant::now());
        }
        due
    }
}

/// Whether a connection that presents no credentials may run commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Not found out yet (the upstream has not been reached): clients' commands go on
    /// connections without credentials, where Redis refuses them itself if it must.
    Unknown,
    /// Redis serves such a connection as its `default` user.
    Open,
    /// Redis answers `-NOAUTH`: clients must log in first.
    NeedsAuth,
}

/// Every login in use.
#[derive(Debug)]
pub struct Logins {
    own: Arc<Login>,
    anonymous: Arc<Login>,
    by_id: DashMap<LoginId, Arc<Login>>,
    by_credentials: DashMap<(Option<Bytes>, Bytes), LoginId>,
    next: AtomicU32,
    max: usize,
    access: AtomicU8,
    probing: AtomicBool,
}

/// Why a login could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyUsers(pub usize);

impl Logins {
    /// `own`: the upstream URL's credentials (user, password), if any. `max`: how
    /// many client logins may be in use at once.
    pub fn new(own: Option<(Option<String>, String)>, max: usize) -> Logins {
        let anonymous = Arc::new(Login::new(LoginId::ANONYMOUS, None, None));
        let by_id = DashMap::new();
        let by_credentials = DashMap::new();
        by_id.insert(LoginId::ANONYMOUS, anonymous.clone());
        let own = match own {
            None => anonymous.clone(),
            Some((user, password)) => {
                let user = user.map(Bytes::from);
                let password = Bytes::from(password);
                let id = LoginId(1);
                let login = Arc::new(Login::new(id, user.clone(), Some(password.clone())));
                // cachet's own rights are the operator's choice: never checked.
                login.set_capability(Some(Capability::Able));
                by_id.insert(id, login.clone());
                by_credentials.insert((user, password), id);
                login
            }
        };
        Logins {
            own,
            anonymous,
            by_id,
            by_credentials,
            next: AtomicU32::new(2),
            max,
            access: AtomicU8::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// cachet's own login (the anonymous one when the URL names no credentials).
    pub fn own(&self) -> &Arc<Login> {
        &self.own
    }

    pub fn anonymous(&self) -> &Arc<Login> {
        &self.anonymous
    }

    pub fn get(&self, id: LoginId) -> Option<Arc<Login>> {
        self.by_id.get(&id).map(|l| l.clone())
    }

    /// The login for credentials Redis just accepted: the existing one, or a new one
    /// if there is room (logins nobody uses any more are forgotten first).
    pub fn intern(&self, user: Option<Bytes>, password: Bytes) -> Result<Arc<Login>, TooManyUsers> {
        // `AUTH default p` and `AUTH p` log in as the same user.
        let user = user.filter(|u| u.as_ref() != b"default");
        let key = (user.clone(), password.clone());
        if let Some(id) = self.by_credentials.get(&key).map(|id| *id)
            && let Some(login) = self.get(id)
            && !login.is_revoked()
        {
            return Ok(login);
        }
        if self.by_id.len() >= self.max + 2 {
            self.forget_unused();
        }
        if self.by_id.len() >= self.max + 2 {
            return Err(TooManyUsers(self.max));
        }
        let id = LoginId(self.next.fetch_add(1, Ordering::Relaxed));
        let login = Arc::new(Login::new(id, user, Some(password)));
        self.by_id.insert(id, login.clone());
        self.by_credentials.insert(key, id);
        Ok(login)
    }

    /// Drops logins held by nothing but this registry (no session, no connection).
    pub fn forget_unused(&self) {
        let own = self.own.id;
        self.by_id.retain(|id, login| {
            *id == LoginId::ANONYMOUS || *id == own || Arc::strong_count(login) > 1
        });
        self.by_credentials
            .retain(|_, id| self.by_id.contains_key(id));
    }

    /// Client logins in use (neither anonymous nor cachet's own).
    pub fn in_use(&self) -> usize {
        self.by_id
            .iter()
            .filter(|e| *e.key() != LoginId::ANONYMOUS && *e.key() != self.own.id)
            .count()
    }

    /// Whether a client that has not logged in may run commands.
    pub fn anonymous_access(&self) -> Anonymous {
        match self.access.load(Ordering::Acquire) {
            1 => Anonymous::Open,
            2 => Anonymous::NeedsAuth,
            _ => Anonymous::Unknown,
        }
    }

    pub fn set_anonymous_access(&self, a: Anonymous) {
        let v = match a {
            Anonymous::Unknown => 0,
            Anonymous::Open => 1,
            Anonymous::NeedsAuth => 2,
        };
        let was = self.access.swap(v, Ordering::AcqRel);
        if was != v && a != Anonymous::Unknown {
            tracing::info!(
                needs_auth = a == Anonymous::NeedsAuth,
                "found out whether the upstream serves clients that do not log in"
            );
        }
    }

    /// Claims the right to run the anonymous probe; `finish_probe` gives it back.
    pub fn start_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    pub fn finish_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }
}

/// A new connection as `login` failed with `err`: if Redis refused a client login's
/// credentials, the login is revoked.
pub fn refused(login: &Login, logins: &Logins, err: &super::UpstreamError) {
    if let super::UpstreamError::Handshake(msg) = err
        && msg.starts_with("WRONGPASS")
        && !login.is_anonymous()
        && login.id != logins.own().id
    {
        login.revoke();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn interns_and_bounds_logins() {
        let logins = Logins::new(Some((None, "own".into())), 2);
        assert_eq!(logins.own().id, LoginId(1));
        assert_eq!(
            logins.own().auth_command().unwrap(),
            vec![Bytes::from("AUTH"), Bytes::from("own")]
        );
        // The URL's credentials are cachet's own login.
        let same = logins.intern(None, Bytes::from("own")).unwrap();
        assert_eq!(same.id, logins.own().id);
        let same = logins
            .intern(Some(Bytes::from("default")), Bytes::from("own"))
            .unwrap();
        assert_eq!(same.id, logins.own().id);
        let a = logins
            .intern(Some(Bytes::from("a")), Bytes::from("pa"))
            .unwrap();
        let a2 = logins
            .intern(Some(Bytes::from("a")), Bytes::from("pa"))
            .unwrap();
        assert_eq!(a.id, a2.id);
        let b = logins
            .intern(Some(Bytes::from("b")), Bytes::from("pb"))
            .unwrap();
        assert_eq!(logins.in_use(), 2);
        assert_eq!(
            logins
                .intern(Some(Bytes::from("c")), Bytes::from("pc"))
                .unwrap_err(),
            TooManyUsers(2)
        );
        // Once nobody holds `b`, its place is free.
        drop(b);
        let c = logins
            .intern(Some(Bytes::from("c")), Bytes::from("pc"))
            .unwrap();
        assert_eq!(&c.user[..], b"c");
        assert!(logins.get(a.id).is_some());
        // A revoked login is not handed out again.
        a.revoke();
        drop((a2, c));
        let a3 = logins
            .intern(Some(Bytes::from("a")), Bytes::from("pa"))
            .unwrap();
        assert!(!a3.is_revoked());
    }

    #[test]
    fn anonymous_login_sends_no_auth() {
        let logins = Logins::new(None, 4);
        assert!(logins.own().is_anonymous());
        assert!(logins.own().auth_command().is_none());
        assert_eq!(&logins.anonymous().user[..], b"default");
        assert_eq!(logins.anonymous_access(), Anonymous::Unknown);
        logins.set_anonymous_access(Anonymous::NeedsAuth);
        assert_eq!(logins.anonymous_access(), Anonymous::NeedsAuth);
    }
}
