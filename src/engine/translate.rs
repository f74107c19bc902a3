//! Turning the upstream reply of a rewritten command back into the reply the plain
//! command would have produced, so that rewrites stay invisible to the client.

use bytes::{Bytes, BytesMut};

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
    /// Several writes planned as `Exec`, sent in one `MULTI … EXEC` (the session joins
    /// consecutive ones), each as [`JoinedWrite`] says. The reply is each write's, in order,
    /// as `Exec` gives it ([`exec_each`]).
    ExecEach(Vec<JoinedWrite>),
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

/// What one write of a joined transaction (`Translate::ExecEach`) queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinedWrite {
    /// Commands it queued: its own first, then its invalidations.
    pub commands: u32,
    /// Its command is the previous write's too (plain `SET`s sent as one `MSET`): its
    /// reply is the previous write's, and its `commands` are its invalidations only.
    pub shares_previous: bool,
}

impl JoinedWrite {
    /// A write that queued its own command and `commands - 1` invalidations.
    pub fn own(commands: u32) -> JoinedWrite {
        JoinedWrite {
            commands,
            shares_previous: false,
        }
    }
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
            Translate::ExecEach(queued) => exec_each(&reply, queued),
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
    // The common shape, `+OK`, `+QUEUED`…, an `EXEC` array of as many elements: its
    // first element, found without scanning the frames before it.
    if let Some((1.., at)) = crate::resp::reply::plain_transaction_of_any(reply) {
        let f = scanner.scan(reply.get(at..)?).ok()??;
        return Some(reply.slice(at..at + f.len));
    }
    exec_first_scanned(reply)
}

/// [`exec_first`] for a reply of any shape, frame by frame.
fn exec_first_scanned(reply: &Bytes) -> Option<Bytes> {
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

/// The replies of writes joined in one transaction (`Translate::ExecEach`). With an
/// `EXEC` array, write `i`'s reply is the element of its own command. Without one (the
/// transaction was refused, or `MULTI` itself was), each write gets what Redis said
/// when its command was queued if that was an error (what it would have said to the
/// command alone), else the first error any command of the transaction got (Redis
/// refuses the commands of one read alike: out of memory, a read-only replica, a busy
/// script). A write that shares its command with the one before gets that one's reply.
/// A reply of any other shape becomes one error per write, never a count of replies
/// the client does not expect.
fn exec_each(reply: &Bytes, queued: &[JoinedWrite]) -> Bytes {
    let writes = queued.len();
    let total: usize = queued.iter().map(|q| q.commands as usize).sum();
    if let Some(elements_at) = crate::resp::reply::plain_transaction(reply, total)
        && let Some(picked) = exec_each_plain(reply, queued, elements_at)
    {
        return picked;
    }
    let malformed = || {
        let e = b"-ERR cachet: unexpected reply to a transaction of writes\r\n";
        Bytes::from(e.repeat(writes))
    };
    let Some(frames) = frames(reply) else {
        return malformed();
    };
    let (Some(exec), true) = (frames.last(), frames.len() == total + 2) else {
        return malformed();
    };
    let array = exec.starts_with(b"*") && !exec.starts_with(b"*-1");
    let elements = if array {
        match crate::resp::reply::elements(exec) {
            Some(elements) if elements.len() == total => elements,
            _ => return malformed(),
        }
    } else {
        Vec::new()
    };
    let queue_replies = frames.get(1..=total).unwrap_or_default();
    let first_error = queue_replies
        .iter()
        .find(|f| f.starts_with(b"-"))
        .unwrap_or(exec);
    let mut out = BytesMut::with_capacity(reply.len());
    let mut at = 0;
    let mut previous: Option<&[u8]> = None;
    for q in queued {
        let own: &[u8] = match previous {
            Some(p) if q.shares_previous => p,
            _ if array => match elements.get(at) {
                Some(own) => own,
                None => return malformed(),
            },
            _ => match queue_replies.get(at) {
                Some(own) if own.starts_with(b"-") => own,
                _ => first_error,
            },
        };
        out.extend_from_slice(own);
        previous = Some(own);
        at += q.commands as usize;
    }
    out.freeze()
}

/// [`exec_each`] of the common reply (every command queued, an `EXEC` array whose
/// elements start at `elements_at`), scanning each element once.
fn exec_each_plain(reply: &Bytes, queued: &[JoinedWrite], elements_at: usize) -> Option<Bytes> {
    let mut scanner = Scanner::default();
    let mut pos = elements_at;
    let mut out = BytesMut::with_capacity(reply.len() - elements_at);
    let mut own = None;
    for q in queued {
        for i in 0..q.commands {
            let len = scanner.scan(reply.get(pos..)?).ok()??.len;
            if i == 0 && !q.shares_previous {
                own = Some(pos..pos + len);
            }
            pos += len;
        }
        out.extend_from_slice(reply.get(own.clone()?)?);
    }
    (pos == reply.len()).then(|| out.freeze())
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
    fn exec_first_of_the_common_shape_is_what_the_scan_finds() {
        let queued = |n: usize| "+QUEUED\r\n".repeat(n);
        for reply in [
            format!("+OK\r\n{}*2\r\n+OK\r\n:0\r\n", queued(2)),
            format!(
                "+OK\r\n{}*3\r\n*2\r\n$1\r\na\r\n_\r\n:1\r\n:1\r\n",
                queued(3)
            ),
            format!("+OK\r\n{}*2\r\n%1\r\n+a\r\n:1\r\n:0\r\n", queued(2)),
            format!("+OK\r\n{}*1\r\n$-1\r\n", queued(1)),
            format!("+OK\r\n{}*-1\r\n", queued(2)),
            format!("+OK\r\n{}*3\r\n:1\r\n:1\r\n", queued(2)),
            "+OK\r\n*0\r\n".to_string(),
        ] {
            let reply = Bytes::from(reply);
            assert_eq!(exec_first(&reply), exec_first_scanned(&reply), "{reply:?}");
        }
    }

    #[test]
    fn exec_each_answers_every_write_in_order() {
        let t = Translate::ExecEach(own(&[2, 3, 2]));
        let queued = "+QUEUED\r\n".repeat(7);
        let ok = format!(
            "+OK\r\n{queued}*7\r\n+OK\r\n:0\r\n:2\r\n:1\r\n:1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:0\r\n"
        );
        assert_eq!(
            &t.apply(Bytes::from(ok))[..],
            b"+OK\r\n:2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        );
        // RESP3 elements of any type, nested included.
        let t = Translate::ExecEach(own(&[2, 2]));
        let resp3 = "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n%1\r\n+a\r\n*1\r\n:1\r\n:0\r\n_\r\n:0\r\n";
        assert_eq!(
            &t.apply(Bytes::from(resp3))[..],
            b"%1\r\n+a\r\n*1\r\n:1\r\n_\r\n"
        );
    }

    fn own(counts: &[u32]) -> Vec<JoinedWrite> {
        counts.iter().map(|&n| JoinedWrite::own(n)).collect()
    }

    /// Plain `SET`s sent as one `MSET`: `MSET`, then each write's `PUBLISH`; every
    /// write answered with the `MSET`'s reply, the writes around them with their own.
    #[test]
    fn exec_each_answers_writes_that_share_a_command() {
        let shared = JoinedWrite {
            commands: 1,
            shares_previous: true,
        };
        let t = Translate::ExecEach(vec![
            JoinedWrite::own(2),
            JoinedWrite::own(2),
            shared,
            shared,
            JoinedWrite::own(2),
        ]);
        let queued = "+QUEUED\r\n".repeat(8);
        let ok = format!("+OK\r\n{queued}*8\r\n:3\r\n:0\r\n+OK\r\n:0\r\n:0\r\n:0\r\n$-1\r\n:0\r\n");
        assert_eq!(
            &t.apply(Bytes::from(ok))[..],
            b":3\r\n+OK\r\n+OK\r\n+OK\r\n$-1\r\n"
        );
        // The same through the general path (a reply not in the common shape), with an
        // error where the `MSET`'s reply was: every write of the `MSET` gets it.
        let queued = format!("+queued\r\n{}", "+QUEUED\r\n".repeat(7));
        let odd =
            format!("+OK\r\n{queued}*8\r\n:3\r\n:0\r\n-ERR x\r\n:0\r\n:0\r\n:0\r\n$-1\r\n:0\r\n");
        assert_eq!(
            &t.apply(Bytes::from(odd))[..],
            b":3\r\n-ERR x\r\n-ERR x\r\n-ERR x\r\n$-1\r\n"
        );
        // Refused when queued: the `MSET`'s error is each of its writes'.
        let oom = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
        let r = format!(
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n{oom}+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(
            t.apply(Bytes::from(r)),
            Bytes::from(format!("{oom}{oom}{oom}{oom}{oom}"))
        );
    }

    #[test]
    fn exec_each_of_a_refused_transaction() {
        let t = Translate::ExecEach(own(&[2, 2]));
        // Out of memory: every queued command is refused alike.
        let oom = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
        let r = format!(
            "+OK\r\n{oom}{oom}{oom}{oom}-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(t.apply(Bytes::from(r)), Bytes::from(oom.repeat(2)));
        // Only the second write refused: the first, queued, gets the same error.
        let r = format!(
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n{oom}+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(t.apply(Bytes::from(r)), Bytes::from(oom.repeat(2)));
        // `MULTI` refused too (a busy script): each write's own error.
        let busy = "-BUSY Redis is busy running a script.\r\n";
        let r = format!("{busy}{busy}{busy}{busy}{busy}-ERR EXEC without MULTI\r\n");
        assert_eq!(t.apply(Bytes::from(r)), Bytes::from(busy.repeat(2)));
        // A reply cut short: one error per write, never fewer replies.
        let r = Bytes::from_static(b"+OK\r\n+QUEUED\r\n");
        let got = t.apply(r);
        assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), 2);
        assert!(got.starts_with(b"-ERR cachet"));
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
