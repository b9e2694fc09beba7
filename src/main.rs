//! The `hearth` binary: parses the command line, sets up logging, turns
//! signals into the shutdown token and calls `hearth::run`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use hearth::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "hearth", version, about = "Anonymous peer-support chat server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default when no command is given).
    Serve {
        /// Config file (default: config/default.toml, else the built-in default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit non-zero naming the bad key.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(_) => {
                println!(
                    "config ok: {}",
                    config
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| hearth::config::DEFAULT_PATH.to_string())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hearth: invalid config: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hearth: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref()).context("invalid config")?;
    init_tracing(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let addr = config.listen_addr()?;
        let listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone())?;
        {
            // Supervisors and tests read this line to learn the bound port.
            let mut out = std::io::stdout().lock();
            writeln!(out, "hearth listening on http://{bound}")?;
            out.flush()?;
        }
        hearth::run(config, listener, shutdown).await?;
        Ok(())
    })
}

/// Binds with a deep accept queue: the default of 128 overflows when many
/// clients reconnect at once (after a restart, say), and each dropped SYN
/// costs that client a one-second retransmit.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested");
        shutdown.cancel();
    });
    Ok(())
}
