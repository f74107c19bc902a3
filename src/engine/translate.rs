//! Turning the upstream reply of a rewritten command back into the reply the plain
//! command would have produced, so that rewrites stay invisible to the client.

use bytes::Bytes;

use super::reserved;
use crate::resp::Scanner;

/// How to translate a reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Translate {
    /// The reply is the client's.
    #[default]
    None,
    /// `MULTI`, the command, invalidation commands, `EXEC`: the client's reply is the
    /// first element of the `EXEC` array; if the transaction was refused (`EXECABORT`),
    /// it is the command's own queueing error.
    Exec,
    /// As `Exec`, then translated by the inner rule.
    ExecFirst(Box<Translate>),
    /// The client's reply is the first of several frames (cachet's own commands
    /// followed the client's).
    FirstFrame,
    /// `SETNX` sent as `SET … NX PX …`: `+OK` becomes `:1`, nil becomes `:0`.
    SetNxAsInt,
    /// `KEYS`: drop reserved keys.
    HideKeys(Bytes),
    /// `SCAN`: drop reserved keys.
    HideScan(Bytes),
    /// The reply is this, whatever the upstream said (a refusal made to look like the
    /// upstream's, such as a denied command queued in a transaction).
    Replace(Bytes),
}

impl Translate {
    pub fn is_none(&self) -> bool {
        matches!(self, Translate::None)
    }

    /// Applies the rule; a reply of an unexpected shape passes through unchanged.
    pub fn apply(&self, reply: Bytes) -> Bytes {
        match self {
            Translate::None => reply,
            Translate::Replace(with) => with.clone(),
            Translate::Exec => exec_first(&reply).unwrap_or(reply),
            Translate::ExecFirst(inner) => match exec_first(&reply) {
                Some(picked) => inner.apply(picked),
                None => reply,
            },
            Translate::FirstFrame => match frames(&reply).and_then(|f| f.into_iter().next()) {
                Some(first) => first,
                None => reply,
            },
            Translate::SetNxAsInt => {
                if reply.starts_with(b"+OK") {
                    Bytes::from_static(b":1\r\n")
                } else if reply.starts_with(b"$-1") || reply.starts_with(b"_") {
                    Bytes::from_static(b":0\r\n")
                } else {
                    reply
                }
            }
            Translate::HideKeys(prefix) => {
                reserved::filter_keys_reply(&reply, prefix).unwrap_or(reply)
            }
            Translate::HideScan(prefix) => {
                reserved::filter_scan_reply(&reply, prefix).unwrap_or(reply)
            }
        }
    }
}

/// Splits contiguous frames.
pub fn frames(bytes: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let f = Scanner::default().scan(bytes.get(pos..)?).ok()??;
        out.push(bytes.slice(pos..pos + f.len));
        pos += f.len;
    }
    Some(out)
}

/// The client's reply out of `MULTI`, the command, cachet's commands, `EXEC`: scanned
/// frame by frame, without collecting them.
fn exec_first(reply: &Bytes) -> Option<Bytes> {
    let mut scanner = Scanner::default();
    let mut pos = 0;
    let mut queued = None;
    let mut last = (0, 0);
    let mut index = 0;
    while pos < reply.len() {
        let f = scanner.scan(reply.get(pos..)?).ok()??;
        if index == 1 {
            queued = Some((pos, f.len));
        }
        last = (pos, f.len);
        pos += f.len;
        index += 1;
    }
    let (queued_at, queued_len) = queued?;
    let exec = reply.slice(last.0..last.0 + last.1);
    match exec.first()? {
        b'*' if !exec.starts_with(b"*-1") => {
            // The first element of the array: past the header line.
            let header = exec.iter().position(|&b| b == b'\n')? + 1;
            let f = scanner.scan(exec.get(header..)?).ok()??;
            Some(exec.slice(header..header + f.len))
        }
        b'-' if reply.get(queued_at) == Some(&b'-') => {
            Some(reply.slice(queued_at..queued_at + queued_len))
        }
        _ => Some(exec),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exec_first_picks_the_commands_reply() {
        let t = Translate::Exec;
        let r = Bytes::from_static(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$3\r\nold\r\n:0\r\n");
        assert_eq!(&t.apply(r)[..], b"$3\r\nold\r\n");
        let aborted = Bytes::from_static(
            b"+OK\r\n-ERR wrong number of arguments for 'set' command\r\n+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
        );
        assert_eq!(
            &t.apply(aborted)[..],
            b"-ERR wrong number of arguments for 'set' command\r\n"
        );
        // An error raised while executing is inside the EXEC array.
        let runtime = Bytes::from_static(
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:0\r\n",
        );
        assert!(t.apply(runtime).starts_with(b"-WRONGTYPE"));
    }

    #[test]
    fn setnx_as_int() {
        let t = Translate::ExecFirst(Box::new(Translate::SetNxAsInt));
        let ok = Bytes::from_static(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n");
        assert_eq!(&t.apply(ok)[..], b":1\r\n");
        assert_eq!(
            &Translate::SetNxAsInt.apply(Bytes::from_static(b"$-1\r\n"))[..],
            b":0\r\n"
        );
        assert_eq!(
            &Translate::SetNxAsInt.apply(Bytes::from_static(b"_\r\n"))[..],
            b":0\r\n"
        );
    }
}
