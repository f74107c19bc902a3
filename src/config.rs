//! Temporary configuration stub (replaced by the full configuration module).
use std::net::SocketAddr;
use std::time::Duration;
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
}
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub address: SocketAddr,
    pub max_clients: usize,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: UpstreamUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub shared_connections: usize,
}
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}
impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let rest = s.strip_prefix("redis://").ok_or("scheme")?;
        let (hp, db) = rest.split_once('/').unwrap_or((rest, "0"));
        let (h, p) = hp.rsplit_once(':').ok_or("port")?;
        Ok(UpstreamUrl {
            tls: false,
            host: h.into(),
            port: p.parse().map_err(|_| "port")?,
            db: db.parse().unwrap_or(0),
            username: None,
            password: None,
        })
    }
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_bulk_len: u64,
    pub max_multibulk_len: u64,
    pub max_inline_len: u64,
    pub client_output_buffer: u64,
}
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: Option<SocketAddr>,
}
#[derive(Debug)]
pub struct ConfigErrors {
    pub errors: Vec<String>,
}
impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}
impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ListenConfig {
                address: "127.0.0.1:6380"
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 6380))),
                max_clients: 10000,
                idle_timeout: Duration::ZERO,
                shutdown_grace: Duration::from_secs(10),
            },
            upstream: UpstreamConfig {
                url: UpstreamUrl {
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: 6379,
                    db: 0,
                    username: None,
                    password: None,
                },
                username: None,
                password: None,
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(5),
                shared_connections: 2,
            },
            limits: LimitsConfig {
                max_bulk_len: 512 << 20,
                max_multibulk_len: 1 << 20,
                max_inline_len: 64 << 10,
                client_output_buffer: 64 << 20,
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            admin: AdminConfig { address: None },
        }
    }
}
impl Config {
    pub fn load(_p: &std::path::Path) -> Result<Config, ConfigErrors> {
        Ok(Config::default())
    }
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        Ok(())
    }
}
