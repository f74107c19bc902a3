//! cachet's own keys upstream (leases and tombstones of `cache` keyspaces): their names,
//! colocated with the data key's hash slot, and keeping clients away from them: refusing
//! commands that name them (as keys, or as `SORT` patterns that can expand to them),
//! and removing them from listings and from messages that would tell about them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::resp::reply::{self, elements, push_header, string_value};

/// The error answered to a command that names reserved keys.
pub fn refusal(prefix: &[u8]) -> Bytes {
    reply::error(&format!(
        "ERR cachet: keys starting with '{}' are reserved",
        String::from_utf8_lossy(prefix)
    ))
}

/// Whether a `SORT … BY`/`GET` pattern can name a reserved key. Redis substitutes the
/// first `*` with a list element (a pattern without `*`, and `#`, read no key); the
/// key read starts with the text before that `*`, followed by the element. That text
/// can begin a reserved key when it starts with the prefix, or when it is itself a
/// beginning of the prefix (including empty: `*`) and the element completes it.
/// Only a pattern whose text before `*` departs from the prefix is provably safe.
pub fn pattern_may_reach(pattern: &[u8], prefix: &[u8]) -> bool {
    let Some(star) = pattern.iter().position(|&b| b == b'*') else {
        return false;
    };
    let head = pattern.get(..star).unwrap_or_default();
    head.starts_with(prefix) || prefix.starts_with(head)
}

/// Whether a `SORT`/`SORT_RO` command's `BY` or `GET` patterns can name a reserved key.
pub fn sort_patterns_reach(args: &[bytes::Bytes], prefix: &[u8]) -> bool {
    let mut rest = args.iter().skip(2);
    while let Some(a) = rest.next() {
        if a.eq_ignore_ascii_case(b"BY") || a.eq_ignore_ascii_case(b"GET") {
            if rest.next().is_some_and(|p| pattern_may_reach(p, prefix)) {
                return true;
            }
        } else if a.eq_ignore_ascii_case(b"LIMIT") {
            rest.next();
            rest.next();
        } else if a.eq_ignore_ascii_case(b"STORE") {
            rest.next();
        }
    }
    false
}

pub use crate::command::slot::hash_tag;

/// The name of the hash that keeps `key`'s fill-protocol state (`fill.rs`), in the
/// same hash slot: `<prefix>{<tag>}:s:<key>`. `None` when the key's braces make
/// colocation impossible (an unterminated or empty tag that a wrapping `{…}` would
/// change); such a key is handled as `strict`.
pub fn state_key(prefix: &[u8], key: &[u8]) -> Option<Bytes> {
    if !has_state_key(key) {
        return None;
    }
    let tag = hash_tag(key);
    let mut out = BytesMut::with_capacity(prefix.len() + tag.len() + key.len() + 5);
    out.extend_from_slice(prefix);
    out.put_u8(b'{');
    out.extend_from_slice(tag);
    out.extend_from_slice(b"}:s:");
    out.extend_from_slice(key);
    Some(out.freeze())
}

/// Whether `key` can have a state hash ([`state_key`] is `Some`), without building it:
/// wrapping its hash tag in braces must make exactly that tag the new key's tag.
pub fn has_state_key(key: &[u8]) -> bool {
    let tag = hash_tag(key);
    !tag.is_empty() && !tag.contains(&b'}')
}

/// `prefix` as a `KEYS`/`SCAN MATCH` pattern that matches every reserved key.
pub fn pattern(prefix: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(prefix.len() * 2 + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.put_u8(b'\\');
        }
        out.put_u8(b);
    }
    out.put_u8(b'*');
    out.freeze()
}

/// Removes reserved keys from a `KEYS` reply (an array of bulk strings). Returns
/// `None` when the reply is not such an array (an error passes through unchanged).
pub fn filter_keys_reply(reply: &[u8], prefix: &[u8]) -> Option<Bytes> {
    let el = elements(reply)?;
    let kind = *reply.first()?;
    let kept: Vec<&[u8]> = el
        .into_iter()
        .filter(|e| !string_value(e).is_some_and(|k| k.starts_with(prefix)))
        .collect();
    let mut out = BytesMut::with_capacity(reply.len());
    push_header(&mut out, kind, kept.len() as i64);
    for e in kept {
        out.extend_from_slice(e);
    }
    Some(out.freeze())
}

/// Removes reserved keys from a `SCAN` reply (`[cursor, [keys…]]`).
pub fn filter_scan_reply(reply: &[u8], prefix: &[u8]) -> Option<Bytes> {
    let el = elements(reply)?;
    let [cursor, keys] = el.as_slice() else {
        return None;
    };
    let keys = filter_keys_reply(keys, prefix)?;
    let mut out = BytesMut::with_capacity(reply.len());
    push_header(&mut out, *reply.first()?, 2);
    out.extend_from_slice(cursor);
    out.extend_from_slice(&keys);
    Some(out.freeze())
}

/// An out-of-band message for the client without what it tells about reserved keys;
/// `None` when nothing is left to tell:
/// - client-tracking invalidations (RESP3 `invalidate` pushes, and RESP2 messages of
///   `__redis__:invalidate` on a `REDIRECT` target) lose reserved key names (the lease
///   scripts touch them on tracked connections; `BCAST` reports every key written);
/// - keyspace notifications about a reserved key (`__keyspace@<db>__:<reserved key>`,
///   or a `__keyevent@<db>__:<event>` message naming one) are dropped.
pub fn hide_in_push(push: Bytes, prefix: &[u8]) -> Option<Bytes> {
    const INVALIDATE: &[u8] = b">2\r\n$10\r\ninvalidate\r\n";
    if push.starts_with(INVALIDATE) {
        return filter_element(&push, INVALIDATE.len(), push.len(), prefix);
    }
    let Some(el) = elements(&push) else {
        return Some(push);
    };
    let kind = el.first().and_then(|e| string_value(e)).unwrap_or_default();
    let (channel, payload) = if kind.eq_ignore_ascii_case(b"pmessage") {
        (el.get(2), el.get(3))
    } else if kind.eq_ignore_ascii_case(b"message") || kind.eq_ignore_ascii_case(b"smessage") {
        (el.get(1), el.get(2))
    } else {
        return Some(push);
    };
    let (Some(channel), Some(&payload)) = (channel.and_then(|c| string_value(c)), payload) else {
        return Some(push);
    };
    if channel == b"__redis__:invalidate" {
        // `payload` borrows from `push`: its offset locates it in the frame.
        let start = (payload.as_ptr() as usize).saturating_sub(push.as_ptr() as usize);
        return filter_element(&push, start, start + payload.len(), prefix);
    }
    let about_reserved = if let Some(rest) = channel.strip_prefix(b"__keyspace@") {
        let key = rest
            .windows(3)
            .position(|w| w == b"__:")
            .and_then(|i| rest.get(i + 3..));
        key.is_some_and(|k| k.starts_with(prefix))
    } else if channel.starts_with(b"__keyevent@") {
        string_value(payload).is_some_and(|k| k.starts_with(prefix))
    } else {
        false
    };
    (!about_reserved).then_some(push)
}

/// `frame` with its element at `start..end` (an array of key names) rid of reserved
/// keys; `None` when no key is left.
fn filter_element(frame: &Bytes, start: usize, end: usize, prefix: &[u8]) -> Option<Bytes> {
    let Some(keys) = frame.get(start..end).filter(|k| !k.starts_with(b"*-1")) else {
        // A null key list (a flush: RESP2 `*-1`) tells about every key alike.
        return Some(frame.clone());
    };
    match filter_keys_reply(keys, prefix) {
        Some(kept) if kept.len() == keys.len() => Some(frame.clone()),
        Some(kept) if kept.get(1..3) == Some(&b"0\r"[..]) => None,
        Some(kept) => {
            let mut out = BytesMut::with_capacity(frame.len());
            out.extend_from_slice(frame.get(..start)?);
            out.extend_from_slice(&kept);
            out.extend_from_slice(frame.get(end..)?);
            Some(out.freeze())
        }
        // A null key list (a flush) or anything unexpected passes through.
        None => Some(frame.clone()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_share_the_data_keys_tag() {
        let s = state_key(b"__cachet:", b":1:user").unwrap();
        assert_eq!(&s[..], b"__cachet:{:1:user}:s::1:user");
        assert_eq!(hash_tag(&s), hash_tag(b":1:user"));
        let s = state_key(b"__cachet:", b"{u1}:profile").unwrap();
        assert_eq!(hash_tag(&s), b"u1");
        assert!(state_key(b"__cachet:", b"a}b").is_none());
        assert!(state_key(b"__cachet:", b"{}x}").is_none());
        let s = state_key(b"__cachet:", b"a{b").unwrap();
        assert_eq!(hash_tag(&s), b"a{b");
        assert_eq!(&pattern(b"__c*a:")[..], b"__c\\*a:*");
    }

    #[test]
    fn listings_hide_reserved_keys() {
        let keys = b"*3\r\n$1\r\na\r\n$12\r\n__cachet:{a}\r\n$1\r\nb\r\n";
        assert_eq!(
            &filter_keys_reply(keys, b"__cachet:").unwrap()[..],
            b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        let scan = b"*2\r\n$2\r\n17\r\n*2\r\n$12\r\n__cachet:{a}\r\n$1\r\nb\r\n";
        assert_eq!(
            &filter_scan_reply(scan, b"__cachet:").unwrap()[..],
            b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\nb\r\n"
        );
        assert!(filter_keys_reply(b"-ERR x\r\n", b"__cachet:").is_none());
    }

    #[test]
    fn sort_patterns_that_can_expand_to_reserved_keys() {
        let p = b"__cachet:";
        for reach in [
            &b"*"[..],
            b"_*",
            b"__cachet*",
            b"__cachet:*",
            b"__cachet:{a}*->f",
        ] {
            assert!(pattern_may_reach(reach, p), "{reach:?}");
        }
        for safe in [
            &b"#"[..],
            b"nosort",
            b"__cachet:x",
            b"w_*",
            b"x*",
            b"__cacheT*",
        ] {
            assert!(!pattern_may_reach(safe, p), "{safe:?}");
        }
        let args = |s: &str| -> Vec<Bytes> {
            s.split(' ')
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect()
        };
        assert!(sort_patterns_reach(&args("SORT l BY w_* GET # GET *"), p));
        assert!(sort_patterns_reach(&args("sort_ro l by _*"), p));
        assert!(!sort_patterns_reach(
            &args("SORT l BY w_* GET # GET o_*->f"),
            p
        ));
        assert!(!sort_patterns_reach(
            &args("SORT l LIMIT 0 1 STORE * ALPHA"),
            p
        ));
        assert!(!sort_patterns_reach(&args("SORT l GET"), p));
    }

    #[test]
    fn messages_about_reserved_keys_are_hidden() {
        let p = b"__cachet:";
        let push = |b: &'static [u8]| Bytes::from_static(b);
        // RESP3 tracking push: reserved names dropped, nothing left means no push.
        let kept = hide_in_push(
            push(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$10\r\n__cachet:a\r\n"),
            p,
        );
        assert_eq!(
            &kept.unwrap()[..],
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n"
        );
        assert!(
            hide_in_push(
                push(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$10\r\n__cachet:a\r\n"),
                p
            )
            .is_none()
        );
        // RESP2 REDIRECT target.
        let msg = push(
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*2\r\n$10\r\n__cachet:a\r\n$1\r\nb\r\n",
        );
        assert_eq!(
            &hide_in_push(msg, p).unwrap()[..],
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nb\r\n"
        );
        let only = push(
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$10\r\n__cachet:a\r\n",
        );
        assert!(hide_in_push(only, p).is_none());
        let flush = push(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*-1\r\n");
        assert_eq!(hide_in_push(flush.clone(), p), Some(flush));
        // Keyspace notifications.
        let ks = push(
            b"*4\r\n$8\r\npmessage\r\n$3\r\n__*\r\n$25\r\n__keyspace@0__:__cachet:a\r\n$3\r\nset\r\n",
        );
        assert!(hide_in_push(ks, p).is_none());
        let ke = push(b">3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:del\r\n$10\r\n__cachet:a\r\n");
        assert!(hide_in_push(ke, p).is_none());
        let data = push(b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:del\r\n$1\r\na\r\n");
        assert_eq!(hide_in_push(data.clone(), p), Some(data));
        let other = push(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$10\r\n__cachet:a\r\n");
        assert_eq!(hide_in_push(other.clone(), p), Some(other));
    }
}
