//! Differential testing: the same session sent straight to one `redis-server` and
//! through cachet to another (both started empty, same binary, same settings) must get
//! byte-identical replies, command by command. A mismatch names the step and the
//! command and shows both replies.
//!
//! Replies that differ between any two Redis servers (ids, clocks, hash-table order)
//! are compared through an explicit normaliser, never ignored.

use std::time::Duration;

use cachet::resp::reply::elements;

use super::cachet::Cachet;
use super::raw::{Raw, words};
use super::redis::RedisServer;

/// One Redis used directly, one behind cachet.
pub struct Pair {
    pub direct: RedisServer,
    pub upstream: RedisServer,
    pub cachet: Cachet,
}

impl Pair {
    pub fn start() -> Pair {
        Pair::start_with(&[])
    }

    /// Both servers started with the same extra `redis-server` arguments.
    pub fn start_with(redis_args: &[&str]) -> Pair {
        let direct = RedisServer::start_with(redis_args);
        let upstream = RedisServer::start_with(redis_args);
        let cachet = Cachet::start(&upstream.url());
        Pair {
            direct,
            upstream,
            cachet,
        }
    }

    /// A new client connection to each side.
    pub fn twin(&self) -> Twin {
        Twin {
            direct: Raw::connect(self.direct.addr()),
            proxied: Raw::connect(self.cachet.addr),
        }
    }
}

/// The same client twice: once connected to Redis directly, once to cachet.
pub struct Twin {
    pub direct: Raw,
    pub proxied: Raw,
}

/// A reply transformation applied to both sides before comparing.
pub type Normalise = fn(&[u8]) -> Vec<u8>;

impl Twin {
    /// Sends the same bytes to both sides.
    pub fn send(&mut self, bytes: &[u8]) {
        self.direct.send(bytes);
        self.proxied.send(bytes);
    }

    /// Reads one frame from each side and asserts they are identical; `what` names the
    /// command the frame answers, for the failure message.
    pub fn frame(&mut self, what: &[u8]) -> Vec<u8> {
        self.frame_with(what, |r| r.to_vec())
    }

    /// As [`Twin::frame`], comparing `norm` of both frames; returns the direct one.
    pub fn frame_with(&mut self, what: &[u8], norm: Normalise) -> Vec<u8> {
        let d = self.direct.frame();
        let p = self.proxied.try_frame(Duration::from_secs(10));
        let Some(p) = p else {
            panic!(
                "no reply through cachet\n  command: {}\n  direct:  {}",
                show(what),
                show(&d)
            );
        };
        assert_same(what, &norm(&d), &norm(&p));
        d
    }

    /// Sends one command to both sides and compares the replies.
    pub fn call(&mut self, command: &[u8]) -> Vec<u8> {
        self.send(command);
        self.frame(command)
    }

    /// As [`Twin::call`], comparing through `norm`.
    pub fn call_with(&mut self, command: &[u8], norm: Normalise) -> Vec<u8> {
        self.send(command);
        self.frame_with(command, norm)
    }

    /// Runs commands one at a time (each reply read before the next is sent).
    pub fn script(&mut self, commands: &[Vec<u8>]) {
        for c in commands {
            self.call(c);
        }
    }

    /// Sends every command first, then reads and compares one reply per command.
    pub fn pipeline(&mut self, commands: &[Vec<u8>]) {
        let all: Vec<u8> = commands.concat();
        self.send(&all);
        for c in commands {
            self.frame(c);
        }
    }

    /// Sends every command pipelined, followed by `ECHO <sentinel>`, and compares all
    /// frames up to the sentinel's echo. For sessions where the number of replies is
    /// itself under test (`CLIENT REPLY`, pushes).
    pub fn transcript(&mut self, commands: &[Vec<u8>]) -> Vec<Vec<u8>> {
        const SENTINEL: &[u8] = b"$21\r\n--end-of-transcript--\r\n";
        let mut all: Vec<u8> = commands.concat();
        all.extend_from_slice(&words("ECHO --end-of-transcript--"));
        self.send(&all);
        let read = |raw: &mut Raw| {
            let mut frames = Vec::new();
            loop {
                let f = raw.frame();
                if f == SENTINEL {
                    return frames;
                }
                frames.push(f);
            }
        };
        let d = read(&mut self.direct);
        let p = read(&mut self.proxied);
        let script: Vec<String> = commands.iter().map(|c| show(c)).collect();
        assert!(
            d == p,
            "transcripts differ\n  script:  {}\n  direct:  {}\n  cachet:  {}",
            script.join(" | "),
            d.iter().map(|f| show(f)).collect::<Vec<_>>().join(" "),
            p.iter().map(|f| show(f)).collect::<Vec<_>>().join(" "),
        );
        d
    }

    /// Neither side sends anything within `within`.
    pub fn quiet(&mut self, within: Duration) {
        let d = self.direct.try_frame(within);
        let p = self.proxied.try_frame(within);
        assert!(
            d.is_none() && p.is_none(),
            "unexpected frame\n  direct: {}\n  cachet: {}",
            d.as_deref().map_or("(none)".into(), show),
            p.as_deref().map_or("(none)".into(), show),
        );
    }

    /// Both sides close the connection within `within`.
    pub fn closed(&mut self, within: Duration) {
        assert!(
            self.direct.closed_within(within),
            "redis kept the connection"
        );
        assert!(
            self.proxied.closed_within(within),
            "cachet kept the connection"
        );
    }
}

/// Starts a pair and runs `commands` one at a time on one client of each side.
pub fn compare(commands: &[Vec<u8>]) {
    Pair::start().twin().script(commands);
}

/// Starts a pair and runs `commands` pipelined (all sent, then all read).
pub fn compare_pipelined(commands: &[Vec<u8>]) {
    Pair::start().twin().pipeline(commands);
}

/// One command per non-empty line, arguments separated by spaces (see [`words`]).
pub fn lines(script: &str) -> Vec<Vec<u8>> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(words)
        .collect()
}

/// Panics with both replies unless they are equal.
pub fn assert_same(what: &[u8], direct: &[u8], cachet: &[u8]) {
    assert!(
        direct == cachet,
        "replies differ\n  command: {}\n  direct:  {}\n  cachet:  {}",
        show(what),
        show(direct),
        show(cachet)
    );
}

/// Printable, shortened bytes for failure messages.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 400;
    let mut s: String = bytes
        .iter()
        .take(MAX)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > MAX {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}

/// Normaliser for replies whose element order is a hash table's (`SMEMBERS`, `KEYS`,
/// `HGETALL` of a large hash): Redis seeds its hash function randomly at start-up, so
/// two servers holding the same data list it in different orders. Elements (map
/// entries as key-value pairs) are sorted; the header is kept.
pub fn sorted(reply: &[u8]) -> Vec<u8> {
    let Some(el) = elements(reply) else {
        return reply.to_vec();
    };
    let header_len = reply.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut items: Vec<Vec<u8>> = if reply.first() == Some(&b'%') {
        el.chunks(2).map(<[&[u8]]>::concat).collect()
    } else {
        el.iter().map(|e| e.to_vec()).collect()
    };
    items.sort();
    let mut out = reply[..header_len].to_vec();
    for i in items {
        out.extend_from_slice(&i);
    }
    out
}

/// Normaliser for `HELLO` replies: the `id` field is the connection's id, which a
/// direct connection and a cachet session never share; its value is replaced by 0.
pub fn hello_without_id(reply: &[u8]) -> Vec<u8> {
    let Some(el) = elements(reply) else {
        return reply.to_vec();
    };
    let header_len = reply.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out = reply[..header_len].to_vec();
    let mut replace_next = false;
    for e in el {
        if replace_next {
            out.extend_from_slice(b":0\r\n");
            replace_next = false;
            continue;
        }
        if e == b"$2\r\nid\r\n" {
            replace_next = true;
        }
        out.extend_from_slice(e);
    }
    out
}
