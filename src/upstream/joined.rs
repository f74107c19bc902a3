//! Joined transactions. A write with its invalidation is a job of its own: `MULTI`,
//! the write, `PUBLISH`…, `EXEC` (`Job::joins` says how many commands it queues). When
//! several such jobs are written together, by one client's pipeline or by many
//! clients at once, they go out as one `MULTI`, every job's commands in order, one
//! `EXEC`: Redis runs two commands fewer per write, and each write stays atomic with
//! its invalidation (the unit grows; it never splits, and nothing can run between its
//! parts). The reply is split back into the reply each job would have got alone, so
//! their owners cannot tell (docs/design.md, G2).
//!
//! Only jobs whose owner allows it are joined: cachet's own user's (a client's user
//! could be refused one command when it is queued, which would refuse its neighbours'
//! too), on one Redis (a cluster refuses a transaction across slots), commands Redis
//! knows with a valid argument count.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Job, MULTI, UpstreamError};
use crate::resp::Scanner;
use crate::resp::reply::{MULTI_OK, QUEUED, plain_transaction, push_header};

const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";

/// Most commands queued in one joined transaction (64 single-key writes): Redis serves
/// nobody else while it runs one, as while it runs a read's worth of pipelined
/// commands, and a connection that breaks mid-reply fails a whole transaction.
pub const MAX_JOINED_COMMANDS: u32 = 128;

/// A job written upstream whose reply has not fully arrived: one job, or several
/// joined in one transaction.
pub(super) struct Pending {
    pub job: Job,
    /// Jobs joined after `job` in its transaction; empty for a job alone.
    joined: Vec<Job>,
    /// Reply frames expected.
    pub frames: u32,
    pub sent_at: Instant,
    /// `sent_at` in the connection's millisecond clock.
    pub written_ms: u64,
}

impl Pending {
    /// The reply (`frames` frames) has arrived: each job gets its own.
    pub fn complete(self, bytes: Bytes) {
        if self.joined.is_empty() {
            self.job.complete(bytes);
            return;
        }
        let jobs: Vec<Job> = std::iter::once(self.job).chain(self.joined).collect();
        let queued: Vec<u32> = jobs.iter().map(|j| j.joins).collect();
        match split(&bytes, &queued) {
            Some(replies) => {
                for (job, reply) in jobs.into_iter().zip(replies) {
                    job.complete(reply);
                }
            }
            None => {
                let e = UpstreamError::Protocol("unexpected reply to a joined transaction".into());
                for job in jobs {
                    job.fail(&e);
                }
            }
        }
    }

    pub fn fail(self, err: &UpstreamError) {
        self.job.fail(err);
        for job in self.joined {
            job.fail(err);
        }
    }
}

/// Writes jobs into one buffer in order, joining consecutive joinable ones, and hands
/// each written unit to the reader.
pub(super) struct Writer<'a> {
    pub buf: &'a mut BytesMut,
    pub pending: &'a mpsc::UnboundedSender<Pending>,
    pub now: Instant,
    pub now_ms: u64,
    /// The transaction being written (its `EXEC` not yet).
    open: Option<Pending>,
}

impl<'a> Writer<'a> {
    pub fn new(
        buf: &'a mut BytesMut,
        pending: &'a mpsc::UnboundedSender<Pending>,
        now: Instant,
        now_ms: u64,
    ) -> Self {
        Writer {
            buf,
            pending,
            now,
            now_ms,
            open: None,
        }
    }

    pub fn push(&mut self, job: Job) {
        let inner = (job.joins > 0)
            .then(|| {
                job.data
                    .strip_prefix(MULTI)
                    .and_then(|d| d.strip_suffix(EXEC))
            })
            .flatten();
        let Some(inner) = inner else {
            self.close();
            self.buf.extend_from_slice(&job.data);
            self.send(Pending {
                frames: job.frames,
                job,
                joined: Vec::new(),
                sent_at: self.now,
                written_ms: self.now_ms,
            });
            return;
        };
        match &mut self.open {
            Some(open) if open.frames - 2 + job.joins <= MAX_JOINED_COMMANDS => {
                self.buf.extend_from_slice(inner);
                open.frames += job.joins;
                open.joined.push(job);
            }
            _ => {
                self.close();
                self.buf.extend_from_slice(MULTI);
                self.buf.extend_from_slice(inner);
                self.open = Some(Pending {
                    frames: 2 + job.joins,
                    job,
                    joined: Vec::new(),
                    sent_at: self.now,
                    written_ms: self.now_ms,
                });
            }
        }
    }

    /// Ends the open transaction, if any. Call before the buffer is written.
    pub fn close(&mut self) {
        if let Some(open) = self.open.take() {
            self.buf.extend_from_slice(EXEC);
            self.send(open);
        }
    }

    fn send(&self, p: Pending) {
        let _ = self.pending.send(p);
    }
}

/// The reply of joined jobs that queued `queued[i]` commands each, split into what each
/// would have got alone: `MULTI`'s reply, its own queueing replies, and an `EXEC` reply
/// of its own elements. When the transaction was refused (an `EXEC` error), a job's
/// `EXEC` reply is the first error any job's command got when queued (Redis refuses
/// the commands of one transaction alike: out of memory, a read-only replica), else
/// the `EXEC` error itself. `None` for a reply of another shape.
fn split(bytes: &Bytes, queued: &[u32]) -> Option<Vec<Bytes>> {
    let total: usize = queued.iter().map(|&n| n as usize).sum();
    if let Some(elements_at) = plain_transaction(bytes, total) {
        return split_plain(bytes, queued, elements_at);
    }
    let frames = frames_of(bytes, 0)?;
    if frames.len() != total + 2 {
        return None;
    }
    let (multi, exec) = (frames.first()?.clone(), frames.last()?.clone());
    let queue_replies = frames.get(1..=total)?;
    let elements = if exec.starts_with(b"*") && !exec.starts_with(b"*-1") {
        let header = exec.iter().position(|&b| b == b'\n')? + 1;
        let elements = frames_of(&exec, header)?;
        if elements.len() != total {
            return None;
        }
        Some(elements)
    } else {
        None
    };
    let refused = queue_replies
        .iter()
        .find(|f| f.starts_with(b"-"))
        .unwrap_or(&exec);
    let mut out = Vec::with_capacity(queued.len());
    let mut at = 0;
    for &n in queued {
        let n = n as usize;
        let own = queue_replies.get(at..at + n)?;
        let mut reply = BytesMut::with_capacity(multi.len() + 16 * n + 16);
        reply.extend_from_slice(&multi);
        for q in own {
            reply.extend_from_slice(q);
        }
        match &elements {
            Some(elements) => {
                reply.extend_from_slice(format!("*{n}\r\n").as_bytes());
                for e in elements.get(at..at + n)? {
                    reply.extend_from_slice(e);
                }
            }
            None => reply.extend_from_slice(refused),
        }
        out.push(reply.freeze());
        at += n;
    }
    Some(out)
}

/// [`split`] of the common reply (every command queued, an `EXEC` array whose
/// elements start at `elements_at`), scanning each element once.
fn split_plain(bytes: &Bytes, queued: &[u32], elements_at: usize) -> Option<Vec<Bytes>> {
    let mut scanner = Scanner::default();
    let mut pos = elements_at;
    let mut out = Vec::with_capacity(queued.len());
    for &n in queued {
        let start = pos;
        for _ in 0..n {
            pos += scanner.scan(bytes.get(pos..)?).ok()??.len;
        }
        let n_queued = n as usize * QUEUED.len();
        let mut reply = BytesMut::with_capacity(MULTI_OK.len() + n_queued + 16 + pos - start);
        reply.extend_from_slice(MULTI_OK);
        for _ in 0..n {
            reply.extend_from_slice(QUEUED);
        }
        push_header(&mut reply, b'*', i64::from(n));
        reply.extend_from_slice(bytes.get(start..pos)?);
        out.push(reply.freeze());
    }
    (pos == bytes.len()).then_some(out)
}

/// The contiguous frames of `bytes` from `from` on.
fn frames_of(bytes: &Bytes, from: usize) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut pos = from;
    let mut scanner = Scanner::default();
    while pos < bytes.len() {
        let f = scanner.scan(bytes.get(pos..)?).ok()??;
        out.push(bytes.slice(pos..pos + f.len));
        pos += f.len;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn split_str(reply: &str, queued: &[u32]) -> Option<Vec<String>> {
        split(&Bytes::from(reply.to_string()), queued).map(|v| {
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        })
    }

    #[test]
    fn each_job_gets_its_own_transaction_reply() {
        let q = "+QUEUED\r\n";
        let reply = format!("+OK\r\n{q}{q}{q}{q}{q}*5\r\n+OK\r\n:1\r\n$1\r\nx\r\n:0\r\n:2\r\n");
        let got = split_str(&reply, &[2, 3]).unwrap();
        assert_eq!(got[0], format!("+OK\r\n{q}{q}*2\r\n+OK\r\n:1\r\n"));
        assert_eq!(
            got[1],
            format!("+OK\r\n{q}{q}{q}*3\r\n$1\r\nx\r\n:0\r\n:2\r\n")
        );
    }

    #[test]
    fn a_refused_transaction_refuses_each_with_the_first_error() {
        let oom = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
        let q = "+QUEUED\r\n";
        let abort = "-EXECABORT Transaction discarded because of previous errors.\r\n";
        let reply = format!("+OK\r\n{q}{q}{oom}{q}{abort}");
        let got = split_str(&reply, &[2, 2]).unwrap();
        assert_eq!(got[0], format!("+OK\r\n{q}{q}{oom}"));
        assert_eq!(got[1], format!("+OK\r\n{oom}{q}{oom}"));
    }

    #[test]
    fn a_reply_of_another_shape_is_not_split() {
        assert!(split_str("+OK\r\n+QUEUED\r\n", &[1, 1]).is_none());
        let q = "+QUEUED\r\n";
        assert!(split_str(&format!("+OK\r\n{q}{q}*1\r\n:1\r\n"), &[1, 1]).is_none());
    }
}
