//! Parsing a raw `COMMAND` / `COMMAND INFO` reply (RESP2) into command descriptions.
//!
//! The same code reads the live upstream's reply and the embedded Redis 7 snapshot, so
//! the fallback table can never drift from what the parser accepts. Unknown fields,
//! flag names and search types are ignored (a newer upstream must not stop start-up);
//! a reply whose shape is wrong is an error naming where it went wrong.

use redis_protocol::resp2::types::OwnedFrame;

use super::flags::{CommandFlags, KeyFlags};
use super::keys::{BeginSearch, FindKeys, KeySpec};
use super::{CommandInfo, CommandKind};

/// A `COMMAND` reply that cannot be read as a command table.
#[derive(thiserror::Error, Debug)]
pub enum TableError {
    #[error("COMMAND reply is not valid RESP2: {0}")]
    Decode(String),
    #[error("COMMAND reply is truncated ({len} bytes read)")]
    Incomplete { len: usize },
    #[error("COMMAND reply is followed by {extra} unexpected bytes")]
    TrailingBytes { extra: usize },
    #[error("upstream answered COMMAND with an error: {0}")]
    ErrorReply(String),
    #[error("malformed COMMAND reply at {at}: {what}")]
    Malformed { at: String, what: String },
}

/// One top-level command and its subcommands, as read from the reply.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) info: CommandInfo,
    pub(crate) subcommands: Vec<CommandInfo>,
}

fn malformed<T>(what: impl Into<String>) -> Result<T, TableError> {
    Err(TableError::Malformed {
        at: String::new(),
        what: what.into(),
    })
}

/// Prefixes the location of a `Malformed` error with the enclosing element.
trait At<T> {
    fn at(self, segment: impl FnOnce() -> String) -> Result<T, TableError>;
}

impl<T> At<T> for Result<T, TableError> {
    fn at(self, segment: impl FnOnce() -> String) -> Result<T, TableError> {
        self.map_err(|err| match err {
            TableError::Malformed { at, what } => TableError::Malformed {
                at: if at.is_empty() {
                    segment()
                } else {
                    format!("{} > {at}", segment())
                },
                what,
            },
            other => other,
        })
    }
}

fn describe(frame: &OwnedFrame) -> &'static str {
    match frame {
        OwnedFrame::SimpleString(_) => "a simple string",
        OwnedFrame::Error(_) => "an error",
        OwnedFrame::Integer(_) => "an integer",
        OwnedFrame::BulkString(_) => "a bulk string",
        OwnedFrame::Array(_) => "an array",
        OwnedFrame::Null => "a null",
    }
}

fn array(frame: &OwnedFrame) -> Result<&[OwnedFrame], TableError> {
    match frame {
        OwnedFrame::Array(items) => Ok(items),
        other => malformed(format!("expected an array, found {}", describe(other))),
    }
}

fn string(frame: &OwnedFrame) -> Result<&[u8], TableError> {
    match frame {
        OwnedFrame::SimpleString(s) | OwnedFrame::BulkString(s) => Ok(s),
        other => malformed(format!("expected a string, found {}", describe(other))),
    }
}

fn int(frame: &OwnedFrame) -> Result<i32, TableError> {
    match frame {
        OwnedFrame::Integer(n) => match i32::try_from(*n) {
            Ok(n) => Ok(n),
            Err(_) => malformed(format!("integer {n} out of range")),
        },
        other => malformed(format!("expected an integer, found {}", describe(other))),
    }
}

/// A map written as a flat array of alternating names and values, in reply order.
type FlatMap<'a> = Vec<(&'a [u8], &'a OwnedFrame)>;

fn flat_map(frame: &OwnedFrame) -> Result<FlatMap<'_>, TableError> {
    let items = array(frame)?;
    if items.len() % 2 != 0 {
        return malformed(format!(
            "map has an odd number ({}) of elements",
            items.len()
        ));
    }
    items
        .chunks_exact(2)
        .map(|pair| match pair {
            [name, value] => Ok((string(name)?, value)),
            _ => malformed("map pair"),
        })
        .collect()
}

fn required<'a>(map: &[(&[u8], &'a OwnedFrame)], name: &str) -> Result<&'a OwnedFrame, TableError> {
    map.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, value)| *value)
        .map_or_else(|| malformed(format!("missing field `{name}`")), Ok)
}

/// Decodes a whole reply into its top-level commands.
pub(crate) fn parse_reply(reply: &[u8]) -> Result<Vec<Parsed>, TableError> {
    let (frame, used) = match redis_protocol::resp2::decode::decode(reply) {
        Ok(Some(decoded)) => decoded,
        Ok(None) => return Err(TableError::Incomplete { len: reply.len() }),
        Err(err) => return Err(TableError::Decode(err.to_string())),
    };
    if used < reply.len() {
        return Err(TableError::TrailingBytes {
            extra: reply.len() - used,
        });
    }
    if let OwnedFrame::Error(message) = &frame {
        return Err(TableError::ErrorReply(message.clone()));
    }
    let mut commands = Vec::new();
    for (n, entry) in array(&frame).at(|| "reply".into())?.iter().enumerate() {
        // COMMAND INFO answers null for names the server does not know.
        if matches!(entry, OwnedFrame::Null) {
            continue;
        }
        commands.push(parse_entry(entry, None).at(|| format!("entry {n}"))?);
    }
    Ok(commands)
}

/// One entry: `[name, arity, flags, first, last, step, acl_categories, tips,
/// key_specs, subcommands]`, of which Redis 6 sends only the first six or seven.
fn parse_entry(frame: &OwnedFrame, container: Option<&str>) -> Result<Parsed, TableError> {
    let fields = array(frame)?;
    let [name, arity, flags, first, last, step, rest @ ..] = fields else {
        return malformed(format!("{} fields, expected at least 6", fields.len()));
    };
    let name = match std::str::from_utf8(string(name).at(|| "name".into())?) {
        Ok(name) => name.to_ascii_lowercase(),
        Err(_) => return malformed("command name is not UTF-8").at(|| "name".into()),
    };
    let here = |field: &str| format!("`{name}` {field}");
    if let Some(container) = container {
        let prefix_ok = name
            .strip_prefix(container)
            .is_some_and(|sub| sub.starts_with('|'));
        if !prefix_ok {
            return malformed(format!("subcommand `{name}` is not named `{container}|…`"));
        }
    }
    let arity = int(arity).at(|| here("arity"))?;
    let mut command_flags = CommandFlags::empty();
    for flag in array(flags).at(|| here("flags"))? {
        if let Some(known) = CommandFlags::from_name(string(flag).at(|| here("flags"))?) {
            command_flags |= known;
        }
    }
    let legacy_keys = (
        int(first).at(|| here("first key"))?,
        int(last).at(|| here("last key"))?,
        int(step).at(|| here("key step"))?,
    );
    // ACL categories and tips: checked for shape, not needed.
    for (offset, field) in ["acl categories", "tips"].iter().enumerate() {
        if let Some(frame) = rest.get(offset) {
            array(frame).at(|| here(field))?;
        }
    }
    let mut key_specs = Vec::new();
    if let Some(frame) = rest.get(2) {
        for (n, spec) in array(frame).at(|| here("key specs"))?.iter().enumerate() {
            key_specs.push(parse_key_spec(spec).at(|| here(&format!("key spec {n}")))?);
        }
    }
    let mut subcommands = Vec::new();
    if let Some(frame) = rest.get(3)
        && container.is_none()
    {
        for (n, sub) in array(frame).at(|| here("subcommands"))?.iter().enumerate() {
            let parsed = parse_entry(sub, Some(&name)).at(|| here(&format!("subcommand {n}")))?;
            subcommands.push(parsed.info);
        }
    }
    let kind = CommandKind::classify(&name);
    let plain_read = super::kind::plain_read(&name, command_flags, kind);
    Ok(Parsed {
        info: CommandInfo {
            name,
            arity,
            flags: command_flags,
            key_specs,
            legacy_keys,
            kind,
            plain_read,
            tally: Default::default(),
        },
        subcommands,
    })
}

fn parse_key_spec(frame: &OwnedFrame) -> Result<KeySpec, TableError> {
    let map = flat_map(frame)?;
    let mut flags = KeyFlags::empty();
    for flag in array(required(&map, "flags")?).at(|| "flags".into())? {
        if let Some(known) = KeyFlags::from_name(string(flag).at(|| "flags".into())?) {
            flags |= known;
        }
    }
    let begin = parse_begin(required(&map, "begin_search")?).at(|| "begin_search".into())?;
    let find = parse_find(required(&map, "find_keys")?).at(|| "find_keys".into())?;
    Ok(KeySpec { begin, find, flags })
}

/// The `{type, spec}` pair shared by `begin_search` and `find_keys`.
fn typed(frame: &OwnedFrame) -> Result<(Vec<u8>, FlatMap<'_>), TableError> {
    let map = flat_map(frame)?;
    let kind = string(required(&map, "type")?).at(|| "type".into())?;
    let spec = flat_map(required(&map, "spec")?).at(|| "spec".into())?;
    Ok((kind.to_ascii_lowercase(), spec))
}

fn parse_begin(frame: &OwnedFrame) -> Result<BeginSearch, TableError> {
    let (kind, spec) = typed(frame)?;
    let field = |name: &str| required(&spec, name).at(|| format!("spec.{name}"));
    Ok(match kind.as_slice() {
        b"index" => BeginSearch::Index(int(field("index")?).at(|| "spec.index".into())?),
        b"keyword" => BeginSearch::Keyword {
            keyword: string(field("keyword")?)
                .at(|| "spec.keyword".into())?
                .to_ascii_uppercase(),
            startfrom: int(field("startfrom")?).at(|| "spec.startfrom".into())?,
        },
        // "unknown", or a search type newer than this build: let the command's own
        // procedure decide, as Redis does for an unknown spec.
        _ => BeginSearch::Unknown,
    })
}

fn parse_find(frame: &OwnedFrame) -> Result<FindKeys, TableError> {
    let (kind, spec) = typed(frame)?;
    let field = |name: &str| {
        required(&spec, name)
            .and_then(int)
            .at(|| format!("spec.{name}"))
    };
    Ok(match kind.as_slice() {
        b"range" => FindKeys::Range {
            lastkey: field("lastkey")?,
            keystep: field("keystep")?,
            limit: field("limit")?,
        },
        b"keynum" => FindKeys::Keynum {
            keynumidx: field("keynumidx")?,
            firstkey: field("firstkey")?,
            keystep: field("keystep")?,
        },
        _ => FindKeys::Unknown,
    })
}
