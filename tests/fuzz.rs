//! Fuzz: 10 000 random, malformed and valid frames from several
//! connections at once. The hub must not panic or hang, must answer every
//! frame with well-formed JSON, must still serve a fresh client, and must
//! count its connections back down to 0.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Rng, TestClient, TestHub};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;

const SEED: u64 = 0x4EA2_7F00_D5EE_D001;
const CONNECTIONS: usize = 5;
const FRAMES: usize = 10_000;

const ERROR_CODES: &[&str] = &[
    "bad_request",
    "unknown_type",
    "unauthorized",
    "forbidden",
    "no_such_room",
    "room_full",
    "room_locked",
    "not_joined",
    "too_large",
    "empty",
    "rate_limited",
    "slow_mode",
    "muted",
    "banned",
    "blocked",
    "unavailable",
    "internal",
];
/// Close codes the contract defines, plus 1005 ("no status"): the server's
/// echo of the code-less close this test's clients send when they hang up.
const CLOSE_CODES: &[u16] = &[1000, 1005, 1008, 1009, 1012, 4001, 4003, 4008, 4009];
const TYPES: &[&str] = &[
    "hello",
    "join",
    "leave",
    "send",
    "typing",
    "report",
    "watch",
    "mute",
    "kick",
    "ban",
    "delete",
    "slow_mode",
    "lock",
    "release",
    "announce",
    "ack",
    "resolve",
    "care",
];
const ROOMS: &[&str] = &[
    "anxiety",
    "bereavement",
    "substance-use",
    "lobby",
    "",
    "ANXIETY",
];

#[derive(Default)]
struct Stats {
    frames_in: u64,
    errors: BTreeMap<String, u64>,
    types: BTreeMap<String, u64>,
    closes: BTreeMap<u16, u64>,
    abrupt_ends: u64,
    problems: Vec<String>,
}

fn rand_string(rng: &mut Rng, max: usize) -> String {
    let n = rng.below(max as u64 + 1) as usize;
    (0..n)
        .map(|_| match rng.below(6) {
            0 => char::from(b'a' + rng.below(26) as u8),
            1 => *rng.pick(&['"', '\\', '{', '}', '[', ']', ',', ':', ' ', '\n']),
            2 => char::from_u32(rng.below(0x20) as u32).unwrap_or('x'),
            3 => *rng.pick(&['é', 'ß', '€', '🙂', '\u{301}', '\u{200b}', '\u{feff}', '中']),
            4 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?'),
            _ => char::from(b'0' + rng.below(10) as u8),
        })
        .collect()
}

fn rand_value(rng: &mut Rng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.chance(60);
    if leaf {
        match rng.below(9) {
            0 => Value::Null,
            1 => json!(rng.chance(50)),
            2 => json!(rng.next_u64()),
            3 => json!(-(rng.below(1 << 40) as i64)),
            4 => json!((rng.next_u64() as f64) / 7.0),
            5 => json!(1e300),
            6 => json!(rng.pick(ROOMS)),
            _ => json!(rand_string(rng, 40)),
        }
    } else if rng.chance(50) {
        Value::Array(
            (0..rng.below(5))
                .map(|_| rand_value(rng, depth - 1))
                .collect(),
        )
    } else {
        let mut m = Map::new();
        for _ in 0..rng.below(5) {
            m.insert(rand_string(rng, 8), rand_value(rng, depth - 1));
        }
        Value::Object(m)
    }
}

fn rand_ref(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!("r".repeat(64)),
        1 => json!("r".repeat(65 + rng.below(3000) as usize)),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1e300),
        5 => json!({"nested": {"ref": [1, 2, 3]}}),
        6 => json!(rand_string(rng, 70)),
        _ => json!(rng.next_u64() % 1000),
    }
}

fn valid_frame(rng: &mut Rng, tokens: &[String]) -> Value {
    let room = if rng.chance(85) {
        *rng.pick(&ROOMS[..3])
    } else {
        *rng.pick(ROOMS)
    };
    let mut f = match rng.below(10) {
        0 => json!({"type": "join", "room": room}),
        1 => json!({"type": "join", "room": room,
                    "since": {"seq": rng.below(50), "epoch": rand_string(rng, 8)}}),
        2 => json!({"type": "leave", "room": room}),
        3..=5 => {
            let len = rng.below(300) as usize;
            json!({"type": "send", "room": room, "text": rand_string(rng, len)})
        }
        6 => json!({"type": "typing", "room": room}),
        7 => json!({"type": "report", "room": room, "message": format!("m_{}", rng.below(999)),
                    "reason": rand_string(rng, 300)}),
        8 => {
            let resume = if !tokens.is_empty() && rng.chance(50) {
                rng.pick(tokens).clone()
            } else {
                rand_string(rng, 50)
            };
            json!({"type": "hello", "resume": resume, "locale": "en-GB"})
        }
        _ => json!({"type": *rng.pick(&TYPES[6..]), "room": room, "peer": "p_x", "seconds": 5}),
    };
    if rng.chance(50) {
        f["ref"] = json!(rng.below(100_000));
    }
    f
}

/// One fuzz frame: text or binary.
fn fuzz_frame(rng: &mut Rng, tokens: &[String]) -> Message {
    let text = match rng.below(12) {
        0 => {
            let n = rng.below(300) as usize;
            String::from_utf8_lossy(&rng.bytes(n)).to_string()
        }
        1 => {
            let s = valid_frame(rng, tokens).to_string();
            let cut = rng.below(s.len() as u64) as usize;
            let mut cut = cut;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s[..cut].to_string()
        }
        2 => {
            let mut f = json!({"type": rand_string(rng, 20)});
            if let Value::Object(extra) = rand_value(rng, 2) {
                for (k, v) in extra {
                    f[k] = v;
                }
            }
            f.to_string()
        }
        3 => {
            let mut f = valid_frame(rng, tokens);
            f["ref"] = rand_ref(rng);
            f.to_string()
        }
        4 => {
            // Deep nesting, balanced or not.
            let depth = 1 + rng.below(400) as usize;
            let open = if rng.chance(50) { "[" } else { "{\"a\":" };
            let mut s = String::from("{\"type\":\"send\",\"room\":\"anxiety\",\"text\":");
            s.push_str(&open.repeat(depth));
            s.push('1');
            if rng.chance(70) {
                let close = if open == "[" { "]" } else { "}" };
                s.push_str(&close.repeat(depth));
                s.push('}');
            }
            s
        }
        5 => {
            // Known type with randomly typed fields.
            let mut f = json!({"type": *rng.pick(TYPES)});
            for key in [
                "room", "text", "since", "message", "reason", "resume", "auth", "ref",
            ] {
                if rng.chance(50) {
                    f[key] = rand_value(rng, 3);
                }
            }
            f.to_string()
        }
        6..=8 => valid_frame(rng, tokens).to_string(),
        9 => {
            if rng.chance(50) {
                let n = rng.below(500) as usize;
                return Message::binary(rng.bytes(n));
            }
            let s = valid_frame(rng, tokens).to_string();
            return Message::binary(s.into_bytes());
        }
        10 => {
            // Long texts around the limits (max_text_chars 2000, frame 16 KiB).
            let n = 1900 + rng.below(200) as usize;
            let ch = *rng.pick(&["a", "é", "🙂", "e\u{301}"]);
            let big = if rng.chance(5) { 5 } else { 1 };
            json!({"type": "send", "room": *rng.pick(&ROOMS[..3]), "text": ch.repeat(n * big)})
                .to_string()
        }
        _ => {
            // Escapes and odd encodings.
            (*rng.pick(&[
                r#"{"type":"send","room":"anxiety","text":"\ud800"}"#,
                r#"{"type":"send","room":"anxiety","text":"\u0000\u0007"}"#,
                "\u{feff}{\"type\":\"join\",\"room\":\"anxiety\"}",
                r#"{"type":"join","room":"anxiety","type":"leave"}"#,
                r#"{"type":"send","room":"anxiety","text":"x","text":5}"#,
                r#"{"type":"join","room":"anx\u0069ety"}"#,
                r#"  {"type" : "typing" , "room" : "anxiety"}  "#,
                "{\"type\":\"send\",\"room\":\"anxiety\",\"text\":1e999}",
                "{\"type\":\"join\",\"room\":\"anxiety\",\"since\":{\"seq\":18446744073709551616,\"epoch\":\"x\"}}",
                "NaN",
                "{\"type\":\"hello\"}\n{\"type\":\"hello\"}",
            ]))
            .to_string()
        }
    };
    Message::text(text)
}

type Sink = SplitSink<common::Ws, Message>;
type Stream = SplitStream<common::Ws>;

/// Drains one connection, checking every frame the server sends.
async fn reader(mut stream: Stream, stats: Arc<Mutex<Stats>>, done: Arc<AtomicBool>) {
    let mut local = Stats::default();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Err(_) => {
                local.problems.push("reader idle for 30 s".into());
                break;
            }
            Ok(None) => {
                local.abrupt_ends += 1;
                break;
            }
            Ok(Some(Err(_))) => {
                local.abrupt_ends += 1;
                break;
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                local.frames_in += 1;
                let v: Value = match serde_json::from_str(t.as_str()) {
                    Ok(v) => v,
                    Err(e) => {
                        local
                            .problems
                            .push(format!("invalid JSON from server ({e})"));
                        continue;
                    }
                };
                let ty = v["type"].as_str().unwrap_or("<none>").to_string();
                if ty == "error" {
                    let code = v["code"].as_str().unwrap_or("<none>").to_string();
                    if !ERROR_CODES.contains(&code.as_str()) || code == "internal" {
                        local.problems.push(format!("error code {code}: {v}"));
                    }
                    if v["message"].as_str().is_none_or(|m| m.trim().is_empty()) {
                        local.problems.push(format!("error without message: {v}"));
                    }
                    *local.errors.entry(code).or_default() += 1;
                }
                *local.types.entry(ty).or_default() += 1;
            }
            Ok(Some(Ok(Message::Binary(_)))) => {
                local.problems.push("binary frame from server".into());
            }
            Ok(Some(Ok(Message::Close(cf)))) => {
                let code = cf.map(|c| u16::from(c.code)).unwrap_or(1005);
                if !CLOSE_CODES.contains(&code) {
                    local.problems.push(format!("unexpected close code {code}"));
                }
                *local.closes.entry(code).or_default() += 1;
                break;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut s = stats.lock().expect("stats");
    s.frames_in += local.frames_in;
    s.abrupt_ends += local.abrupt_ends;
    s.problems.extend(local.problems);
    for (k, v) in local.errors {
        *s.errors.entry(k).or_default() += v;
    }
    for (k, v) in local.types {
        *s.types.entry(k).or_default() += v;
    }
    for (k, v) in local.closes {
        *s.closes.entry(k).or_default() += v;
    }
}

struct Conn {
    sink: Sink,
    done: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

async fn open(hub: &TestHub, stats: &Arc<Mutex<Stats>>) -> Conn {
    let c = TestClient::connect(hub).await;
    let (sink, stream) = c.ws.split();
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(reader(stream, stats.clone(), done.clone()));
    Conn { sink, done, reader }
}

async fn fuzz_connection(
    hub: &TestHub,
    seed: u64,
    frames: usize,
    stats: Arc<Mutex<Stats>>,
    tokens: Arc<Mutex<Vec<String>>>,
) -> usize {
    let mut rng = Rng::new(seed);
    let mut reconnects = 0;
    let mut conn = open(hub, &stats).await;
    let mut sent = 0;
    while sent < frames {
        if conn.done.load(Ordering::SeqCst) {
            reconnects += 1;
            conn = open(hub, &stats).await;
        }
        // Mostly say hello early so that most frames reach the hub proper.
        let msg = if rng.chance(3) {
            Message::text(json!({"type": "hello", "ref": "h"}).to_string())
        } else {
            let known = tokens.lock().expect("tokens").clone();
            fuzz_frame(&mut rng, &known)
        };
        let r = tokio::time::timeout(Duration::from_secs(10), conn.sink.send(msg)).await;
        match r {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => {
                // Closed under us (e.g. 1009): start again.
                reconnects += 1;
                conn.reader.abort();
                conn = open(hub, &stats).await;
            }
            Err(_) => panic!("a send blocked for 10 s: the hub stopped reading"),
        }
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Let the hub answer what is in flight, then hang up.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.sink.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut conn.reader).await;
    conn.reader.abort();
    reconnects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_malformed_frames_do_not_break_the_hub() {
    let mut hub = TestHub::start_with(|t| {
        // Let the frames reach the decoder instead of the rate limiter.
        common::set(t, "rate_limits", "connection_frames_per_second", "100000");
        common::set(t, "rate_limits", "connection_frames_burst", "100000");
        common::set(t, "rate_limits", "identity_messages_per_10s", "100000");
        common::set(t, "rate_limits", "room_messages_per_second", "100000");
        common::set(t, "rate_limits", "room_messages_burst", "100000");
        common::set(t, "rate_limits", "typing_per_10s", "100000");
    })
    .await;
    let stats = Arc::new(Mutex::new(Stats::default()));

    // Some real session tokens for resume attempts (and takeovers).
    let tokens = {
        let mut t = Vec::new();
        for _ in 0..3 {
            let mut c = TestClient::connect(&hub).await;
            c.hello().await;
            t.push(c.session.clone());
        }
        Arc::new(Mutex::new(t))
    };

    let run = async {
        let mut tasks = Vec::new();
        for i in 0..CONNECTIONS {
            let seed = SEED ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            tasks.push(fuzz_connection(
                &hub,
                seed,
                FRAMES / CONNECTIONS,
                stats.clone(),
                tokens.clone(),
            ));
        }
        futures_util::future::join_all(tasks).await
    };
    let reconnects = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("fuzzing hung for 90 s");

    assert!(hub.is_running(), "the hub process died during fuzzing");
    let log = hub.stderr_log();
    assert!(
        !log.contains("panicked"),
        "the hub panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    {
        let s = stats.lock().expect("stats");
        eprintln!(
            "fuzz: {} frames in, reconnects {:?}, closes {:?}, abrupt ends {}, errors {:?}, types {:?}",
            s.frames_in, reconnects, s.closes, s.abrupt_ends, s.errors, s.types
        );
        assert!(s.problems.is_empty(), "problems: {:#?}", s.problems);
        assert!(s.frames_in > 0);
        let bad = s.errors.get("bad_request").copied().unwrap_or(0);
        assert!(
            bad > 200,
            "malformed frames should reach the decoder: {bad}"
        );
    }

    // A fresh client is served normally.
    let mut fresh = TestClient::connect(&hub).await;
    let w = fresh.hello().await;
    assert_eq!(w["resumed"], false);
    fresh.join("bereavement").await;
    let (id, _) = fresh.say("bereavement", "still standing").await;
    let m = fresh.recv_type("message").await;
    assert_eq!(m["id"], id.as_str());
    assert_eq!(hub.http_get("/healthz").await.0, 200);
    fresh.close().await;

    // Everyone has gone: the connection gauge returns to 0.
    hub.wait_metric("hearth_connections", Duration::from_secs(10), |v| v == 0.0)
        .await;
}
