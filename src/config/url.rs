//! The upstream Redis URL: `redis[s]://[user[:password]@]host[:port][/db]`, or for a
//! primary found through Sentinel
//! `redis[s]+sentinel://[user[:password]@]host[:port],host[:port]…/master-name[/db]`
//! (sentinels' default port 26379; the credentials are the primary's), or for a Redis
//! Cluster `redis[s]+cluster://[user[:password]@]host[:port],host[:port]…[/0]` (seed
//! nodes; a cluster has database 0 only), or for a Redis on a Unix socket
//! `unix://[user[:password]@]/path/to/redis.sock[?db=N]` (redis-py's form).
//!
//! Parsed by hand (the grammar is small and fixed) so that no error message and no
//! `Display` or `Debug` output ever contains the password: URLs end up in logs.

use std::fmt;
use std::net::Ipv6Addr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Port used when the URL names none, as Redis clients do.
pub const DEFAULT_REDIS_PORT: u16 = 6379;
/// Port of a sentinel the URL names without one.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// A parsed `redis://`, `rediss://`, `redis+sentinel://` or `redis+cluster://` URL. Credentials are
/// percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `rediss://`: connect with TLS.
    pub tls: bool,
    /// Host name or IP address; IPv6 addresses without brackets. With Sentinel, the
    /// first sentinel's. For a Unix socket, its absolute path (and `port` is 0).
    pub host: String,
    pub port: u16,
    /// With Sentinel: the sentinels' addresses (`host:port`) and the primary's name.
    pub sentinel: Option<Sentinel>,
    /// With Redis Cluster: the seed nodes' addresses (`host:port`), in the order given.
    pub cluster: Option<Vec<String>>,
    /// Database selected after connecting (the URL path `/N`).
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The primary a set of sentinels watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// `host:port` of each sentinel, in the order given.
    pub addresses: Vec<String>,
    pub master: String,
}

impl UpstreamUrl {
    /// Parses `redis[s]://[user[:password]@]host[:port][/db]` or
    /// `redis[s]+sentinel://[user[:password]@]host[:port],…/master[/db]`. Messages never
    /// repeat the credentials.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let fail = |why: String| format!("invalid upstream URL: {why}");
        if let Some(rest) = s.strip_prefix("unix://") {
            return UpstreamUrl::parse_unix(rest).map_err(fail);
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            fail("expected redis://host:port/db or rediss://host:port/db".to_owned())
        })?;
        let (tls, sentinel, cluster) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (false, false, false),
            "rediss" => (true, false, false),
            "redis+sentinel" => (false, true, false),
            "rediss+sentinel" => (true, true, false),
            "redis+cluster" => (false, false, true),
            "rediss+cluster" => (true, false, true),
            _ => {
                return Err(fail(format!(
                    "unsupported scheme {scheme:?}: expected redis, rediss, redis+sentinel, redis+cluster or unix"
                )));
            }
        };
        if rest.contains(['?', '#']) {
            return Err(fail(
                "query parameters and fragments are not supported".to_owned(),
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        // The last `@` ends the credentials: a raw `@` in a password is common enough.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = credentials(userinfo).map_err(fail)?;
        let parse_db = |db: &str| -> Result<u32, String> {
            match db {
                "" => Ok(0),
                db => db
                    .parse()
                    .map_err(|_| fail(format!("invalid database {db:?}: expected a number"))),
            }
        };
        if cluster {
            let mut seeds = Vec::new();
            let mut first = None;
            for node in hostport.split(',') {
                let (host, port) = split_host_port(node, DEFAULT_REDIS_PORT).map_err(fail)?;
                seeds.push(join_host_port(&host, port));
                first.get_or_insert((host, port));
            }
            if parse_db(path)? != 0 {
                return Err(fail(
                    "a Redis Cluster has database 0 only: redis+cluster://host:port,host:port"
                        .to_owned(),
                ));
            }
            let (host, port) = first.ok_or_else(|| fail("missing host".to_owned()))?;
            return Ok(UpstreamUrl {
                tls,
                host,
                port,
                sentinel: None,
                cluster: Some(seeds),
                db: 0,
                username,
                password,
            });
        }
        if !sentinel {
            let (host, port) = split_host_port(hostport, DEFAULT_REDIS_PORT).map_err(fail)?;
            return Ok(UpstreamUrl {
                tls,
                host,
                port,
                sentinel: None,
                cluster: None,
                db: parse_db(path)?,
                username,
                password,
            });
        }
        let mut addresses = Vec::new();
        let mut first = None;
        for node in hostport.split(',') {
            let (host, port) = split_host_port(node, DEFAULT_SENTINEL_PORT).map_err(fail)?;
            let address = join_host_port(&host, port);
            first.get_or_insert((host, port));
            addresses.push(address);
        }
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        if master.is_empty() {
            return Err(fail(
                "expected the master's name after the sentinels: redis+sentinel://host:port,host:port/mymaster"
                    .to_owned(),
            ));
        }
        let (host, port) = first.ok_or_else(|| fail("missing host".to_owned()))?;
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            sentinel: Some(Sentinel {
                addresses,
                master: master.to_owned(),
            }),
            cluster: None,
            db: parse_db(db)?,
            username,
            password,
        })
    }

    /// `unix://[user[:password]@]/path[?db=N]`, after the scheme.
    fn parse_unix(rest: &str) -> Result<UpstreamUrl, String> {
        if rest.contains('#') {
            return Err("fragments are not supported".to_owned());
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        // `unix:///path`: no credentials, whatever the path holds.
        let (userinfo, path) = match rest.split_once("@/") {
            Some((userinfo, path)) if !rest.starts_with('/') => {
                (Some(userinfo), format!("/{path}"))
            }
            _ => (None, rest.to_owned()),
        };
        if !path.starts_with('/') || path.len() < 2 {
            return Err(
                "expected the socket's absolute path: unix:///path/to/redis.sock".to_owned(),
            );
        }
        let mut db = 0;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("db", n)) => {
                    db = n
                        .parse()
                        .map_err(|_| format!("invalid database {n:?}: expected a number"))?;
                }
                _ => {
                    return Err(format!(
                        "unsupported query parameter {:?}: only db=N",
                        pair.split('=').next().unwrap_or(pair)
                    ));
                }
            }
        }
        let (username, password) = credentials(userinfo)?;
        Ok(UpstreamUrl {
            tls: false,
            host: path,
            port: 0,
            sentinel: None,
            cluster: None,
            db,
            username,
            password,
        })
    }

    /// Whether the upstream is a Unix socket (`host` is its path).
    pub fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `host:port`, IPv6 hosts bracketed: ready for a TCP connect; a Unix socket's path.
    pub fn address(&self) -> String {
        if self.is_unix() {
            return self.host.clone();
        }
        join_host_port(&self.host, self.port)
    }
}

/// `host:port`, an IPv6 host bracketed.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        // An IPv6 address; the parse below is all the checking it needs.
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unclosed '[' around an IPv6 address".to_owned())?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("invalid IPv6 address {host:?}"))?;
        let port = match after {
            "" => None,
            after => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {after:?} after the IPv6 address"))?,
            ),
        };
        (host, port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        if host.is_empty() {
            return Err("missing host".to_owned());
        }
        if host.contains(|c: char| c.is_whitespace() || "[]".contains(c)) {
            return Err(format!("invalid host {host:?}"));
        }
        (host, port)
    };
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("invalid port {port:?}: expected 1 to 65535"))?,
    };
    Ok((host.to_owned(), port))
}

/// The user name and password of a URL's `user[:password]`, percent-decoded; empty
/// parts are absent.
fn credentials(userinfo: Option<&str>) -> Result<(Option<String>, Option<String>), String> {
    let Some(userinfo) = userinfo else {
        return Ok((None, None));
    };
    let (user, pass) = match userinfo.split_once(':') {
        Some((user, pass)) => (user, Some(pass)),
        None => (userinfo, None),
    };
    let decode = |part: &str| {
        percent_decode(part).ok_or_else(|| "invalid percent-encoding in the credentials".to_owned())
    };
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok((
        non_empty(decode(user)?),
        pass.map(decode).transpose()?.and_then(non_empty),
    ))
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

/// `redis://user:***@host:port/db`: the password is never printed.
impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.is_unix() {
            "unix"
        } else if self.tls {
            "rediss"
        } else {
            "redis"
        };
        let plus = if self.sentinel.is_some() {
            "+sentinel"
        } else if self.cluster.is_some() {
            "+cluster"
        } else {
            ""
        };
        write!(f, "{scheme}{plus}://")?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (None, None) => {}
        }
        match (&self.sentinel, &self.cluster) {
            (Some(s), _) => write!(f, "{}/{}/{}", s.addresses.join(","), s.master, self.db),
            (None, Some(seeds)) => write!(f, "{}/{}", seeds.join(","), self.db),
            (None, None) if self.is_unix() => write!(f, "{}?db={}", self.host, self.db),
            (None, None) => write!(f, "{}/{}", self.address(), self.db),
        }
    }
}

/// Same as `Display`, so `{:?}` of a whole config cannot leak the password either.
impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamUrl({self})")
    }
}

impl std::str::FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpstreamUrl::parse(s)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UrlVisitor;

        impl Visitor<'_> for UrlVisitor {
            type Value = UpstreamUrl;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL string such as \"redis://127.0.0.1:6379/0\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<UpstreamUrl, E> {
                UpstreamUrl::parse(v).map_err(E::custom)
            }
        }

        d.deserialize_str(UrlVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn url(s: &str) -> UpstreamUrl {
        UpstreamUrl::parse(s).unwrap()
    }

    #[test]
    fn plain() {
        let u = url("redis://127.0.0.1:6379/0");
        assert!(!u.tls);
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6379, 0));
        assert_eq!((u.username, u.password), (None, None));
        assert_eq!(
            url("redis://cache.internal").address(),
            "cache.internal:6379"
        );
        assert_eq!(url("redis://h/").db, 0);
        assert_eq!(url("REDIS://h:1/15").to_string(), "redis://h:1/15");
    }

    #[test]
    fn credentials_and_db() {
        let u = url("rediss://app:s3cr%40t:x@redis.example.com:6380/3");
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("s3cr@t:x"));
        assert_eq!(u.address(), "redis.example.com:6380");
        assert_eq!(u.db, 3);

        let u = url("redis://:only-pass@h");
        assert_eq!(
            (u.username, u.password.as_deref()),
            (None, Some("only-pass"))
        );
        let u = url("redis://only-user@h");
        assert_eq!(
            (u.username.as_deref(), u.password),
            (Some("only-user"), None)
        );
        // A raw `@` in the password: the last `@` ends the credentials.
        assert_eq!(url("redis://u:p@ss@h").password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn ipv6() {
        let u = url("redis://[::1]:6390/2");
        assert_eq!(u.host, "::1");
        assert_eq!(u.address(), "[::1]:6390");
        assert_eq!(url("redis://[fe80::1]").address(), "[fe80::1]:6379");
        assert_eq!(u.to_string(), "redis://[::1]:6390/2");
    }

    #[test]
    fn display_and_debug_hide_the_password() {
        let u = url("redis://user:hunter2@host:7000/1");
        assert_eq!(u.to_string(), "redis://user:***@host:7000/1");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(
            url("redis://:hunter2@host").to_string(),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            url("redis://user@host").to_string(),
            "redis://user@host:6379/0"
        );
    }

    #[test]
    fn sentinel() {
        let u = url("redis+sentinel://:pw@s1,s2:26380,[::1]/mymaster/2");
        let s = u.sentinel.clone().unwrap();
        assert_eq!(s.addresses, vec!["s1:26379", "s2:26380", "[::1]:26379"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!((u.db, u.password.as_deref()), (2, Some("pw")));
        assert_eq!(
            u.to_string(),
            "redis+sentinel://:***@s1:26379,s2:26380,[::1]:26379/mymaster/2"
        );
        assert_eq!(url("redis+sentinel://s/m").db, 0);
        assert!(
            UpstreamUrl::parse("redis+sentinel://s1:1,s2:2")
                .unwrap_err()
                .contains("master's name")
        );
    }

    #[test]
    fn cluster() {
        let u = url("redis+cluster://u:pw@a:7000,b,[::1]:7002");
        assert_eq!(
            u.cluster.as_deref(),
            Some(
                &[
                    "a:7000".to_owned(),
                    "b:6379".to_owned(),
                    "[::1]:7002".to_owned()
                ][..]
            )
        );
        assert_eq!((u.host.as_str(), u.port, u.db), ("a", 7000, 0));
        assert_eq!(
            u.to_string(),
            "redis+cluster://u:***@a:7000,b:6379,[::1]:7002/0"
        );
        assert!(url("rediss+cluster://a:1/0").tls);
        assert!(
            UpstreamUrl::parse("redis+cluster://a:1,b:2/3")
                .unwrap_err()
                .contains("database 0 only")
        );
    }

    #[test]
    fn unix_sockets() {
        let u = url("unix:///var/run/redis/redis.sock");
        assert!(u.is_unix() && !u.tls);
        assert_eq!(u.address(), "/var/run/redis/redis.sock");
        assert_eq!(u.db, 0);
        assert_eq!(u.to_string(), "unix:///var/run/redis/redis.sock?db=0");
        let u = url("unix://app:s%40cret@/tmp/r.sock?db=3");
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("app"), Some("s@cret"))
        );
        assert_eq!((u.address().as_str(), u.db), ("/tmp/r.sock", 3));
        assert_eq!(u.to_string(), "unix://app:***@/tmp/r.sock?db=3");
        assert!(!url("redis://h:1").is_unix());
        // A path with `@/` in it has no credentials.
        let u = url("unix:///srv/a@/r.sock");
        assert_eq!((u.address().as_str(), u.username), ("/srv/a@/r.sock", None));
    }

    #[test]
    fn errors() {
        for (input, why) in [
            (
                "127.0.0.1:6379",
                "expected redis://host:port/db or rediss://host:port/db",
            ),
            (
                "http://h:1/0",
                "unsupported scheme \"http\": expected redis, rediss, redis+sentinel, redis+cluster or unix",
            ),
            ("unix://tmp/redis.sock", "the socket's absolute path"),
            ("unix://", "the socket's absolute path"),
            ("unix:///tmp/redis.sock?db=x", "invalid database \"x\""),
            (
                "unix:///tmp/redis.sock?timeout=1",
                "unsupported query parameter \"timeout\"",
            ),
            ("unix://u:p%zz@/tmp/r.sock", "invalid percent-encoding"),
            (
                "redis://h:abc/0",
                "invalid port \"abc\": expected 1 to 65535",
            ),
            ("redis://h:0", "invalid port \"0\""),
            ("redis://h:65536", "invalid port \"65536\""),
            ("redis://h:", "invalid port \"\""),
            ("redis://h/x", "invalid database \"x\": expected a number"),
            ("redis://h/-1", "invalid database \"-1\""),
            ("redis://h/0/1", "invalid database \"0/1\""),
            ("redis://:6379/0", "missing host"),
            ("redis://", "missing host"),
            ("redis://[::1", "unclosed '['"),
            ("redis://[nope]:1", "invalid IPv6 address \"nope\""),
            ("redis://[::1]x", "unexpected \"x\""),
            ("redis://::1:6379", "missing host"),
            ("redis://h?db=1", "query parameters"),
            ("redis://u:p%zz@h", "invalid percent-encoding"),
        ] {
            let err = UpstreamUrl::parse(input).unwrap_err();
            assert!(err.starts_with("invalid upstream URL: "), "{input}: {err}");
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn errors_never_echo_the_password() {
        for input in [
            "redis://u:hunter2@h:bad",
            "redis://u:hunter2@h/x",
            "ftp://u:hunter2@h",
        ] {
            assert!(!UpstreamUrl::parse(input).unwrap_err().contains("hunter2"));
        }
    }
}
