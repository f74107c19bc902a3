//! Redis's glob patterns (`KEYS`, `SCAN MATCH`, `PSUBSCRIBE`): the matcher every
//! keyspace rule compiles to, and what the configuration checks rules with.

/// Redis gives up on a pattern once its matcher recurses through more than this many
/// `*` groups (its protection against abusive patterns, CVE-2022-36021).
const REDIS_MAX_STAR_NESTING: usize = 1000;

/// A pattern sorted by the cheapest test that decides it. Most real patterns are
/// `*`, `prefix:*` or a literal, and those never need the general matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Only `*` characters: every key. Unlike `stringmatchlen`, this includes the empty
    /// key, as Redis's own `KEYS *` and `SCAN` do (they skip the matcher for `*`).
    All,
    /// Literal bytes, then one or more trailing `*`: keys starting with the prefix.
    Prefix(Vec<u8>),
    /// Literal bytes only (escapes resolved): exactly that key.
    Exact(Vec<u8>),
    /// Anything else: the raw pattern, run through [`glob_match`].
    General(Vec<u8>),
}

impl Matcher {
    pub fn compile(pattern: &[u8]) -> Matcher {
        let mut literal = Vec::new();
        let mut at = 0;
        while let Some((token, next)) = Token::parse(pattern, at) {
            match token {
                Token::Literal(byte) => literal.push(byte),
                Token::Star => {
                    // Only a star group at the very end keeps the pattern a prefix.
                    return if next == pattern.len() {
                        if literal.is_empty() {
                            Matcher::All
                        } else {
                            Matcher::Prefix(literal)
                        }
                    } else {
                        Matcher::General(pattern.to_vec())
                    };
                }
                Token::Any | Token::Class { .. } => return Matcher::General(pattern.to_vec()),
            }
            at = next;
        }
        Matcher::Exact(literal)
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Prefix(prefix) => has_prefix(key, prefix),
            Matcher::Exact(literal) => key == literal.as_slice(),
            Matcher::General(pattern) => glob_match(pattern, key),
        }
    }

    /// Whether every key `later` can match is matched by `self` first, judged from the
    /// patterns' shapes alone. Sound but not complete: `false` may also mean "can't tell".
    pub fn shadows(&self, later: &Matcher) -> bool {
        match self {
            Matcher::All => true,
            // Every key `later` matches begins with its literal prefix, because each
            // leading literal token consumes exactly its own byte.
            Matcher::Prefix(prefix) => later.literal_prefix().starts_with(prefix),
            Matcher::Exact(literal) => matches!(later, Matcher::Exact(other) if other == literal),
            Matcher::General(_) => false,
        }
    }

    fn literal_prefix(&self) -> Vec<u8> {
        match self {
            Matcher::All => Vec::new(),
            Matcher::Prefix(literal) | Matcher::Exact(literal) => literal.clone(),
            Matcher::General(pattern) => {
                let mut literal = Vec::new();
                let mut at = 0;
                while let Some((Token::Literal(byte), next)) = Token::parse(pattern, at) {
                    literal.push(byte);
                    at = next;
                }
                literal
            }
        }
    }
}

/// `key.starts_with(prefix)`, most keys told apart by their first byte without a
/// call to `memcmp` (asked of every key against every keyspace rule).
#[inline]
pub fn has_prefix(key: &[u8], prefix: &[u8]) -> bool {
    match (key.first(), prefix.first()) {
        (Some(k), Some(p)) if k != p => false,
        _ => key.starts_with(prefix),
    }
}

/// One element of a pattern. Every token but `Star` consumes exactly one key byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'p> {
    /// One or more consecutive `*`.
    Star,
    /// `?`.
    Any,
    /// `[...]`: `items` is the raw text between the brackets (escapes unresolved).
    Class { negated: bool, items: &'p [u8] },
    /// A byte matched as itself (after resolving a `\` escape).
    Literal(u8),
}

impl<'p> Token<'p> {
    /// The token at `at` and the offset just past it; `None` at the end of the pattern.
    ///
    /// Parsing follows Redis's `stringmatchlen` byte for byte, including its lenient
    /// corners: a trailing `\` is a literal backslash, an unterminated `[` class runs to
    /// the end of the pattern, `[^` at the end matches any byte, and `x-y` is a range
    /// whenever two more bytes follow `x` (so `[a-]` is the range `]`..=`a`).
    fn parse(pattern: &'p [u8], at: usize) -> Option<(Token<'p>, usize)> {
        let rest = pattern.get(at..)?;
        let (&first, after) = rest.split_first()?;
        let token = match first {
            b'*' => {
                let stars = rest.iter().take_while(|&&b| b == b'*').count();
                (Token::Star, at + stars)
            }
            b'?' => (Token::Any, at + 1),
            b'\\' => match after.first() {
                Some(&escaped) => (Token::Literal(escaped), at + 2),
                None => (Token::Literal(b'\\'), at + 1),
            },
            b'[' => {
                let negated = after.first() == Some(&b'^');
                let start = at + 1 + usize::from(negated);
                let items = pattern.get(start..).unwrap_or_default();
                let len = class_len(items);
                let items = items.get(..len).unwrap_or_default();
                // Skip the closing `]` when there is one.
                let end = (start + len + 1).min(pattern.len());
                (Token::Class { negated, items }, end)
            }
            literal => (Token::Literal(literal), at + 1),
        };
        Some(token)
    }

    fn matches(self, byte: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Literal(literal) => literal == byte,
            Token::Class { negated, items } => class_matches(items, byte) != negated,
        }
    }
}

/// Length of a class body: up to (not including) the closing `]`, or all of `items`
/// when the class is unterminated. An escaped byte or a range end never closes it.
fn class_len(items: &[u8]) -> usize {
    let mut at = 0;
    while let Some(&byte) = items.get(at) {
        match byte {
            b']' => return at,
            b'\\' if at + 1 < items.len() => at += 2,
            _ if at + 2 < items.len() && items.get(at + 1) == Some(&b'-') => at += 3,
            _ => at += 1,
        }
    }
    items.len()
}

/// Whether `byte` is one of a class body's items (before any `^` negation).
///
/// Ranges compare bytes unsigned. (Redis compares C `char`s, which are signed on x86,
/// so a range with an endpoint at or above 0x80 differs there; on ARM it agrees.)
fn class_matches(items: &[u8], byte: u8) -> bool {
    let mut at = 0;
    while let Some(&item) = items.get(at) {
        match (item, items.get(at + 1), items.get(at + 2)) {
            (b'\\', Some(&escaped), _) => {
                if escaped == byte {
                    return true;
                }
                at += 2;
            }
            (start, Some(b'-'), Some(&end)) => {
                let (low, high) = if start <= end {
                    (start, end)
                } else {
                    (end, start)
                };
                if (low..=high).contains(&byte) {
                    return true;
                }
                at += 3;
            }
            (literal, _, _) => {
                if literal == byte {
                    return true;
                }
                at += 1;
            }
        }
    }
    false
}

/// Whether `key` matches the glob `pattern`, exactly as Redis's `stringmatchlen` (the
/// matcher behind `KEYS`, `SCAN MATCH` and `PSUBSCRIBE`) decides it, case-sensitively:
/// `*` any run of bytes, `?` one byte, `[abc]`, `[^a]`, `[a-z]` one byte of a set, `\`
/// escapes the next byte. Binary-safe.
///
/// Two corners follow Redis rather than textbook globbing: the empty key matches only
/// the empty pattern (so `*` does not match it here; [`Keyspaces`] treats `*` as
/// "every key" the way `KEYS *` does), and a pattern whose 1001st `*` group is followed
/// by anything matches nothing, as Redis's recursion limit makes it.
///
/// Runs in O(pattern × key) time without recursion: the classic backtracking that
/// only ever returns to the most recent `*`.
///
/// ```
/// use cachet::glob::glob_match;
/// assert!(glob_match(b":1:*", b":1:user:42"));
/// assert!(glob_match(b"user:[0-9]?", b"user:7a"));
/// assert!(!glob_match(b"lock:*", b"locks:a"));
/// ```
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return pattern.is_empty();
    }
    if exceeds_star_nesting(pattern) {
        return false;
    }
    let mut p = 0;
    let mut k = 0;
    // Where to resume after the most recent `*`: pattern offset after it, and the key
    // offset it is currently assumed to have consumed up to.
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        let Some(&byte) = key.get(k) else {
            // Key used up: only `*` groups may remain.
            return match Token::parse(pattern, p) {
                None => true,
                Some((Token::Star, end)) => end == pattern.len(),
                Some(_) => false,
            };
        };
        match Token::parse(pattern, p) {
            Some((Token::Star, next)) => {
                if next == pattern.len() {
                    return true;
                }
                backtrack = Some((next, k));
                p = next;
            }
            Some((token, next)) if token.matches(byte) => {
                p = next;
                k += 1;
            }
            // A mismatch, or pattern used up with key left: let the last `*` eat one
            // more byte and retry the rest of the pattern from there.
            _ => match backtrack {
                Some((after_star, consumed)) => {
                    let consumed = consumed + 1;
                    backtrack = Some((after_star, consumed));
                    p = after_star;
                    k = consumed;
                }
                None => return false,
            },
        }
    }
}

/// Whether Redis would abandon `pattern` at its recursion limit: it recurses once per
/// `*` group still followed by more pattern, and fails the whole match the moment it
/// enters the 1001st such group (every match would have to pass through it).
fn exceeds_star_nesting(pattern: &[u8]) -> bool {
    // Cheap pre-check: fewer `*` bytes than the limit cannot reach it.
    if pattern.iter().filter(|&&b| b == b'*').count() <= REDIS_MAX_STAR_NESTING {
        return false;
    }
    let mut groups = 0;
    let mut at = 0;
    while let Some((token, next)) = Token::parse(pattern, at) {
        if token == Token::Star {
            groups += 1;
            if groups > REDIS_MAX_STAR_NESTING && next < pattern.len() {
                return true;
            }
        }
        at = next;
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (pattern, key, match), each checked against `KEYS` of a real redis-server 7.0.15.
    const REDIS_CASES: &[(&[u8], &[u8], bool)] = &[
        (b"*", b"a", true),
        (b"**", b"", false),
        (b"", b"", true),
        (b"", b"a", false),
        (b"a", b"", false),
        (b"?", b"", false),
        (b"a*", b"a", true),
        (b"a*", b"ab", true),
        (b"a*", b"ba", false),
        (b"*a", b"a", true),
        (b"*a", b"ba", true),
        (b"*a", b"ab", false),
        (b"*a*", b"a", true),
        (b"*a*", b"bab", true),
        (b"*a*", b"bbb", false),
        (b"a*b*c", b"abc", true),
        (b"a*b*c", b"axxbxxc", true),
        (b"a*b*c", b"axxbxxcx", false),
        (b"a*b", b"abab", true),
        (b"*ab", b"aab", true),
        (b"h?llo", b"hello", true),
        (b"h?llo", b"hllo", false),
        (b"h*llo", b"hllo", true),
        (b"h[ae]llo", b"hello", true),
        (b"h[ae]llo", b"hallo", true),
        (b"h[ae]llo", b"hillo", false),
        (b"h[^e]llo", b"hallo", true),
        (b"h[^e]llo", b"hello", false),
        (b"h[a-b]llo", b"hbllo", true),
        (b"h[a-b]llo", b"hcllo", false),
        (b"[b-a]", b"a", true),
        (b"[z-a]", b"m", true),
        (b"\\*", b"*", true),
        (b"\\*", b"a", false),
        (b"a\\", b"a\\", true),
        (b"\\", b"\\", true),
        (b"\\a", b"a", true),
        (b"\\?", b"?", true),
        (b"\\?", b"x", false),
        (b"[", b"[", false),
        (b"[", b"a", false),
        (b"[^", b"a", true),
        (b"[^", b"^", true),
        (b"[a", b"a", true),
        (b"[ab", b"b", true),
        (b"[]", b"]", false),
        (b"[]a]", b"a", false),
        (b"[]a]", b"]a]", false),
        (b"[^]", b"x", true),
        (b"[a-]", b"-", false),
        (b"[a-]", b"_", true),
        (b"[a-]", b"]", true),
        (b"[a-]", b"b", false),
        (b"[a-]x", b"ax", false),
        (b"[a-]]", b"]", true),
        (b"[\\]]", b"]", true),
        (b"[\\]", b"\\", false),
        (b"[\\", b"\\", true),
        (b"[a\\-z]", b"-", true),
        (b"[a\\-z]", b"b", false),
        (b"[-a]", b"-", true),
        (b"[a-c-e]", b"d", false),
        (b"[a-c-e]", b"-", true),
        (b"[*]", b"*", true),
        (b"[*]", b"a", false),
        (b"[?]", b"a", false),
        (b"*[", b"a[", false),
        (b"a*[b", b"ab", true),
        (b"user:*:session", b"user:42:session", true),
        (b"user:*:session", b"user:42:sessions", false),
        (b"*.*", b"a.b.c", true),
        (b"\x00*\xff", b"\x00\x01\xff", true),
        (b"[\x00-\x7f]", b"\x05", true),
    ];

    #[test]
    fn redis_stringmatchlen_cases() {
        for &(pattern, key, want) in REDIS_CASES {
            let shown = (
                String::from_utf8_lossy(pattern),
                String::from_utf8_lossy(key),
            );
            assert_eq!(glob_match(pattern, key), want, "{shown:?}");
            // The compiled fast paths agree, except that `*` also takes the empty key.
            if !key.is_empty() {
                assert_eq!(Matcher::compile(pattern).matches(key), want, "{shown:?}");
            }
        }
    }

    #[test]
    fn redis_recursion_limit() {
        // Also checked against redis-server 7.0.15: a pattern whose 1001st `*` group is
        // followed by more pattern matches nothing; with 1000 groups, or a trailing
        // 1001st, it matches normally.
        let a = |n| vec![b'a'; n];
        let groups = |n| b"a*".repeat(n);
        let key = [a(1002), b"b".to_vec()].concat();
        assert!(!glob_match(&[groups(1001), b"b".to_vec()].concat(), &key));
        assert!(glob_match(&[groups(1000), b"b".to_vec()].concat(), &key));
        assert!(glob_match(&groups(1001), &a(1002)));
        assert!(!glob_match(
            &[b"a".to_vec(), b"*a".repeat(1001), b"*".to_vec()].concat(),
            &a(1100)
        ));
        assert!(!glob_match(&[groups(30), b"b".to_vec()].concat(), &a(60)));
    }

    #[test]
    fn linear_on_patterns_that_are_exponential_for_naive_backtracking() {
        let pattern = [b"a*".repeat(500), b"b".to_vec()].concat();
        let key = vec![b'a'; 100_000];
        let started = std::time::Instant::now();
        assert!(!glob_match(&pattern, &key));
        // Naive recursion would not finish in the lifetime of the machine; this is
        // ~50M byte steps.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn ranges_compare_bytes_unsigned() {
        assert!(glob_match(b"[a-\xff]", b"\xc0"));
        assert!(!glob_match(b"[a-\xff]", b"\x05"));
        assert!(glob_match(b"[\x80-\xbf]", b"\x80"));
    }

    #[test]
    fn compile_picks_fast_paths() {
        assert_eq!(Matcher::compile(b"*"), Matcher::All);
        assert_eq!(Matcher::compile(b"***"), Matcher::All);
        assert_eq!(
            Matcher::compile(b"lock:*"),
            Matcher::Prefix(b"lock:".to_vec())
        );
        assert_eq!(
            Matcher::compile(b"a\\*b**"),
            Matcher::Prefix(b"a*b".to_vec())
        );
        assert_eq!(
            Matcher::compile(b"exact"),
            Matcher::Exact(b"exact".to_vec())
        );
        assert_eq!(
            Matcher::compile(b"a\\?\\"),
            Matcher::Exact(b"a?\\".to_vec())
        );
        assert_eq!(Matcher::compile(b"a*b"), Matcher::General(b"a*b".to_vec()));
        assert_eq!(Matcher::compile(b"a?"), Matcher::General(b"a?".to_vec()));
        assert_eq!(
            Matcher::compile(b"[ab]*"),
            Matcher::General(b"[ab]*".to_vec())
        );
        assert!(Matcher::All.matches(b""));
        assert!(Matcher::compile(b"lock:*").matches(b"lock:"));
        assert!(!Matcher::compile(b"lock:*").matches(b"lock"));
    }

    #[test]
    fn shadowing() {
        let m = |p: &[u8]| Matcher::compile(p);
        assert!(m(b"*").shadows(&m(b"anything[a-z]?")));
        assert!(m(b"user:*").shadows(&m(b"user:1:*")));
        assert!(m(b"user:*").shadows(&m(b"user:x")));
        assert!(m(b"user:*").shadows(&m(b"user:[ab]")));
        assert!(m(b"x").shadows(&m(b"\\x")));
        assert!(!m(b"user:*").shadows(&m(b"use*")));
        assert!(!m(b"user:*").shadows(&m(b"*")));
        assert!(!m(b"user:?").shadows(&m(b"user:1")));
        assert!(!m(b"x").shadows(&m(b"x*")));
    }

    /// Plain recursive glob over the same tokens: slow, obviously right.
    fn reference(pattern: &[u8], key: &[u8]) -> bool {
        fn go(pattern: &[u8], p: usize, key: &[u8], k: usize) -> bool {
            match Token::parse(pattern, p) {
                None => k == key.len(),
                Some((Token::Star, next)) => (k..=key.len()).any(|i| go(pattern, next, key, i)),
                Some((token, next)) => {
                    key.get(k).is_some_and(|&b| token.matches(b)) && go(pattern, next, key, k + 1)
                }
            }
        }
        if key.is_empty() {
            return pattern.is_empty();
        }
        go(pattern, 0, key, 0)
    }

    fn pattern_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b"ab*?[]^-\\\xff".to_vec()), 0..10)
    }

    fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b"ab]-^\\*?[\xff".to_vec()), 0..10)
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(pattern in pattern_bytes(), key in key_bytes()) {
            prop_assert_eq!(glob_match(&pattern, &key), reference(&pattern, &key));
            if !key.is_empty() {
                prop_assert_eq!(Matcher::compile(&pattern).matches(&key), reference(&pattern, &key));
            }
        }

        #[test]
        fn has_prefix_is_starts_with(key in key_bytes(), prefix in key_bytes()) {
            prop_assert_eq!(has_prefix(&key, &prefix), key.starts_with(&prefix));
        }
    }
}
