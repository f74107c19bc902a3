//! The `cachet` binary: command line, logging, configuration, run, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use cachet::config::{Config, LogFormat, Overrides};
use cachet::reload::{ConfigSource, LogReloader};

/// jemalloc, whose background thread hands pages freed after a burst (thousands of
/// connections, a flood of large replies) back to the system within its decay time
/// (1 s, built in by `.cargo/config.toml`), where the C library's allocator keeps them
/// in the heap for reuse.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Upstream Redis URL, overriding [upstream] url (from the environment, it stays
    /// out of `ps`).
    #[arg(
        long,
        value_name = "URL",
        env = "CACHET_UPSTREAM",
        hide_env_values = true
    )]
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
    /// Print the effective configuration (file, defaults and overrides; secrets
    /// redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = ConfigSource {
        path: cli.config.clone(),
        overrides: Overrides {
            listen: cli.listen.clone(),
            upstream: cli.upstream.clone(),
            admin: cli.admin.clone(),
            log_level: cli.log_level.clone(),
        },
    };
    // Every problem of the file and the overrides is reported at once.
    let config = match cachet::reload::load(&source) {
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
    if cli.print_config {
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "{config:#?}");
        return ExitCode::SUCCESS;
    }
    let reloader = match init_logging(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cachet: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(config, source, reloader) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: in the log when it shows errors (on stderr too), else on stderr.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e:#}");
            } else {
                eprintln!("cachet: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Installs the subscriber; returns what changes its filter on a reload.
fn init_logging(config: &Config) -> anyhow::Result<LogReloader> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log level {:?}", config.log.level))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    fn set(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())
    }
    let reloader: LogReloader = match config.log.format {
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            LogReloader(Box::new(move |level| {
                handle.reload(set(level)?).map_err(|e| e.to_string())
            }))
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            LogReloader(Box::new(move |level| {
                handle.reload(set(level)?).map_err(|e| e.to_string())
            }))
        }
    };
    Ok(reloader)
}

fn run(config: Config, source: ConfigSource, reloader: LogReloader) -> anyhow::Result<()> {
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
        server.set_config_source(source);
        server.set_log_reloader(reloader);
        reload_on_sighup(server.context());
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Reloads the configuration on every SIGHUP.
fn reload_on_sighup(ctx: std::sync::Arc<cachet::context::Context>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reload with CACHET RELOAD");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            // The outcome is logged by the reload itself. Off the runtime's threads:
            // a reload reads files and may resolve host names, which can block.
            let ctx = ctx.clone();
            let _ = tokio::task::spawn_blocking(move || ctx.reload()).await;
        }
    });
}

/// Completes on SIGTERM (drain first: the pod is going away) or SIGINT (at once).
async fn shutdown_signal() -> cachet::listener::Stop {
    use cachet::listener::Stop;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return Stop::Now;
        }
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM received");
            Stop::Drain
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT received");
            Stop::Now
        }
    }
}
