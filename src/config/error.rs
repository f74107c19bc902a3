//! Configuration errors: each one names the file, line, column and dotted key, and a
//! whole run's worth are carried together so an operator fixes them in one pass.

use std::fmt;

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or other source) the value came from; empty when unknown, as for
    /// [`Config::validate`](super::Config::validate) on a config built in code.
    pub origin: String,
    /// 1-based line, when the problem can be pinned to one.
    pub line: Option<usize>,
    /// 1-based column (in characters), when `line` is known.
    pub column: Option<usize>,
    /// Dotted path of the offending key, such as `upstream.command_timeout` or
    /// `keyspace[2].mode` (0-based entry index); empty for a TOML syntax error.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// An error about `key` not yet tied to a file position.
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: String::new(),
            line: None,
            column: None,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `cachet.toml:12:1: upstream.command_timeout: invalid duration ...`; parts that are
/// unknown are left out rather than printed empty.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.origin.is_empty() {
            write!(f, "{}:", self.origin)?;
            if let Some(line) = self.line {
                write!(f, "{line}:")?;
                if let Some(column) = self.column {
                    write!(f, "{column}:")?;
                }
            }
            f.write_str(" ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration, in file order (those without a line last).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Sets `origin` on every error that has none, such as the errors of
    /// [`Config::validate`](super::Config::validate) after command-line overrides.
    pub fn with_origin(mut self, origin: &str) -> ConfigErrors {
        for error in &mut self.errors {
            if error.origin.is_empty() {
                error.origin = origin.to_owned();
            }
        }
        self
    }
}

/// One error per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(errors: Vec<ConfigError>) -> ConfigErrors {
        ConfigErrors { errors }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn display_leaves_out_what_is_unknown() {
        let mut error = ConfigError {
            origin: "cachet.toml".to_owned(),
            line: Some(12),
            column: Some(1),
            key: "upstream.command_timeout".to_owned(),
            message: "invalid duration \"5 seconds\"".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "cachet.toml:12:1: upstream.command_timeout: invalid duration \"5 seconds\""
        );
        error.column = None;
        assert_eq!(
            error.to_string(),
            "cachet.toml:12: upstream.command_timeout: invalid duration \"5 seconds\""
        );
        error.line = None;
        assert_eq!(
            error.to_string(),
            "cachet.toml: upstream.command_timeout: invalid duration \"5 seconds\""
        );
        error.origin.clear();
        assert_eq!(
            error.to_string(),
            "upstream.command_timeout: invalid duration \"5 seconds\""
        );
        error.key.clear();
        assert_eq!(error.to_string(), "invalid duration \"5 seconds\"");
    }

    #[test]
    fn one_line_per_error() {
        let errors = ConfigErrors::from(vec![
            ConfigError::new("a", "first"),
            ConfigError::new("b", "second"),
        ])
        .with_origin("command line");
        assert_eq!(
            errors.to_string(),
            "command line: a: first\ncommand line: b: second"
        );
    }
}
