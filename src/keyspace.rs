//! Key pattern -> keyspace mode.
//!
//! Owns the compiled, ordered list of `[[keyspace]]` rules that every key of every
//! command is looked up in (patterns compile to `glob.rs`'s matcher). The rules
//! themselves, and their validation, belong to [`crate::config`].

use crate::config::{KeyspaceMode, KeyspaceRule};
use crate::glob::Matcher;

pub use crate::config::DEFAULT_LOCK_MAX_TTL;

/// The compiled `[[keyspace]]` rules, in file order.
#[derive(Debug, Clone)]
pub struct Keyspaces {
    rules: Vec<(Matcher, KeyspaceRule)>,
}

/// The outcome of [`Keyspaces::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyspaceMatch<'a> {
    /// The mode of the first matching rule, or `strict` when none matches.
    pub mode: KeyspaceMode,
    /// Index (0-based, file order) and rule that matched; `None` for the implicit
    /// `strict` default.
    pub rule: Option<(usize, &'a KeyspaceRule)>,
}

impl Keyspaces {
    /// Compiles `rules`. A `lock` rule without `max_ttl` gets [`DEFAULT_LOCK_MAX_TTL`] here
    /// too, so code built from a hand-made [`crate::config::Config`] sees the same rule as
    /// code built from a loaded file.
    pub fn new(rules: &[KeyspaceRule]) -> Keyspaces {
        let rules = rules
            .iter()
            .map(|rule| {
                let mut rule = rule.clone();
                if rule.mode == KeyspaceMode::Lock && rule.max_ttl.is_none() {
                    rule.max_ttl = Some(DEFAULT_LOCK_MAX_TTL);
                }
                (Matcher::compile(rule.pattern.as_bytes()), rule)
            })
            .collect();
        Keyspaces { rules }
    }

    /// First matching rule wins; no match = strict with rule index None.
    pub fn lookup(&self, key: &[u8]) -> KeyspaceMatch<'_> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, (matcher, _))| matcher.matches(key))
            .map_or(
                KeyspaceMatch {
                    mode: KeyspaceMode::Strict,
                    rule: None,
                },
                |(index, (_, rule))| KeyspaceMatch {
                    mode: rule.mode,
                    rule: Some((index, rule)),
                },
            )
    }

    /// The compiled rules, in order.
    pub fn rules(&self) -> impl Iterator<Item = &KeyspaceRule> {
        self.rules.iter().map(|(_, rule)| rule)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn rule(pattern: &str, mode: KeyspaceMode) -> KeyspaceRule {
        KeyspaceRule {
            pattern: pattern.to_owned(),
            mode,
            max_ttl: None,
            hold_off: None,
            write_through: None,
            over_max_ttl: None,
        }
    }

    #[test]
    fn first_match_wins_and_unmatched_is_strict() {
        let keyspaces = Keyspaces::new(&[
            rule(":1:session:*", KeyspaceMode::Passthrough),
            rule(":1:*", KeyspaceMode::Cache),
            rule("lock:*", KeyspaceMode::Lock),
            rule("job:[0-9]*", KeyspaceMode::Passthrough),
            rule("exact", KeyspaceMode::Cache),
        ]);
        let lookup = |key: &[u8]| {
            let m = keyspaces.lookup(key);
            (m.mode, m.rule.map(|(i, r)| (i, r.pattern.clone())))
        };
        assert_eq!(
            lookup(b":1:session:x"),
            (KeyspaceMode::Passthrough, Some((0, ":1:session:*".into())))
        );
        assert_eq!(
            lookup(b":1:views"),
            (KeyspaceMode::Cache, Some((1, ":1:*".into())))
        );
        assert_eq!(
            lookup(b"lock:a"),
            (KeyspaceMode::Lock, Some((2, "lock:*".into())))
        );
        assert_eq!(
            lookup(b"job:7:x"),
            (KeyspaceMode::Passthrough, Some((3, "job:[0-9]*".into())))
        );
        assert_eq!(lookup(b"job:x"), (KeyspaceMode::Strict, None));
        assert_eq!(
            lookup(b"exact"),
            (KeyspaceMode::Cache, Some((4, "exact".into())))
        );
        assert_eq!(lookup(b"exactly"), (KeyspaceMode::Strict, None));
        assert_eq!(lookup(b""), (KeyspaceMode::Strict, None));
        assert_eq!(Keyspaces::new(&[]).lookup(b"k").mode, KeyspaceMode::Strict);
    }

    #[test]
    fn catch_all_takes_every_key_including_the_empty_one() {
        let keyspaces = Keyspaces::new(&[rule("*", KeyspaceMode::Passthrough)]);
        assert_eq!(keyspaces.lookup(b"").mode, KeyspaceMode::Passthrough);
        assert_eq!(
            keyspaces.lookup(b"\xff\x00").mode,
            KeyspaceMode::Passthrough
        );
    }

    #[test]
    fn lock_rules_get_the_default_max_ttl() {
        let keyspaces = Keyspaces::new(&[
            rule("lock:*", KeyspaceMode::Lock),
            rule("c:*", KeyspaceMode::Cache),
        ]);
        let (_, lock) = keyspaces.lookup(b"lock:1").rule.unwrap();
        assert_eq!(lock.max_ttl, Some(DEFAULT_LOCK_MAX_TTL));
        let (_, cache) = keyspaces.lookup(b"c:1").rule.unwrap();
        assert_eq!(cache.max_ttl, None);
    }
}
