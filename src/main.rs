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
    /// Print a staff token signed with HEARTH_STAFF_SECRET (read from the
    /// environment only, so it never lands in shell history or `ps`).
    Token {
        /// moderator or clinician.
        #[arg(long)]
        role: String,
        /// Display name shown in presence (1-40 characters).
        #[arg(long)]
        name: String,
        /// Lifetime: 90s, 30m, 8h, 2d or plain seconds; 1 minute to 30 days.
        #[arg(long, default_value = "8h")]
        ttl: String,
        /// Staff id (`sub`); reuse it to keep one identity across tokens.
        /// Default: a fresh random `s_` id.
        #[arg(long)]
        id: Option<String>,
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
        Command::Token {
            role,
            name,
            ttl,
            id,
        } => token(&role, &name, &ttl, id.as_deref()),
        Command::Serve { config } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hearth: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints only the token on stdout, so `TOKEN=$(hearth token ...)` works;
/// everything meant for the person goes to stderr. Exit 2 on any bad input.
fn token(role: &str, name: &str, ttl: &str, id: Option<&str>) -> ExitCode {
    use hearth::staff::token::{self as staff_token, StaffRole, StaffSecret, SECRET_ENV};

    let fail = |msg: &dyn std::fmt::Display| {
        eprintln!("hearth token: {msg}");
        ExitCode::from(2)
    };
    let secret = match StaffSecret::from_env() {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return fail(&format_args!(
                "{SECRET_ENV} is not set; staff tokens are signed with it. \
                 Set it to a long random value (the same on every node)."
            ))
        }
        Err(e) => {
            return fail(&format_args!(
                "{e}. Set it to a long random value (the same on every node)."
            ))
        }
    };
    let role: StaffRole = match role.parse() {
        Ok(role) => role,
        Err(e) => return fail(&format_args!("{e}, not {role:?}.")),
    };
    let ttl = match staff_token::parse_ttl(ttl) {
        Ok(ttl) => ttl,
        Err(e) => return fail(&format_args!("{e}, not {ttl:?}.")),
    };
    let now = staff_token::now_secs();
    match staff_token::mint(&secret, role, name, ttl, now, id) {
        Ok((token, claims)) => {
            println!("{token}");
            eprintln!(
                "token for {} ({}, id {}), expires {}",
                claims.name,
                claims.role,
                claims.sub,
                staff_token::rfc3339_utc(claims.exp)
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format_args!("{e}.")),
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
