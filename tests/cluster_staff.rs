//! Staff in cluster mode, black-box: moderation on one node holds for a
//! peer on another (mute, kick, ban, delete, lock, slow mode), mutes follow
//! a resume to another node, watching and reports cross nodes, the audit
//! log and token revocation are shared by every node, and a moderator who
//! joins a room shows in presence everywhere with its role.
//!
//! Every test runs its own `redis-server` (tests/common/redis.rs) on a free
//! port and its own hubs, each with a distinct `HEARTH_NODE_ID`, so tests
//! may run in parallel. Every wait is bounded. Where an effect crosses
//! nodes by Redis pub/sub (not by a read of Redis in the request path), a
//! short bounded poll allows for the propagation delay.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::redis::{RedisOpts, RedisServer};
use common::{assert_error, http_request, mint_staff_token, set, Event, TestClient, TestHub};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "cluster-staff-secret-0123456789abcdef";
const ROOM: &str = "anxiety";
/// How long "nothing arrives" is waited for.
const QUIET: Duration = Duration::from_millis(500);
/// Bound on an effect that travels between nodes by pub/sub.
const PROPAGATION: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A staff-enabled hub in cluster mode on `redis`, named `node`, after
/// `edit` changed the test config.
async fn node_with(redis: &RedisServer, node: &str, edit: impl FnOnce(&mut String)) -> TestHub {
    let url = redis.url();
    TestHub::start_full(
        edit,
        &[
            ("HEARTH_REDIS_URL", &url),
            ("HEARTH_NODE_ID", node),
            ("HEARTH_STAFF_SECRET", SECRET),
        ],
    )
    .await
}

/// A staff-enabled hub in cluster mode on `redis`, named `node`.
async fn node(redis: &RedisServer, node: &str) -> TestHub {
    node_with(redis, node, |_| {}).await
}

async fn two_nodes(redis: &RedisServer) -> (TestHub, TestHub) {
    tokio::join!(node(redis, "hub-a"), node(redis, "hub-b"))
}

async fn three_nodes(redis: &RedisServer) -> (TestHub, TestHub, TestHub) {
    tokio::join!(
        node(redis, "hub-a"),
        node(redis, "hub-b"),
        node(redis, "hub-c")
    )
}

fn token(role: &str, name: &str) -> String {
    mint_staff_token(SECRET, role, name, "1h")
}

fn claim(token: &str, name: &str) -> String {
    let payload = token.split('.').nth(1).expect("JWT payload part");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON payload");
    claims[name]
        .as_str()
        .unwrap_or_else(|| panic!("token without a string {name} claim: {claims}"))
        .to_string()
}

/// A connection signed in with `token`.
async fn staff_ws(hub: &TestHub, token: &str) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    let w = c.hello_auth(token).await;
    assert_ne!(w["you"]["role"], "peer", "{w}");
    c
}

async fn moderator(hub: &TestHub) -> TestClient {
    staff_ws(hub, &token("moderator", "Mod Mo")).await
}

/// A staff frame that must be answered `ok`.
async fn staff_ok(s: &mut TestClient, frame: Value) -> Value {
    let r = s.request(frame.clone()).await;
    assert_eq!(r["type"], "ok", "{frame} answered {r}");
    r
}

/// A peer on `hub` that said hello and joined `ROOM`, with its `joined`.
async fn peer(hub: &TestHub) -> (TestClient, Value) {
    let mut c = TestClient::connect(hub).await;
    c.hello().await;
    let j = c.join(ROOM).await;
    (c, j)
}

/// Every frame that arrives within `wait` (none once the connection is
/// quiet for that long).
async fn drain(c: &mut TestClient, wait: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Some(v) = c.recv_within(wait).await {
        got.push(v);
    }
    got
}

/// The next frame matching `want` within 5 s, skipping others; panics
/// with what arrived instead.
async fn recv_where(c: &mut TestClient, who: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Some(v) if want(&v) => return v,
            Some(v) => skipped.push(v),
            None => panic!("{who}: the expected frame did not arrive within 5 s; got {skipped:?}"),
        }
    }
}

async fn recv_message(c: &mut TestClient, who: &str, id: &str) -> Value {
    recv_where(c, who, |v| v["type"] == "message" && v["id"] == id).await
}

fn member_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|m| m["id"].as_str().expect("member id").to_string())
        .collect()
}

/// A connection signed in with a token that has just been revoked may not
/// act any more: either the server has closed it with 4003 already, or its
/// next staff frame is refused `unauthorized`, then it closes with 4003. A
/// staff frame may still be accepted only within `within` of the
/// revocation (the time it takes to reach another node). Returns which of
/// the two happened.
async fn assert_revoked_connection(ws: &mut TestClient, within: Duration) -> &'static str {
    let deadline = Instant::now() + within;
    for n in 0.. {
        let rf = format!("revoked-{n}");
        let frame = json!({"type": "lock", "ref": rf, "room": ROOM, "locked": true});
        // The server may have closed the connection already.
        let _ = ws.try_send(Message::text(frame.to_string())).await;
        loop {
            match ws.next_event(Duration::from_secs(5)).await {
                Event::Frame(v) if v["ref"] == rf.as_str() && v["type"] == "error" => {
                    assert_error(&v, "unauthorized");
                    let code = ws.expect_close_within(Duration::from_secs(5)).await;
                    assert_eq!(code, 4003, "close after {v}");
                    return "refused";
                }
                Event::Frame(v) if v["ref"] == rf.as_str() => {
                    assert_eq!(v["type"], "ok", "{v}");
                    assert!(
                        Instant::now() < deadline,
                        "a connection signed in with a revoked token still acts: {v}"
                    );
                    break;
                }
                Event::Frame(_) => continue,
                Event::Close(code) => {
                    assert_eq!(code, 4003, "a revoked staff connection closed with {code}");
                    return "closed";
                }
                other => panic!("revoked staff connection: expected 4003, got {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// Sends in `ROOM` until the reply is the error `code` (at most
/// `PROPAGATION`); returns it and how many sends were accepted first.
async fn send_until_error(c: &mut TestClient, code: &str) -> (Value, usize) {
    let deadline = Instant::now() + PROPAGATION;
    let mut accepted = 0;
    loop {
        let r = c.send_text(ROOM, "is anyone there").await;
        if r["type"] == "error" {
            assert_error(&r, code);
            return (r, accepted);
        }
        assert_eq!(r["type"], "ok", "{r}");
        accepted += 1;
        assert!(
            Instant::now() < deadline,
            "sends still accepted {PROPAGATION:?} later (last reply {r})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends in `ROOM` until one is accepted (at most `PROPAGATION`).
async fn send_until_ok(c: &mut TestClient) {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let r = c.send_text(ROOM, "can I talk now").await;
        if r["type"] == "ok" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sends still refused {PROPAGATION:?} later: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` with `Authorization: Bearer token`: `(status, body)`.
async fn api_get(hub: &TestHub, path: &str, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let (status, body, _) =
        http_request(hub.addr(), "GET", path, &[("Authorization", &auth)], "").await;
    (status, body)
}

/// `GET` that must answer 200 with JSON.
async fn api_get_ok(hub: &TestHub, path: &str, token: &str) -> Value {
    let (status, body) = api_get(hub, path, token).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// `POST path` with a JSON body that must answer 200 `{"ok":true,…}`.
async fn api_post_ok(hub: &TestHub, path: &str, token: &str, body: &Value) -> Value {
    let auth = format!("Bearer {token}");
    let (status, text, _) = http_request(
        hub.addr(),
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "POST {path} {body}: {text}");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"));
    assert_eq!(v["ok"], true, "POST {path} {body}: {v}");
    v
}

fn room_entry<'a>(rooms: &'a Value, id: &str) -> &'a Value {
    rooms["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no rooms list: {rooms}"))
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("room {id} not listed: {rooms}"))
}

// ---------------------------------------------------------------------------
// Mute
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mute_on_one_node_holds_for_a_peer_on_another() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut p, _) = peer(&hub_b).await;
    p.say(ROOM, "before").await;
    let mut s = moderator(&hub_a).await;

    staff_ok(
        &mut s,
        json!({"type": "mute", "room": ROOM, "peer": p.id, "seconds": 60}),
    )
    .await;
    let (e, accepted) = send_until_error(&mut p, "muted").await;
    assert!(e["until"].as_u64().is_some(), "muted without until: {e}");
    eprintln!("mute held on B after {accepted} accepted sends");

    staff_ok(
        &mut s,
        json!({"type": "mute", "room": ROOM, "peer": p.id, "seconds": 0}),
    )
    .await;
    send_until_ok(&mut p).await;
}

#[tokio::test]
async fn mute_follows_a_resume_to_another_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b, hub_c) = three_nodes(&redis).await;
    let (mut p, _) = peer(&hub_b).await;
    let (p_id, p_session) = (p.id.clone(), p.session.clone());
    let mut s = moderator(&hub_a).await;
    staff_ok(
        &mut s,
        json!({"type": "mute", "room": ROOM, "peer": p_id, "seconds": 600}),
    )
    .await;
    send_until_error(&mut p, "muted").await;
    p.close().await;

    for (node, hub) in [("C", &hub_c), ("A", &hub_a)] {
        let mut q = TestClient::connect(hub).await;
        let w = q.hello_resume(&p_session).await;
        assert_eq!(w["resumed"], true, "resume on {node}: {w}");
        assert_eq!(w["you"]["id"], p_id.as_str(), "resume on {node}: {w}");
        q.join(ROOM).await;
        let e = q.send_text(ROOM, "let me speak").await;
        assert_error(&e, "muted");
        assert!(e["until"].as_u64().is_some(), "on {node}: {e}");
        q.close().await;
    }
}

// ---------------------------------------------------------------------------
// Kick and ban
// ---------------------------------------------------------------------------

#[tokio::test]
async fn kick_on_one_node_removes_a_peer_on_another() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut p, _) = peer(&hub_b).await;
    let (mut q, _) = peer(&hub_a).await;
    let (mut r, _) = peer(&hub_b).await;
    let mut s = moderator(&hub_a).await;
    drain(&mut q, QUIET).await;
    drain(&mut r, QUIET).await;

    staff_ok(&mut s, json!({"type": "kick", "room": ROOM, "peer": p.id})).await;
    let k = recv_where(&mut p, "P", |v| v["type"] == "kicked").await;
    assert_eq!(k, json!({"type": "kicked", "room": ROOM}));
    for (who, c) in [("Q on A", &mut q), ("R on B", &mut r)] {
        let l = recv_where(c, who, |v| v["type"] == "presence").await;
        assert_eq!(
            l,
            json!({"type": "presence", "room": ROOM, "left": {"id": p.id}}),
            "{who}"
        );
    }
    let e = p.send_text(ROOM, "hello?").await;
    assert_error(&e, "not_joined");
    // One `left` each, not two.
    for (who, c) in [("Q on A", &mut q), ("R on B", &mut r)] {
        let more = drain(c, QUIET).await;
        assert!(
            more.iter().all(|v| v["type"] != "presence"),
            "{who}: repeated presence: {more:?}"
        );
    }
    // The room lists P no more, on either node.
    let (mut n, j) = peer(&hub_a).await;
    assert!(!member_ids(&j["members"]).contains(&p.id), "{j}");
    // P may come back (a kick is not a ban).
    p.join(ROOM).await;
    let jn = recv_where(&mut n, "newcomer", |v| v["type"] == "presence").await;
    assert_eq!(jn["joined"]["id"], p.id.as_str(), "{jn}");
}

#[tokio::test]
async fn ban_on_one_node_closes_the_peer_on_another_and_follows_a_resume() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    // Every test client shares 127.0.0.1, which a ban puts on probation on
    // the node that held the banned connection; lift that here.
    let no_probation =
        |t: &mut String| set(t, "rate_limits", "probation_connects_per_hour", "100000000");
    let (hub_a, hub_b) = tokio::join!(
        node_with(&redis, "hub-a", no_probation),
        node_with(&redis, "hub-b", no_probation)
    );
    let (mut p, _) = peer(&hub_b).await;
    let (mut q, _) = peer(&hub_a).await;
    let (p_id, p_session) = (p.id.clone(), p.session.clone());
    let mut s = moderator(&hub_a).await;
    drain(&mut q, QUIET).await;

    staff_ok(
        &mut s,
        json!({"type": "ban", "peer": p_id, "seconds": 3600, "reason": "spam"}),
    )
    .await;
    assert_eq!(p.expect_close_within(Duration::from_secs(5)).await, 1008);
    let l = recv_where(&mut q, "Q on A", |v| v["type"] == "presence").await;
    assert_eq!(l["left"]["id"], p_id.as_str(), "{l}");

    for (node, hub) in [("A", &hub_a), ("B", &hub_b)] {
        let mut p2 = TestClient::connect(hub).await;
        let w = p2.hello_resume(&p_session).await;
        assert_eq!(w["resumed"], true, "resume on {node}: {w}");
        assert_eq!(w["you"]["id"], p_id.as_str(), "{w}");
        let e = p2.request(json!({"type": "join", "room": ROOM})).await;
        assert_error(&e, "banned");
        assert!(e["until"].as_u64().is_some(), "banned without until: {e}");
        let e = p2.send_text(ROOM, "let me in").await;
        assert_error(&e, "not_joined");
        p2.close().await;
    }

    // Lifted on A: P, back on B, may join again.
    let mut p3 = TestClient::connect(&hub_b).await;
    let w = p3.hello_resume(&p_session).await;
    assert_eq!(w["you"]["id"], p_id.as_str(), "{w}");
    staff_ok(&mut s, json!({"type": "ban", "peer": p_id, "seconds": 0})).await;
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let j = p3.request(json!({"type": "join", "room": ROOM})).await;
        if j["type"] == "joined" {
            break;
        }
        assert_error(&j, "banned");
        assert!(
            Instant::now() < deadline,
            "still banned on B {PROPAGATION:?} after the ban was lifted on A: {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p3.say(ROOM, "sorry").await;
}

// ---------------------------------------------------------------------------
// Watching
// ---------------------------------------------------------------------------

#[tokio::test]
async fn watching_on_one_node_sees_traffic_from_another() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut x, _) = peer(&hub_b).await;
    let mut s = moderator(&hub_a).await;
    let staff_id = s.id.clone();
    let w = staff_ok(&mut s, json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["staff_watching"], 1, "{w}");
    assert_eq!(member_ids(&w["members"]), vec![x.id.clone()], "{w}");

    let (y, j) = peer(&hub_b).await;
    assert_eq!(j["staff_watching"], 1, "joined on B: {j}");
    assert!(!member_ids(&j["members"]).contains(&staff_id), "{j}");
    let p = recv_where(&mut s, "watcher", |v| v["type"] == "presence").await;
    assert_eq!(p["joined"]["id"], y.id.as_str(), "{p}");

    let (id, seq) = x.say(ROOM, "anyone awake?").await;
    let m = recv_message(&mut s, "watcher on A", &id).await;
    assert_eq!(m["seq"], seq, "{m}");
    assert_eq!(m["from"]["id"], x.id.as_str(), "{m}");
    let more = drain(&mut s, QUIET).await;
    assert!(
        more.iter().all(|v| v["id"] != id.as_str()),
        "message delivered twice to the watcher: {more:?}"
    );

    // Staff on B see the watcher on A.
    let t = token("moderator", "Mod Two");
    let rooms = api_get_ok(&hub_b, "/api/staff/rooms", &t).await;
    let watchers = member_ids(&room_entry(&rooms, ROOM)["watchers"]);
    assert_eq!(watchers, vec![staff_id.clone()], "{rooms}");

    // The watcher goes away: the count drops everywhere.
    s.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut z, j) = peer(&hub_b).await;
        if j["staff_watching"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watcher still counted after close: {j}"
        );
        z.leave(ROOM).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node killed without warning leaves no ghost watcher: once its
/// heartbeat expires, peers on other nodes see `staff_watching` drop and
/// staff no longer see it listed.
#[tokio::test]
async fn a_killed_nodes_watchers_stop_counting() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let fast = |t: &mut String| {
        set(t, "cluster", "node_timeout_ms", "1500");
        set(t, "cluster", "sweep_interval_ms", "200");
    };
    let (mut hub_a, hub_b) = tokio::join!(
        node_with(&redis, "hub-a", fast),
        node_with(&redis, "hub-b", fast)
    );
    let mut s = moderator(&hub_a).await;
    staff_ok(&mut s, json!({"type": "watch", "room": ROOM})).await;
    let (_p, j) = peer(&hub_b).await;
    assert_eq!(j["staff_watching"], 1, "{j}");

    let status = std::process::Command::new("kill")
        .args(["-KILL", &hub_a.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL failed");
    hub_a.wait_exit(Duration::from_secs(5)).await;
    drop(s);

    let t = token("moderator", "Mod Two");
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (mut z, j) = peer(&hub_b).await;
        let rooms = api_get_ok(&hub_b, "/api/staff/rooms", &t).await;
        let watchers = room_entry(&rooms, ROOM)["watchers"].clone();
        if j["staff_watching"] == 0 && watchers == json!([]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a dead node's watcher still counts: joined {j}, watchers {watchers}"
        );
        z.leave(ROOM).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// Room settings and delete
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lock_is_cluster_wide() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut member, _) = peer(&hub_b).await;
    let mut s = moderator(&hub_a).await;
    staff_ok(
        &mut s,
        json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;

    let mut n = TestClient::connect(&hub_b).await;
    n.hello().await;
    let e = n.request(json!({"type": "join", "room": ROOM})).await;
    assert_error(&e, "room_locked");
    member.say(ROOM, "members stay").await;
    let t = token("moderator", "Mod Two");
    let rooms = api_get_ok(&hub_b, "/api/staff/rooms", &t).await;
    assert_eq!(room_entry(&rooms, ROOM)["locked"], true, "{rooms}");

    staff_ok(
        &mut s,
        json!({"type": "lock", "room": ROOM, "locked": false}),
    )
    .await;
    n.join(ROOM).await;
}

#[tokio::test]
async fn slow_mode_is_cluster_wide() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut p, _) = peer(&hub_b).await;
    let mut s = moderator(&hub_a).await;
    staff_ok(
        &mut s,
        json!({"type": "slow_mode", "room": ROOM, "seconds": 30}),
    )
    .await;

    p.say(ROOM, "first").await;
    let e = p.send_text(ROOM, "second").await;
    assert_error(&e, "slow_mode");
    let ms = e["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("slow_mode without retry_after_ms: {e}"));
    assert!(ms > 0 && ms <= 30_000, "retry_after_ms {ms}: {e}");
    // Staff are not slowed.
    s.join(ROOM).await;
    s.say(ROOM, "one").await;
    s.say(ROOM, "two").await;
    let t = token("moderator", "Mod Two");
    let rooms = api_get_ok(&hub_b, "/api/staff/rooms", &t).await;
    assert_eq!(room_entry(&rooms, ROOM)["slow_mode"], 30, "{rooms}");

    staff_ok(
        &mut s,
        json!({"type": "slow_mode", "room": ROOM, "seconds": 0}),
    )
    .await;
    send_until_ok(&mut p).await;
    p.say(ROOM, "and again").await;
}

#[tokio::test]
async fn delete_on_one_node_removes_the_message_everywhere() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut p, _) = peer(&hub_b).await;
    let (mut q, _) = peer(&hub_a).await;
    let mut s = moderator(&hub_a).await;
    let (keep, _) = p.say(ROOM, "a kind word").await;
    let (gone, _) = p.say(ROOM, "something to remove").await;
    recv_message(&mut q, "Q on A", &gone).await;

    staff_ok(
        &mut s,
        json!({"type": "delete", "room": ROOM, "message": gone}),
    )
    .await;
    let want = json!({"type": "deleted", "room": ROOM, "message": gone});
    for (who, c) in [("P on B", &mut p), ("Q on A", &mut q)] {
        let d = recv_where(c, who, |v| v["type"] == "deleted").await;
        assert_eq!(d, want, "{who}");
    }
    for (node, hub) in [("B", &hub_b), ("A", &hub_a)] {
        let (_n, j) = peer(hub).await;
        let hist: Vec<String> = member_ids(&j["history"]);
        assert!(hist.contains(&keep), "newcomer on {node}: {j}");
        assert!(
            !hist.contains(&gone),
            "deleted message in history on {node}: {j}"
        );
    }
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reports_reach_staff_on_every_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b, hub_c) = three_nodes(&redis).await;
    let mut s1 = moderator(&hub_a).await;
    staff_ok(&mut s1, json!({"type": "watch", "room": ROOM})).await;
    let (mut author, _) = peer(&hub_b).await;
    let (mut reporter, _) = peer(&hub_b).await;
    let (mid, _) = author.say(ROOM, "something hurtful").await;

    let r = reporter
        .request(json!({"type": "report", "room": ROOM, "message": mid, "reason": "harassment"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let rep = recv_where(&mut s1, "watcher on A", |v| v["type"] == "report").await;
    let rid = rep["id"]
        .as_str()
        .unwrap_or_else(|| panic!("report without id: {rep}"))
        .to_string();
    assert_eq!(rep["room"], ROOM, "{rep}");
    assert_eq!(rep["message"], mid.as_str(), "{rep}");
    assert_eq!(rep["reason"], "harassment", "{rep}");
    assert_eq!(rep["reporter"], reporter.id.as_str(), "{rep}");
    assert!(rep["ts"].as_u64().is_some(), "{rep}");
    assert!(rep.get("ref").is_none(), "{rep}");
    let more = drain(&mut s1, QUIET).await;
    assert!(
        more.iter().all(|v| v["type"] != "report"),
        "report delivered twice: {more:?}"
    );

    // A watcher starting later on C gets it right after its ok.
    let mut s2 = staff_ws(&hub_c, &token("clinician", "Dr Ada")).await;
    staff_ok(&mut s2, json!({"type": "watch", "room": ROOM})).await;
    let queued = s2.recv().await;
    assert_eq!(queued, rep, "queued report on C");

    // Every node's API lists it.
    let t = token("moderator", "Mod Two");
    for (name, hub) in [("A", &hub_a), ("B", &hub_b), ("C", &hub_c)] {
        let v = api_get_ok(hub, "/api/staff/reports", &t).await;
        let list = v["reports"].as_array().expect("reports");
        assert_eq!(list.len(), 1, "on {name}: {v}");
        assert_eq!(list[0], rep, "on {name}: {v}");
        let v = api_get_ok(hub, &format!("/api/staff/reports?room={ROOM}"), &t).await;
        assert_eq!(v["reports"].as_array().map(Vec::len), Some(1), "{v}");
        let v = api_get_ok(hub, "/api/staff/reports?room=bereavement", &t).await;
        assert_eq!(v["reports"], json!([]), "on {name}: {v}");
    }

    // Dismissed on B: gone on A and C.
    api_post_ok(
        &hub_b,
        "/api/staff/actions",
        &t,
        &json!({"type": "dismiss_report", "report": rid}),
    )
    .await;
    for (name, hub) in [("A", &hub_a), ("C", &hub_c)] {
        let v = api_get_ok(hub, "/api/staff/reports", &t).await;
        assert_eq!(v["reports"], json!([]), "after dismissal, on {name}: {v}");
    }
    let author_saw = drain(&mut author, QUIET).await;
    assert!(
        author_saw.iter().all(|v| v["type"] != "report"),
        "the author was told: {author_saw:?}"
    );
}

// ---------------------------------------------------------------------------
// Audit and revocation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audit_log_is_shared_by_every_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b, hub_c) = three_nodes(&redis).await;
    let t = token("moderator", "Mod Mo");
    let sub = claim(&t, "sub");
    let mut s = staff_ws(&hub_a, &t).await;
    staff_ok(
        &mut s,
        json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;
    staff_ok(
        &mut s,
        json!({"type": "slow_mode", "room": ROOM, "seconds": 10}),
    )
    .await;
    api_post_ok(
        &hub_a,
        "/api/staff/actions",
        &t,
        &json!({"type": "announce", "room": ROOM, "text": "hello all"}),
    )
    .await;

    let reader = token("clinician", "Dr Ada");
    let all = api_get_ok(&hub_b, "/api/staff/audit", &reader).await;
    let entries = all["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        vec!["announce", "slow_mode", "lock"],
        "on B: {all}"
    );
    assert!(all["next"].is_null(), "{all}");
    for e in entries {
        assert!(e["id"].as_str().is_some_and(|i| !i.is_empty()), "{e}");
        assert!(e["ts"].as_u64().is_some(), "{e}");
        assert_eq!(
            e["actor"],
            json!({"id": sub, "name": "Mod Mo", "role": "moderator"}),
            "{e}"
        );
        assert_eq!(e["room"], ROOM, "{e}");
    }
    let on_c = api_get_ok(&hub_c, "/api/staff/audit", &reader).await;
    assert_eq!(on_c["entries"], all["entries"], "C lists the same as B");

    // Paging across nodes: the cursor from B works on C.
    let p1 = api_get_ok(&hub_b, "/api/staff/audit?limit=2", &reader).await;
    assert_eq!(
        p1["entries"].as_array().map(Vec::as_slice),
        Some(&entries[..2])
    );
    let next = p1["next"]
        .as_str()
        .unwrap_or_else(|| panic!("a full page without next: {p1}"))
        .to_string();
    let path = format!("/api/staff/audit?before={next}&limit=2");
    let p2 = api_get_ok(&hub_c, &path, &reader).await;
    assert_eq!(
        p2["entries"].as_array().map(Vec::as_slice),
        Some(&entries[2..])
    );
    assert!(p2["next"].is_null(), "{p2}");
    // A cursor that is not an entry id is the client's mistake.
    let (status, body) = api_get(&hub_b, "/api/staff/audit?before=garbage", &reader).await;
    assert_eq!(status, 400, "bad cursor: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(v["code"], "bad_request", "{v}");
}

#[tokio::test]
async fn revocation_on_one_node_holds_on_every_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let a = token("moderator", "Mod A");
    let b = token("moderator", "Mod B");
    let b_jti = claim(&b, "jti");
    let me = api_get_ok(&hub_b, "/api/staff/me", &b).await;
    assert_eq!(me["you"]["name"], "Mod B", "{me}");
    let mut ws_b = staff_ws(&hub_b, &b).await;
    staff_ok(
        &mut ws_b,
        json!({"type": "lock", "room": ROOM, "locked": false}),
    )
    .await;

    api_post_ok(
        &hub_a,
        "/api/staff/tokens/revoke",
        &a,
        &json!({"jti": b_jti}),
    )
    .await;

    for (name, hub) in [("A", &hub_a), ("B", &hub_b)] {
        let (status, body) = api_get(hub, "/api/staff/me", &b).await;
        assert_eq!(status, 401, "revoked token on {name}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(v["code"], "unauthorized", "{v}");
        let mut c = TestClient::connect(hub).await;
        let e = c.request(json!({"type": "hello", "auth": b})).await;
        assert_error(&e, "unauthorized");
        assert_eq!(c.expect_close_within(Duration::from_secs(5)).await, 4003);
    }
    // The connection on B signed in with B loses its rights.
    let how = assert_revoked_connection(&mut ws_b, PROPAGATION).await;
    eprintln!("the connection on B signed in with the revoked token was {how}");

    // A node that starts after the revocation knows it too.
    let hub_c = node(&redis, "hub-c").await;
    let (status, body) = api_get(&hub_c, "/api/staff/me", &b).await;
    assert_eq!(status, 401, "revoked token on a later node: {body}");
    api_get_ok(&hub_c, "/api/staff/me", &a).await;
    // Audited, visible from B.
    let audit = api_get_ok(&hub_b, "/api/staff/audit", &a).await;
    let rev = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == "revoke_token")
        .unwrap_or_else(|| panic!("no revoke_token entry on B: {audit}"))
        .clone();
    assert_eq!(rev["target"], b_jti.as_str(), "{rev}");
    assert_eq!(rev["actor"]["id"], claim(&a, "sub").as_str(), "{rev}");
}

// ---------------------------------------------------------------------------
// Staff who join
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_moderator_who_joins_shows_in_presence_on_other_nodes() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut q, _) = peer(&hub_b).await;
    let t = token("moderator", "Mod Mo");
    let sub = claim(&t, "sub");
    let mut s = staff_ws(&hub_a, &t).await;
    let j = s.join(ROOM).await;
    assert!(member_ids(&j["members"]).contains(&q.id), "{j}");

    let p = recv_where(&mut q, "Q on B", |v| v["type"] == "presence").await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": ROOM,
               "joined": {"id": sub, "name": "Mod Mo", "role": "moderator"}})
    );
    let (n, j) = peer(&hub_b).await;
    let listed = j["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == sub.as_str())
        .unwrap_or_else(|| panic!("moderator not in members on B: {j}"))
        .clone();
    assert_eq!(
        listed,
        json!({"id": sub, "name": "Mod Mo", "role": "moderator"})
    );
    // Staff on A see both members, whatever node they are on.
    let rooms = api_get_ok(&hub_a, "/api/staff/rooms", &t).await;
    let mut members = room_entry(&rooms, ROOM)["members"]
        .as_array()
        .expect("members")
        .clone();
    members.sort_by_key(|m| m["id"].to_string());
    let mut want = vec![
        json!({"id": sub, "name": "Mod Mo", "role": "moderator"}),
        json!({"id": q.id, "name": q.name, "role": "peer"}),
        json!({"id": n.id, "name": n.name, "role": "peer"}),
    ];
    want.sort_by_key(|m| m["id"].to_string());
    assert_eq!(members, want, "{rooms}");
    // Its messages carry its role on the other node.
    let (id, _) = s.say(ROOM, "I'm here if anyone wants to talk.").await;
    let m = recv_message(&mut q, "Q on B", &id).await;
    assert_eq!(m["from"]["role"], "moderator", "{m}");
    assert_eq!(m["from"]["name"], "Mod Mo", "{m}");
    // And when it leaves, the other node hears it.
    s.leave(ROOM).await;
    let p = recv_where(&mut q, "Q on B", |v| {
        v["type"] == "presence" && v.get("left").is_some()
    })
    .await;
    assert_eq!(p["left"]["id"], sub.as_str(), "{p}");
}

// ---------------------------------------------------------------------------
// Ban probation across nodes
// ---------------------------------------------------------------------------

/// Opens connections to `hub` until one is refused with 429 (or `max`
/// succeed); returns how many were accepted.
async fn connections_before_429(hub: &TestHub, max: usize) -> usize {
    for n in 0..max {
        match TestClient::try_connect(hub, None).await {
            Ok(c) => c.close().await,
            Err(common::ConnectError::Status(429, _)) => return n,
            Err(e) => panic!("unexpected connect error: {e:?}"),
        }
    }
    max
}

#[tokio::test]
async fn a_ban_puts_the_address_on_probation_on_every_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    // One new connection per hour from a banned peer's address.
    let strict = |t: &mut String| set(t, "rate_limits", "probation_connects_per_hour", "1");
    let (hub_a, hub_b) = tokio::join!(
        node_with(&redis, "hub-a", strict),
        node_with(&redis, "hub-b", strict)
    );
    // Ready means each node has the cluster's address-tag key, so both tag
    // an address the same way.
    for hub in [&hub_a, &hub_b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.http_get("/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "node not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Before any ban, connections from 127.0.0.1 are not slowed on A.
    assert_eq!(connections_before_429(&hub_a, 5).await, 5);
    let (mut p, _) = peer(&hub_b).await;
    let p_id = p.id.clone();
    let mut s = moderator(&hub_a).await;
    staff_ok(
        &mut s,
        json!({"type": "ban", "peer": p_id, "seconds": 3600}),
    )
    .await;
    assert_eq!(p.expect_close_within(Duration::from_secs(5)).await, 1008);
    // The ban happened on B (where P was connected); A learns the address
    // tag through Redis and slows new connections from it too: at most
    // one more, then 429.
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let accepted = connections_before_429(&hub_a, 3).await;
        if accepted <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node A still accepts {accepted} connections from the banned address"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Held messages across nodes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_message_held_on_one_node_is_released_by_staff_on_another() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = two_nodes(&redis).await;
    let (mut p, _) = peer(&hub_a).await;
    let (mut q, _) = peer(&hub_b).await;
    let mut s = moderator(&hub_b).await;
    staff_ok(&mut s, json!({"type": "watch", "room": ROOM})).await;
    drain(&mut q, QUIET).await;
    // An imminent message is held for staff (the default [safety] config).
    let ok = p
        .send_text(
            ROOM,
            "i have all the pills ready and im taking them tonight when everyone is asleep. goodbye",
        )
        .await;
    assert_eq!(ok["held"], true, "{ok}");
    let id = ok["id"].as_str().expect("id").to_string();
    // The watcher on the other node is flagged; the room sees nothing yet.
    let flag = recv_where(&mut s, "S on B", |v| v["type"] == "flag").await;
    assert_eq!(
        (flag["message"].as_str(), flag["held"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert!(
        drain(&mut q, QUIET)
            .await
            .iter()
            .all(|v| v["type"] != "message"),
        "held messages are not delivered"
    );
    // Staff who start watching on the other node get the held message's
    // flag, with its words, from Redis.
    let mut late = staff_ws(&hub_a, &token("moderator", "Late Lou")).await;
    staff_ok(&mut late, json!({"type": "watch", "room": ROOM})).await;
    let waiting = recv_where(&mut late, "Lou on A", |v| v["type"] == "flag").await;
    assert_eq!(waiting["message"], id.as_str(), "{waiting}");
    assert!(
        waiting["text"]
            .as_str()
            .is_some_and(|t| t.contains("pills")),
        "{waiting}"
    );
    // Released from node B: published once, to both nodes.
    let r = s
        .request(json!({"type": "release", "room": ROOM, "message": id}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    assert!(r["seq"].as_u64().is_some(), "{r}");
    recv_message(&mut q, "Q on B", &id).await;
    recv_message(&mut p, "P on A", &id).await;
    let again = s
        .request(json!({"type": "release", "room": ROOM, "message": id}))
        .await;
    assert_error(&again, "bad_request");
}
