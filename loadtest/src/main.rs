//! `loadtest`: a small first load tool for Hearth (the full load tester has
//! its own issue).
//!
//! - `loadtest idle` opens N WebSocket connections, says `hello` on each,
//!   holds them and reports connect rate, errors and (with `--hub-pid`) the
//!   hub's resident memory per connection.
//! - `loadtest smoke` puts R*M clients into R rooms, has one sender per room
//!   send K messages and checks every member received every message exactly
//!   once, in `seq` order, without gaps.
//!
//! Only loopback targets are accepted (127.x.x.x, localhost, [::1]): this
//! tool must never be pointed at a machine other than the one it runs on.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Barrier, Semaphore};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// How long one connection may take to connect, upgrade and be welcomed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Load and smoke tests for a local Hearth hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N idle connections (hello only), hold them and report memory.
    Idle(IdleArgs),
    /// Check delivery: R rooms of M members, one sender per room, K messages.
    Smoke(SmokeArgs),
}

#[derive(Args, Clone)]
struct Target {
    /// WebSocket URL of the hub; the host must be a loopback address.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Local addresses to bind client sockets to, used round-robin
    /// (e.g. 127.0.0.1,127.0.0.2). Default: let the kernel choose.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The hub's process id: its VmRSS is read before and after connecting.
    #[arg(long)]
    hub_pid: Option<u32>,
    /// Seconds to hold the connections open once all are connected.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
}

#[derive(Args)]
struct SmokeArgs {
    #[command(flatten)]
    target: Target,
    /// Rooms to use (from the `rooms` list in `welcome`, in order).
    #[arg(long, default_value_t = 3)]
    rooms: usize,
    /// Members per room; the first member of each room is its sender.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Messages each room's sender sends.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Idle(a) => idle(a).await,
            Command::Smoke(a) => smoke(a).await,
        }
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Target checks and connecting

/// The socket address behind a `ws://` URL, refusing anything but loopback.
fn loopback_target(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("only ws:// URLs are supported (got `{url}`)");
    }
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let refuse = || {
        anyhow!(
            "refusing `{host}`: only loopback targets (127.x.x.x, localhost, [::1]) are allowed"
        )
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| refuse())?
    };
    if !ip.is_loopback() {
        return Err(refuse());
    }
    Ok(SocketAddr::new(ip, port))
}

fn check_sources(target: SocketAddr, sources: &[IpAddr]) -> anyhow::Result<()> {
    for s in sources {
        if !s.is_loopback() {
            bail!("source address {s} is not a loopback address");
        }
        if s.is_ipv4() != target.is_ipv4() {
            bail!("source address {s} is not of the same family as the target {target}");
        }
    }
    Ok(())
}

/// Small buffers, as the hub uses: thousands of connections stay cheap.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_write_buffer_size(65536)
}

struct Dialer {
    url: Arc<str>,
    target: SocketAddr,
    sources: Vec<IpAddr>,
}

impl Dialer {
    fn new(t: &Target) -> anyhow::Result<Dialer> {
        let target = loopback_target(&t.url)?;
        check_sources(target, &t.sources)?;
        Ok(Dialer {
            url: t.url.as_str().into(),
            target,
            sources: t.sources.clone(),
        })
    }

    /// Connects the `n`th client (its source address is chosen round-robin).
    async fn connect(&self, n: usize) -> anyhow::Result<Ws> {
        let sock = if self.target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if !self.sources.is_empty() {
            let src = self.sources[n % self.sources.len()];
            sock.bind(SocketAddr::new(src, 0))
                .with_context(|| format!("bind {src}"))?;
        }
        let stream = sock.connect(self.target).await.context("connect")?;
        stream.set_nodelay(true).context("nodelay")?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(&*self.url, stream, Some(ws_config()))
                .await
                .context("websocket upgrade")?;
        Ok(ws)
    }

    /// Connects and says `hello`; returns the socket and the `welcome` frame.
    async fn connect_hello(&self, n: usize) -> anyhow::Result<(Ws, Value)> {
        let fut = async {
            let mut ws = self.connect(n).await?;
            send_json(&mut ws, &json!({"type": "hello", "ref": "hello"})).await?;
            loop {
                let v = next_json(&mut ws).await?;
                match v["type"].as_str() {
                    Some("welcome") => return Ok((ws, v)),
                    Some("error") => bail!("hello refused: {}", v["code"]),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("no welcome within {CONNECT_TIMEOUT:?}"))?
    }
}

async fn send_json(ws: &mut Ws, v: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string())).await.context("send")
}

/// The next JSON text frame; pings are answered by tungstenite while reading.
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            None => bail!("connection ended"),
            Some(Err(e)) => bail!("read: {e}"),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).context("server sent invalid JSON")
            }
            Some(Ok(Message::Close(c))) => bail!(
                "closed by server: {}",
                c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                    .unwrap_or_else(|| "no code".into())
            ),
            Some(Ok(_)) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Memory and limits

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// The soft limit on open files of this process, if it can be read.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn warn_if_too_few_files(wanted: usize) {
    if let Some(soft) = open_files_limit() {
        if wanted as u64 + 64 > soft {
            eprintln!(
                "warning: {wanted} connections need more open files than this process may have \
                 ({soft}); raise it first (ulimit -n)"
            );
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Error messages grouped by text, most frequent first.
fn print_errors(errors: &BTreeMap<String, usize>) {
    let mut v: Vec<_> = errors.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    for (msg, n) in v.iter().take(10) {
        println!("  {n:>7} × {msg}");
    }
}

// ---------------------------------------------------------------------------
// idle

enum IdleEvent {
    Connected(Duration),
    Failed(String),
    /// A held connection ended before it was released.
    Dropped(String),
}

async fn idle(a: IdleArgs) -> anyhow::Result<bool> {
    let dialer = Arc::new(Dialer::new(&a.target)?);
    let n = a.connections;
    warn_if_too_few_files(n);
    println!(
        "idle: {n} connections to {} (sources: {}), hold {} s",
        dialer.target,
        if a.target.sources.is_empty() {
            "kernel's choice".to_string()
        } else {
            a.target
                .sources
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        a.hold_secs
    );
    let rss_before = match a.hub_pid {
        Some(pid) => Some(rss_kib(pid)?),
        None => None,
    };

    let permits = Arc::new(Semaphore::new(a.target.concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let dialer = dialer.clone();
        let permits = permits.clone();
        let tx = tx.clone();
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let (conn, took) = {
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                let t0 = Instant::now();
                (dialer.connect_hello(i).await, t0.elapsed())
            };
            let mut ws = match conn {
                Ok((ws, _welcome)) => {
                    let _ = tx.send(IdleEvent::Connected(took));
                    ws
                }
                Err(e) => {
                    let _ = tx.send(IdleEvent::Failed(format!("{e:#}")));
                    return;
                }
            };
            // Hold: keep reading so pings are answered, until released.
            loop {
                tokio::select! {
                    r = release.changed() => {
                        if r.is_err() || *release.borrow() {
                            break;
                        }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Close(c))) => {
                            let why = c.map(|c| u16::from(c.code).to_string()).unwrap_or_default();
                            let _ = tx.send(IdleEvent::Dropped(format!("closed by server {why}")));
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            let _ = tx.send(IdleEvent::Dropped(format!("read: {e}")));
                            return;
                        }
                        None => {
                            let _ = tx.send(IdleEvent::Dropped("connection ended".into()));
                            return;
                        }
                    }
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(tx);

    let mut ok = 0usize;
    let mut latencies = Vec::with_capacity(n);
    let mut errors = BTreeMap::new();
    while ok + errors.values().sum::<usize>() < n {
        match rx.recv().await {
            Some(IdleEvent::Connected(d)) => {
                ok += 1;
                latencies.push(d);
            }
            Some(IdleEvent::Failed(e)) | Some(IdleEvent::Dropped(e)) => {
                *errors.entry(e).or_insert(0) += 1
            }
            None => break,
        }
    }
    let connect_time = started.elapsed();
    latencies.sort();
    let failed: usize = errors.values().sum();
    println!(
        "connected {ok}/{n} in {:.2} s ({:.0} connections/s), errors {failed}",
        connect_time.as_secs_f64(),
        ok as f64 / connect_time.as_secs_f64().max(1e-9)
    );
    println!(
        "connect+hello latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
    );
    print_errors(&errors);

    // Let the hub settle (allocator, queued writes) before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report_rss = |label: &str| -> anyhow::Result<()> {
        if let (Some(pid), Some(before)) = (a.hub_pid, rss_before) {
            let now = rss_kib(pid)?;
            let delta = now.saturating_sub(before);
            println!(
                "hub RSS {label}: {now} KiB (before connecting {before} KiB; +{delta} KiB, \
                 {:.1} KiB per connection)",
                delta as f64 / ok.max(1) as f64
            );
        }
        Ok(())
    };
    report_rss("with all connected")?;

    let hold_until = tokio::time::Instant::now() + Duration::from_secs(a.hold_secs);
    let mut dropped = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(hold_until) => break,
            ev = rx.recv() => match ev {
                Some(IdleEvent::Dropped(e)) | Some(IdleEvent::Failed(e)) => {
                    dropped += 1;
                    *errors.entry(e).or_insert(0) += 1;
                }
                Some(IdleEvent::Connected(_)) => {}
                None => break,
            }
        }
    }
    if a.hold_secs > 0 {
        report_rss(&format!("after holding {} s", a.hold_secs))?;
    }
    println!("dropped while held: {dropped}");
    if dropped > 0 {
        print_errors(&errors);
    }
    let _ = release_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(failed == 0 && dropped == 0)
}

// ---------------------------------------------------------------------------
// smoke

/// What one member saw.
struct MemberLog {
    room: usize,
    /// The room's `seq` in this member's `joined` reply.
    base: u64,
    /// `(seq, text)` of every `message` event received after joining.
    got: Vec<(u64, String)>,
    error: Option<String>,
}

fn marker(run: u64, room: usize, k: usize) -> String {
    format!("smoke {run} room {room} message {k}")
}

async fn smoke(a: SmokeArgs) -> anyhow::Result<bool> {
    if a.rooms == 0 || a.members == 0 {
        bail!("--rooms and --members must be at least 1");
    }
    let dialer = Arc::new(Dialer::new(&a.target)?);
    let total = a.rooms * a.members;
    warn_if_too_few_files(total);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_secs);
    println!(
        "smoke: {} rooms × {} members, {} messages per room, to {}",
        a.rooms, a.members, a.messages, dialer.target
    );

    // Connect everyone first, so the room list is known.
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(a.target.concurrency.max(1)));
    let mut connecting = Vec::with_capacity(total);
    for i in 0..total {
        let dialer = dialer.clone();
        let permits = permits.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.map_err(|e| anyhow!("{e}"))?;
            dialer.connect_hello(i).await
        }));
    }
    let mut clients = Vec::with_capacity(total);
    let mut errors = BTreeMap::new();
    for t in connecting {
        match t.await {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => *errors.entry(format!("{e:#}")).or_insert(0) += 1,
            Err(e) => *errors.entry(format!("task: {e}")).or_insert(0) += 1,
        }
    }
    println!(
        "connected {}/{total} in {:.2} s",
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    if !errors.is_empty() {
        print_errors(&errors);
        println!("FAIL: not every client could connect");
        return Ok(false);
    }
    let room_ids: Vec<String> = clients
        .first()
        .and_then(|(_, w)| w["rooms"].as_array())
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if room_ids.len() < a.rooms {
        bail!(
            "asked for {} rooms but the hub offers {} ({})",
            a.rooms,
            room_ids.len(),
            room_ids.join(", ")
        );
    }
    let room_ids: Arc<Vec<String>> = Arc::new(room_ids.into_iter().take(a.rooms).collect());
    println!("rooms: {}", room_ids.join(", "));

    // Everyone joins; senders start once every member is in. A sender that
    // fails tells its room's members to stop waiting.
    let barrier = Arc::new(Barrier::new(total));
    let aborts: Vec<Arc<watch::Sender<bool>>> = (0..a.rooms)
        .map(|_| Arc::new(watch::channel(false).0))
        .collect();
    let sent_at = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for (i, (ws, _)) in clients.into_iter().enumerate() {
        let room = i / a.members;
        let part = Part {
            room,
            room_id: room_ids[room].clone(),
            sender: i % a.members == 0,
            messages: a.messages,
            run,
            barrier: barrier.clone(),
            abort: aborts[room].clone(),
        };
        tasks.push(tokio::spawn(async move {
            match tokio::time::timeout_at(deadline, member(ws, part)).await {
                Ok(log) => log,
                Err(_) => MemberLog {
                    room,
                    base: 0,
                    got: Vec::new(),
                    error: Some("timed out".into()),
                },
            }
        }));
    }
    let mut logs = Vec::with_capacity(total);
    for t in tasks {
        match t.await {
            Ok(l) => logs.push(l),
            Err(e) => bail!("a member task failed: {e}"),
        }
    }
    let elapsed = sent_at.elapsed();

    // Verify.
    let mut lost = 0usize;
    let mut dup = 0usize;
    let mut reordered = 0usize;
    let mut wrong = 0usize;
    let mut received = 0usize;
    let mut failed_members = 0usize;
    let mut member_errors = BTreeMap::new();
    for log in &logs {
        if let Some(e) = &log.error {
            failed_members += 1;
            *member_errors.entry(e.clone()).or_insert(0) += 1;
        }
        received += log.got.len();
        let mut seen = HashSet::new();
        let mut prev = log.base;
        for (seq, text) in &log.got {
            if !seen.insert(*seq) {
                dup += 1;
                continue;
            }
            if *seq != prev + 1 {
                reordered += 1;
            }
            prev = *seq;
            // Message k of this run must carry seq base + 1 + k.
            let k = seq.wrapping_sub(log.base + 1) as usize;
            if k >= a.messages || *text != marker(run, log.room, k) {
                wrong += 1;
            }
        }
        lost += a.messages.saturating_sub(seen.len());
    }
    let expected = total * a.messages;
    println!(
        "messages: {} rooms × {} planned, expected deliveries {expected}, received {received} in {:.2} s",
        a.rooms,
        a.messages,
        elapsed.as_secs_f64()
    );
    println!(
        "lost {lost}, duplicated {dup}, out of order {reordered}, unexpected {wrong}, members with errors {failed_members}"
    );
    print_errors(&member_errors);
    let pass = lost == 0 && dup == 0 && reordered == 0 && wrong == 0 && failed_members == 0;
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

/// One client's part in the smoke test.
struct Part {
    room: usize,
    room_id: String,
    /// The room's sender (its first member).
    sender: bool,
    messages: usize,
    run: u64,
    barrier: Arc<Barrier>,
    /// Set to `true` when the room's sender gave up.
    abort: Arc<watch::Sender<bool>>,
}

async fn member(mut ws: Ws, part: Part) -> MemberLog {
    let mut log = MemberLog {
        room: part.room,
        base: 0,
        got: Vec::new(),
        error: None,
    };
    let joined = join(&mut ws, &mut log, &part.room_id).await;
    // Wait at the barrier even after a failed join, so the others go on.
    part.barrier.wait().await;
    let result = match joined {
        Ok(()) if part.sender => send_all(&mut ws, &mut log, &part).await,
        Ok(()) => receive_all(&mut ws, &mut log, &part).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        if part.sender {
            part.abort.send_replace(true);
        }
        log.error = Some(format!("{e:#}"));
    }
    let _ = ws.close(None).await;
    log
}

/// Records a frame if it is one of this run's messages.
fn record(log: &mut MemberLog, v: &Value) {
    if v["type"] == "message" {
        if let (Some(seq), Some(text)) = (v["seq"].as_u64(), v["text"].as_str()) {
            if seq > log.base {
                log.got.push((seq, text.to_string()));
            }
        }
    }
}

/// Joins the room and notes its `seq`. Nobody sends until every member has
/// joined, so every member's `joined` carries the same seq and must then see
/// exactly the K new messages.
async fn join(ws: &mut Ws, log: &mut MemberLog, room_id: &str) -> anyhow::Result<()> {
    send_json(ws, &json!({"type": "join", "ref": "join", "room": room_id})).await?;
    loop {
        let v = next_json(ws).await?;
        if v["ref"] == "join" {
            return match v["type"].as_str() {
                Some("joined") => {
                    log.base = v["seq"].as_u64().context("joined without seq")?;
                    Ok(())
                }
                _ => Err(anyhow!("join refused: {}", v["code"])),
            };
        }
    }
}

/// The sender: sends K messages one after another, waiting for each reply
/// and for `retry_after_ms` when rate-limited; it receives its own messages
/// like every member.
async fn send_all(ws: &mut Ws, log: &mut MemberLog, part: &Part) -> anyhow::Result<()> {
    let mut i = 0;
    let mut retries = 0u64;
    while i < part.messages {
        let text = marker(part.run, part.room, i);
        let frame = json!({"type": "send", "ref": i, "room": part.room_id, "text": text});
        send_json(ws, &frame).await?;
        loop {
            let v = next_json(ws).await?;
            record(log, &v);
            if v["ref"] != json!(i) {
                continue;
            }
            match (v["type"].as_str(), v["code"].as_str()) {
                (Some("ok"), _) => {
                    let want = log.base + 1 + i as u64;
                    let seq = v["seq"].as_u64().context("ok without seq")?;
                    if seq != want {
                        bail!("message {i} got seq {seq}, expected {want}");
                    }
                    i += 1;
                }
                (Some("error"), Some("rate_limited")) => {
                    let ms = v["retry_after_ms"].as_u64().unwrap_or(1000);
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                _ => bail!("send {i} refused after {retries} rate limits: {v}"),
            }
            break;
        }
    }
    if retries > 0 {
        println!(
            "room {}: sender waited out {retries} rate limits (retry_after_ms)",
            part.room_id
        );
    }
    receive_all(ws, log, part).await
}

/// Reads until this run's K messages arrived (or the sender gave up).
async fn receive_all(ws: &mut Ws, log: &mut MemberLog, part: &Part) -> anyhow::Result<()> {
    let mut abort = part.abort.subscribe();
    while log.got.len() < part.messages {
        tokio::select! {
            v = next_json(ws) => record(log, &v?),
            _ = abort.wait_for(|a| *a) => bail!("the room's sender gave up"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "ws://127.0.0.1:8080/ws",
            "ws://127.9.8.7/ws",
            "ws://localhost:18080/ws",
            "ws://LOCALHOST:1/ws",
            "ws://[::1]:8080/ws",
        ] {
            assert!(loopback_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.2/ws",
            "ws://example.org/ws",
            "ws://[::2]:8080/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
            "ws://localhost.example.org/ws",
            "not a url",
        ] {
            assert!(loopback_target(bad).is_err(), "{bad}");
        }
        assert_eq!(
            loopback_target("ws://localhost:9/ws").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
    }

    #[test]
    fn sources_must_be_loopback_and_same_family() {
        let t = SocketAddr::from(([127, 0, 0, 1], 8080));
        assert!(check_sources(t, &["127.0.0.2".parse().expect("ip")]).is_ok());
        assert!(check_sources(t, &["10.0.0.2".parse().expect("ip")]).is_err());
        assert!(check_sources(t, &["::1".parse().expect("ip")]).is_err());
    }

    #[test]
    fn percentiles_of_empty_and_small_sets() {
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        let v = [1, 2, 3].map(Duration::from_millis);
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(2));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(3));
    }
}
