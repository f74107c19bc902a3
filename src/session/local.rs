//! Session state that belongs to the client, not to any upstream connection, answered
//! by cachet itself: `SELECT`, `HELLO`, `CLIENT ID|GETNAME|SETNAME|SETINFO|REPLY`. The
//! replies and error texts are Redis's own.

use bytes::{Bytes, BytesMut};

use crate::command::CommandKind;
use crate::context::ServerInfo;
use crate::resp::reply::{self, push_int, push_map_header, push_null};
use crate::resp::request::parse_int;

/// What `CLIENT REPLY` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    /// Skip the reply of the next command only.
    Skip,
}

/// Whether a command of this kind is answered by the session itself (so nothing
/// upstream checks its arity).
pub fn answers(kind: CommandKind) -> bool {
    use CommandKind as K;
    matches!(
        kind,
        K::Quit
            | K::Reset
            | K::Select
            | K::Hello
            | K::ClientId
            | K::ClientGetName
            | K::ClientSetName
            | K::ClientSetInfo
            | K::ClientReply
    )
}

/// Validates `SELECT <db>`; the new database or the error reply.
pub fn select(args: &[Bytes], databases: u32) -> Result<u32, Bytes> {
    if args.len() != 2 {
        return Err(reply::wrong_arity("select"));
    }
    let db = args
        .get(1)
        .and_then(|a| parse_int(a))
        .ok_or_else(|| reply::error("ERR value is not an integer or out of range"))?;
    if db < 0 || db >= i64::from(databases) || db > i64::from(i32::MAX) {
        return Err(reply::error("ERR DB index is out of range"));
    }
    Ok(db as u32)
}

/// A parsed `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub proto: Option<u8>,
    pub auth: Option<(Bytes, Bytes)>,
    pub setname: Option<Bytes>,
}

pub fn parse_hello(args: &[Bytes]) -> Result<Hello, Bytes> {
    let mut hello = Hello::default();
    let Some(ver) = args.get(1) else {
        return Ok(hello);
    };
    let ver = parse_int(ver)
        .ok_or_else(|| reply::error("ERR Protocol version is not an integer or out of range"))?;
    if !(2..=3).contains(&ver) {
        return Err(reply::error("NOPROTO unsupported protocol version"));
    }
    hello.proto = Some(ver as u8);
    let mut j = 2;
    while let Some(opt) = args.get(j) {
        let more = args.len() - j - 1;
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            if let (Some(u), Some(p)) = (args.get(j + 1), args.get(j + 2)) {
                hello.auth = Some((u.clone(), p.clone()));
            }
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            let name = args.get(j + 1).cloned().unwrap_or_default();
            check_name(&name)?;
            hello.setname = Some(name);
            j += 2;
        } else {
            return Err(reply::error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            )));
        }
    }
    Ok(hello)
}

/// The `HELLO` reply for a session: the upstream's fields with this session's protocol
/// and id.
pub fn hello_reply(info: &ServerInfo, proto: u8, id: u64) -> Bytes {
    let fields = info
        .hello
        .get(usize::from(proto >= 3))
        .map_or(&[][..], |f| &f[..]);
    let mut out = BytesMut::with_capacity(256);
    push_map_header(&mut out, fields.len(), proto);
    for (k, v) in fields {
        out.extend_from_slice(k);
        match reply::string_value(k) {
            Some(b"proto") => push_int(&mut out, i64::from(proto)),
            Some(b"id") => push_int(&mut out, id as i64),
            _ => out.extend_from_slice(v),
        }
    }
    out.freeze()
}

/// Redis accepts client names of printable ASCII without spaces.
pub fn check_name(name: &[u8]) -> Result<(), Bytes> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(reply::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

/// `CLIENT GETNAME`.
pub fn getname(name: Option<&Bytes>, proto: u8) -> Bytes {
    let mut out = BytesMut::new();
    match name {
        Some(n) => reply::push_bulk(&mut out, n),
        None => push_null(&mut out, proto),
    }
    out.freeze()
}

/// `CLIENT SETINFO LIB-NAME|LIB-VER <value>` as Redis 7.2 checks it.
pub fn setinfo(args: &[Bytes]) -> Result<(), Bytes> {
    if args.len() != 4 {
        return Err(reply::wrong_arity("client|setinfo"));
    }
    let attr = args.get(2).cloned().unwrap_or_default();
    let value = args.get(3).cloned().unwrap_or_default();
    let name = if attr.eq_ignore_ascii_case(b"lib-name") {
        "lib-name"
    } else if attr.eq_ignore_ascii_case(b"lib-ver") {
        "lib-ver"
    } else {
        return Err(reply::error(&format!(
            "ERR Unrecognized option '{}'",
            String::from_utf8_lossy(&attr)
        )));
    };
    if value.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(reply::error(&format!(
            "ERR {name} cannot contain spaces, newlines or special characters."
        )));
    }
    Ok(())
}

/// `CLIENT REPLY ON|OFF|SKIP`.
pub fn reply_mode(args: &[Bytes]) -> Result<ReplyMode, Bytes> {
    if args.len() != 3 {
        return Err(reply::wrong_arity("client|reply"));
    }
    let mode = args.get(2).cloned().unwrap_or_default();
    if mode.eq_ignore_ascii_case(b"on") {
        Ok(ReplyMode::On)
    } else if mode.eq_ignore_ascii_case(b"off") {
        Ok(ReplyMode::Off)
    } else if mode.eq_ignore_ascii_case(b"skip") {
        Ok(ReplyMode::Skip)
    } else {
        Err(reply::error("ERR syntax error"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    #[test]
    fn select_checks_like_redis() {
        let info = ServerInfo::default().databases;
        assert_eq!(select(&args("SELECT 3"), info), Ok(3));
        assert_eq!(
            select(&args("SELECT 16"), info).unwrap_err(),
            Bytes::from("-ERR DB index is out of range\r\n")
        );
        assert_eq!(
            select(&args("SELECT x"), info).unwrap_err(),
            Bytes::from("-ERR value is not an integer or out of range\r\n")
        );
        assert_eq!(
            select(&args("SELECT"), info).unwrap_err(),
            Bytes::from("-ERR wrong number of arguments for 'select' command\r\n")
        );
    }

    #[test]
    fn hello_parsing() {
        assert_eq!(parse_hello(&args("HELLO")).unwrap(), Hello::default());
        let h = parse_hello(&args("HELLO 3 AUTH u p SETNAME n")).unwrap();
        assert_eq!(h.proto, Some(3));
        assert_eq!(h.auth, Some((Bytes::from("u"), Bytes::from("p"))));
        assert_eq!(h.setname, Some(Bytes::from("n")));
        assert_eq!(
            parse_hello(&args("HELLO 4")).unwrap_err(),
            Bytes::from("-NOPROTO unsupported protocol version\r\n")
        );
        assert_eq!(
            parse_hello(&args("HELLO 3 FOO")).unwrap_err(),
            Bytes::from("-ERR Syntax error in HELLO option 'FOO'\r\n")
        );
    }

    #[test]
    fn hello_reply_uses_session_proto_and_id() {
        let info = ServerInfo::default();
        let r = hello_reply(&info, 3, 42);
        assert!(r.starts_with(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"));
        assert!(r.windows(13).any(|w| w == b"$2\r\nid\r\n:42\r\n"));
        assert!(hello_reply(&info, 2, 1).starts_with(b"*14\r\n"));
    }
}
