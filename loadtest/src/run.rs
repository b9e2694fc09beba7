//! Running a [`Scenario`] against a hub (Hearth, `loadtest bare`, or the
//! Socket.IO baseline) and measuring it.
//!
//! Phases, driven by one controller through a `watch` channel:
//! 1. **Setup**: the connections are opened (at `ramp_per_sec`, at most
//!    `concurrency` at a time), say hello and join their room
//!    (connection i joins room i mod R); connect+hello latency is recorded.
//! 2. **Measure** (`duration_secs`): senders send on a fixed schedule;
//!    churners connect, join, leave and disconnect; everyone records the
//!    room messages it receives.
//! 3. **Drain**: senders stop and wait for their replies; the room's last
//!    `seq` is then known.
//! 4. **Finish**: every member reads until it has every `seq` of its room
//!    after the one in its `joined` reply (or `drain_secs` pass), then
//!    leaves and closes.
//!
//! Latency is measured from each message's *scheduled* send time (as wrk2
//! does) whenever the send went out more than [`TIMER_SLACK`] late, so a
//! stalled hub or a full send window shows up as latency instead of
//! silently lowering the offered rate (coordinated omission); the latency
//! from the actual write is reported beside it. Every client
//! lives in this process, so senders and receivers read one monotonic
//! clock.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::latency::{summarize, LatencySummary};
use crate::net::{Dialer, Target, Ws, CONNECT_TIMEOUT};
use crate::proto::{Incoming, Protocol};
use crate::scenario::Scenario;
use crate::sys;

/// How long a reply (`joined`, `left`, a send's `ok` while draining) may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A send this late or less counts as on time: tokio's timers fire up to
/// about a millisecond late. Later than this (a full window, a busy
/// generator or hub), latency is counted from the schedule.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Sockets per source address before another loopback source is added
/// (the ephemeral port range here is 28 232 ports per source/target pair).
const SOCKETS_PER_SOURCE: usize = 25_000;

/// The hub's close code for a receiver whose outbound queue overflowed.
const TOO_SLOW: u16 = 4009;

/// A client socket with at least this much received but unread by the
/// generator was one the generator's reader had fallen behind on.
const BEHIND_BYTES: u64 = 64 * 1024;

/// How often the generator samples its sockets' unread bytes while
/// messages flow.
const UNREAD_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Churn cycles in progress at most; beyond that a tick is skipped (and
/// counted), so a slow hub cannot make the generator pile up sockets.
const MAX_CHURNING: usize = 2_000;

/// What to run, where.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    /// Target URLs (one per hub node); loopback only.
    pub urls: Vec<String>,
    /// Source addresses for client sockets; empty: 127.0.0.1 alone, or
    /// 127.0.0.1, .2, … when there are more connections than one source
    /// has ports for.
    pub sources: Vec<IpAddr>,
    pub protocol: Protocol,
    /// Hub processes to read RSS and CPU from.
    pub hub_pids: Vec<u32>,
    /// Print progress lines to stderr.
    pub progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Setup,
    Measure(Instant),
    Drain,
    Finish(Instant),
}

/// Latency histograms shared by all clients, sharded so that flushing
/// clients rarely wait for each other. Each client batches its samples.
struct Histograms {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Histograms {
    fn new() -> Histograms {
        Histograms {
            shards: (0..16)
                .map(|_| {
                    Mutex::new(
                        Histogram::new_with_bounds(1, 3_600_000_000, 3)
                            .expect("valid histogram bounds"),
                    )
                })
                .collect(),
        }
    }

    fn record_all(&self, shard: usize, samples: &[u64]) {
        if samples.is_empty() {
            return;
        }
        let mut h = match self.shards[shard % self.shards.len()].lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        for &s in samples {
            h.saturating_record(s.max(1));
        }
    }

    fn merged(&self) -> Histogram<u64> {
        let mut all = crate::latency::new_histogram();
        for s in &self.shards {
            let h = match s.lock() {
                Ok(h) => h,
                Err(poisoned) => poisoned.into_inner(),
            };
            let _ = all.add(&*h);
        }
        all
    }
}

/// Counters every client adds to.
#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    joined: AtomicUsize,
    failed: AtomicUsize,
    senders_done: AtomicUsize,
    sent: AtomicU64,
    acked: AtomicU64,
    sent_late: AtomicU64,
    churn_started: AtomicU64,
    churn_done: AtomicU64,
    churn_skipped: AtomicU64,
    churning: AtomicUsize,
}

struct Shared {
    sc: Scenario,
    proto: Protocol,
    dialer: Dialer,
    rooms: Vec<String>,
    /// The highest `seq` a send into each room was acknowledged with.
    final_seq: Vec<AtomicU64>,
    phase: watch::Sender<Phase>,
    counters: Counters,
    latency: Histograms,
    latency_raw: Histograms,
    connect: Histograms,
    errors: Mutex<BTreeMap<String, u64>>,
    clock: Instant,
    /// Marks this run's texts, so messages of earlier runs are not counted.
    run_tag: String,
    /// Extra bytes to pad each text to `message_bytes`.
    padding: String,
    /// Which node (URL index) each room's member j uses.
    nodes: usize,
    permits: Semaphore,
    /// Most bytes seen received but unread in each client socket (by local
    /// address) while messages flowed.
    unread_max: Mutex<HashMap<SocketAddr, u64>>,
}

impl Shared {
    fn error(&self, what: impl Into<String>) {
        let mut e = match self.errors.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        *e.entry(what.into()).or_insert(0) += 1;
    }

    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.clock).as_micros()).unwrap_or(u64::MAX)
    }

    /// A message text: `<tag> <scheduled µs> <sent µs> ` padded to size,
    /// numbers in [`letters`] (Hearth's filter takes seven digits in a row
    /// for a phone number).
    fn text(&self, scheduled: Instant, sent: Instant) -> String {
        let mut t = format!(
            "{} {} {} ",
            self.run_tag,
            letters(self.micros(scheduled)),
            letters(self.micros(sent))
        );
        let want = self.sc.message_bytes.max(t.len());
        t.push_str(&self.padding[..want - t.len()]);
        t
    }

    /// The scheduled and actual send times (µs) from one of this run's texts.
    fn stamps(&self, text: &str) -> Option<(u64, u64)> {
        let mut w = text.split(' ');
        if w.next()? != self.run_tag {
            return None;
        }
        Some((from_letters(w.next()?)?, from_letters(w.next()?)?))
    }
}

/// Digits as letters that spell no word a content filter or the crisis
/// classifier could react to (no vowels, no digits).
const DIGITS: &[u8; 10] = b"qxzjvwbcfg";

fn letters(mut n: u64) -> String {
    let mut out = Vec::with_capacity(20);
    loop {
        out.push(DIGITS[(n % 10) as usize]);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn from_letters(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        let d = DIGITS.iter().position(|&x| x == b)? as u64;
        Some(acc * 10 + d)
    })
}

/// Seqs one member has received, as a bitmap from its `joined` seq.
#[derive(Default)]
struct Received {
    base: u64,
    bits: Vec<u64>,
    unique: u64,
    last: u64,
    duplicated: u64,
    reordered: u64,
    gaps: u64,
    foreign: u64,
    first_recv: Option<Instant>,
    last_recv: Option<Instant>,
}

impl Received {
    fn new(base: u64) -> Received {
        Received {
            base,
            last: base,
            ..Received::default()
        }
    }

    /// Notes `seq`; returns false for a duplicate.
    fn note(&mut self, seq: u64) -> bool {
        if seq <= self.base {
            self.foreign += 1;
            return false;
        }
        let i = (seq - self.base - 1) as usize;
        let (w, b) = (i / 64, i % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) != 0 {
            self.duplicated += 1;
            return false;
        }
        self.bits[w] |= 1 << b;
        self.unique += 1;
        if seq < self.last {
            self.reordered += 1;
        } else if seq > self.last + 1 {
            self.gaps += 1;
        }
        self.last = self.last.max(seq);
        true
    }

    /// Seqs in `(base, upto]` received.
    fn count_upto(&self, upto: u64) -> u64 {
        if upto <= self.base {
            return 0;
        }
        let n = (upto - self.base) as usize;
        let full = n / 64;
        let mut c: u64 = self
            .bits
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if let Some(w) = self.bits.get(full) {
            let rem = n % 64;
            if rem > 0 {
                c += u64::from((w & ((1u64 << rem) - 1)).count_ones());
            }
        }
        c
    }
}

/// What one room member saw, handed back at the end.
#[derive(Default)]
struct MemberOutcome {
    /// A sender that counted itself done (else the controller would wait
    /// for it at the end of the measurement).
    sender_counted: bool,
    joined: bool,
    expected: u64,
    received: u64,
    unique_in_range: u64,
    duplicated: u64,
    reordered: u64,
    gaps: u64,
    foreign: u64,
    first_send: Option<Instant>,
    last_recv: Option<Instant>,
    /// The hub closed this member as too slow (4009).
    closed_slow: bool,
    /// Most bytes its socket held unread by the generator (sampled).
    unread_max: u64,
}

/// One open connection with its protocol, reading and recording frames.
struct Conn {
    ws: Ws,
    /// The socket's local address (to find its unread bytes).
    local: Option<SocketAddr>,
    /// The close code the server sent, if it closed the connection.
    close_code: Option<u16>,
    sh: Arc<Shared>,
    id: usize,
    room: usize,
    recv: Received,
    lat: Vec<u64>,
    lat_raw: Vec<u64>,
}

/// A reply (to `join`, `send`, `leave`) read off the wire.
struct Reply {
    reference: u64,
    ok: bool,
    seq: Option<u64>,
    code: String,
}

impl Conn {
    /// Reads one frame; records room messages, answers pings, and returns
    /// replies. `Err` when the connection ends.
    async fn next(&mut self) -> anyhow::Result<Option<Reply>> {
        let msg = match self.ws.next().await {
            None => bail!("connection ended"),
            Some(Err(e)) => bail!("read: {e}"),
            Some(Ok(m)) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(c) => {
                self.close_code = c.as_ref().map(|c| u16::from(c.code));
                bail!(
                    "close {}",
                    c.map(|c| u16::from(c.code).to_string())
                        .unwrap_or_else(|| "without code".into())
                )
            }
            _ => return Ok(None),
        };
        match self.sh.proto.decode(text.as_str())? {
            Incoming::Ping => {
                if let Some(p) = self.sh.proto.pong() {
                    self.ws.send(Message::text(p)).await.context("pong")?;
                }
                Ok(None)
            }
            Incoming::Other => Ok(None),
            Incoming::Frame(w) => {
                if w.ty == "message" {
                    if let Some(seq) = w.seq {
                        let now = Instant::now();
                        if self.recv.note(seq) {
                            self.recv.first_recv.get_or_insert(now);
                            self.recv.last_recv = Some(now);
                            match w.text.as_deref().and_then(|t| self.sh.stamps(t)) {
                                Some((scheduled, sent)) => {
                                    let at = self.sh.micros(now);
                                    self.lat.push(at.saturating_sub(scheduled));
                                    self.lat_raw.push(at.saturating_sub(sent));
                                    if self.lat.len() >= 512 {
                                        self.flush_latency();
                                    }
                                }
                                None => self.recv.foreign += 1,
                            }
                        }
                    }
                    return Ok(None);
                }
                let Some(reference) = w.reference else {
                    return Ok(None);
                };
                let ok = matches!(&*w.ty, "ok" | "joined" | "left" | "welcome");
                Ok(Some(Reply {
                    reference,
                    ok,
                    seq: w.seq,
                    code: w.code.map(|c| c.0.into_owned()).unwrap_or_else(|| {
                        if ok {
                            String::new()
                        } else {
                            w.ty.into_owned()
                        }
                    }),
                }))
            }
        }
    }

    fn flush_latency(&mut self) {
        self.sh.latency.record_all(self.id, &self.lat);
        self.sh.latency_raw.record_all(self.id, &self.lat_raw);
        self.lat.clear();
        self.lat_raw.clear();
    }

    async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await.context("send")
    }

    /// Sends a request and reads until its reply (recording what arrives
    /// meanwhile).
    async fn request(&mut self, frame: String, reference: u64) -> anyhow::Result<Reply> {
        self.send_text(frame).await?;
        tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                if let Some(r) = self.next().await? {
                    if r.reference == reference {
                        return Ok(r);
                    }
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no reply within {REPLY_TIMEOUT:?}"))?
    }
}

/// Opens a connection and says hello; returns it with the `welcome` (Hearth)
/// or the Socket.IO connect payload.
async fn open(sh: &Shared, n: usize, node: usize) -> anyhow::Result<(Ws, Value)> {
    let fut = async {
        let mut ws = sh.dialer.connect(n, node).await?;
        let proto = sh.proto;
        if proto == Protocol::SocketIo {
            // Engine.IO "open" first.
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with('0') => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => bail!("read: {e}"),
                    None => bail!("connection ended before the Engine.IO open packet"),
                }
            }
        }
        ws.send(Message::text(proto.hello()))
            .await
            .context("hello")?;
        loop {
            let t = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => bail!(
                    "close {}",
                    c.map(|c| u16::from(c.code).to_string()).unwrap_or_default()
                ),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("read: {e}"),
                None => bail!("connection ended before the welcome"),
            };
            match proto {
                Protocol::Hearth => {
                    let v: Value = serde_json::from_str(t.as_str()).context("welcome")?;
                    match v["type"].as_str() {
                        Some("welcome") => return Ok((ws, v)),
                        Some("error") => bail!("hello {}", v["code"].as_str().unwrap_or("error")),
                        _ => {}
                    }
                }
                Protocol::SocketIo => {
                    if let Some(rest) = t.as_str().strip_prefix("40") {
                        let v = serde_json::from_str(rest).unwrap_or(Value::Null);
                        return Ok((ws, v));
                    }
                    if t.as_str().starts_with("44") {
                        bail!("connect_error");
                    }
                }
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("timeout"))?
}

fn local_addr(ws: &Ws) -> Option<SocketAddr> {
    ws.get_ref().local_addr().ok()
}

/// While messages flow: samples how many bytes each of the generator's
/// sockets holds received but unread, keeping the most seen per socket.
///
/// `/proc/net/tcp` lists every socket of the network namespace, and reading
/// it costs the kernel time in proportion (seconds with tens of thousands
/// of sockets): it is read off the runtime (`spawn_blocking`), one read at a
/// time, and the next read waits 20 times as long as the last one took, so
/// sampling never takes more than ~5 % of the generator's time.
async fn sample_unread(sh: Arc<Shared>) {
    loop {
        if matches!(*sh.phase.borrow(), Phase::Setup) {
            tokio::time::sleep(UNREAD_SAMPLE_EVERY).await;
            continue;
        }
        let t0 = Instant::now();
        let Ok(now) = tokio::task::spawn_blocking(sys::tcp_unread_bytes).await else {
            return;
        };
        let took = t0.elapsed();
        {
            let mut m = match sh.unread_max.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            for (addr, unread) in now {
                if unread > 0 {
                    let e = m.entry(addr).or_insert(0);
                    *e = (*e).max(unread);
                }
            }
        }
        tokio::time::sleep(UNREAD_SAMPLE_EVERY.max(took * 20)).await;
    }
}

/// A short name for an error, for the errors-by-code table.
fn kind(phase: &str, e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    let short = if let Some(i) = s.find("(os error") {
        s[..i].trim_end().to_string()
    } else {
        s.chars().take(80).collect()
    };
    format!("{phase}: {short}")
}

/// Which node member `j` of room `room` uses: each room's rotation starts
/// one URL further on, so members and senders are spread over the nodes.
fn node_of(sc: &Scenario, i: usize, nodes: usize) -> usize {
    if sc.rooms == 0 {
        return i % nodes.max(1);
    }
    let (room, j) = (i % sc.rooms, i / sc.rooms);
    (room + j) % nodes.max(1)
}

/// One room member (or idle connection), from connecting to closing.
async fn member(sh: Arc<Shared>, i: usize) -> MemberOutcome {
    let sc = &sh.sc;
    let room = if sc.rooms > 0 { i % sc.rooms } else { 0 };
    let j = i.checked_div(sc.rooms).unwrap_or(0);
    let mut out = MemberOutcome::default();
    let node = node_of(sc, i, sh.nodes);
    let opened = {
        let _permit = sh.permits.acquire().await;
        let t0 = Instant::now();
        let r = open(&sh, i, node).await;
        if r.is_ok() {
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            sh.connect.record_all(i, &[us]);
        }
        r
    };
    let ws = match opened {
        Ok((ws, _)) => ws,
        Err(e) => {
            sh.error(kind("connect", &e));
            sh.counters.failed.fetch_add(1, Ordering::Relaxed);
            if sc.sends(j) {
                sh.counters.senders_done.fetch_add(1, Ordering::Relaxed);
            }
            return out;
        }
    };
    sh.counters.connected.fetch_add(1, Ordering::Relaxed);
    let mut c = Conn {
        local: local_addr(&ws),
        close_code: None,
        ws,
        sh: sh.clone(),
        id: i,
        room,
        recv: Received::default(),
        lat: Vec::new(),
        lat_raw: Vec::new(),
    };
    let result = member_life(&mut c, j, &mut out).await;
    if let Err(e) = result {
        sh.error(kind(if out.joined { "member" } else { "join" }, &e));
        if !out.joined {
            sh.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    if sc.sends(j) && !out.sender_counted {
        sh.counters.senders_done.fetch_add(1, Ordering::Relaxed);
    }
    c.flush_latency();
    if sh.sc.rooms > 0 && out.joined {
        let last = sh.final_seq[room].load(Ordering::Relaxed);
        out.expected = last.saturating_sub(c.recv.base);
        out.unique_in_range = c.recv.count_upto(last);
    }
    out.received = c.recv.unique;
    out.duplicated = c.recv.duplicated;
    out.reordered = c.recv.reordered;
    out.gaps = c.recv.gaps;
    out.foreign = c.recv.foreign;
    out.last_recv = c.recv.last_recv;
    out.closed_slow = c.close_code == Some(TOO_SLOW);
    if let Some(local) = c.local {
        let m = match sh.unread_max.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        out.unread_max = m.get(&local).copied().unwrap_or(0);
    }
    if sh.sc.leave_at_end && sh.sc.rooms > 0 && out.joined {
        let frame = sh.proto.leave(3, &sh.rooms[room]);
        let _ = c.send_text(frame).await;
    }
    let _ = c.ws.close(None).await;
    out
}

async fn member_life(c: &mut Conn, j: usize, out: &mut MemberOutcome) -> anyhow::Result<()> {
    let sh = c.sh.clone();
    let sc = &sh.sc;
    let mut phase = sh.phase.subscribe();
    if sc.rooms > 0 {
        let reply = c.request(sh.proto.join(1, &sh.rooms[c.room]), 1).await?;
        if !reply.ok {
            bail!("{}", reply.code);
        }
        c.recv = Received::new(reply.seq.unwrap_or(0));
    }
    out.joined = true;
    sh.counters.joined.fetch_add(1, Ordering::Relaxed);

    // Until the measurement starts: keep reading (pings, presence).
    let start = loop {
        if let Phase::Measure(t) = *phase.borrow_and_update() {
            break t;
        }
        if matches!(*phase.borrow(), Phase::Drain | Phase::Finish(_)) {
            return Ok(());
        }
        tokio::select! {
            r = c.next() => { r?; }
            _ = phase.changed() => {}
        }
    };

    if sc.sends(j) {
        let sender_index = c.room * sc.senders_per_room.max(1) + j;
        let r = send_phase(c, start, sender_index, &mut phase, out).await;
        out.sender_counted = true;
        sh.counters.senders_done.fetch_add(1, Ordering::Relaxed);
        r?;
    }

    // Receive until Finish, then until complete or the drain deadline.
    let deadline = loop {
        if let Phase::Finish(d) = *phase.borrow_and_update() {
            break d;
        }
        tokio::select! {
            r = c.next() => { r?; }
            _ = phase.changed() => {}
        }
    };
    if sc.rooms > 0 {
        let last = sh.final_seq[c.room].load(Ordering::Relaxed);
        let want = last.saturating_sub(c.recv.base);
        while c.recv.count_upto(last) < want {
            match tokio::time::timeout_at(deadline.into(), c.next()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// A sender's measured phase: send on schedule with at most `window`
/// awaiting replies, until the phase ends or the message budget is spent;
/// then wait for the replies still due.
async fn send_phase(
    c: &mut Conn,
    start: Instant,
    sender_index: usize,
    phase: &mut watch::Receiver<Phase>,
    out: &mut MemberOutcome,
) -> anyhow::Result<()> {
    let sh = c.sh.clone();
    let sc = &sh.sc;
    let period = (sc.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / sc.rate));
    // Spread the senders' schedules over one period, so they do not all
    // send in the same instant (except in a burst).
    let offset = period.map_or(Duration::ZERO, |p| {
        p.mul_f64((sender_index as f64 * 0.618_034).fract())
    });
    let room_id = sh.rooms[c.room].clone();
    let limit = if sc.messages_per_sender == 0 {
        u64::MAX
    } else {
        sc.messages_per_sender as u64
    };
    let window = sc.window as u64;
    let mut k: u64 = 0;
    let mut in_flight: u64 = 0;
    let mut next_ref: u64 = 100;
    let stopped = |p: &Phase| !matches!(p, Phase::Measure(_));
    loop {
        if stopped(&phase.borrow()) || k >= limit {
            break;
        }
        let now = Instant::now();
        let due = period.map_or(now, |p| start + offset + p.mul_f64(k as f64));
        if in_flight < window && now >= due {
            // Lateness within the timer's granularity is the generator's,
            // not the hub's: stamp it as sent on time.
            let scheduled = if now.saturating_duration_since(due) > TIMER_SLACK {
                due
            } else {
                now
            };
            let text = sh.text(scheduled, now);
            let frame = sh.proto.send(next_ref, &room_id, &text);
            next_ref += 1;
            c.send_text(frame).await?;
            out.first_send.get_or_insert(now);
            if period.is_some_and(|p| now.saturating_duration_since(due) > p) {
                sh.counters.sent_late.fetch_add(1, Ordering::Relaxed);
            }
            sh.counters.sent.fetch_add(1, Ordering::Relaxed);
            k += 1;
            in_flight += 1;
            continue;
        }
        let wait_due = in_flight < window;
        tokio::select! {
            r = c.next() => {
                if let Some(r) = r? {
                    on_send_reply(&sh, c.room, &r, &mut in_flight);
                }
            }
            _ = tokio::time::sleep_until(due.into()), if wait_due => {}
            _ = phase.changed() => {}
        }
    }
    let until = tokio::time::Instant::now() + REPLY_TIMEOUT;
    while in_flight > 0 {
        match tokio::time::timeout_at(until, c.next()).await {
            Ok(r) => {
                if let Some(r) = r? {
                    on_send_reply(&sh, c.room, &r, &mut in_flight);
                }
            }
            Err(_) => bail!("{in_flight} sends without a reply"),
        }
    }
    Ok(())
}

fn on_send_reply(sh: &Shared, room: usize, r: &Reply, in_flight: &mut u64) {
    if r.reference < 100 {
        return;
    }
    *in_flight = in_flight.saturating_sub(1);
    if r.ok {
        sh.counters.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(seq) = r.seq {
            sh.final_seq[room].fetch_max(seq, Ordering::Relaxed);
        }
    } else {
        sh.error(format!("send: {}", r.code));
    }
}

/// Order checks of churning clients (they cannot check for loss: they
/// leave while the room goes on).
#[derive(Default)]
struct ChurnTally {
    duplicated: AtomicU64,
    reordered: AtomicU64,
    gaps: AtomicU64,
}

async fn churn_cycle(sh: Arc<Shared>, n: usize, tally: Arc<ChurnTally>) {
    let sc = &sh.sc;
    let room = n % sc.rooms;
    let node = n % sh.nodes.max(1);
    let t0 = Instant::now();
    let ws = match open(&sh, sc.connections + n, node).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            sh.error(kind("churn connect", &e));
            return;
        }
    };
    let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
    sh.connect.record_all(n, &[us]);
    let mut c = Conn {
        local: local_addr(&ws),
        close_code: None,
        ws,
        sh: sh.clone(),
        id: n,
        room,
        recv: Received::default(),
        lat: Vec::new(),
        lat_raw: Vec::new(),
    };
    let life = async {
        let reply = c.request(sh.proto.join(1, &sh.rooms[room]), 1).await?;
        if !reply.ok {
            bail!("{}", reply.code);
        }
        c.recv = Received::new(reply.seq.unwrap_or(0));
        let hold = tokio::time::Instant::now() + Duration::from_millis(sc.churn_hold_ms);
        while let Ok(r) = tokio::time::timeout_at(hold, c.next()).await {
            r?;
        }
        let reply = c.request(sh.proto.leave(2, &sh.rooms[room]), 2).await?;
        if !reply.ok {
            bail!("leave {}", reply.code);
        }
        anyhow::Ok(())
    };
    match life.await {
        Ok(()) => {
            sh.counters.churn_done.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => sh.error(kind("churn", &e)),
    }
    // Churners measure latency too: they are room members while in.
    c.flush_latency();
    tally
        .duplicated
        .fetch_add(c.recv.duplicated, Ordering::Relaxed);
    tally
        .reordered
        .fetch_add(c.recv.reordered, Ordering::Relaxed);
    tally.gaps.fetch_add(c.recv.gaps, Ordering::Relaxed);
    let _ = c.ws.close(None).await;
}

/// Starts churn cycles at `churn_per_sec` while the measurement runs.
async fn churn_driver(sh: Arc<Shared>, tally: Arc<ChurnTally>) {
    let period = Duration::from_secs_f64(1.0 / sh.sc.churn_per_sec);
    let mut phase = sh.phase.subscribe();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = phase.changed() => {}
        }
        if !matches!(*phase.borrow(), Phase::Measure(_)) {
            break;
        }
        while tasks.try_join_next().is_some() {}
        if sh.counters.churning.load(Ordering::Relaxed) >= MAX_CHURNING {
            sh.counters.churn_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        sh.counters.churn_started.fetch_add(1, Ordering::Relaxed);
        sh.counters.churning.fetch_add(1, Ordering::Relaxed);
        let (sh2, t2) = (sh.clone(), tally.clone());
        tasks.spawn(async move {
            churn_cycle(sh2.clone(), n, t2).await;
            sh2.counters.churning.fetch_sub(1, Ordering::Relaxed);
        });
        n += 1;
    }
    while tasks.join_next().await.is_some() {}
}

// ---------------------------------------------------------------------------
// The report

/// Resident memory and CPU of one hub process.
#[derive(Debug, Clone, Serialize)]
pub struct HubUsage {
    pub pid: u32,
    pub cpus_allowed: Option<String>,
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_end_kib: u64,
    /// (RSS with everyone connected and joined − before) / connections.
    pub kib_per_connection: f64,
    /// CPU seconds during the measured phase (and drain).
    pub cpu_s: f64,
    /// `cpu_s` / wall seconds of that phase: 1.0 = one core busy.
    pub cores_used: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub wanted: usize,
    pub connected: usize,
    pub failed: usize,
    pub setup_s: f64,
    pub per_s: f64,
    /// Connect + hello (and Socket.IO connect) latency, including churners.
    pub connect_ms: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub acked: u64,
    /// Sends that went out more than one period after their schedule (the
    /// window was full or the generator was behind).
    pub sent_late: u64,
    pub offered_msgs_per_s: Option<f64>,
    pub offered_deliveries_per_s: Option<f64>,
    /// Deliveries the room members had to get: every seq of their room
    /// after their `joined`, up to the last acknowledged one.
    pub expected: u64,
    pub received: u64,
    /// Deliveries missed by members that stayed connected (members the hub
    /// closed as too slow are counted apart, below).
    pub lost: u64,
    /// Members the hub closed as too slow to keep up (4009).
    pub slow_closed: u64,
    /// Of those, members whose socket held at least 64 KiB received but not
    /// yet read by the generator: the generator's reader had fallen behind.
    pub slow_closed_generator_behind: u64,
    /// The most unread bytes seen in a slow-closed member's socket, KiB.
    pub slow_closed_unread_max_kib: u64,
    /// Deliveries the slow-closed members did not get (after their close).
    pub missed_by_slow_closed: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Times a member saw a seq jump ahead (each later seen out of order or
    /// lost).
    pub gaps: u64,
    /// Messages not from this run (or without a readable stamp).
    pub foreign: u64,
    pub delivered_per_s: f64,
    /// From the scheduled send time (corrected for coordinated omission).
    pub latency_ms: LatencySummary,
    /// From the actual write.
    pub latency_raw_ms: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    pub started: u64,
    pub completed: u64,
    pub skipped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub gaps: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generator {
    pub cpus_allowed: Option<String>,
    pub allowed_cores: usize,
    pub cpu_s: f64,
    pub cores_used: f64,
    /// cores_used / allowed_cores above 0.8: the generator may have been
    /// the bottleneck, not the hub.
    pub maybe_bottleneck: bool,
    pub open_files_limit: u64,
    pub sources: Vec<String>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub protocol: Protocol,
    pub urls: Vec<String>,
    /// What the first `welcome` said about the server.
    pub server: String,
    pub rooms: Vec<String>,
    pub measure_s: f64,
    pub connections: Connections,
    pub messages: Messages,
    pub churn: Option<Churn>,
    pub errors: BTreeMap<String, u64>,
    pub hubs: Vec<HubUsage>,
    pub generator: Generator,
    /// What went wrong with delivery (loss, duplicates, order) or setup;
    /// empty when the run is clean.
    pub problems: Vec<String>,
    pub pass: bool,
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Runs a scenario and measures it.
pub async fn run(opts: RunOptions) -> anyhow::Result<Report> {
    let sc = opts.scenario.clone();
    sc.validate()?;
    if opts.urls.is_empty() {
        bail!("no target URL");
    }
    let urls: Vec<String> = opts.urls.iter().map(|u| opts.protocol.url(u)).collect();
    let nodes = if sc.nodes == 0 {
        urls.len()
    } else {
        sc.nodes.min(urls.len())
    };
    let total_sockets = sc.connections + (sc.churn_per_sec * sc.duration_secs) as usize;
    let sources = if opts.sources.is_empty() {
        let per_target = total_sockets.div_ceil(nodes.max(1));
        let n = per_target.div_ceil(SOCKETS_PER_SOURCE).clamp(1, 250);
        if n == 1 {
            Vec::new()
        } else {
            (1..=n as u8)
                .map(|k| IpAddr::from([127, 0, 0, k]))
                .collect()
        }
    } else {
        opts.sources.clone()
    };
    let dialer = Dialer::new(&Target {
        url: urls.clone(),
        sources: sources.clone(),
        concurrency: sc.concurrency,
    })?;
    let want_files = (sc.connections + MAX_CHURNING.min(total_sockets) + 256) as u64;
    let nofile = sys::raise_open_files_limit(want_files);
    if nofile < want_files {
        eprintln!(
            "WARNING: {} connections need about {want_files} open files, but this process may \
             open only {nofile}; raise the hard limit (ulimit -Hn) or run as root",
            sc.connections
        );
    }

    let t_start = Instant::now();
    let say = |s: &str| {
        if opts.progress {
            eprintln!("[{:>7.2} s] {s}", t_start.elapsed().as_secs_f64());
        }
    };

    // Learn the rooms (and the server's name) on one probe connection.
    let (phase_tx, _) = watch::channel(Phase::Setup);
    let mut sh = Shared {
        sc: sc.clone(),
        proto: opts.protocol,
        dialer,
        rooms: Vec::new(),
        final_seq: Vec::new(),
        phase: phase_tx,
        counters: Counters::default(),
        latency: Histograms::new(),
        latency_raw: Histograms::new(),
        connect: Histograms::new(),
        errors: Mutex::new(BTreeMap::new()),
        clock: Instant::now(),
        run_tag: format!(
            "lt{}",
            letters(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            )
        ),
        padding: "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
            .chars()
            .cycle()
            .take(sc.message_bytes)
            .collect(),
        nodes,
        permits: Semaphore::new(sc.concurrency),
        unread_max: Mutex::new(HashMap::new()),
    };
    let (mut probe, welcome) = open(&sh, usize::MAX / 2, 0)
        .await
        .with_context(|| format!("cannot open a first connection to {}", urls[0]))?;
    let _ = probe.close(None).await;
    let offered_rooms: Vec<String> = welcome["rooms"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let server = match opts.protocol {
        Protocol::SocketIo => "socket.io".to_string(),
        Protocol::Hearth => format!(
            "{} {} (node {})",
            welcome["server"]["name"].as_str().unwrap_or("hearth"),
            welcome["server"]["version"].as_str().unwrap_or("?"),
            welcome["server"]["node"].as_str().unwrap_or("?")
        ),
    };
    sh.rooms = if offered_rooms.is_empty() {
        (0..sc.rooms).map(|r| format!("r{r}")).collect()
    } else if offered_rooms.len() >= sc.rooms {
        offered_rooms.into_iter().take(sc.rooms).collect()
    } else {
        bail!(
            "the scenario needs {} rooms but the hub offers {} ({}); start it with a config \
             made by `loadtest hub-config --rooms {} --capacity {}`",
            sc.rooms,
            offered_rooms.len(),
            offered_rooms.join(", "),
            sc.rooms,
            (0..sc.rooms.max(1))
                .map(|r| sc.members_of(r))
                .max()
                .unwrap_or(0)
                + (sc.churn_per_sec * sc.churn_hold_ms as f64 / 1000.0).ceil() as usize
                + 16
        );
    };
    sh.final_seq = (0..sc.rooms).map(|_| AtomicU64::new(0)).collect();
    let sh = Arc::new(sh);
    say(&format!(
        "{}: {} connections, {} rooms, {} senders, to {} node(s) as {server}",
        sc.name,
        sc.connections,
        sc.rooms,
        sc.senders(),
        nodes
    ));

    let hub_before: Vec<(u32, u64)> = opts
        .hub_pids
        .iter()
        .map(|&p| (p, sys::rss_kib(p).unwrap_or(0)))
        .collect();

    // Setup: connect and join everyone.
    let setup_start = Instant::now();
    let mut members = tokio::task::JoinSet::new();
    let ramp = (sc.ramp_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / sc.ramp_per_sec));
    {
        let sh2 = sh.clone();
        let spawner = async move {
            let mut set = Vec::new();
            for i in 0..sh2.sc.connections {
                if let Some(r) = ramp {
                    tokio::time::sleep_until((setup_start + r.mul_f64(i as f64)).into()).await;
                }
                set.push(tokio::spawn(member(sh2.clone(), i)));
            }
            set
        };
        let handles = spawner.await;
        for h in handles {
            members.spawn(async move { h.await.unwrap_or_default() });
        }
    }
    let setup_timeout = Duration::from_secs(60)
        + ramp.map_or(Duration::ZERO, |r| r.mul_f64(sc.connections as f64))
        + Duration::from_millis(sc.connections as u64 / 10);
    let mut last_report = Instant::now();
    loop {
        let c = &sh.counters;
        let (joined, failed) = (
            c.joined.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
        );
        if joined + failed >= sc.connections {
            break;
        }
        if setup_start.elapsed() > setup_timeout {
            sh.error(format!(
                "setup: {} connections not ready after {setup_timeout:?}",
                sc.connections - joined - failed
            ));
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            say(&format!(
                "connected {} / joined {joined} / failed {failed} of {}",
                c.connected.load(Ordering::Relaxed),
                sc.connections
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    let connected = sh.counters.connected.load(Ordering::Relaxed);
    say(&format!(
        "setup done in {setup_s:.2} s: {connected} connected"
    ));
    // Let the hub settle (queued presence, allocator) before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hub_connected: Vec<u64> = opts
        .hub_pids
        .iter()
        .map(|&p| sys::rss_kib(p).unwrap_or(0))
        .collect();

    // Measure.
    let hub_cpu0: Vec<f64> = opts
        .hub_pids
        .iter()
        .map(|&p| sys::process_cpu_secs(p).unwrap_or(0.0))
        .collect();
    let gen_cpu0 = sys::process_cpu_secs(std::process::id()).unwrap_or(0.0);
    // CPU is read in ticks of 10 ms: over a short phase, cores used is rough.
    let cpu_since = Instant::now();
    let measure_start = Instant::now() + Duration::from_millis(50);
    sh.phase.send_replace(Phase::Measure(measure_start));
    let sampler = (sc.rooms > 0).then(|| tokio::spawn(sample_unread(sh.clone())));
    let tally = Arc::new(ChurnTally::default());
    let churn =
        (sc.churn_per_sec > 0.0).then(|| tokio::spawn(churn_driver(sh.clone(), tally.clone())));
    say("measuring");
    let measure_end = measure_start + Duration::from_secs_f64(sc.duration_secs);
    let senders = sc.senders();
    let budget_only = sc.messages_per_sender > 0;
    loop {
        let now = Instant::now();
        if now >= measure_end {
            break;
        }
        if budget_only && sh.counters.senders_done.load(Ordering::Relaxed) >= senders {
            break;
        }
        tokio::time::sleep((measure_end - now).min(Duration::from_millis(20))).await;
    }
    sh.phase.send_replace(Phase::Drain);
    say("draining");
    let drain_deadline = Instant::now() + REPLY_TIMEOUT + Duration::from_secs(1);
    while sh.counters.senders_done.load(Ordering::Relaxed) < senders
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(ch) = churn {
        let _ = ch.await;
    }
    let finish_deadline = Instant::now() + Duration::from_secs_f64(sc.drain_secs);
    sh.phase.send_replace(Phase::Finish(finish_deadline));
    let mut outcomes = Vec::with_capacity(sc.connections);
    while let Some(r) = members.join_next().await {
        if let Ok(o) = r {
            outcomes.push(o);
        }
    }
    if let Some(s) = sampler {
        s.abort();
    }
    let measure_s = measure_start.elapsed().as_secs_f64();
    let cpu_s = cpu_since.elapsed().as_secs_f64();
    let gen_cpu = sys::process_cpu_secs(std::process::id()).unwrap_or(0.0) - gen_cpu0;
    say("done");

    // Report.
    let mut hubs = Vec::new();
    for (k, &(pid, before)) in hub_before.iter().enumerate() {
        let cpu = sys::process_cpu_secs(pid).unwrap_or(0.0) - hub_cpu0[k];
        let rss_connected = hub_connected[k];
        hubs.push(HubUsage {
            pid,
            cpus_allowed: sys::cpus_allowed(Some(pid)),
            rss_before_kib: before,
            rss_connected_kib: rss_connected,
            rss_end_kib: sys::rss_kib(pid).unwrap_or(0),
            kib_per_connection: round3(
                rss_connected.saturating_sub(before) as f64 / connected.max(1) as f64
                    * opts.hub_pids.len() as f64,
            ),
            cpu_s: round3(cpu),
            cores_used: round3(cpu / cpu_s.max(1e-9)),
        });
    }
    let mut m = Messages {
        sent: sh.counters.sent.load(Ordering::Relaxed),
        acked: sh.counters.acked.load(Ordering::Relaxed),
        sent_late: sh.counters.sent_late.load(Ordering::Relaxed),
        offered_msgs_per_s: sc.offered().map(|o| o.0),
        offered_deliveries_per_s: sc.offered().map(|o| o.1),
        expected: 0,
        received: 0,
        lost: 0,
        slow_closed: 0,
        slow_closed_generator_behind: 0,
        slow_closed_unread_max_kib: 0,
        missed_by_slow_closed: 0,
        duplicated: 0,
        reordered: 0,
        gaps: 0,
        foreign: 0,
        delivered_per_s: 0.0,
        latency_ms: summarize(&sh.latency.merged()),
        latency_raw_ms: summarize(&sh.latency_raw.merged()),
    };
    let mut first_send: Option<Instant> = None;
    let mut last_recv: Option<Instant> = None;
    for o in &outcomes {
        m.expected += o.expected;
        m.received += o.received;
        let missed = o.expected.saturating_sub(o.unique_in_range);
        if o.closed_slow {
            m.slow_closed += 1;
            m.missed_by_slow_closed += missed;
            if o.unread_max >= BEHIND_BYTES {
                m.slow_closed_generator_behind += 1;
            }
            m.slow_closed_unread_max_kib = m.slow_closed_unread_max_kib.max(o.unread_max / 1024);
        } else {
            m.lost += missed;
        }
        m.duplicated += o.duplicated;
        m.reordered += o.reordered;
        m.gaps += o.gaps;
        m.foreign += o.foreign;
        if let Some(t) = o.first_send {
            first_send = Some(first_send.map_or(t, |f| f.min(t)));
        }
        if let Some(t) = o.last_recv {
            last_recv = Some(last_recv.map_or(t, |l| l.max(t)));
        }
    }
    if let (Some(f), Some(l)) = (first_send, last_recv) {
        let s = l.saturating_duration_since(f).as_secs_f64();
        if s > 0.0 {
            m.delivered_per_s = (m.received as f64 / s).round();
        }
    }
    let churn = (sc.churn_per_sec > 0.0).then(|| Churn {
        started: sh.counters.churn_started.load(Ordering::Relaxed),
        completed: sh.counters.churn_done.load(Ordering::Relaxed),
        skipped: sh.counters.churn_skipped.load(Ordering::Relaxed),
        duplicated: tally.duplicated.load(Ordering::Relaxed),
        reordered: tally.reordered.load(Ordering::Relaxed),
        gaps: tally.gaps.load(Ordering::Relaxed),
    });
    let gen_list = sys::cpus_allowed(None);
    let allowed = gen_list.as_deref().map_or(1, sys::count_cpus).max(1);
    let gen_cores = gen_cpu / cpu_s.max(1e-9);
    let generator = Generator {
        cpus_allowed: gen_list,
        allowed_cores: allowed,
        cpu_s: round3(gen_cpu),
        cores_used: round3(gen_cores),
        maybe_bottleneck: gen_cores / allowed as f64 > 0.8,
        open_files_limit: nofile,
        sources: if sources.is_empty() {
            vec!["kernel's choice".into()]
        } else {
            sources.iter().map(|s| s.to_string()).collect()
        },
    };
    let errors = match sh.errors.lock() {
        Ok(e) => e.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let failed = sh.counters.failed.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!(
            "{failed} of {} connections failed to set up",
            sc.connections
        ));
    }
    if m.slow_closed > 0 {
        let behind = m.slow_closed_generator_behind;
        problems.push(format!(
            "{} receivers CLOSED BY THE HUB AS TOO SLOW (4009); they missed {} deliveries after \
             the close (not counted as lost). {behind} of them had ≥ {} KiB received but unread \
             in the generator's own socket (up to {} KiB): the generator's reader had fallen \
             behind{}",
            m.slow_closed,
            m.missed_by_slow_closed,
            BEHIND_BYTES / 1024,
            m.slow_closed_unread_max_kib,
            if behind < m.slow_closed {
                format!(
                    "; {} had no such backlog: the hub's queue overflowed while the reader kept up",
                    m.slow_closed - behind
                )
            } else {
                String::new()
            }
        ));
    }
    for (n, what) in [
        (m.lost, "LOST deliveries"),
        (m.duplicated, "DUPLICATED deliveries"),
        (m.reordered, "deliveries OUT OF ORDER"),
        (m.gaps, "SEQ GAPS seen"),
    ] {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    if let Some(c) = &churn {
        let bad = c.duplicated + c.reordered + c.gaps;
        if bad > 0 {
            problems.push(format!(
                "churning clients saw {} duplicated, {} out of order, {} gaps",
                c.duplicated, c.reordered, c.gaps
            ));
        }
    }
    if m.sent != m.acked {
        problems.push(format!("{} sends were not accepted", m.sent - m.acked));
    }
    let pass = problems.is_empty();
    Ok(Report {
        scenario: sc.clone(),
        protocol: opts.protocol,
        urls,
        server,
        rooms: sh.rooms.clone(),
        measure_s: round3(measure_s),
        connections: Connections {
            wanted: sc.connections,
            connected,
            failed,
            setup_s: round3(setup_s),
            per_s: (connected as f64 / setup_s.max(1e-9)).round(),
            connect_ms: summarize(&sh.connect.merged()),
        },
        messages: m,
        churn,
        errors,
        hubs,
        generator,
        problems,
        pass,
    })
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let sc = &self.scenario;
        let _ =
            writeln!(
            s,
            "scenario {}: {} connections, {} rooms, {} senders × {} msg/s, window {}, {} B, {} s{}",
            sc.name,
            sc.connections,
            sc.rooms,
            sc.senders(),
            if sc.rate > 0.0 {
                sc.rate.to_string()
            } else {
                "unpaced".into()
            },
            sc.window,
            sc.message_bytes,
            sc.duration_secs,
            if sc.churn_per_sec > 0.0 {
                format!(", churn {}/s (hold {} ms)", sc.churn_per_sec, sc.churn_hold_ms)
            } else {
                String::new()
            }
        );
        let _ = writeln!(s, "target   {} via {}", self.server, self.urls.join(", "));
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<26} {v}");
        };
        let lat = |l: &LatencySummary| {
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  (n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            )
        };
        let c = &self.connections;
        let _ = writeln!(s, "connections");
        row(
            &mut s,
            "connected",
            format!(
                "{}/{} ({} failed) in {:.2} s = {:.0}/s",
                c.connected, c.wanted, c.failed, c.setup_s, c.per_s
            ),
        );
        row(&mut s, "connect+hello", lat(&c.connect_ms));
        let m = &self.messages;
        let _ = writeln!(s, "messages (measured {:.2} s incl. drain)", self.measure_s);
        if let (Some(a), Some(b)) = (m.offered_msgs_per_s, m.offered_deliveries_per_s) {
            row(
                &mut s,
                "offered",
                format!("{a:.0} msg/s in, {b:.0} deliveries/s out"),
            );
        }
        row(
            &mut s,
            "sent / acked",
            format!("{} / {} ({} sent late)", m.sent, m.acked, m.sent_late),
        );
        row(
            &mut s,
            "expected / received",
            format!("{} / {}", m.expected, m.received),
        );
        row(
            &mut s,
            "lost/dup/reordered/gaps",
            format!(
                "{} / {} / {} / {}{}{}",
                m.lost,
                m.duplicated,
                m.reordered,
                m.gaps,
                if m.slow_closed > 0 {
                    format!(
                        "  (+{} missed by {} receivers closed as too slow)",
                        m.missed_by_slow_closed, m.slow_closed
                    )
                } else {
                    String::new()
                },
                if m.foreign > 0 {
                    format!("  ({} not of this run)", m.foreign)
                } else {
                    String::new()
                }
            ),
        );
        row(
            &mut s,
            "delivered",
            format!("{:.0} deliveries/s", m.delivered_per_s),
        );
        row(&mut s, "latency (scheduled)", lat(&m.latency_ms));
        row(&mut s, "latency (actual send)", lat(&m.latency_raw_ms));
        if let Some(ch) = &self.churn {
            let _ = writeln!(s, "churn");
            row(
                &mut s,
                "cycles",
                format!(
                    "{} started, {} completed, {} skipped (generator at its limit of in-progress cycles)",
                    ch.started, ch.completed, ch.skipped
                ),
            );
            row(
                &mut s,
                "dup/reordered/gaps",
                format!("{} / {} / {}", ch.duplicated, ch.reordered, ch.gaps),
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "errors by code");
            let mut v: Vec<_> = self.errors.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            for (k, n) in v.iter().take(20) {
                let _ = writeln!(s, "  {n:>8} × {k}");
            }
        }
        for h in &self.hubs {
            let _ = writeln!(
                s,
                "hub pid {} (cpus {})",
                h.pid,
                h.cpus_allowed.as_deref().unwrap_or("?")
            );
            row(
                &mut s,
                "RSS",
                format!(
                    "{} → {} (connected) → {} KiB (end); {:.2} KiB per connection",
                    h.rss_before_kib, h.rss_connected_kib, h.rss_end_kib, h.kib_per_connection
                ),
            );
            row(
                &mut s,
                "CPU (measured phase)",
                format!("{:.2} s = {:.2} cores", h.cpu_s, h.cores_used),
            );
        }
        let g = &self.generator;
        let _ = writeln!(
            s,
            "generator (cpus {}, sources {}, open files {})",
            g.cpus_allowed.as_deref().unwrap_or("?"),
            g.sources.join(","),
            g.open_files_limit
        );
        row(
            &mut s,
            "CPU (measured phase)",
            format!(
                "{:.2} s = {:.2} of {} allowed cores{}",
                g.cpu_s,
                g.cores_used,
                g.allowed_cores,
                if g.maybe_bottleneck {
                    "  <-- WARNING: the generator may be the bottleneck"
                } else {
                    ""
                }
            ),
        );
        if self.pass {
            let _ = writeln!(s, "PASS: no loss, duplicates or reordering");
        } else {
            for p in &self.problems {
                let _ = writeln!(s, "!!! {p}");
            }
            let _ = writeln!(s, "FAIL");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_tracks_gaps_dups_and_order() {
        let mut r = Received::new(10);
        for s in [11, 12, 14, 13, 13, 15, 9] {
            r.note(s);
        }
        assert_eq!(r.unique, 5);
        assert_eq!(r.duplicated, 1);
        assert_eq!(r.reordered, 1);
        assert_eq!(r.gaps, 1);
        assert_eq!(r.foreign, 1);
        assert_eq!(r.count_upto(15), 5);
        assert_eq!(r.count_upto(13), 3);
        assert_eq!(r.count_upto(10), 0);
        let mut big = Received::new(0);
        for s in (1..=200).filter(|s| s % 7 != 0) {
            big.note(s);
        }
        assert_eq!(big.count_upto(200), 200 - 28);
        assert_eq!(big.count_upto(64), 64 - 9);
        assert_eq!(big.gaps, 28);
    }

    #[test]
    fn numbers_travel_as_letters() {
        for n in [0, 7, 1_234_567, u64::MAX / 11] {
            let l = letters(n);
            assert!(l.bytes().all(|b| b.is_ascii_lowercase()), "{l}");
            assert_eq!(from_letters(&l), Some(n));
        }
        assert_eq!(from_letters("abc"), None);
        assert_eq!(from_letters(""), None);
    }

    #[test]
    fn nodes_spread_rooms_and_members() {
        let sc = Scenario {
            connections: 8,
            rooms: 2,
            ..Scenario::default()
        };
        // i → (room, j): 0→(0,0) 1→(1,0) 2→(0,1) 3→(1,1)
        assert_eq!(
            (0..4).map(|i| node_of(&sc, i, 2)).collect::<Vec<_>>(),
            [0, 1, 1, 0]
        );
        assert!((0..8).all(|i| node_of(&sc, i, 1) == 0));
    }
}
