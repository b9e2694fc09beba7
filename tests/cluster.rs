//! Cluster mode: several hubs on one Redis (`HEARTH_REDIS_URL`) serve the
//! same rooms. One order and one history per room across nodes, the node's
//! name in `welcome`, and what clients see when Redis goes away and comes
//! back with its data (AOF) or without it.
//!
//! Every test runs its own `redis-server` (tests/common/redis.rs) on a free
//! port and its own hubs, so tests may run in parallel.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::redis::{redis_cmd, RedisOpts, RedisServer};
use common::{assert_error, TestClient, TestHub};
use serde_json::{json, Value};

const ROOM: &str = "anxiety";

/// After the expected messages arrived, how long a client must stay quiet
/// (no late duplicate) before a test moves on.
const QUIET: Duration = Duration::from_millis(300);

/// Messages each sender sends in the ordering test. tests/config/test.toml
/// allows 5000 per identity per 10 s, 5000 per room per second (burst 5000)
/// and 5000 frames per connection per second, so 2 × 50 stays far below.
const PER_SENDER: usize = 50;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A hub in cluster mode on `redis`, named `node`.
async fn cluster_hub(redis: &RedisServer, node: &str) -> TestHub {
    let url = redis.url();
    TestHub::start_full(
        |_| {},
        &[("HEARTH_REDIS_URL", &url), ("HEARTH_NODE_ID", node)],
    )
    .await
}

/// A peer on `hub` that said hello and joined `ROOM`, with its `joined`.
async fn peer(hub: &TestHub) -> (TestClient, Value) {
    let mut c = TestClient::connect(hub).await;
    c.hello().await;
    let j = c.join(ROOM).await;
    (c, j)
}

fn epoch_of(joined: &Value) -> String {
    joined["epoch"]
        .as_str()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| panic!("joined without a string epoch: {joined}"))
        .to_string()
}

/// An epoch string that certainly differs from `epoch`.
fn other_epoch(epoch: &str) -> String {
    if epoch == "deadbeef" {
        "cafebabe".into()
    } else {
        "deadbeef".into()
    }
}

/// `(seq, id)` of message events (or history entries).
fn seq_ids(msgs: &[Value]) -> Vec<(u64, String)> {
    msgs.iter()
        .map(|m| {
            (
                m["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("message without seq: {m}")),
                m["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("message without id: {m}"))
                    .to_string(),
            )
        })
        .collect()
}

/// Reads until `n` `message` events for `ROOM` arrived (other frames are
/// skipped), within `within`; then requires `QUIET` without another
/// message, so a late duplicate fails the test. Panics if the connection
/// closes.
async fn messages(c: &mut TestClient, who: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Some(v) if v["type"] == "message" => {
                assert_eq!(v["room"], ROOM, "{who}: {v}");
                got.push(v);
            }
            Some(_) => continue,
            None => panic!(
                "{who}: {} of {n} messages within {within:?}; got {:?}",
                got.len(),
                seq_ids(&got)
            ),
        }
    }
    let quiet_until = Instant::now() + QUIET;
    while let Some(v) = c
        .recv_within(quiet_until.saturating_duration_since(Instant::now()))
        .await
    {
        assert_ne!(
            v["type"],
            "message",
            "{who}: a message beyond the {n} expected (duplicate?): {v}; had {:?}",
            seq_ids(&got)
        );
    }
    got
}

/// `seq` runs `first, first+1, …` with no gap and no repeat.
fn assert_consecutive(who: &str, list: &[(u64, String)], first: u64) {
    let seqs: Vec<u64> = list.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = (first..first + list.len() as u64).collect();
    assert_eq!(seqs, want, "{who}: seq not consecutive from {first}");
    let ids: HashSet<&String> = list.iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids.len(),
        list.len(),
        "{who}: a message id repeats: {list:?}"
    );
}

/// Polls `GET path` until it answers `want`; panics after `within`. A
/// request that hangs counts as "not yet". Returns how long it took.
async fn wait_http(hub: &TestHub, path: &str, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    let deadline = start + within;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let probe = left.min(Duration::from_secs(2));
        if let Ok((status, body)) = tokio::time::timeout(probe, hub.http_get(path)).await {
            if status == want {
                return start.elapsed();
            }
            last = Some((status, body));
        }
        if Instant::now() >= deadline {
            panic!("GET {path} did not answer {want} within {within:?}; last answer {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_http(hub: &TestHub, path: &str, want: u16) {
    let (status, body) = hub.http_get(path).await;
    assert_eq!(status, want, "GET {path}: {body}");
}

/// `send` that must be accepted; an `unavailable` refusal is retried (every
/// 100 ms) for at most `patience` (`Duration::ZERO`: never). `(id, seq)`.
async fn say_patiently(c: &mut TestClient, text: &str, patience: Duration) -> (String, u64) {
    let deadline = Instant::now() + patience;
    loop {
        let r = c.send_text(ROOM, text).await;
        if r["type"] == "ok" {
            return (
                r["id"].as_str().expect("ok.id").to_string(),
                r["seq"].as_u64().expect("ok.seq"),
            );
        }
        let unavailable = r["type"] == "error" && r["code"] == "unavailable";
        assert!(
            unavailable && Instant::now() < deadline,
            "send {text:?} answered with {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `n` messages `"{tag} {i}"` one after the other: `(id, seq, text)`.
async fn send_many(
    c: &mut TestClient,
    tag: &str,
    n: usize,
    patience: Duration,
) -> Vec<(String, u64, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("{tag} {i}");
        let (id, seq) = say_patiently(c, &text, patience).await;
        out.push((id, seq, text));
    }
    out
}

/// Each sender's messages got increasing `seq` (it waited for each `ok`).
fn assert_sender_order(who: &str, sent: &[(String, u64, String)]) {
    let seqs: Vec<u64> = sent.iter().map(|(_, s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{who}: later sends got lower seq: {seqs:?}"
    );
}

// ---------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redis_harness_starts_and_restarts() {
    // With AOF, a key survives kill + restart.
    let mut aof = RedisServer::start(RedisOpts::aof()).await;
    assert_ne!(aof.port(), 6379);
    assert_eq!(aof.url(), format!("redis://127.0.0.1:{}/", aof.port()));
    assert_eq!(redis_cmd(aof.port(), &["PING"]).await, "+PONG\r\n");
    assert_eq!(
        redis_cmd(aof.port(), &["SET", "hearth:k", "kept"]).await,
        "+OK\r\n"
    );
    let port = aof.port();
    aof.kill();
    assert!(!aof.is_running());
    aof.restart().await;
    assert!(aof.is_running());
    assert_eq!(aof.port(), port, "restart keeps the port");
    assert_eq!(
        redis_cmd(aof.port(), &["GET", "hearth:k"]).await,
        "$4\r\nkept\r\n"
    );
    assert_eq!(
        aof.cmd(&["CONFIG", "GET", "appendonly"]).await,
        "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    );

    // Without it, the key is gone after a restart (restart kills first).
    let mut mem = RedisServer::start(RedisOpts::ephemeral()).await;
    assert_ne!(mem.port(), aof.port());
    assert_eq!(mem.cmd(&["SET", "hearth:k", "lost"]).await, "+OK\r\n");
    assert_eq!(mem.cmd(&["GET", "hearth:k"]).await, "$4\r\nlost\r\n");
    mem.restart().await;
    assert_eq!(mem.cmd(&["GET", "hearth:k"]).await, "$-1\r\n");
    assert_eq!(mem.cmd(&["DBSIZE"]).await, ":0\r\n");

    // Arrays, integers and errors come back whole.
    assert_eq!(mem.cmd(&["RPUSH", "l", "a", "bc"]).await, ":2\r\n");
    assert_eq!(
        mem.cmd(&["LRANGE", "l", "0", "-1"]).await,
        "*2\r\n$1\r\na\r\n$2\r\nbc\r\n"
    );
    assert!(mem.cmd(&["NOSUCHCOMMAND"]).await.starts_with("-ERR"));
    assert_eq!(mem.cmd(&["FLUSHALL"]).await, "+OK\r\n");

    mem.kill();
    assert!(!mem.is_running());
    mem.kill(); // killing twice is harmless
}

// ---------------------------------------------------------------------------
// Cluster behaviour
// ---------------------------------------------------------------------------

/// `welcome.server.node` is the `HEARTH_NODE_ID` of the node the client is
/// connected to, and a node on a reachable Redis is healthy and (soon) ready.
#[tokio::test]
async fn welcome_names_the_node_the_client_is_connected_to() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (a, b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));
    for (hub, node) in [(&a, "hub-a"), (&b, "hub-b")] {
        assert_http(hub, "/healthz", 200).await;
        // Readiness may trail the listening line by a health check.
        wait_http(hub, "/readyz", 200, Duration::from_secs(5)).await;
        let mut c = TestClient::connect(hub).await;
        let w = c.hello().await;
        assert_eq!(w["server"]["node"], node, "{w}");
        assert!(w["server"]["version"].is_string(), "{w}");
    }
}

/// Peers on A and B send interleaved; peers on A, B and C all see every
/// message once, with seq 1, 2, 3, … and the same (seq, id) list, and each
/// `ok.seq` is the seq everyone saw for that id.
#[tokio::test]
async fn messages_from_two_nodes_arrive_in_one_order_on_every_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b, hub_c) = tokio::join!(
        cluster_hub(&redis, "hub-a"),
        cluster_hub(&redis, "hub-b"),
        cluster_hub(&redis, "hub-c"),
    );
    let (mut pa, ja) = peer(&hub_a).await;
    let (mut pb, jb) = peer(&hub_b).await;
    let (mut pc, jc) = peer(&hub_c).await;
    let epoch = epoch_of(&ja);
    for (who, j) in [("B", &jb), ("C", &jc)] {
        assert_eq!(epoch_of(j), epoch, "{who}: one room, one epoch: {j}");
    }
    for j in [&ja, &jb, &jc] {
        assert_eq!(j["seq"], 0, "a fresh Redis, an empty room: {j}");
    }

    let (sent_a, sent_b) = tokio::join!(
        send_many(&mut pa, "from A", PER_SENDER, Duration::ZERO),
        send_many(&mut pb, "from B", PER_SENDER, Duration::ZERO),
    );
    assert_sender_order("A", &sent_a);
    assert_sender_order("B", &sent_b);
    let total = 2 * PER_SENDER;
    let ok_seq: HashMap<String, u64> = sent_a
        .iter()
        .chain(&sent_b)
        .map(|(id, seq, _)| (id.clone(), *seq))
        .collect();
    let text_of: HashMap<String, String> = sent_a
        .iter()
        .chain(&sent_b)
        .map(|(id, _, text)| (id.clone(), text.clone()))
        .collect();
    assert_eq!(ok_seq.len(), total, "message ids are unique");
    let mut seqs: Vec<u64> = ok_seq.values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "ok.seq");

    let mut reference: Option<Vec<(u64, String)>> = None;
    for (who, c) in [("A", &mut pa), ("B", &mut pb), ("C", &mut pc)] {
        let got = messages(c, who, total, Duration::from_secs(15)).await;
        for m in &got {
            let id = m["id"].as_str().expect("id");
            assert_eq!(
                m["text"].as_str(),
                text_of.get(id).map(String::as_str),
                "{who}: {m}"
            );
        }
        let list = seq_ids(&got);
        assert_consecutive(who, &list, 1);
        for (seq, id) in &list {
            assert_eq!(
                ok_seq.get(id),
                Some(seq),
                "{who}: message {id} seen as seq {seq}, but its ok said otherwise"
            );
        }
        match &reference {
            None => reference = Some(list),
            Some(r) => assert_eq!(&list, r, "{who} saw another order than A"),
        }
    }
}

/// Messages sent on A are B's history: `joined` without `since` has them
/// all in order; `since` with the right epoch returns exactly the missing
/// ones (`gap` false); another epoch gives `gap` true.
#[tokio::test]
async fn history_and_since_work_across_nodes() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));
    let (mut pa, ja) = peer(&hub_a).await;
    let epoch = epoch_of(&ja);

    let first = send_many(&mut pa, "early", 3, Duration::ZERO).await;
    assert_eq!(
        first.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // A newcomer on B gets A's messages as history.
    let (_x, jx) = peer(&hub_b).await;
    assert_eq!(epoch_of(&jx), epoch, "{jx}");
    assert_eq!(jx["seq"], 3, "{jx}");
    assert_eq!(jx["gap"], false, "{jx}");
    let history = jx["history"].as_array().expect("joined.history").clone();
    let want: Vec<(u64, String)> = first.iter().map(|(id, s, _)| (*s, id.clone())).collect();
    assert_eq!(seq_ids(&history), want, "history on B: {jx}");
    for (h, (_, _, text)) in history.iter().zip(&first) {
        assert_eq!(h["type"], "message", "{h}");
        assert_eq!(h["room"], ROOM, "{h}");
        assert_eq!(h["text"], text.as_str(), "{h}");
        assert_eq!(h["from"]["id"], pa.id.as_str(), "{h}");
    }

    let later = send_many(&mut pa, "later", 4, Duration::ZERO).await;
    let want_later: Vec<(u64, String)> = later.iter().map(|(id, s, _)| (*s, id.clone())).collect();
    assert_eq!(
        want_later.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );

    // `since` 3 with the room's epoch: exactly 4..7.
    let mut y = TestClient::connect(&hub_b).await;
    y.hello().await;
    let jy = y.join_since(ROOM, 3, &epoch).await;
    assert_eq!(jy["gap"], false, "{jy}");
    assert_eq!(jy["seq"], 7, "{jy}");
    assert_eq!(epoch_of(&jy), epoch, "{jy}");
    let hy = jy["history"].as_array().expect("joined.history");
    assert_eq!(seq_ids(hy), want_later, "since 3 on B: {jy}");

    // `since` the latest seq: nothing is missing.
    let mut z = TestClient::connect(&hub_b).await;
    z.hello().await;
    let jz = z.join_since(ROOM, 7, &epoch).await;
    assert_eq!(jz["gap"], false, "{jz}");
    assert_eq!(jz["history"].as_array().map(Vec::len), Some(0), "{jz}");

    // Another epoch cannot be honoured.
    let mut w = TestClient::connect(&hub_b).await;
    w.hello().await;
    let jw = w.join_since(ROOM, 3, &other_epoch(&epoch)).await;
    assert_eq!(jw["gap"], true, "{jw}");
    assert_eq!(epoch_of(&jw), epoch, "{jw}");
    assert_eq!(jw["seq"], 7, "{jw}");
    let hw = seq_ids(jw["history"].as_array().expect("joined.history"));
    assert_eq!(hw.last().map(|(s, _)| *s), Some(7), "{jw}");
    assert_consecutive("history with another epoch", &hw, 8 - hw.len() as u64);
}

/// Redis goes away: the node is not ready (503) but healthy (200), sends
/// are refused with `unavailable`, connections stay open. Redis comes back
/// (with its data): ready again, sends work, seq continues.
#[tokio::test]
async fn redis_outage_makes_the_node_unready_and_refuses_sends() {
    // AOF, so the room's history survives and the connections may stay
    // (without it the node closes them with 4009: see the last test).
    let mut redis = RedisServer::start(RedisOpts::aof()).await;
    let hub = cluster_hub(&redis, "hub-a").await;
    let (mut p, _) = peer(&hub).await;
    let (mut q, _) = peer(&hub).await;
    let (id1, seq1) = say_patiently(&mut p, "before", Duration::ZERO).await;
    assert_eq!(seq1, 1);
    for (who, c) in [("p", &mut p), ("q", &mut q)] {
        let got = messages(c, who, 1, Duration::from_secs(5)).await;
        assert_eq!(seq_ids(&got), vec![(1, id1.clone())], "{who}");
    }

    redis.kill();
    let took = wait_http(&hub, "/readyz", 503, Duration::from_secs(5)).await;
    eprintln!("readyz went 503 {took:?} after Redis was killed");
    assert_http(&hub, "/healthz", 200).await;

    // Sends are refused, never accepted: Redis is not there to store them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tries = 0;
    loop {
        tries += 1;
        let r = p.send_text(ROOM, &format!("while down {tries}")).await;
        assert_ne!(r["type"], "ok", "a send was accepted with Redis down: {r}");
        if r["code"] == "unavailable" {
            assert_error(&r, "unavailable");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no `unavailable` within 5 s; last reply {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The connections are still open and answered.
    for (who, c) in [("p", &mut p), ("q", &mut q)] {
        c.send_json(json!({"type": "typing", "room": ROOM})).await;
        let r = c.request(json!({"type": "no-such-frame"})).await;
        assert_eq!(r["code"], "unknown_type", "{who} after the outage: {r}");
        assert_error(&r, "unknown_type");
    }
    assert_http(&hub, "/healthz", 200).await;

    redis.restart().await;
    let took = wait_http(&hub, "/readyz", 200, Duration::from_secs(10)).await;
    eprintln!("readyz back to 200 {took:?} after Redis restarted");
    assert_http(&hub, "/healthz", 200).await;

    // Sends work again, and numbering carries on where it stopped (the
    // refused sends took no seq).
    let (id2, seq2) = say_patiently(&mut p, "after", Duration::from_secs(5)).await;
    assert_eq!(seq2, 2, "refused sends must not use up seq");
    for (who, c) in [("p", &mut p), ("q", &mut q)] {
        let got = messages(c, who, 1, Duration::from_secs(5)).await;
        assert_eq!(seq_ids(&got), vec![(2, id2.clone())], "{who}");
        assert_eq!(got[0]["text"], "after", "{who}");
    }
}

/// Redis with AOF is killed and restarted: peers on A and B that stayed
/// connected see every message exactly once, seq consecutive across the
/// restart, and the room keeps its epoch and history.
#[tokio::test]
async fn redis_restart_with_aof_keeps_the_sequence_continuous() {
    let mut redis = RedisServer::start(RedisOpts::aof()).await;
    let (hub_a, hub_b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));
    let (mut pa, ja) = peer(&hub_a).await;
    let (mut pb, _) = peer(&hub_b).await;
    let epoch = epoch_of(&ja);

    let (a1, b1) = tokio::join!(
        send_many(&mut pa, "A before", 5, Duration::ZERO),
        send_many(&mut pb, "B before", 5, Duration::ZERO),
    );
    let mut before = Vec::new();
    for (who, c) in [("A", &mut pa), ("B", &mut pb)] {
        let list = seq_ids(&messages(c, who, 10, Duration::from_secs(10)).await);
        assert_consecutive(who, &list, 1);
        before.push(list);
    }
    assert_eq!(before[0], before[1], "A and B saw different orders");

    redis.kill();
    wait_http(&hub_a, "/readyz", 503, Duration::from_secs(5)).await;
    redis.restart().await;
    let (ra, rb) = tokio::join!(
        wait_http(&hub_a, "/readyz", 200, Duration::from_secs(10)),
        wait_http(&hub_b, "/readyz", 200, Duration::from_secs(10)),
    );
    eprintln!("ready again after the restart: A {ra:?}, B {rb:?}");

    // Right after readyz, a send may still race the node's reconnect, so
    // `unavailable` is retried for a moment; anything accepted must show up.
    let patience = Duration::from_secs(5);
    let (a2, b2) = tokio::join!(
        send_many(&mut pa, "A after", 5, patience),
        send_many(&mut pb, "B after", 5, patience),
    );
    let ok_seq: HashMap<String, u64> = [&a1, &b1, &a2, &b2]
        .into_iter()
        .flatten()
        .map(|(id, seq, _)| (id.clone(), *seq))
        .collect();
    assert_eq!(ok_seq.len(), 20);

    for (i, (who, c)) in [("A", &mut pa), ("B", &mut pb)].into_iter().enumerate() {
        let after = seq_ids(&messages(c, who, 10, Duration::from_secs(10)).await);
        let mut all = before[i].clone();
        all.extend(after);
        assert_consecutive(who, &all, 1);
        for (seq, id) in &all {
            assert_eq!(ok_seq.get(id), Some(seq), "{who}: {id} as seq {seq}");
        }
    }

    // The room kept its life: same epoch, and `since` still works.
    let mut late = TestClient::connect(&hub_b).await;
    late.hello().await;
    let j = late.join_since(ROOM, 5, &epoch).await;
    assert_eq!(epoch_of(&j), epoch, "AOF kept the room's epoch: {j}");
    assert_eq!(j["gap"], false, "{j}");
    assert_eq!(j["seq"], 20, "{j}");
    let h = seq_ids(j["history"].as_array().expect("joined.history"));
    assert_consecutive("since 5 after the restart", &h, 6);
    assert_eq!(h.len(), 15, "{j}");
}

/// Redis without persistence is killed and restarted: the room's history is
/// gone, so the node closes its members with 4009 (reconnect with resume
/// and since) instead of carrying on with a silent gap; rejoining with the
/// old `since` reports `gap` and a new epoch, and numbering starts again.
#[tokio::test]
async fn redis_restart_without_persistence_closes_with_4009_and_reports_the_gap() {
    let mut redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));
    let (mut pa, ja) = peer(&hub_a).await;
    let (mut pb, _) = peer(&hub_b).await;
    let old_epoch = epoch_of(&ja);

    send_many(&mut pa, "doomed", 3, Duration::ZERO).await;
    for (who, c) in [("A", &mut pa), ("B", &mut pb)] {
        let list = seq_ids(&messages(c, who, 3, Duration::from_secs(5)).await);
        assert_consecutive(who, &list, 1);
    }

    redis.kill();
    redis.restart().await;
    let window = Duration::from_secs(10);
    let (ca, cb) = tokio::join!(
        pa.expect_close_within(window),
        pb.expect_close_within(window)
    );
    assert_eq!(ca, 4009, "peer on A after Redis lost the room's history");
    assert_eq!(cb, 4009, "peer on B after Redis lost the room's history");
    tokio::join!(
        wait_http(&hub_a, "/readyz", 200, window),
        wait_http(&hub_b, "/readyz", 200, window),
    );

    // Coming back with the old `since`: an honest gap and a new epoch.
    let mut fa = TestClient::connect(&hub_a).await;
    fa.hello().await;
    let j = fa.join_since(ROOM, 3, &old_epoch).await;
    assert_eq!(j["gap"], true, "{j}");
    let new_epoch = epoch_of(&j);
    assert_ne!(
        new_epoch, old_epoch,
        "history was lost, the epoch must change"
    );
    assert_eq!(j["seq"], 0, "{j}");
    assert_eq!(j["history"].as_array().map(Vec::len), Some(0), "{j}");

    // Both nodes agree on the new life of the room, which starts at seq 1.
    let (mut fb, jb) = peer(&hub_b).await;
    assert_eq!(epoch_of(&jb), new_epoch, "{jb}");
    let (id, seq) = say_patiently(&mut fa, "fresh start", Duration::from_secs(5)).await;
    assert_eq!(seq, 1);
    for (who, c) in [("A", &mut fa), ("B", &mut fb)] {
        let got = messages(c, who, 1, Duration::from_secs(5)).await;
        assert_eq!(seq_ids(&got), vec![(1, id.clone())], "{who}");
    }
}
