//! From TOML text to a [`Config`], collecting every problem instead of stopping at
//! the first, each with its line and dotted key.
//!
//! serde aborts a struct at its first bad field, so each section is deserialized whole
//! only as a fast path; when that fails, its keys are retried one at a time (a
//! one-key table into the defaulted section struct blames exactly that key, unknown
//! keys included), and the section is rebuilt from the keys that passed. The semantic
//! rules then run on the result, and their errors get lines by looking their key up in
//! the document. A semantic error that rests on a value that failed to parse (its own
//! key, a key it is compared with, or anything in its `[[keyspace]]` entry) is dropped:
//! it would be judged against a default, not against what the operator wrote.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{Document, InlineTable, Item, Key, TableLike, Value};

use super::{
    Config, ConfigError, ConfigErrors, DEFAULT_LOCK_MAX_TTL, KeyspaceMode, KeyspaceRule,
    OverMaxTtl, WriteThrough, units, validate,
};

const SECTIONS: &str =
    "listen, upstream, limits, consistency, keyspace, commands, auth, admin, log";

/// A `[[keyspace]]` entry as written: every key optional, so one key at a time can be
/// checked; `pattern` and `mode` are required by the loader, not by serde.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRule {
    pattern: Option<String>,
    mode: Option<KeyspaceMode>,
    #[serde(deserialize_with = "units::optional_duration")]
    max_ttl: Option<Duration>,
    #[serde(deserialize_with = "units::optional_duration")]
    hold_off: Option<Duration>,
    write_through: Option<WriteThrough>,
    over_max_ttl: Option<OverMaxTtl>,
}

pub(super) fn parse(
    text: &str,
    origin: &str,
    checks: &[super::Check],
) -> Result<Config, ConfigErrors> {
    let mut loader = Loader {
        text,
        origin,
        errors: Vec::new(),
        failed: HashSet::new(),
    };
    let document = match Document::parse(text) {
        Ok(document) => document,
        Err(err) => {
            // Past a syntax error the rest of the file cannot be read reliably.
            let message = err.message().trim().replace('\n', "; ");
            loader.push(String::new(), err.span(), message);
            return Err(loader.finish());
        }
    };
    let root = document.as_table();
    let mut config = Config::default();
    for (name, item) in root.iter() {
        let at = span_of(root, name);
        match name {
            "listen" => config.listen = loader.section(name, item, at),
            "upstream" => config.upstream = loader.section(name, item, at),
            "limits" => config.limits = loader.section(name, item, at),
            "consistency" => config.consistency = loader.section(name, item, at),
            "keyspace" => config.keyspace = loader.keyspaces(item, at),
            "commands" => config.commands = loader.section(name, item, at),
            "auth" => config.auth = Some(loader.section(name, item, at)),
            "admin" => config.admin = loader.section(name, item, at),
            "log" => config.log = loader.section(name, item, at),
            _ => loader.fail(
                name,
                at,
                format!("unknown section; expected one of {SECTIONS}"),
            ),
        }
    }
    if let Some(auth) = &mut config.auth {
        for (key, message) in read_digest_files(auth) {
            let at = locate(root, &key);
            loader.fail(&key, at, message);
        }
    }
    let owned = checks
        .iter()
        .flat_map(|check| check(&config))
        .map(|(key, message)| ConfigError::new(key, message));
    for error in validate::check(&config).into_iter().chain(owned) {
        let scope = error.key.split('.').next().unwrap_or_default();
        let rests_on_a_failure = loader.failed.contains(&error.key)
            || loader.failed.contains(scope)
            || validate::compared_with(&error.key)
                .iter()
                .any(|&other| loader.failed.contains(other));
        if !rests_on_a_failure {
            let at = locate(root, &error.key);
            loader.push(error.key, at, error.message);
        }
    }
    if loader.errors.is_empty() {
        Ok(config)
    } else {
        Err(loader.finish())
    }
}

/// Fills in `[auth]`'s digests given as files (`password_sha256_file`): each file's
/// first line, which must be a digest. Returns the problems, by key; a digest that
/// could not be read is left empty, and its key is also blamed for the digest's own
/// checks (`loader.fail`), so they are not reported again.
fn read_digest_files(auth: &mut super::AuthConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut read = |key: String, inline: bool, path: &std::path::Path| -> Option<String> {
        if inline {
            problems.push((
                key,
                "give the digest or a file holding it, not both".to_owned(),
            ));
            return None;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let digest = text.lines().next().unwrap_or_default().trim().to_owned();
                match super::validate::check_sha256(&digest) {
                    Ok(()) => Some(digest),
                    Err(message) => {
                        problems.push((key, format!("{}: {message}", path.display())));
                        None
                    }
                }
            }
            Err(e) => {
                problems.push((key, format!("cannot read {}: {e}", path.display())));
                None
            }
        }
    };
    if let Some(path) = auth.password_sha256_file.clone() {
        let inline = auth.password_sha256.is_some();
        let digest = read("auth.password_sha256_file".to_owned(), inline, &path);
        auth.password_sha256 = digest.or(auth.password_sha256.take());
    }
    for (i, user) in auth.users.iter_mut().enumerate() {
        if let Some(path) = user.password_sha256_file.clone() {
            let inline = !user.password_sha256.is_empty();
            let key = format!("auth.users[{i}].password_sha256_file");
            if let Some(digest) = read(key, inline, &path) {
                user.password_sha256 = digest;
            }
        }
    }
    problems
}

/// A `[[keyspace]]` table and where it starts.
type Entry<'a> = (&'a dyn TableLike, Option<Range<usize>>);

struct Loader<'a> {
    text: &'a str,
    origin: &'a str,
    errors: Vec<ConfigError>,
    /// What failed to parse: keys (`listen.address`), sections that were not tables
    /// (`listen`), and `[[keyspace]]` entries with any failure (`keyspace[2]`).
    failed: HashSet<String>,
}

impl Loader<'_> {
    /// Deserializes one section, blaming each bad key separately.
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        item: &Item,
        at: Option<Range<usize>>,
    ) -> T {
        let Some(table) = item.as_table_like() else {
            self.fail(name, at, format!("expected a table: [{name}]"));
            return T::default();
        };
        self.table(name, table).unwrap_or_default()
    }

    /// `[[keyspace]]` entries (or an inline array of tables), in order.
    fn keyspaces(&mut self, item: &Item, at: Option<Range<usize>>) -> Vec<KeyspaceRule> {
        // `None` for an entry that is not a table: it keeps its place so later entries
        // keep their `keyspace[N]` numbers.
        let entries: Vec<Option<Entry<'_>>> = if let Some(array) = item.as_array_of_tables() {
            array
                .iter()
                .map(|table| Some((table as &dyn TableLike, table.span())))
                .collect()
        } else if let Some(array) = item.as_array() {
            array
                .iter()
                .map(|value| {
                    let table = value.as_inline_table()?;
                    Some((table as &dyn TableLike, table.span()))
                })
                .collect()
        } else {
            self.fail("keyspace", at, "expected [[keyspace]] tables".to_owned());
            return Config::default().keyspace;
        };
        let values = item.as_array();
        entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| match entry {
                Some((table, at)) => self.keyspace_rule(i, table, at),
                None => {
                    let at = values.and_then(|a| a.get(i)).and_then(Value::span);
                    let message = "expected a table with pattern and mode".to_owned();
                    self.fail(&format!("keyspace[{i}]"), at, message);
                    // Never used: the entry's failure fails the whole file.
                    KeyspaceRule {
                        pattern: String::new(),
                        mode: KeyspaceMode::Strict,
                        max_ttl: None,
                        hold_off: None,
                        write_through: None,
                        over_max_ttl: None,
                    }
                }
            })
            .collect()
    }

    fn keyspace_rule(
        &mut self,
        i: usize,
        table: &dyn TableLike,
        at: Option<Range<usize>>,
    ) -> KeyspaceRule {
        let scope = format!("keyspace[{i}]");
        for required in ["pattern", "mode"] {
            if !table.contains_key(required) {
                self.fail(
                    &format!("{scope}.{required}"),
                    at.clone(),
                    "missing required key".to_owned(),
                );
            }
        }
        let errors_before = self.errors.len();
        let raw: RawRule = self.table(&scope, table).unwrap_or_default();
        // Within one entry everything depends on the mode and pattern, so any failure
        // marks the whole entry.
        if self.errors.len() > errors_before
            || !(table.contains_key("pattern") && table.contains_key("mode"))
        {
            self.failed.insert(scope);
        }
        let mode = raw.mode.unwrap_or(KeyspaceMode::Strict);
        KeyspaceRule {
            pattern: raw.pattern.unwrap_or_default(),
            mode,
            max_ttl: raw
                .max_ttl
                .or((mode == KeyspaceMode::Lock).then_some(DEFAULT_LOCK_MAX_TTL)),
            hold_off: raw.hold_off,
            write_through: raw.write_through,
            over_max_ttl: raw
                .over_max_ttl
                .or((mode == KeyspaceMode::Lock).then_some(OverMaxTtl::Refuse)),
        }
    }

    /// Deserializes `table` as a `T`; on failure reports each bad key as `path.key` and
    /// returns `T` built from the good keys alone. `None` only if even that fails.
    fn table<T: DeserializeOwned>(&mut self, path: &str, table: &dyn TableLike) -> Option<T> {
        let whole = table.iter().map(|(key, item)| (key, item.clone()));
        if let Ok(value) = deserialize(whole) {
            return Some(value);
        }
        let mut good = Vec::new();
        for (key, item) in table.iter() {
            match deserialize::<T>([(key, item.clone())]) {
                Ok(_) => good.push((key, item.clone())),
                Err(message) => match item.as_table_like() {
                    // A nested table (`[listen.tls]`): blame its keys one by one too.
                    Some(inner) => {
                        if let Some(kept) = self.nested::<T>(path, key, inner) {
                            good.push((key, kept));
                        } else {
                            self.fail(&format!("{path}.{key}"), span_of(table, key), message);
                        }
                    }
                    None => self.fail(&format!("{path}.{key}"), span_of(table, key), message),
                },
            }
        }
        match deserialize(good) {
            Ok(value) => Some(value),
            Err(message) => {
                // Keys that pass alone but fail together: blame the section.
                self.fail(path, None, message);
                None
            }
        }
    }

    /// The keys of nested table `key` of section `path`, each tried alone inside an
    /// otherwise empty section: bad ones are reported as `path.key.inner`, and the good
    /// ones returned as the table to keep. `None` when the section has no such table,
    /// or when no key fails alone (the caller then blames the table as a whole).
    fn nested<T: DeserializeOwned>(
        &mut self,
        path: &str,
        key: &str,
        inner: &dyn TableLike,
    ) -> Option<Item> {
        let empty = Item::Value(Value::InlineTable(InlineTable::new()));
        if deserialize::<T>([(key, empty)]).is_err() {
            return None;
        }
        let mut kept = InlineTable::new();
        let mut failed = false;
        for (name, item) in inner.iter() {
            let Ok(value) = item.clone().into_value() else {
                continue;
            };
            let mut alone = InlineTable::new();
            alone.insert(name, value.clone());
            let wrapped = Item::Value(Value::InlineTable(alone));
            match deserialize::<T>([(key, wrapped)]) {
                Ok(_) => {
                    kept.insert(name, value);
                }
                Err(message) => {
                    failed = true;
                    let at = span_of(inner, name);
                    self.fail(&format!("{path}.{key}.{name}"), at, message);
                }
            }
        }
        failed.then(|| Item::Value(Value::InlineTable(kept)))
    }

    fn fail(&mut self, key: &str, at: Option<Range<usize>>, message: String) {
        self.failed.insert(key.to_owned());
        self.push(key.to_owned(), at, message);
    }

    fn push(&mut self, key: String, at: Option<Range<usize>>, message: String) {
        let (line, column) = match at {
            Some(span) => {
                let (line, column) = line_column(self.text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        self.errors.push(ConfigError {
            origin: self.origin.to_owned(),
            line,
            column,
            key,
            message,
        });
    }

    fn finish(mut self) -> ConfigErrors {
        // File order; errors without a line (whole-section ones) last. Stable, so
        // errors on one line keep the order they were found in.
        self.errors
            .sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        ConfigErrors::from(self.errors)
    }
}

/// Deserializes a `T` from the given key/value pairs, as if they were its whole table.
fn deserialize<'k, T: DeserializeOwned>(
    entries: impl IntoIterator<Item = (&'k str, Item)>,
) -> Result<T, String> {
    let mut table = InlineTable::new();
    for (key, item) in entries {
        // `Item::None` (never produced by the parser) has no value to check.
        if let Ok(value) = item.into_value() {
            table.insert(key, value);
        }
    }
    T::deserialize(Value::InlineTable(table).into_deserializer())
        .map_err(|err| err.message().to_owned())
}

/// Where `key` is written in `table`: the key itself, else its value.
fn span_of(table: &dyn TableLike, key: &str) -> Option<Range<usize>> {
    let (k, item): (&Key, &Item) = table.get_key_value(key)?;
    k.span().or_else(|| item.span())
}

/// Best position for a dotted key path such as `keyspace[2].max_ttl`: the deepest part
/// of it that is written in the file (a key the file leaves out is blamed on its
/// section or entry).
fn locate(root: &dyn TableLike, path: &str) -> Option<Range<usize>> {
    let mut table = root;
    let mut best = None;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((key, item)) = table.get_key_value(name) else {
            break;
        };
        best = key.span().or_else(|| item.span()).or(best);
        let next: Option<&dyn TableLike> = match index {
            None => item.as_table_like(),
            Some(i) => {
                if let Some(entry) = item.as_array_of_tables().and_then(|a| a.get(i)) {
                    best = entry.span().or(best);
                    Some(entry)
                } else if let Some(entry) = item
                    .as_array()
                    .and_then(|a| a.get(i))
                    .and_then(Value::as_inline_table)
                {
                    best = entry.span().or(best);
                    Some(entry)
                } else {
                    None
                }
            }
        };
        match next {
            Some(next) => table = next,
            None => break,
        }
    }
    best
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}
