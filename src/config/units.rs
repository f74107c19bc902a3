//! Typed values written as strings in the TOML file: durations (`"10s"`), sizes
//! (`"64MiB"`), socket addresses and command names, with their serde adapters.
//!
//! Every parser returns the full user-facing message (value quoted, accepted forms
//! listed), so the loader can print it unchanged next to the file, line and key.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{self, Visitor};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration: a non-negative decimal number followed by `us`, `ms`, `s`, `m` or
/// `h`, such as `"0s"`, `"500ms"`, `"10s"`, `"1m"`, `"2h"`, `"1.5s"`. A bare `"0"` is
/// accepted too, as zero needs no unit. Precision below a nanosecond is dropped.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {s:?}: expected a number followed by ms, s, m or h");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(invalid)?;
    let (number, unit) = s.split_at(split);
    let unit_nanos: u128 = match unit {
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) || number.ends_with('.') {
        return Err(invalid());
    }
    let too_large = || format!("invalid duration {s:?}: too large");
    // u128 holds any u64 count of hours in nanoseconds; longer inputs cannot fit anyway.
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
    // Digits past the 20th cannot change the nanosecond count of even an hour.
    let mut scale = unit_nanos;
    for digit in fraction.bytes().take(20) {
        scale /= 10;
        nanos = nanos.saturating_add(u128::from(digit - b'0') * scale);
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_large())?;
    // The remainder of a division by 10^9 always fits in u32.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).map_err(|_| too_large())?;
    Ok(Duration::new(secs, subsec))
}

/// Parses a size in bytes: a bare integer (`"1048576"`), or an integer followed by a unit,
/// case-insensitively: `B`; `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024); and the Redis
/// spellings with Redis's meanings, `kb`/`mb`/`gb` for powers of 1024 and `k`/`m`/`g`
/// for powers of 1000 (as `redis.conf` reads them).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid size {s:?}: expected a whole number of bytes, optionally followed by B, KiB, MiB or GiB"
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(invalid());
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Parses `IP:port` (`[v6]:port` for IPv6).
/// `IP:port`, or `host:port` resolved now (at every load and reload: the first IPv4
/// address the resolver gives, else its first).
pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let invalid = || {
        format!("invalid address {s:?}: expected IP:port or host:port, such as \"127.0.0.1:6380\"")
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || host.contains([':', '[', ']', ' ']) || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    // The first IPv4 address if there is one: `localhost` often resolves to `::1`
    // first, and applications that reach it as 127.0.0.1 must find cachet there.
    match std::net::ToSocketAddrs::to_socket_addrs(s) {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| format!("address {s:?}: the host name resolves to no address"))
        }
        Err(e) => Err(format!("address {s:?}: cannot resolve the host name: {e}")),
    }
}

/// Checks and normalises one `[commands] deny` entry: Redis command names are
/// case-insensitive, so they are stored uppercased to compare with a plain `==`.
pub(crate) fn command_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("command names must not be empty".to_owned());
    }
    if s.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid command name {s:?}: command names contain no spaces"
        ));
    }
    Ok(s.to_ascii_uppercase())
}

/// A serde visitor for string-typed values, with `expecting` naming the value's kind
/// so a wrong TOML type reads "invalid type: integer `5`, expected a duration string
/// such as \"10s\"".
struct StrVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(StrVisitor {
        expecting: "a duration string such as \"10s\"",
        parse: parse_duration,
    })
}

pub(crate) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(StrVisitor {
        expecting: "an address string such as \"127.0.0.1:6380\"",
        parse: parse_socket_addr,
    })
}

/// `""` or `"off"` switch the listener off.
pub(crate) fn optional_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    d.deserialize_str(StrVisitor {
        expecting: "an address string such as \"127.0.0.1:9180\", or \"off\"",
        parse: |s| match s {
            "" | "off" => Ok(None),
            _ => parse_socket_addr(s).map(Some),
        },
    })
}

pub(crate) fn command_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names: Vec<String> = serde::Deserialize::deserialize(d)?;
    names
        .iter()
        .map(|name| command_name(name).map_err(de::Error::custom))
        .collect()
}

/// `[commands] rename`: names checked and uppercased; an empty new name (disabled)
/// stays empty.
pub(crate) fn command_renames<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let renames: std::collections::BTreeMap<String, String> = serde::Deserialize::deserialize(d)?;
    renames
        .iter()
        .map(|(from, to)| {
            let from = command_name(from).map_err(de::Error::custom)?;
            let to = if to.is_empty() {
                String::new()
            } else {
                command_name(to).map_err(de::Error::custom)?
            };
            Ok((from, to))
        })
        .collect()
}

/// Sizes come as strings (`"64MiB"`) or plain TOML integers (byte counts).
pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as \"64MiB\" or a number of bytes")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
    }

    d.deserialize_any(SizeVisitor)
}

/// `1s`, `250ms`: durations as the configuration writes them.
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("500ms", ms(500)),
            ("10s", ms(10_000)),
            ("1m", ms(60_000)),
            ("2h", ms(7_200_000)),
            ("1.5s", ms(1_500)),
            ("0.5ms", Duration::from_micros(500)),
            ("250us", Duration::from_micros(250)),
            ("1.000000001s", Duration::new(1, 1)),
            ("1.0000000019s", Duration::new(1, 1)),
            ("0.25h", ms(900_000)),
            ("007s", ms(7_000)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations() {
        for text in [
            "",
            "5",
            "10",
            "s",
            "5 seconds",
            "5 s",
            " 5s",
            "5s ",
            "-1s",
            "+1s",
            "1.s",
            ".5s",
            "1..5s",
            "1.5.s",
            "5S",
            "5sec",
            "5d",
            "1e3ms",
            "5ns",
            "ms",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(
                err,
                format!("invalid duration {text:?}: expected a number followed by ms, s, m or h"),
            );
        }
        assert_eq!(
            parse_duration("99999999999999999999999h").unwrap_err(),
            "invalid duration \"99999999999999999999999h\": too large"
        );
        // u64::MAX seconds is 5124095576030431 hours and a quarter.
        assert!(parse_duration("5124095576030431h").is_ok());
        assert!(parse_duration("5124095576030432h").is_err());
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("512MiB", 512 << 20),
            ("64KiB", 64 << 10),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("100B", 100),
            ("100b", 100),
            ("1048576", 1_048_576),
            ("0", 0),
            ("64mb", 64 << 20),
            ("64MB", 64 << 20),
            ("64kb", 64 << 10),
            ("1gb", 1 << 30),
            ("1GB", 1 << 30),
            ("64mib", 64 << 20),
            ("5k", 5_000),
            ("5m", 5_000_000),
            ("5G", 5_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes() {
        for text in [
            "", "MiB", "1.5MiB", "-1", "64 MiB", "64MiBs", "64XB", "1e6", " 1",
        ] {
            assert!(
                parse_size(text)
                    .unwrap_err()
                    .starts_with(&format!("invalid size {text:?}: expected")),
                "{text}"
            );
        }
        assert_eq!(
            parse_size("99999999999GiB").unwrap_err(),
            "invalid size \"99999999999GiB\": too large"
        );
    }

    #[test]
    fn command_names_are_uppercased_and_checked() {
        assert_eq!(command_name("flushAll"), Ok("FLUSHALL".to_owned()));
        assert!(command_name("").is_err());
        assert!(command_name("  ").is_err());
        assert!(command_name("CONFIG SET").is_err());
    }
}
