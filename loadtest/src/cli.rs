//! The command line. `main.rs` only calls [`main`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::idle::{idle, IdleArgs};
use crate::proto::Protocol;
use crate::run::{run, RunOptions};
use crate::scenario::{Preset, Scenario};
use crate::smoke::{smoke, SmokeArgs};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Load tests for a local Hearth hub, its bare-stack floor and a Socket.IO peer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario (a preset, a TOML file, flags) and measure it.
    Run(Box<RunArgs>),
    /// Serve the minimal relay (the floor of this WebSocket stack).
    Bare(BareArgs),
    /// Print a Hearth config for load runs (limits raised, rooms r0…).
    HubConfig(HubConfigArgs),
    /// Draw latency percentiles against offered load from sweep files
    /// (`run --rates … --out FILE`) into a PNG.
    #[cfg(feature = "plot")]
    Plot(PlotArgs),
    /// Open N idle connections (hello only), hold them and report memory.
    Idle(IdleArgs),
    /// Check delivery: R rooms of M members, one sender per room, K messages.
    Smoke(SmokeArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Start from this preset (default: the scenario file's `preset`, else
    /// chatty).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// A TOML scenario file (fields of the scenario; `preset = "…"` names its
    /// base). Flags override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Target URL(s), comma-separated (one per hub node); loopback only.
    /// Socket.IO: ws://127.0.0.1:PORT (the Engine.IO path is added).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    url: Vec<String>,
    /// What the target speaks: hearth (Hearth or `loadtest bare`) or socketio.
    #[arg(long, value_enum, default_value_t = Protocol::Hearth)]
    target: Protocol,
    /// Source addresses for client sockets, comma-separated (loopback).
    #[arg(long, value_delimiter = ',', conflicts_with = "spread")]
    sources: Vec<IpAddr>,
    /// Use 127.0.0.1 … 127.0.0.N as source addresses. Default: as many as
    /// the connection count needs (one per 25 000 sockets per target).
    #[arg(long)]
    spread: Option<u8>,
    /// Hub process id(s), comma-separated: RSS and CPU from /proc.
    #[arg(long, value_delimiter = ',')]
    hub_pid: Vec<u32>,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Sweep: run the scenario once per rate (messages/s per sender),
    /// comma-separated, each with fresh connections.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Write the report(s) as a JSON array to this file (input of `plot`).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    over: Overrides,
}

/// Scenario fields from flags; each replaces the preset's or file's value.
#[derive(Args, Default)]
struct Overrides {
    /// Name for reports.
    #[arg(long)]
    name: Option<String>,
    /// Connections that stay for the whole run.
    #[arg(long, short = 'c')]
    connections: Option<usize>,
    /// Rooms (0: nobody joins).
    #[arg(long, short = 'r')]
    rooms: Option<usize>,
    /// Senders per room.
    #[arg(long, short = 's')]
    senders: Option<usize>,
    /// Every member sends.
    #[arg(long)]
    every_member_sends: Option<bool>,
    /// Messages per second per sender (0: as fast as the window allows).
    #[arg(long)]
    rate: Option<f64>,
    /// Sends awaiting a reply per sender at most.
    #[arg(long)]
    window: Option<usize>,
    /// Bytes per message text.
    #[arg(long)]
    message_bytes: Option<usize>,
    /// Seconds of the measured phase.
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    /// Messages per sender at most (0: no limit).
    #[arg(long)]
    messages: Option<usize>,
    /// New connections per second while ramping up (0: unpaced).
    #[arg(long)]
    ramp: Option<f64>,
    /// Connections being set up at once at most.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Churn cycles per second (connect, join, leave, disconnect).
    #[arg(long)]
    churn: Option<f64>,
    /// Milliseconds a churning client stays in its room.
    #[arg(long)]
    churn_hold_ms: Option<u64>,
    /// Spread over the first N URLs (0: all).
    #[arg(long)]
    nodes: Option<usize>,
    /// Seconds to wait for deliveries after the last send.
    #[arg(long)]
    drain: Option<f64>,
    /// Send `leave` before closing at the end.
    #[arg(long)]
    leave_at_end: Option<bool>,
}

impl Overrides {
    fn apply(self, s: &mut Scenario) {
        macro_rules! set {
            ($($f:ident => $g:ident),*) => { $( if let Some(v) = self.$f { s.$g = v; } )* };
        }
        set!(name => name, connections => connections, rooms => rooms,
             senders => senders_per_room, every_member_sends => every_member_sends,
             rate => rate, window => window, message_bytes => message_bytes,
             duration => duration_secs, messages => messages_per_sender, ramp => ramp_per_sec,
             concurrency => concurrency, churn => churn_per_sec, churn_hold_ms => churn_hold_ms,
             nodes => nodes, drain => drain_secs, leave_at_end => leave_at_end);
    }
}

#[derive(Args)]
struct BareArgs {
    /// Address to listen on (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[cfg(feature = "plot")]
#[derive(Args)]
struct PlotArgs {
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "latency vs offered load")]
    title: String,
    /// Series as LABEL=FILE (a JSON array of reports from `run --out`).
    #[arg(required = true)]
    series: Vec<String>,
}

#[derive(Args)]
struct HubConfigArgs {
    /// The config to start from.
    #[arg(long, default_value = "config/default.toml")]
    base: PathBuf,
    /// Rooms r0 … rN-1.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Capacity of each room.
    #[arg(long, default_value_t = 2000)]
    capacity: usize,
    /// Raise sessions.max_sessions to at least this.
    #[arg(long, default_value_t = 200_000)]
    sessions: usize,
}

/// Parses the command line, runs the command, and maps the outcome to an
/// exit code (failure when a run saw loss, duplicates or reordering).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run_command(*a).await,
            Command::Bare(a) => crate::bare::serve(a.listen).await.map(|()| true),
            Command::HubConfig(a) => hub_config(a).map(|()| true),
            #[cfg(feature = "plot")]
            Command::Plot(a) => plot(a).map(|()| true),
            Command::Idle(a) => idle(a).await,
            Command::Smoke(a) => smoke(a).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_command(a: RunArgs) -> anyhow::Result<bool> {
    let mut scenario = match &a.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Scenario::from_toml(a.preset, &text)
                .with_context(|| format!("scenario {}", path.display()))?
        }
        None => a.preset.unwrap_or(Preset::Chatty).scenario(),
    };
    a.over.apply(&mut scenario);
    let sources = match a.spread {
        Some(0) => bail!("--spread needs at least 1"),
        Some(n) => (1..=n).map(|k| IpAddr::from([127, 0, 0, k])).collect(),
        None => a.sources,
    };
    let rates: Vec<Option<f64>> = if a.rates.is_empty() {
        vec![None]
    } else {
        a.rates.iter().copied().map(Some).collect()
    };
    let mut reports = Vec::new();
    for rate in rates {
        let mut scenario = scenario.clone();
        if let Some(r) = rate {
            scenario.rate = r;
        }
        let report = run(RunOptions {
            scenario,
            urls: a.url.clone(),
            sources: sources.clone(),
            protocol: a.target,
            hub_pids: a.hub_pid.clone(),
            progress: !a.quiet,
        })
        .await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
            println!();
        }
        reports.push(report);
    }
    if reports.len() > 1 && !a.json {
        print!("{}", sweep_table(&reports));
    }
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(reports.iter().all(|r| r.pass))
}

/// One line per run of a sweep.
fn sweep_table(reports: &[crate::run::Report]) -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "rate/sender  offered/s  delivered/s   p50 ms   p90 ms   p99 ms p99.9 ms   max ms  lost dup reord  hub cores  gen cores\n",
    );
    for r in reports {
        let m = &r.messages;
        let l = &m.latency_ms;
        let _ = writeln!(
            s,
            "{:>11} {:>10.0} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>5} {:>3} {:>5} {:>10} {:>10.2}",
            r.scenario.rate,
            m.offered_deliveries_per_s.unwrap_or(0.0),
            m.delivered_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            m.lost,
            m.duplicated,
            m.reordered,
            r.hubs
                .iter()
                .map(|h| format!("{:.2}", h.cores_used))
                .collect::<Vec<_>>()
                .join("+"),
            r.generator.cores_used
        );
    }
    s
}

#[cfg(feature = "plot")]
fn plot(a: PlotArgs) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for s in &a.series {
        let Some((label, file)) = s.split_once('=') else {
            bail!("series must be LABEL=FILE (got `{s}`)");
        };
        series.push((label.to_string(), crate::plot::points(file.as_ref())?));
    }
    crate::plot::draw(&a.out, &a.title, &series)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn hub_config(a: HubConfigArgs) -> anyhow::Result<()> {
    let base = std::fs::read_to_string(&a.base)
        .with_context(|| format!("cannot read {}", a.base.display()))?;
    print!(
        "{}",
        crate::hubconfig::bench_config(&base, a.rooms, a.capacity, a.sessions)?
    );
    Ok(())
}
