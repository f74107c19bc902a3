//! The `cachet` binary: command line, logging, configuration, run, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use cachet::config::{Config, LogFormat, UpstreamUrl};

/// A sidecar consistency proxy for Redis.
#[derive(Debug, Parser)]
#[command(name = "cachet", version, about)]
struct Cli {
    /// TOML configuration file (without it, the built-in defaults, which are those of
    /// config/cachet.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept clients on, overriding [listen] address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Upstream Redis URL, overriding [upstream] url.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Admin HTTP address, overriding [admin] address ("off" disables it).
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Log level or filter directive, overriding [log] level.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Validate the configuration, print every problem, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("cachet: {e:#}");
        return ExitCode::from(2);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cachet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the file (or the defaults) and applies the command-line overrides; every
/// problem is reported at once.
fn load(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let mut problems = Vec::new();
    if let Some(listen) = &cli.listen {
        match listen.parse() {
            Ok(a) => config.listen.address = a,
            Err(e) => problems.push(format!("--listen {listen:?}: {e}")),
        }
    }
    if let Some(url) = &cli.upstream {
        match UpstreamUrl::parse(url) {
            Ok(u) => config.upstream.url = u,
            Err(e) => problems.push(format!("--upstream: {e}")),
        }
    }
    if let Some(admin) = &cli.admin {
        if admin.is_empty() || admin == "off" {
            config.admin.address = None;
        } else {
            match admin.parse() {
                Ok(a) => config.admin.address = Some(a),
                Err(e) => problems.push(format!("--admin {admin:?}: {e}")),
            }
        }
    }
    if let Some(level) = &cli.log_level {
        config.log.level = level.clone();
    }
    if let Err(e) = config.validate() {
        problems.push(e.to_string().trim_end().to_string());
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems.join("\n"))
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log level {:?}", config.log.level))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn run(config: Config) -> anyhow::Result<()> {
    let threads = std::env::var("CACHET_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(1);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .thread_name("cachet")
            .build()
    }
    .context("starting the runtime")?;
    runtime.block_on(async {
        let server = cachet::Server::bind(&config).await?;
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
