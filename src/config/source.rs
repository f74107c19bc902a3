//! Where a running configuration comes from: a file (or the defaults) and the
//! command-line overrides applied on top, loaded again by a reload.

use std::path::PathBuf;

use super::{Check, Config, Overrides};

/// Where the running configuration came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// The `--config` file; `None`: the built-in defaults.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Loads the file (or the defaults), applies the overrides and validates; every
    /// problem is reported at once, one per line.
    pub fn load(&self) -> Result<Config, String> {
        self.load_with(&[])
    }

    /// [`ConfigSource::load`], with the owners' `checks` too.
    pub fn load_with(&self, checks: &[Check]) -> Result<Config, String> {
        let mut config = match &self.path {
            Some(path) => {
                Config::load_with(path, checks).map_err(|e| e.to_string().trim_end().to_owned())?
            }
            None => Config::default(),
        };
        let mut problems = self.overrides.apply(&mut config);
        if let Err(e) = config.validate_with(checks) {
            problems.push(e.to_string().trim_end().to_owned());
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("\n"))
        }
    }
}
