//! Command-line overrides of the file's settings (`--listen`, `--upstream`, `--admin`,
//! `--log-level`), kept so that a reload applies them again to the re-read file.

use super::{Config, UpstreamUrl};

/// The overrides given on the command line, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    /// `""` or `"off"` disables the admin endpoint.
    pub admin: Option<String>,
    pub log_level: Option<String>,
}

impl Overrides {
    /// Applies the overrides to `config`; returns every problem found.
    pub fn apply(&self, config: &mut Config) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(listen) = &self.listen {
            match super::units::parse_socket_addr(listen) {
                Ok(a) => config.listen.address = a,
                Err(e) => problems.push(format!("--listen {listen:?}: {e}")),
            }
        }
        if let Some(url) = &self.upstream {
            match UpstreamUrl::parse(url) {
                Ok(u) => config.upstream.url = u,
                Err(e) => problems.push(format!("--upstream: {e}")),
            }
        }
        if let Some(admin) = &self.admin {
            if admin.is_empty() || admin == "off" {
                config.admin.address = None;
            } else {
                match super::units::parse_socket_addr(admin) {
                    Ok(a) => config.admin.address = Some(a),
                    Err(e) => problems.push(format!("--admin {admin:?}: {e}")),
                }
            }
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        problems
    }
}
