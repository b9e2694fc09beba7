//! `loadtest smoke`: R rooms of M members, one sender per room sending K
//! messages; every member must receive every message exactly once, in `seq`
//! order, without gaps. Also measures delivered messages/s and end-to-end
//! latency (send → each member's receipt). With several `--url`s the
//! members are spread over the nodes of a cluster.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{watch, Barrier, Semaphore};

use crate::latency::{new_histogram, record_latency, summarize};
use crate::net::{next_json, send_json, Dialer, Target, Ws};
use crate::sys::{cpu_secs, print_errors, warn_if_too_few_files};

/// How long a smoke member waits for `left` before closing anyway.
pub(crate) const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub(crate) struct SmokeArgs {
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
    /// Sends each sender keeps in flight (awaiting `ok`). 1 waits for each
    /// reply. With more than 1, a `rate_limited` reply fails the run: set
    /// the hub's [rate_limits] high enough for the load.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Messages per second per sender (paced; a sender that falls more than
    /// one interval behind does not burst to catch up). 0 = as fast as the
    /// window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

// ---------------------------------------------------------------------------
// smoke

/// The process-wide time base of send stamps. Every client lives in this
/// process, so senders and receivers read the same monotonic clock and no
/// clock synchronisation is needed.
#[derive(Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    /// Microseconds since the clock started.
    fn micros_at(self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0).as_micros()).unwrap_or(u64::MAX)
    }

    fn micros(self) -> u64 {
        self.micros_at(Instant::now())
    }
}

/// What a smoke message's text says: which run, room and message it is and
/// when it was sent (microseconds on the run's [`Clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    run: u64,
    room: usize,
    k: usize,
    micros: u64,
}

impl Marker {
    fn text(&self) -> String {
        format!(
            "smoke {} room {} message {} t {}",
            self.run, self.room, self.k, self.micros
        )
    }

    /// Parses a text written by [`Marker::text`]; anything else (other words,
    /// signs, leading zeros, extra spaces) is `None`.
    fn parse(text: &str) -> Option<Marker> {
        let words: Vec<&str> = text.split(' ').collect();
        let ["smoke", run, "room", room, "message", k, "t", micros] = words[..] else {
            return None;
        };
        let m = Marker {
            run: run.parse().ok()?,
            room: room.parse().ok()?,
            k: k.parse().ok()?,
            micros: micros.parse().ok()?,
        };
        (m.text() == text).then_some(m)
    }
}

/// Which URL member `j` of room `room` uses: each room's rotation starts one
/// URL further on, so members of a room are spread over all nodes and the
/// rooms' senders (member 0) are spread evenly too.
pub(crate) fn url_index(room: usize, j: usize, urls: usize) -> usize {
    (room + j) % urls.max(1)
}

/// What one member saw.
pub(crate) struct MemberLog {
    room: usize,
    /// The room's `seq` in this member's `joined` reply.
    base: u64,
    /// `seq` and parsed text of every `message` event received after joining.
    got: Vec<(u64, Option<Marker>)>,
    /// Send → receipt, in µs, of every delivery of this run's messages.
    latency: Histogram<u64>,
    /// When the sender sent its first message (senders only).
    first_send: Option<Instant>,
    /// When the last message event was received.
    last_recv: Option<Instant>,
    error: Option<String>,
}

impl MemberLog {
    fn new(room: usize) -> MemberLog {
        MemberLog {
            room,
            base: 0,
            got: Vec::new(),
            latency: new_histogram(),
            first_send: None,
            last_recv: None,
            error: None,
        }
    }
}

pub(crate) async fn smoke(a: SmokeArgs) -> anyhow::Result<bool> {
    if a.rooms == 0 || a.members == 0 {
        bail!("--rooms and --members must be at least 1");
    }
    if a.window == 0 {
        bail!("--window must be at least 1");
    }
    if !a.rate.is_finite() || a.rate < 0.0 {
        bail!("--rate must be a number of messages per second, 0 for unlimited");
    }
    let dialer = Arc::new(Dialer::new(&a.target)?);
    let urls = dialer.targets.len();
    let total = a.rooms * a.members;
    warn_if_too_few_files(total);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let clock = Clock(Instant::now());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_secs);
    println!(
        "smoke: {} rooms × {} members, {} messages per room, window {}, rate {}, to {urls} URL(s): {}",
        a.rooms,
        a.members,
        a.messages,
        a.window,
        if a.rate > 0.0 {
            format!("{} msg/s per sender", a.rate)
        } else {
            "unlimited".into()
        },
        dialer.urls()
    );
    if a.rate > 0.0 {
        println!(
            "offered load: {:.0} msg/s in, {:.0} deliveries/s out",
            a.rate * a.rooms as f64,
            a.rate * total as f64
        );
    }

    // Connect everyone first, so the room list is known.
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(a.target.concurrency.max(1)));
    let mut connecting = Vec::with_capacity(total);
    for i in 0..total {
        let dialer = dialer.clone();
        let permits = permits.clone();
        let target = url_index(i / a.members, i % a.members, urls);
        connecting.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.map_err(|e| anyhow!("{e}"))?;
            dialer.connect_hello(i, target).await
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
    // Which node answers on each URL (welcome.server.node), and how many
    // clients it holds.
    let mut per_url: Vec<(BTreeMap<String, usize>, usize)> = vec![(BTreeMap::new(), 0); urls];
    for (i, (_, welcome)) in clients.iter().enumerate() {
        let u = url_index(i / a.members, i % a.members, urls);
        let node = welcome["server"]["node"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        *per_url[u].0.entry(node).or_insert(0) += 1;
        per_url[u].1 += 1;
    }
    let mut node_of_url = Vec::with_capacity(urls);
    for (t, (nodes, n)) in dialer.targets.iter().zip(&per_url) {
        let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
        println!("  {} → node {} ({n} clients)", t.url, names.join("/"));
        node_of_url.push(names.join("/"));
    }
    let distinct: HashSet<&String> = node_of_url.iter().collect();
    if distinct.len() < node_of_url.len() {
        println!("warning: several URLs answer as the same node");
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
    let done = Arc::new(Barrier::new(total));
    let aborts: Vec<Arc<watch::Sender<bool>>> = (0..a.rooms)
        .map(|_| Arc::new(watch::channel(false).0))
        .collect();
    let joins_started = Instant::now();
    let cpu_start = cpu_secs();
    let mut tasks = Vec::with_capacity(total);
    for (i, (ws, _)) in clients.into_iter().enumerate() {
        let room = i / a.members;
        let part = Part {
            room,
            room_id: room_ids[room].clone(),
            sender: i % a.members == 0,
            messages: a.messages,
            window: a.window,
            rate: a.rate,
            run,
            clock,
            barrier: barrier.clone(),
            done: done.clone(),
            abort: aborts[room].clone(),
        };
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut log = MemberLog::new(room);
            if tokio::time::timeout_at(deadline, member(&mut ws, &part, &mut log))
                .await
                .is_err()
            {
                if part.sender {
                    part.abort.send_replace(true);
                }
                log.error = Some("timed out".into());
            }
            // Every member gets here, timed out or not, so `done` opens.
            leave_and_close(ws, &part).await;
            log
        }));
    }
    let mut logs = Vec::with_capacity(total);
    for t in tasks {
        match t.await {
            Ok(l) => logs.push(l),
            Err(e) => bail!("a member task failed: {e}"),
        }
    }
    let wall = joins_started.elapsed();
    let cpu_end = cpu_secs();

    // Verify, and merge the latency histograms.
    let mut latency = new_histogram();
    let mut first_send: Option<Instant> = None;
    let mut last_recv: Option<Instant> = None;
    let mut lost = 0usize;
    let mut dup = 0usize;
    let mut reordered = 0usize;
    let mut wrong = 0usize;
    let mut received = 0usize;
    let mut failed_members = 0usize;
    let mut member_errors = BTreeMap::new();
    for log in &logs {
        latency
            .add(&log.latency)
            .map_err(|e| anyhow!("cannot merge latency histograms: {e:?}"))?;
        if let Some(t) = log.first_send {
            first_send = Some(first_send.map_or(t, |f| f.min(t)));
        }
        if let Some(t) = log.last_recv {
            last_recv = Some(last_recv.map_or(t, |l| l.max(t)));
        }
        if let Some(e) = &log.error {
            failed_members += 1;
            *member_errors.entry(e.clone()).or_insert(0) += 1;
        }
        received += log.got.len();
        let mut seen = HashSet::new();
        let mut prev = log.base;
        for (seq, marker) in &log.got {
            if !seen.insert(*seq) {
                dup += 1;
                continue;
            }
            if *seq != prev + 1 {
                reordered += 1;
            }
            prev = *seq;
            // Message k of this run must carry seq base + 1 + k; its send
            // time is not compared.
            let k = seq.wrapping_sub(log.base + 1) as usize;
            let right = marker
                .is_some_and(|m| m.run == run && m.room == log.room && m.k == k && k < a.messages);
            if !right {
                wrong += 1;
            }
        }
        lost += a.messages.saturating_sub(seen.len());
    }
    // Throughput is measured from the first send to the last delivery.
    let elapsed = match (first_send, last_recv) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };
    let elapsed_s = elapsed.as_secs_f64();
    let per_s = if elapsed_s > 0.0 {
        received as f64 / elapsed_s
    } else {
        0.0
    };
    let expected = total * a.messages;
    let lat = summarize(&latency);
    println!(
        "messages: {} rooms × {} planned, expected deliveries {expected}, received {received} \
         in {elapsed_s:.3} s from first send to last delivery ({:.2} s with joins)",
        a.rooms,
        a.messages,
        wall.as_secs_f64()
    );
    println!(
        "throughput: {per_s:.0} deliveries/s ({:.0} messages sent/s)",
        if elapsed_s > 0.0 {
            (a.rooms * a.messages) as f64 / elapsed_s
        } else {
            0.0
        }
    );
    println!(
        "latency (send → receipt, {} deliveries): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, \
         p99.9 {:.3} ms, max {:.3} ms",
        lat.count, lat.p50, lat.p90, lat.p99, lat.p999, lat.max
    );
    let (cpu_user, cpu_sys) = cpu_end.unwrap_or((0.0, 0.0));
    let cpu = cpu_user + cpu_sys;
    let cpu_run = cpu_start.map_or(0.0, |(u, s)| (cpu - u - s).max(0.0));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let process_wall = clock.0.elapsed().as_secs_f64().max(1e-9);
    println!(
        "loadtest CPU: {cpu:.2} s (user {cpu_user:.2} s, sys {cpu_sys:.2} s) in {process_wall:.2} s; \
         joins+messaging {cpu_run:.2} s in {:.2} s = {:.2} of {cores} cores",
        wall.as_secs_f64(),
        cpu_run / wall.as_secs_f64().max(1e-9)
    );
    println!(
        "lost {lost}, duplicated {dup}, out of order {reordered}, unexpected {wrong}, members with errors {failed_members}"
    );
    print_errors(&member_errors);
    let pass = lost == 0 && dup == 0 && reordered == 0 && wrong == 0 && failed_members == 0;
    println!("{}", if pass { "PASS" } else { "FAIL" });
    let round = |x: f64| (x * 1e3).round() / 1e3;
    let report = json!({
        "urls": dialer.targets.iter().map(|t| &*t.url).collect::<Vec<_>>(),
        "nodes": node_of_url,
        "rooms": a.rooms,
        "members": a.members,
        "messages": a.messages,
        "window": a.window,
        "rate": a.rate,
        "expected": expected,
        "received": received,
        "lost": lost,
        "duplicated": dup,
        "reordered": reordered,
        "unexpected": wrong,
        "members_with_errors": failed_members,
        "elapsed_s": round(elapsed_s),
        "deliveries_per_s": per_s.round(),
        "latency_ms": {
            "count": lat.count,
            "p50": lat.p50,
            "p90": lat.p90,
            "p99": lat.p99,
            "p999": lat.p999,
            "max": lat.max,
        },
        "cpu_s": round(cpu),
        "cpu_user_s": round(cpu_user),
        "cpu_sys_s": round(cpu_sys),
        "cpu_joins_messaging_s": round(cpu_run),
        "pass": pass,
    });
    println!("json: {report}");
    Ok(pass)
}

/// One client's part in the smoke test.
pub(crate) struct Part {
    room: usize,
    room_id: String,
    /// The room's sender (its first member).
    sender: bool,
    messages: usize,
    /// Sends in flight at most.
    window: usize,
    /// Messages per second; 0 = unpaced.
    rate: f64,
    run: u64,
    clock: Clock,
    barrier: Arc<Barrier>,
    /// Passed by every member once its part is over.
    done: Arc<Barrier>,
    /// Set to `true` when the room's sender gave up.
    abort: Arc<watch::Sender<bool>>,
}

pub(crate) async fn member(ws: &mut Ws, part: &Part, log: &mut MemberLog) {
    let joined = join(ws, log, &part.room_id).await;
    // Wait at the barrier even after a failed join, so the others go on.
    part.barrier.wait().await;
    let result = match joined {
        Ok(()) if part.sender => send_all(ws, log, part).await,
        Ok(()) => receive_all(ws, log, part).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        if part.sender {
            part.abort.send_replace(true);
        }
        log.error = Some(format!("{e:#}"));
    }
}

/// After the run: once every member is done (so no presence events disturb
/// the measurement), leave the room and close. A closed connection would
/// otherwise keep its seat for the hub's resume grace period, and runs
/// started soon after would find the rooms full.
pub(crate) async fn leave_and_close(mut ws: Ws, part: &Part) {
    part.done.wait().await;
    let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
        send_json(
            &mut ws,
            &json!({"type": "leave", "ref": "leave", "room": part.room_id}),
        )
        .await?;
        while next_json(&mut ws).await?["ref"] != "leave" {}
        anyhow::Ok(())
    })
    .await;
    let _ = ws.close(None).await;
}

/// Records a frame if it is one of this run's messages, with its latency.
pub(crate) fn record(log: &mut MemberLog, v: &Value, part: &Part) {
    if v["type"] != "message" {
        return;
    }
    let now = Instant::now();
    if let (Some(seq), Some(text)) = (v["seq"].as_u64(), v["text"].as_str()) {
        if seq > log.base {
            let marker = Marker::parse(text);
            if let Some(m) = marker.filter(|m| m.run == part.run) {
                record_latency(
                    &mut log.latency,
                    part.clock.micros_at(now).saturating_sub(m.micros),
                );
            }
            log.got.push((seq, marker));
            log.last_recv = Some(now);
        }
    }
}

/// Joins the room and notes its `seq`. Nobody sends until every member has
/// joined, so every member's `joined` carries the same seq and must then see
/// exactly the K new messages.
pub(crate) async fn join(ws: &mut Ws, log: &mut MemberLog, room_id: &str) -> anyhow::Result<()> {
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

/// The sender: sends K messages (ref = k) with up to `window` awaiting their
/// reply, paced at `rate` if set. Every `ok` for message k must carry seq
/// base + 1 + k, so the seqs follow the send order. With window 1 a
/// `rate_limited` message is re-sent after `retry_after_ms`; with a larger
/// window that would reorder the room, so it fails the run. The sender
/// receives its own messages like every member.
pub(crate) async fn send_all(ws: &mut Ws, log: &mut MemberLog, part: &Part) -> anyhow::Result<()> {
    let n = part.messages;
    let window = part.window.max(1);
    let period = (part.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / part.rate));
    let mut acked = vec![false; n];
    let mut acks = 0usize;
    // The next message to send; next - acks are in flight.
    let mut next = 0usize;
    let mut retries = 0u64;
    let mut due = tokio::time::Instant::now();
    while acks < n {
        let may_send = next < n && next - acks < window;
        if may_send {
            let now = tokio::time::Instant::now();
            if period.is_none() || now >= due {
                let text = Marker {
                    run: part.run,
                    room: part.room,
                    k: next,
                    micros: part.clock.micros(),
                }
                .text();
                let frame =
                    json!({"type": "send", "ref": next, "room": part.room_id, "text": text});
                send_json(ws, &frame).await?;
                log.first_send.get_or_insert_with(Instant::now);
                next += 1;
                if let Some(p) = period {
                    // Keep to the schedule, but after falling a whole
                    // interval behind (window full, slow hub) start afresh
                    // instead of bursting to catch up.
                    due = if now.saturating_duration_since(due) >= p {
                        now + p
                    } else {
                        due + p
                    };
                }
                continue;
            }
        }
        let v = if may_send {
            tokio::select! {
                v = next_json(ws) => v?,
                () = tokio::time::sleep_until(due) => continue,
            }
        } else {
            next_json(ws).await?
        };
        record(log, &v, part);
        let Some(r) = v["ref"].as_u64().and_then(|r| usize::try_from(r).ok()) else {
            continue;
        };
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("ok"), _) => {
                if r >= next || acked[r] {
                    bail!("unexpected ok for message {r}: {v}");
                }
                let want = log.base + 1 + r as u64;
                let seq = v["seq"]
                    .as_u64()
                    .with_context(|| format!("ok for message {r} without seq: {v}"))?;
                if seq != want {
                    bail!("message {r} got seq {seq}, expected {want}");
                }
                acked[r] = true;
                acks += 1;
            }
            (Some("error"), Some("rate_limited")) if window > 1 => {
                eprintln!(
                    "room {}: message {r} was rate limited with --window {window}; \
                     this run fails (see the error below)",
                    part.room_id
                );
                bail!(
                    "rate_limited with --window {window} > 1: pipelined sends cannot be \
                     retried in order; raise the hub's [rate_limits] \
                     (identity_messages_per_10s, room_messages_per_second/burst, \
                     connection_frames_per_second/burst) above the offered load, or use \
                     --window 1"
                );
            }
            (Some("error"), Some("rate_limited")) => {
                let ms = v["retry_after_ms"].as_u64().unwrap_or(1000);
                retries += 1;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                // With window 1 nothing else is in flight: send it again.
                next = r;
            }
            (Some("error"), _) => bail!("send {r} refused after {retries} rate limits: {v}"),
            _ => {}
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
pub(crate) async fn receive_all(
    ws: &mut Ws,
    log: &mut MemberLog,
    part: &Part,
) -> anyhow::Result<()> {
    let mut abort = part.abort.subscribe();
    while log.got.len() < part.messages {
        tokio::select! {
            v = next_json(ws) => record(log, &v?, part),
            _ = abort.wait_for(|a| *a) => bail!("the room's sender gave up"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_spread_rotates_per_room() {
        // One URL: everyone on it.
        assert!((0..5).all(|j| url_index(3, j, 1) == 0));
        // Two URLs: room 0's sender on URL 0, room 1's on URL 1; members alternate.
        assert_eq!(
            (0..4).map(|j| url_index(0, j, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
        assert_eq!(
            (0..4).map(|j| url_index(1, j, 2)).collect::<Vec<_>>(),
            [1, 0, 1, 0]
        );
        assert_eq!(url_index(5, 0, 3), 2);
    }

    #[test]
    fn markers_round_trip_and_reject_other_texts() {
        let m = Marker {
            run: 1_763_900_000_000,
            room: 7,
            k: 42,
            micros: 123_456,
        };
        assert_eq!(m.text(), "smoke 1763900000000 room 7 message 42 t 123456");
        assert_eq!(Marker::parse(&m.text()), Some(m));
        for bad in [
            "",
            "smoke 1 room 2 message 3",
            "smoke 1 room 2 message 3 t",
            "smoke 1 room 2 message 3 t 4 extra",
            "smoke 1 room 2 message 3 time 4",
            "smoke 1 room 2 msg 3 t 4",
            "smoke 1 room x message 3 t 4",
            "smoke 1 room -2 message 3 t 4",
            "smoke 1 room +2 message 3 t 4",
            "smoke 1 room 02 message 3 t 4",
            "smoke 1  room 2 message 3 t 4",
            "Smoke 1 room 2 message 3 t 4",
        ] {
            assert_eq!(Marker::parse(bad), None, "{bad:?}");
        }
    }
}
