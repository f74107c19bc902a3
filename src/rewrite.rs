//! The rewrite stage: what a classified command becomes upstream.
//!
//! Today every command is forwarded as the client sent it (its own bytes, no
//! re-encoding). This is the one place where a command may instead become a block of
//! commands sent contiguously on the shared connection (for example `MULTI`, the write,
//! its invalidation, `EXEC`); `frames` tells the connection how many reply frames the
//! block produces, and the session receives them as one contiguous reply.

use bytes::Bytes;

use crate::command::CommandInfo;
use crate::resp::Request;

/// How a command goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send `data`; the reply is the next `frames` frames.
    Forward { data: Bytes, frames: u32 },
}

/// Decides the upstream form of `req`. `info` is `None` for commands the table does not
/// know (they are forwarded, and the upstream answers them).
pub fn plan(req: &Request, _info: Option<&CommandInfo>) -> Plan {
    Plan::Forward {
        data: req.raw.clone(),
        frames: 1,
    }
}
