//! A raw RESP client: sends exact bytes, reads exact reply frames (framed by cachet's
//! own scanner, which the reply tests check against Redis). Blocking std I/O with
//! timeouts, so a hang is a test failure, not a stuck test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cachet::resp::Scanner;

pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Encodes one command as RESP multibulk.
pub fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Encodes a command given as space-separated words (no spaces inside arguments).
pub fn words(line: &str) -> Vec<u8> {
    let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
    cmd(&args)
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one reply frame (waits at most `within`).
    pub fn try_frame(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut scanner = Scanner::default();
        loop {
            if let Some(f) = scanner.scan(&self.buf).expect("well-formed reply") {
                return Some(self.buf.drain(..f.len).collect());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads one reply frame, failing the test after 10 s.
    pub fn frame(&mut self) -> Vec<u8> {
        self.try_frame(Duration::from_secs(10))
            .expect("a reply within 10s")
    }

    /// Sends one command and returns its reply.
    pub fn call(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.send(bytes);
        self.frame()
    }

    /// Whether the server closed the connection (reads EOF within `within`).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Bytes received but not yet taken as frames.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

/// Calls `PING` until it is answered `+PONG`, for at most `within`; every other answer
/// must be one of cachet's upstream errors. Returns how long that took.
pub fn served_again(c: &mut Raw, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = c.call(&words("PING"));
        if r == b"+PONG\r\n" {
            return start.elapsed();
        }
        assert!(
            r.starts_with(b"-ERR cachet: upstream"),
            "unexpected reply {:?}",
            String::from_utf8_lossy(&r)
        );
        assert!(
            start.elapsed() < within,
            "not served again within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
