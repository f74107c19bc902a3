//! Reply framing and local reply encoding.
//!
//! Upstream replies are forwarded as the bytes Redis sent; cachet only needs to know
//! where each frame ends (and whether it is an out-of-band push). [`Scanner`] finds frame
//! boundaries in RESP2 and RESP3 without building frames, resumably, so a large reply
//! arriving in many reads is scanned once. Replies cachet answers itself are encoded by
//! the `push_*` helpers, in the client's protocol version.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::request::{find_crlf, parse_int};

/// An upstream reply cachet cannot frame. The connection it came from is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed reply from upstream: {0}")]
pub struct FrameError(pub &'static str);

/// A complete frame found by the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Length in bytes from the start of the buffer.
    pub len: usize,
    /// The frame's type byte (`>` for a RESP3 push; `|` for a frame that opens with an
    /// attribute, which Redis does not send unprompted).
    pub kind: u8,
}

/// Resumable frame-boundary scanner: `pos` and `pending` are all the state an iterative
/// RESP walk needs, so a partial frame costs nothing to resume.
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    pos: usize,
    pending: usize,
    kind: Option<u8>,
}

/// Deepest aggregate element count accepted in one frame, so that a hostile or broken
/// upstream cannot make the pending counter overflow.
const MAX_ELEMENTS: usize = 1 << 40;

impl Scanner {
    /// Whether no frame is partly scanned (the next `scan` starts a new one).
    pub fn is_idle(&self) -> bool {
        self.kind.is_none()
    }

    /// Looks for one complete frame at the start of `buf` (which must be the same buffer,
    /// only grown, since the last call that returned `Ok(None)`).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        if self.kind.is_none() {
            if let Some(&kind @ (b'+' | b'-' | b':')) = buf.first() {
                // A one-line frame (most replies: `+OK`, `:1`, `+QUEUED`, errors): its
                // line is all of it, and an incomplete one is simply looked at again.
                return Ok(find_crlf(buf, 0).map(|eol| Frame { len: eol + 2, kind }));
            }
            self.pos = 0;
            self.pending = 1;
        }
        loop {
            let Some(eol) = find_crlf(buf, self.pos) else {
                return Ok(None);
            };
            let tag = *buf.get(self.pos).ok_or(FrameError("empty line"))?;
            let line = buf.get(self.pos + 1..eol).unwrap_or_default();
            if self.kind.is_none() {
                self.kind = Some(tag);
            }
            let mut next = eol + 2;
            let mut children: usize = 0;
            match tag {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
                b'$' | b'!' | b'=' => {
                    let len = parse_int(line).ok_or(FrameError("bad bulk length"))?;
                    if len >= 0 {
                        next = next
                            .checked_add(len as usize + 2)
                            .ok_or(FrameError("bulk too long"))?;
                        if buf.len() < next {
                            return Ok(None);
                        }
                    } else if len != -1 {
                        return Err(FrameError("negative bulk length"));
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line).ok_or(FrameError("bad aggregate length"))?;
                    if n > 0 {
                        let n = n as usize;
                        children = match tag {
                            b'%' => n.checked_mul(2),
                            // An attribute map is followed by the frame it decorates.
                            b'|' => n.checked_mul(2).and_then(|c| c.checked_add(1)),
                            _ => Some(n),
                        }
                        .ok_or(FrameError("aggregate too long"))?;
                    } else if n < -1 || (n == -1 && tag != b'*') {
                        return Err(FrameError("negative aggregate length"));
                    }
                }
                _ => return Err(FrameError("unknown type byte")),
            }
            self.pos = next;
            self.pending = self
                .pending
                .checked_sub(1)
                .and_then(|p| p.checked_add(children))
                .filter(|&p| p < MAX_ELEMENTS)
                .ok_or(FrameError("too many elements"))?;
            if self.pending == 0 {
                let frame = Frame {
                    len: self.pos,
                    kind: self.kind.unwrap_or(tag),
                };
                self.kind = None;
                return Ok(Some(frame));
            }
        }
    }
}

/// Appends a `<tag><n>\r\n` header.
pub fn push_header(out: &mut BytesMut, tag: u8, n: i64) {
    let mut b = itoa::Buffer::new();
    out.put_u8(tag);
    out.extend_from_slice(b.format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string.
pub fn push_bulk(out: &mut BytesMut, data: &[u8]) {
    push_header(out, b'$', data.len() as i64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a simple string (`+OK`).
pub fn push_simple(out: &mut BytesMut, s: &str) {
    out.put_u8(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer.
pub fn push_int(out: &mut BytesMut, n: i64) {
    push_header(out, b':', n);
}

/// Appends a null in the client's protocol: `$-1` (RESP2) or `_` (RESP3).
pub fn push_null(out: &mut BytesMut, proto: u8) {
    if proto >= 3 {
        out.extend_from_slice(b"_\r\n");
    } else {
        out.extend_from_slice(b"$-1\r\n");
    }
}

/// Appends a map header in the client's protocol (`%n`, or a flat `*2n` array in RESP2).
pub fn push_map_header(out: &mut BytesMut, pairs: usize, proto: u8) {
    if proto >= 3 {
        push_header(out, b'%', pairs as i64);
    } else {
        push_header(out, b'*', 2 * pairs as i64);
    }
}

/// An error reply; `msg` must hold no CR or LF and start with the error code
/// (`ERR …`, `NOAUTH …`).
pub fn error(msg: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.len() + 3);
    out.put_u8(b'-');
    for b in msg.bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// `+OK\r\n`.
pub const OK: &[u8] = b"+OK\r\n";

/// Redis's reply to a command with the wrong number of arguments.
pub fn wrong_arity(name: &str) -> Bytes {
    error(&format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Splits the elements of an aggregate frame (array, push, set, map — map entries
/// come as consecutive key, value elements) into their byte ranges, without decoding
/// them. Returns `None` if `frame` is not one complete aggregate.
pub fn elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    let eol = find_crlf(frame, 0)?;
    let tag = *frame.first()?;
    let n = parse_int(frame.get(1..eol)?)?;
    let count = match tag {
        b'*' | b'~' | b'>' => n,
        b'%' => n.checked_mul(2)?,
        _ => return None,
    };
    let mut out = Vec::with_capacity(usize::try_from(count.clamp(0, 64)).ok()?);
    let mut pos = eol + 2;
    for _ in 0..count.max(0) {
        let rest = frame.get(pos..)?;
        let f = Scanner::default().scan(rest).ok()??;
        out.push(rest.get(..f.len)?);
        pos += f.len;
    }
    Some(out)
}

/// What Redis answers `MULTI`, and then each command it queues in the transaction.
const MULTI_OK: &[u8] = b"+OK\r\n";
const QUEUED: &[u8] = b"+QUEUED\r\n";

/// Where the elements of the `EXEC` array start when the transaction reply `buf` has
/// the common shape: `+OK`, `n` times `+QUEUED`, then the header of an `EXEC` array of
/// `n` elements; `None` for any other shape (an error among them, a refused
/// transaction), which callers then read frame by frame.
pub fn plain_transaction(buf: &[u8], n: usize) -> Option<usize> {
    let queued_at = MULTI_OK.len();
    let exec_at = queued_at + n.checked_mul(QUEUED.len())?;
    if !buf.starts_with(MULTI_OK)
        || !buf
            .get(queued_at..exec_at)?
            .chunks_exact(QUEUED.len())
            .all(|c| c == QUEUED)
    {
        return None;
    }
    let exec = buf.get(exec_at..)?;
    let eol = find_crlf(exec, 0)?;
    let count = parse_int(exec.get(1..eol)?)?;
    (exec.first() == Some(&b'*') && usize::try_from(count).ok()? == n).then_some(exec_at + eol + 2)
}

/// As [`plain_transaction`], for a transaction whose number of queued commands is not
/// known: that number (the run of `+QUEUED` after `+OK`) and where the `EXEC` array's
/// elements start.
pub fn plain_transaction_of_any(buf: &[u8]) -> Option<(usize, usize)> {
    let n = buf
        .get(MULTI_OK.len()..)?
        .chunks_exact(QUEUED.len())
        .take_while(|c| *c == QUEUED)
        .count();
    Some((n, plain_transaction(buf, n)?))
}

/// The payload of a simple string, bulk string or verbatim string frame.
pub fn string_value(frame: &[u8]) -> Option<&[u8]> {
    let eol = find_crlf(frame, 0)?;
    match frame.first()? {
        b'+' => frame.get(1..eol),
        b'$' | b'=' => {
            let len = usize::try_from(parse_int(frame.get(1..eol)?)?).ok()?;
            frame.get(eol + 2..eol + 2 + len)
        }
        _ => None,
    }
}

/// The value of an integer frame.
pub fn int_value(frame: &[u8]) -> Option<i64> {
    let eol = find_crlf(frame, 0)?;
    match frame.first()? {
        b':' => parse_int(frame.get(1..eol)?),
        _ => None,
    }
}

/// What `ROLE` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// A sentinel, or a role this version does not know.
    Other,
}

/// The role in a `ROLE` reply (RESP2 or RESP3: an array whose first element is the
/// role's name), or `None` if the reply is not one (an error such as `-NOPERM`).
pub fn role(reply: &[u8]) -> Option<Role> {
    let rest = reply.strip_prefix(b"*")?;
    let eol = rest.windows(2).position(|w| w == b"\r\n")?;
    let first = rest.get(eol + 2..)?;
    Some(if first.starts_with(b"$6\r\nmaster\r\n") {
        Role::Primary
    } else if first.starts_with(b"$5\r\nslave\r\n") {
        Role::Replica
    } else {
        Role::Other
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut s = Scanner::default();
        while let Some(f) = s.scan(&input[pos..]).unwrap() {
            out.push((f.len, f.kind));
            pos += f.len;
        }
        assert_eq!(pos, input.len(), "trailing bytes");
        out
    }

    #[test]
    fn resp2_frames() {
        let input =
            b"+OK\r\n-ERR x\r\n:12\r\n$3\r\nfoo\r\n$-1\r\n*-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n";
        let kinds: Vec<u8> = frames(input).iter().map(|f| f.1).collect();
        assert_eq!(kinds, b"+-:$$**".to_vec());
    }

    #[test]
    fn resp3_frames_and_pushes() {
        let input = b"%2\r\n$1\r\na\r\n,1.5\r\n$1\r\nb\r\n_\r\n~1\r\n#t\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n=8\r\ntxt:abcd\r\n(123\r\n!3\r\nbad\r\n";
        let kinds: Vec<u8> = frames(input).iter().map(|f| f.1).collect();
        assert_eq!(kinds, b"%~>|=(!".to_vec());
    }

    #[test]
    fn every_split_point_resumes() {
        let input = b"*3\r\n$3\r\nfoo\r\n%1\r\n+a\r\n*2\r\n:1\r\n:2\r\n_\r\n+OK\r\n";
        let whole = frames(input);
        for split in 0..input.len() {
            let mut s = Scanner::default();
            let first = s.scan(&input[..split]).unwrap();
            let f = match first {
                Some(f) => f,
                None => s.scan(input).unwrap().unwrap(),
            };
            assert_eq!((f.len, f.kind), whole[0], "split {split}");
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"?x\r\n"[..],
            b"$-5\r\n",
            b"*-3\r\n",
            b"$abc\r\n",
            b"%-1\r\n",
            b"\r\n",
        ] {
            assert!(Scanner::default().scan(bad).is_err(), "{bad:?}");
        }
        let huge = b"*9223372036854775807\r\n*9223372036854775807\r\n";
        assert!(matches!(Scanner::default().scan(huge), Err(_) | Ok(None)));
    }

    #[test]
    fn element_helpers() {
        let f = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let el = elements(f).unwrap();
        assert_eq!(el.len(), 3);
        assert_eq!(string_value(el[0]), Some(&b"subscribe"[..]));
        assert_eq!(int_value(el[2]), Some(1));
        assert_eq!(string_value(b"+PONG\r\n"), Some(&b"PONG"[..]));
    }

    #[test]
    fn encoders() {
        let mut b = BytesMut::new();
        push_bulk(&mut b, b"hi");
        push_null(&mut b, 2);
        push_null(&mut b, 3);
        push_int(&mut b, -7);
        push_map_header(&mut b, 2, 2);
        push_map_header(&mut b, 2, 3);
        assert_eq!(&b[..], b"$2\r\nhi\r\n$-1\r\n_\r\n:-7\r\n*4\r\n%2\r\n");
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
    }
}

#[cfg(test)]
mod role_tests {
    use super::{Role, role};

    #[test]
    fn role_reads_the_first_element_and_nothing_else() {
        assert_eq!(
            role(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"),
            Some(Role::Primary)
        );
        assert_eq!(
            role(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:1\r\n"),
            Some(Role::Replica)
        );
        assert_eq!(role(b"*2\r\n$8\r\nsentinel\r\n*0\r\n"), Some(Role::Other));
        // Errors, truncations and garbage are not a role, and never panic.
        for bad in [
            &b"-NOPERM no ROLE for you\r\n"[..],
            b"*",
            b"*3\r",
            b"",
            b"+master\r\n",
            b"$6\r\nmaster\r\n",
        ] {
            assert_eq!(role(bad), None, "{bad:?}");
        }
        // Only the exact names count.
        assert_eq!(role(b"*1\r\n$6\r\nmastex\r\n"), Some(Role::Other));
    }
}
