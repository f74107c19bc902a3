//! Client request decoding: RESP multibulk (`*N` of `$len` bulks, the only request form
//! Redis accepts in RESP2 and RESP3 alike) and inline commands, with Redis's limits and
//! Redis's own protocol error texts.
//!
//! The decoder never allocates from a length read off the wire: a bulk's bytes are
//! waited for in the caller's buffer, which grows only with what actually arrived.
//! Progress through a large command is kept between calls, so a command arriving in
//! many small reads is scanned once, not once per read.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::reply::{push_bulk, push_header};

/// Limits on what a client may send (`[limits]`, docs/configuration.md).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted bulk string (`proto-max-bulk-len`).
    pub max_bulk_len: u64,
    /// Largest accepted argument count of one command.
    pub max_multibulk_len: u64,
    /// Longest inline command line, and longest `*N`/`$N` header line.
    pub max_inline_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// A malformed request. The text is Redis's own, after `-ERR Protocol error: `; the
/// connection is closed after it is answered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("too big mbulk count string")]
    TooBigMbulkCount,
    #[error("too big bulk count string")]
    TooBigBulkCount,
    #[error("too big inline request")]
    TooBigInline,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
}

impl ProtocolError {
    /// The full error line a client receives, as Redis sends it.
    pub fn reply(&self) -> Bytes {
        Bytes::from(format!("-ERR Protocol error: {self}\r\n"))
    }
}

/// One decoded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command as RESP multibulk bytes, ready to forward: the client's own bytes for
    /// multibulk requests (no re-encoding), an encoding of the arguments for inline ones.
    pub raw: Bytes,
    /// The arguments, each a slice of `raw` (no copy).
    pub args: Vec<Bytes>,
}

impl Request {
    /// Builds a request from arguments (used by rewrites and tests).
    pub fn from_args<I, A>(args: I) -> Request
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let args: Vec<Bytes> = args
            .into_iter()
            .map(|a| Bytes::copy_from_slice(a.as_ref()))
            .collect();
        let mut raw = BytesMut::new();
        encode_command(&mut raw, &args);
        Request {
            raw: raw.freeze(),
            args,
        }
    }

    /// The command name as sent (not normalised).
    pub fn name(&self) -> &[u8] {
        self.args.first().map(|a| a.as_ref()).unwrap_or(b"")
    }
}

/// Appends `args` as one RESP multibulk command.
pub fn encode_command(out: &mut BytesMut, args: &[Bytes]) {
    push_header(out, b'*', args.len() as i64);
    for a in args {
        push_bulk(out, a);
    }
}

/// Where a partly received multibulk command stands.
#[derive(Debug, Default)]
struct Progress {
    /// Bytes of the buffer already accounted for.
    pos: usize,
    /// Arguments announced by the `*N` header.
    argc: usize,
    /// Argument ranges found so far.
    args: Vec<(usize, usize)>,
    /// Buffer length at which the bulk being received is complete (0: unknown).
    need: usize,
}

/// Incremental request decoder for one client connection.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    progress: Option<Progress>,
    /// The argument-range list of the last command, kept for the next one: one
    /// allocation fewer per command.
    spare: Vec<(usize, usize)>,
}

/// A spare range list larger than this is not kept.
const KEEP_SPANS: usize = 256;

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            progress: None,
            spare: Vec::new(),
        }
    }

    /// Bytes the decoder still waits for, when it knows (the rest of a bulk string).
    /// Lets the caller read large values in large chunks.
    pub fn wants(&self, buf: &BytesMut) -> usize {
        match &self.progress {
            Some(p) => p.need.saturating_sub(buf.len()),
            None => 0,
        }
    }

    /// Takes the next complete command off the front of `buf`.
    ///
    /// `Ok(None)`: not yet (more bytes needed). Empty commands (`*0`, `*-1`, blank inline
    /// lines) are consumed and skipped, as Redis does.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            let step = if first == b'*' || self.progress.is_some() {
                self.decode_multibulk(buf)?
            } else {
                self.decode_inline(buf)?
            };
            match step {
                Step::Incomplete => return Ok(None),
                Step::Skip => continue,
                Step::Done(req) => return Ok(Some(req)),
            }
        }
    }

    fn decode_multibulk(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let limits = self.limits;
        let progress = match self.progress.take() {
            Some(p) => p,
            None => {
                let (count, eol) = match short_count(buf, 1) {
                    Some(found) => found,
                    None => {
                        let Some(eol) = find_crlf(buf, 0) else {
                            if buf.len() as u64 > limits.max_inline_len {
                                return Err(ProtocolError::TooBigMbulkCount);
                            }
                            return Ok(Step::Incomplete);
                        };
                        let count = buf
                            .get(1..eol)
                            .and_then(parse_int)
                            .ok_or(ProtocolError::InvalidMultibulkLength)?;
                        (count, eol)
                    }
                };
                if count > i64::from(i32::MAX)
                    || (count > 0 && count as u64 > limits.max_multibulk_len)
                {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                if count <= 0 {
                    let _ = buf.split_to(eol + 2);
                    return Ok(Step::Skip);
                }
                let mut args = std::mem::take(&mut self.spare);
                args.clear();
                // Grows with arguments actually received, never with the header.
                args.reserve((count as usize).min(16));
                Progress {
                    pos: eol + 2,
                    argc: count as usize,
                    args,
                    need: 0,
                }
            }
        };
        self.continue_multibulk(buf, progress)
    }

    fn continue_multibulk(
        &mut self,
        buf: &mut BytesMut,
        mut p: Progress,
    ) -> Result<Step, ProtocolError> {
        let limits = self.limits;
        while p.args.len() < p.argc {
            if p.pos >= buf.len() {
                self.progress = Some(p);
                return Ok(Step::Incomplete);
            }
            let fast = match buf.get(p.pos) {
                Some(b'$') => short_count(buf, p.pos + 1),
                _ => None,
            };
            let (len, eol) = match fast {
                Some(found) => found,
                None => {
                    let Some(eol) = find_crlf(buf, p.pos) else {
                        if (buf.len() - p.pos) as u64 > limits.max_inline_len {
                            return Err(ProtocolError::TooBigBulkCount);
                        }
                        self.progress = Some(p);
                        return Ok(Step::Incomplete);
                    };
                    let tag = buf.get(p.pos).copied().unwrap_or(b'?');
                    if tag != b'$' {
                        return Err(ProtocolError::ExpectedBulk(char::from(tag)));
                    }
                    let len = buf
                        .get(p.pos + 1..eol)
                        .and_then(parse_int)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    (len, eol)
                }
            };
            if len < 0 || len as u64 > limits.max_bulk_len {
                return Err(ProtocolError::InvalidBulkLength);
            }
            let start = eol + 2;
            let end = start + len as usize;
            // Redis skips the two bytes after a bulk without checking them; so do we,
            // so that the same bytes mean the same command through cachet.
            if buf.len() < end + 2 {
                // Remember how far we are so that the next call does not rescan, and
                // let `wants` tell the reader how much is missing.
                p.need = end + 2;
                self.progress = Some(p);
                return Ok(Step::Incomplete);
            }
            p.args.push((start, end));
            p.pos = end + 2;
            p.need = 0;
        }
        let raw = buf.split_to(p.pos).freeze();
        let args = p
            .args
            .iter()
            .map(|&(s, e)| raw.slice(s..e))
            .collect::<Vec<_>>();
        if p.args.capacity() <= KEEP_SPANS {
            self.spare = p.args;
        }
        Ok(Step::Done(Request { raw, args }))
    }

    fn decode_inline(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        // Redis 7.0 finds the end of an inline line with `strchr`, so a NUL byte before
        // the newline hides it: the line goes on until the inline limit is exceeded.
        let nl = memchr::memchr(b'\n', buf)
            .filter(|&nl| memchr::memchr(0, buf.get(..nl).unwrap_or_default()).is_none());
        let Some(nl) = nl else {
            if buf.len() as u64 > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigInline);
            }
            return Ok(Step::Incomplete);
        };
        let line = buf.split_to(nl + 1);
        let mut text = line.get(..nl).unwrap_or_default();
        if let Some(stripped) = text.strip_suffix(b"\r") {
            text = stripped;
        }
        if text.len() as u64 > self.limits.max_inline_len {
            return Err(ProtocolError::TooBigInline);
        }
        let args = split_args(text)?;
        if args.is_empty() {
            return Ok(Step::Skip);
        }
        let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
        let mut raw = BytesMut::with_capacity(text.len() + 16 * args.len());
        encode_command(&mut raw, &args);
        let raw = raw.freeze();
        // Re-point the arguments into the encoded form so a request always holds one buffer.
        let mut pos = 0;
        let mut sliced = Vec::with_capacity(args.len());
        for a in &args {
            let start = find_subslice(&raw, pos, a.len()).unwrap_or(pos);
            sliced.push(raw.slice(start..start + a.len()));
            pos = start + a.len();
        }
        Ok(Step::Done(Request { raw, args: sliced }))
    }
}

enum Step {
    Incomplete,
    Skip,
    Done(Request),
}

/// Where the bulk of length `len` starts at or after `from` in an encoded command: after
/// the next `$len\r\n` header.
fn find_subslice(raw: &[u8], from: usize, len: usize) -> Option<usize> {
    let header = format!("${len}\r\n");
    let hay = raw.get(from..)?;
    hay.windows(header.len())
        .position(|w| w == header.as_bytes())
        .map(|i| from + i + header.len())
}

/// The first argument (the command name) of an encoded multibulk command, without
/// decoding the rest.
///
/// ```
/// use cachet::resp::request::command_name;
/// assert_eq!(command_name(b"*2\r\n$7\r\nEVALSHA\r\n$1\r\nx\r\n"), Some(&b"EVALSHA"[..]));
/// assert_eq!(command_name(b"PING\r\n"), None);
/// ```
pub fn command_name(data: &[u8]) -> Option<&[u8]> {
    let eol = find_crlf(data, 0)?;
    let (&tag, _) = data.get(eol + 2..)?.split_first()?;
    if tag != b'$' {
        return None;
    }
    let len_end = find_crlf(data, eol + 2)?;
    let len = usize::try_from(parse_int(data.get(eol + 3..len_end)?)?).ok()?;
    data.get(len_end + 2..len_end + 2 + len)
}

/// Bytes of a line looked at one by one before `find_crlf` hands over to `memchr`.
const SHORT_LINE: usize = 16;

/// The common header of a request: a count of at most nine digits at `from`, without
/// sign or leading zero, ended by CRLF: its value and where its CRLF is, read in one
/// pass. `None` for anything else, which the general path (`find_crlf`, `parse_int`)
/// then reads or refuses exactly as before: both agree wherever this answers
/// (`tests::short_counts_agree_with_the_general_path`).
#[inline]
fn short_count(buf: &[u8], from: usize) -> Option<(i64, usize)> {
    let digits = buf.get(from..)?;
    let mut v: i64 = 0;
    for (i, &b) in digits.iter().enumerate().take(10) {
        match b {
            b'0'..=b'9' if !(i == 1 && v == 0) => v = v * 10 + i64::from(b - b'0'),
            b'\r' if i > 0 => {
                return (digits.get(i + 1) == Some(&b'\n')).then_some((v, from + i));
            }
            _ => return None,
        }
    }
    None
}

/// Position of the `\r` of the first `\r\n` at or after `from`. Most RESP lines are
/// a few bytes (`+OK`, `:1`, `$3`), shorter than `memchr`'s set-up, so the first bytes
/// are looked at one by one.
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let hay = buf.get(from..)?;
    let head = hay.get(..SHORT_LINE).unwrap_or(hay);
    let mut i = 0;
    while let Some(&b) = head.get(i) {
        if b == b'\r' {
            match hay.get(i + 1) {
                Some(b'\n') => return Some(from + i),
                Some(_) => {}
                None => return None,
            }
        }
        i += 1;
    }
    while let Some(off) = hay.get(i..).and_then(|h| memchr::memchr(b'\r', h)) {
        let at = i + off;
        match hay.get(at + 1) {
            Some(b'\n') => return Some(from + at),
            Some(_) => i = at + 1,
            None => return None,
        }
    }
    None
}

/// Parses a signed decimal the way Redis's `string2ll` does: no spaces, no plus sign,
/// no leading zeros (except "0" itself), within i64.
///
/// ```
/// use cachet::resp::request::parse_int;
/// assert_eq!(parse_int(b"-12"), Some(-12));
/// assert_eq!(parse_int(b"012"), None);
/// assert_eq!(parse_int(b"+1"), None);
/// ```
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    if digits.len() > 1 && digits.first() == Some(&b'0') {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        v = if neg {
            v.checked_mul(10)?.checked_sub(d)?
        } else {
            v.checked_mul(10)?.checked_add(d)?
        };
    }
    if neg && v == 0 {
        return None;
    }
    Some(v)
}

/// The byte a `\` escape inside double quotes at `i` stands for, and the bytes it
/// spans: `\xHH` only with two hex digits (otherwise `\x` is an ordinary escape of
/// `x`, as in `sdssplitargs`), `\n \r \t \b \a`, else the escaped byte itself.
fn escape(line: &[u8], i: usize) -> (u8, usize) {
    let at = |i: usize| line.get(i).copied();
    if at(i + 1) == Some(b'x')
        && let (Some(h), Some(l)) = (at(i + 2).and_then(hex), at(i + 3).and_then(hex))
    {
        return (h * 16 + l, 4);
    }
    let b = match at(i + 1).unwrap_or_default() {
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'b' => 0x08,
        b'a' => 0x07,
        other => other,
    };
    (b, 2)
}

/// A closing quote at `i` must be followed by a space or the end of the line.
fn closing_quote(line: &[u8], i: usize) -> Result<(), ProtocolError> {
    match line.get(i + 1) {
        Some(n) if !n.is_ascii_whitespace() => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(()),
    }
}

/// Splits an inline command line into arguments like Redis's `sdssplitargs`: spaces
/// separate, `"…"` takes escapes (`\n \r \t \b \a \\ \" \xHH`), `'…'` takes `\'`, and a
/// closing quote must be followed by a space or the end of the line.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| line.get(i).copied();
    loop {
        while matches!(at(i), Some(b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c)) {
            i += 1;
        }
        // Redis splits a C string: a NUL byte ends the line.
        if matches!(at(i), None | Some(0)) {
            return Ok(out);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            let c = at(i);
            if in_dq {
                match c {
                    None | Some(0) => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if at(i + 1).is_some() => {
                        let (b, len) = escape(line, i);
                        cur.push(b);
                        i += len - 1;
                    }
                    Some(b'"') => {
                        closing_quote(line, i)?;
                        i += 1;
                        break;
                    }
                    Some(other) => cur.push(other),
                }
            } else if in_sq {
                match c {
                    None | Some(0) => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if at(i + 1) == Some(b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        closing_quote(line, i)?;
                        i += 1;
                        break;
                    }
                    Some(other) => cur.push(other),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t' | 0) => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(other) => cur.push(other),
                }
            }
            i += 1;
        }
        out.push(cur);
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Wherever the one-pass count reader answers, the general path answers the
        /// same count and the same line end.
        #[test]
        fn short_counts_agree_with_the_general_path(
            line in proptest::collection::vec(
                proptest::sample::select(b"0123456789-+\r\n$* x".to_vec()), 0..16)
        ) {
            let mut buf = b"$".to_vec();
            buf.extend_from_slice(&line);
            if let Some((v, eol)) = short_count(&buf, 1) {
                let general = find_crlf(&buf, 0);
                proptest::prop_assert_eq!(general, Some(eol));
                proptest::prop_assert_eq!(buf.get(1..eol).and_then(parse_int), Some(v));
            }
        }
    }

    proptest::proptest! {
        /// The first CRLF, found one byte at a time or by `memchr`, is the first CRLF.
        #[test]
        fn find_crlf_finds_the_first_crlf(
            hay in proptest::collection::vec(
                proptest::sample::select(b"ab\r\n".to_vec()), 0..48),
            from in 0usize..50,
        ) {
            let naive = hay
                .windows(2)
                .enumerate()
                .skip(from)
                .find(|(_, w)| *w == b"\r\n")
                .map(|(i, _)| i);
            proptest::prop_assert_eq!(find_crlf(&hay, from), naive);
        }
    }

    #[test]
    fn short_counts_read_the_common_headers_only() {
        assert_eq!(short_count(b"*3\r\n", 1), Some((3, 2)));
        assert_eq!(short_count(b"$0\r\n\r\n", 1), Some((0, 2)));
        assert_eq!(short_count(b"$123456789\r\n", 1), Some((123_456_789, 10)));
        for other in [
            &b"$1234567890\r\n"[..],
            b"$01\r\n",
            b"$-1\r\n",
            b"$\r\n",
            b"$3\r",
            b"$3\rx",
            b"$3",
        ] {
            assert_eq!(short_count(other, 1), None, "{other:?}");
        }
    }

    fn decode_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = d.decode(&mut buf)? {
            out.push(r.args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn multibulk_and_raw_bytes_kept() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&input[..]);
        let r = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&r.raw[..], &input[..]);
        assert_eq!(r.args, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_split_point_gives_the_same_commands() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let whole = decode_all(input).unwrap();
        assert_eq!(whole.len(), 3);
        for split in 0..input.len() {
            let mut d = Decoder::new(Limits::default());
            let mut buf = BytesMut::from(&input[..split]);
            let mut got = Vec::new();
            while let Some(r) = d.decode(&mut buf).unwrap() {
                got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            buf.extend_from_slice(&input[split..]);
            while let Some(r) = d.decode(&mut buf).unwrap() {
                got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            assert_eq!(got, whole, "split at {split}");
        }
    }

    #[test]
    fn inline_commands_and_quotes() {
        let got = decode_all(b"SET k \"a b\\x41\\n\" 'it\\'s'\r\n\r\nPING\n").unwrap();
        assert_eq!(
            got,
            vec![
                vec![
                    b"SET".to_vec(),
                    b"k".to_vec(),
                    b"a bA\n".to_vec(),
                    b"it's".to_vec()
                ],
                vec![b"PING".to_vec()]
            ]
        );
        // `\x` without two hex digits escapes the `x` alone, as in `sdssplitargs`.
        assert_eq!(
            split_args(b"\"\\x4\" \"\\xZZ\" \"\\x4f\"").unwrap(),
            vec![b"x4".to_vec(), b"xZZ".to_vec(), b"O".to_vec()]
        );
        assert_eq!(
            decode_all(b"\"hello\r\n"),
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(
            decode_all(b"\"a\"b\r\n"),
            Err(ProtocolError::UnbalancedQuotes)
        );
    }

    #[test]
    fn a_nul_byte_hides_the_end_of_an_inline_line_as_in_redis() {
        // Redis 7.0.15 answers none of these: it waits for a newline after the NUL.
        let mut d = Decoder::new(Limits::default());
        for input in [&b"GET a\0b c\r\n"[..], b"\0\r\nPING\r\n"] {
            let mut buf = BytesMut::from(input);
            assert_eq!(d.decode(&mut buf), Ok(None));
        }
        let mut buf = BytesMut::from(&b"PING\r\n\0\r\nPING\r\n"[..]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        assert_eq!(d.decode(&mut buf), Ok(None));
        // ... until the line passes the inline limit.
        let mut long = vec![0u8];
        long.extend_from_slice(&[b'A'; 70 * 1024]);
        long.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&long[..]);
        assert_eq!(d.decode(&mut buf), Err(ProtocolError::TooBigInline));
    }

    #[test]
    fn inline_request_is_forwarded_as_multibulk() {
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"GET $5\r\n"[..]);
        let r = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&r.raw[..], b"*2\r\n$3\r\nGET\r\n$2\r\n$5\r\n");
        assert_eq!(r.args, vec![Bytes::from("GET"), Bytes::from("$5")]);
    }

    #[test]
    fn empty_multibulk_is_skipped() {
        assert_eq!(
            decode_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap(),
            vec![vec![b"PING".to_vec()]]
        );
    }

    #[test]
    fn redis_error_texts() {
        assert_eq!(
            decode_all(b"*x\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*3000000000\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*2\r\n$x\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$-1\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$600000000\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*2\r\n+x\r\n"),
            Err(ProtocolError::ExpectedBulk('+'))
        );
        assert_eq!(
            ProtocolError::ExpectedBulk('+').reply(),
            Bytes::from("-ERR Protocol error: expected '$', got '+'\r\n")
        );
    }

    #[test]
    fn header_and_inline_length_limits() {
        let long = vec![b'a'; 70 * 1024];
        assert_eq!(decode_all(&long), Err(ProtocolError::TooBigInline));
        let mut mb = b"*".to_vec();
        mb.extend(vec![b'1'; 70 * 1024]);
        assert_eq!(decode_all(&mb), Err(ProtocolError::TooBigMbulkCount));
    }

    #[test]
    fn announced_lengths_do_not_allocate() {
        // A header announcing 500 MB must not reserve it.
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"*1\r\n$500000000\r\nabc"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < 1024 * 1024);
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"*1000000\r\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn limits_are_configurable() {
        let limits = Limits {
            max_bulk_len: 4,
            max_multibulk_len: 2,
            max_inline_len: 64,
        };
        let mut d = Decoder::new(limits);
        let mut buf = BytesMut::from(&b"*1\r\n$5\r\nhello\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Err(ProtocolError::InvalidBulkLength));
        let mut d = Decoder::new(limits);
        let mut buf = BytesMut::from(&b"*3\r\n"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn parse_int_is_strict() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"-0",
            b"2abc",
            b"2\0",
            b"99999999999999999999",
            b"111111111111111111111",
        ] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
