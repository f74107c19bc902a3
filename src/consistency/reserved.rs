//! cachet's own keys upstream (leases and tombstones of `cache` keyspaces): their names,
//! colocated with the data key's hash slot, and keeping clients away from them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::resp::reply::{elements, push_header, string_value};

/// The hash tag Redis Cluster would hash for `key`: the bytes between the first `{` and
/// the next `}` if non-empty, else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = key.get(open + 1..).unwrap_or_default();
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return rest.get(..close).unwrap_or(key);
            }
        }
    }
    key
}

/// Names of the reserved keys that describe one data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKeys {
    pub lease: Bytes,
    pub tomb: Bytes,
}

/// The lease and tombstone keys of `key`, in the same hash slot: `<prefix>{<tag>}:lease:<key>`.
/// `None` when the key's braces make colocation impossible (an unterminated or empty
/// tag that a wrapping `{…}` would change); such a key is handled as `strict`.
pub fn state_keys(prefix: &[u8], key: &[u8]) -> Option<StateKeys> {
    let tag = hash_tag(key);
    // Wrapping `tag` in braces must make exactly `tag` the new key's hash tag.
    if tag.is_empty() || tag.contains(&b'}') {
        return None;
    }
    let make = |kind: &[u8]| {
        let mut out = BytesMut::with_capacity(prefix.len() + tag.len() + key.len() + 10);
        out.extend_from_slice(prefix);
        out.put_u8(b'{');
        out.extend_from_slice(tag);
        out.put_u8(b'}');
        out.extend_from_slice(kind);
        out.extend_from_slice(key);
        out.freeze()
    };
    Some(StateKeys {
        lease: make(b":lease:"),
        tomb: make(b":tomb:"),
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_cluster() {
        assert_eq!(hash_tag(b"user:1"), b"user:1");
        assert_eq!(hash_tag(b"{user}:1"), b"user");
        assert_eq!(hash_tag(b"a{}b"), b"a{}b");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
        assert_eq!(hash_tag(b"a{b}{c}"), b"b");
    }

    #[test]
    fn state_keys_share_the_data_keys_tag() {
        let s = state_keys(b"__cachet:", b":1:user").unwrap();
        assert_eq!(&s.lease[..], b"__cachet:{:1:user}:lease::1:user");
        assert_eq!(hash_tag(&s.lease), hash_tag(b":1:user"));
        let s = state_keys(b"__cachet:", b"{u1}:profile").unwrap();
        assert_eq!(hash_tag(&s.tomb), b"u1");
        assert!(state_keys(b"__cachet:", b"a}b").is_none());
        assert!(state_keys(b"__cachet:", b"{}x}").is_none());
        let s = state_keys(b"__cachet:", b"a{b").unwrap();
        assert_eq!(hash_tag(&s.lease), b"a{b");
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
}
