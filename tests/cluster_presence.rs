//! Cluster mode, the person's side: presence, capacity and typing across
//! nodes, resuming on another node (with and without the old connection
//! still open), leaving after the grace period, a node killed without
//! warning (no ghost members), rate limits that follow the person and the
//! room across nodes, and unknown resume tokens on a cluster node.
//!
//! Every test runs its own `redis-server` (tests/common/redis.rs) on a free
//! port and its own hubs, each with a distinct `HEARTH_NODE_ID`, so tests
//! may run in parallel. Every wait is bounded.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::{RedisOpts, RedisServer};
use common::{assert_error, set, set_room, TestClient, TestHub};
use serde_json::{json, Value};

const ROOM: &str = "anxiety";

/// tests/config/test.toml: `sessions.resume_grace_secs = 2`.
const GRACE: Duration = Duration::from_secs(2);

/// How long a client must stay silent when a test says "nothing arrives".
const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A hub in cluster mode on `redis`, named `node`, after `edit` changed the
/// test config.
async fn cluster_hub_with(
    redis: &RedisServer,
    node: &str,
    edit: impl FnOnce(&mut String),
) -> TestHub {
    let url = redis.url();
    TestHub::start_full(
        edit,
        &[("HEARTH_REDIS_URL", &url), ("HEARTH_NODE_ID", node)],
    )
    .await
}

/// A hub in cluster mode on `redis` with the test config as it is.
async fn cluster_hub(redis: &RedisServer, node: &str) -> TestHub {
    cluster_hub_with(redis, node, |_| {}).await
}

/// A peer on `hub` that said hello and joined `ROOM`, with its `joined`.
async fn peer(hub: &TestHub) -> (TestClient, Value) {
    let mut c = TestClient::connect(hub).await;
    c.hello().await;
    let j = c.join(ROOM).await;
    (c, j)
}

/// Every frame `c` receives during `dur` (the backlog included).
async fn frames_for(c: &mut TestClient, dur: Duration) -> Vec<Value> {
    let until = Instant::now() + dur;
    let mut out = Vec::new();
    while let Some(v) = c
        .recv_within(until.saturating_duration_since(Instant::now()))
        .await
    {
        out.push(v);
    }
    out
}

/// Every frame `c` receives until `until` (the backlog included).
async fn frames_until(c: &mut TestClient, until: Instant) -> Vec<Value> {
    frames_for(c, until.saturating_duration_since(Instant::now())).await
}

/// The `presence` frames among `frames`.
fn presences(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "presence").collect()
}

/// Waits (at most `within`) for a `presence` frame for `ROOM`, skipping
/// other frames; panics with what arrived instead.
async fn next_presence(c: &mut TestClient, who: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Some(v) if v["type"] == "presence" => {
                assert_eq!(v["room"], ROOM, "{who}: {v}");
                return v;
            }
            Some(v) => skipped.push(v),
            None => panic!("{who}: no presence within {within:?}; other frames: {skipped:?}"),
        }
    }
}

/// The member list of a `joined` frame as `(id, name, role)`, sorted.
fn member_list(joined: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = joined["members"]
        .as_array()
        .unwrap_or_else(|| panic!("joined without members: {joined}"))
        .iter()
        .map(|m| {
            let s = |k: &str| {
                m[k].as_str()
                    .unwrap_or_else(|| panic!("member without {k}: {m}"))
                    .to_string()
            };
            (s("id"), s("name"), s("role"))
        })
        .collect();
    out.sort();
    out
}

fn me(c: &TestClient) -> (String, String, String) {
    (c.id.clone(), c.name.clone(), "peer".to_string())
}

fn epoch_of(joined: &Value) -> String {
    joined["epoch"]
        .as_str()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| panic!("joined without a string epoch: {joined}"))
        .to_string()
}

/// The `anxiety` entry's `members` in a room list (`welcome.rooms` or the
/// `rooms` of `/api/rooms`).
fn listed_members(rooms: &Value) -> u64 {
    rooms
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == ROOM))
        .and_then(|r| r["members"].as_u64())
        .unwrap_or_else(|| panic!("room {ROOM} with members not in {rooms}"))
}

/// Waits for the `message` event with id `id`, skipping other frames
/// (e.g. the reader's own earlier messages).
async fn recv_message(c: &mut TestClient, who: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Some(v) if v["type"] == "message" && v["id"] == id => {
                assert_eq!(v["room"], ROOM, "{who}: {v}");
                return v;
            }
            Some(v) => skipped.push(v),
            None => panic!("{who}: message {id} not received within 5 s; got {skipped:?}"),
        }
    }
}

/// SIGKILL: the process gets no chance to clean up or say goodbye.
fn sigkill(hub: &TestHub) {
    let status = Command::new("kill")
        .args(["-KILL", &hub.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL failed: {status}");
}

/// `retry_after_ms` of a `rate_limited` refusal, asserted to be > 0.
fn assert_rate_limited(r: &Value) -> u64 {
    assert_error(r, "rate_limited");
    let ms = r["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("rate_limited without retry_after_ms: {r}"));
    assert!(ms > 0, "retry_after_ms must be positive: {r}");
    ms
}

// ---------------------------------------------------------------------------
// Presence, capacity, typing
// ---------------------------------------------------------------------------

/// X on A and Y on B: Y's `joined` lists both; X sees Y join and leave;
/// nobody gets presence about themselves; room counts are cluster-wide on
/// both nodes (`/api/rooms` and `welcome.rooms`).

#[tokio::test]
async fn presence_crosses_nodes_and_counts_are_cluster_wide() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));

    let (mut x, jx) = peer(&hub_a).await;
    assert_eq!(member_list(&jx), vec![me(&x)], "X alone: {jx}");
    let (mut y, jy) = peer(&hub_b).await;
    let mut want = vec![me(&x), me(&y)];
    want.sort();
    assert_eq!(
        member_list(&jy),
        want,
        "Y's joined on B lists X (on A) and Y"
    );

    let p = next_presence(&mut x, "X", Duration::from_secs(5)).await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": ROOM,
               "joined": {"id": y.id, "name": y.name, "role": "peer"}}),
        "X on A sees Y (on B) join"
    );

    // Neither gets presence about itself.
    let (fx, fy) = tokio::join!(frames_for(&mut x, QUIET), frames_for(&mut y, QUIET));
    assert!(presences(&fx).is_empty(), "X got more presence: {fx:?}");
    assert!(
        presences(&fy).is_empty(),
        "Y got presence (about itself?): {fy:?}"
    );

    // Cluster-wide counts on both nodes.
    assert_members(&hub_a, 2, "/api/rooms on A").await;
    assert_members(&hub_b, 2, "/api/rooms on B").await;
    for (node, hub) in [("A", &hub_a), ("B", &hub_b)] {
        let mut z = TestClient::connect(hub).await;
        let w = z.hello().await;
        assert_eq!(
            listed_members(&w["rooms"]),
            2,
            "welcome.rooms on {node}: {w}"
        );
    }

    // Y leaves: X gets `left`, Y gets its `left` reply and no presence.
    let l = y.leave(ROOM).await;
    assert_eq!(l["type"], "left", "{l}");
    assert_eq!(l["room"], ROOM, "{l}");
    let p = next_presence(&mut x, "X", Duration::from_secs(5)).await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": ROOM, "left": {"id": y.id}}),
        "X on A sees Y (on B) leave"
    );
    let (fx, fy) = tokio::join!(frames_for(&mut x, QUIET), frames_for(&mut y, QUIET));
    assert!(presences(&fx).is_empty(), "X: a repeated presence: {fx:?}");
    assert!(presences(&fy).is_empty(), "Y after leaving: {fy:?}");
    assert_members(&hub_a, 1, "/api/rooms on A").await;
    assert_members(&hub_b, 1, "/api/rooms on B").await;
}

/// Capacity 2 on both nodes: a peer on A and one on B fill the room; a
/// third on either node gets `room_full`; when one leaves, a newcomer on
/// the other node gets in.
#[tokio::test]
async fn room_capacity_is_cluster_wide() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let cap2 = |t: &mut String| set_room(t, ROOM, "capacity", "2");
    let (hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", cap2),
        cluster_hub_with(&redis, "hub-b", cap2)
    );
    let (_x, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;

    let mut late = Vec::new();
    for (node, hub) in [("A", &hub_a), ("B", &hub_b)] {
        let mut z = TestClient::connect(hub).await;
        z.hello().await;
        let r = z.request(json!({"type": "join", "room": ROOM})).await;
        assert_eq!(r["room"].as_str().unwrap_or(ROOM), ROOM, "{r}");
        assert_error(&r, "room_full");
        eprintln!("third peer on {node}: {r}");
        late.push(z);
    }
    assert_members(&hub_a, 2, "/api/rooms on A").await;
    assert_members(&hub_b, 2, "/api/rooms on B").await;

    // A place freed on B is free on A too.
    let l = y.leave(ROOM).await;
    assert_eq!(l["type"], "left", "{l}");
    let z = &mut late[0];
    let j = z.join(ROOM).await;
    assert_eq!(member_list(&j).len(), 2, "{j}");
}

/// Capacity 2: X on A drops; while X is in its grace period the room is
/// still full for a newcomer on B. Once the grace is over (others see X
/// leave), the newcomer gets in.
#[tokio::test]
async fn a_member_in_its_grace_period_still_fills_a_place_on_other_nodes() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let cap2 = |t: &mut String| set_room(t, ROOM, "capacity", "2");
    let (hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", cap2),
        cluster_hub_with(&redis, "hub-b", cap2)
    );
    let (x, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;
    let x_id = x.id.clone();
    let dropped = Instant::now();
    drop(x);

    let mut z = TestClient::connect(&hub_b).await;
    z.hello().await;
    let r = z.request(json!({"type": "join", "room": ROOM})).await;
    assert!(
        dropped.elapsed() < GRACE,
        "too slow to test within the grace period: {:?}",
        dropped.elapsed()
    );
    assert_error(&r, "room_full");
    assert_members(&hub_b, 2, "/api/rooms on B").await;

    let p = next_presence(&mut y, "Y", GRACE + Duration::from_secs(4)).await;
    assert_eq!(p["left"]["id"], x_id.as_str(), "{p}");
    let j = z.join(ROOM).await;
    assert_eq!(member_list(&j).len(), 2, "{j}");
}

/// X on A types: Y on B gets `typing` from X; X gets nothing back.
#[tokio::test]
async fn typing_reaches_other_nodes_but_not_the_typist() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));
    let (mut x, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;
    next_presence(&mut x, "X", Duration::from_secs(5)).await;

    x.send_json(json!({"type": "typing", "room": ROOM})).await;
    let t = y.recv_type("typing").await;
    assert_eq!(t["room"], ROOM, "{t}");
    assert_eq!(t["from"]["id"], x.id.as_str(), "{t}");
    assert_eq!(t["from"]["name"], x.name.as_str(), "{t}");
    assert_eq!(t["from"]["role"], "peer", "{t}");

    let fx = frames_for(&mut x, QUIET).await;
    assert!(
        !fx.iter().any(|f| f["type"] == "typing"),
        "X got its own typing (or a reply to it): {fx:?}"
    );
    let fy = frames_for(&mut y, QUIET).await;
    assert!(
        !fy.iter().any(|f| f["type"] == "typing"),
        "Y got the typing event twice: {fy:?}"
    );
}

// ---------------------------------------------------------------------------
// Resume across nodes
// ---------------------------------------------------------------------------

/// X on A drops and resumes on B within the grace period: same identity,
/// still in the room, no presence flap for Y (on C), `since` brings the
/// missed messages, and X's messages from B reach Y.
#[tokio::test]
async fn resume_on_another_node_keeps_identity_without_presence_flap() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b, hub_c) = tokio::join!(
        cluster_hub(&redis, "hub-a"),
        cluster_hub(&redis, "hub-b"),
        cluster_hub(&redis, "hub-c"),
    );
    let (mut y, _) = peer(&hub_c).await;
    let (mut x, jx) = peer(&hub_a).await;
    let epoch = epoch_of(&jx);
    let p = next_presence(&mut y, "Y", Duration::from_secs(5)).await;
    assert_eq!(p["joined"]["id"], x.id.as_str(), "{p}");

    let (id1, seq1) = y.say(ROOM, "before").await;
    let m = recv_message(&mut x, "X", &id1).await;
    assert_eq!(m["seq"], seq1, "{m}");
    let (id, name, token) = (x.id.clone(), x.name.clone(), x.session.clone());
    let dropped = Instant::now();
    drop(x);

    let (m2, s2) = y.say(ROOM, "missed 1").await;
    let (m3, s3) = y.say(ROOM, "missed 2").await;

    let mut x2 = TestClient::connect(&hub_b).await;
    let w = x2.hello_resume(&token).await;
    let resumed_after = dropped.elapsed();
    assert!(
        resumed_after < GRACE,
        "the test was too slow to resume within the grace: {resumed_after:?}"
    );
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], id.as_str(), "{w}");
    assert_eq!(w["you"]["name"], name.as_str(), "{w}");
    assert_eq!(w["you"]["role"], "peer", "{w}");
    assert_eq!(w["server"]["node"], "hub-b", "{w}");
    assert!(
        w["joined"]
            .as_array()
            .is_some_and(|j| j.iter().any(|r| r == ROOM)),
        "welcome.joined after resume on B: {w}"
    );

    let j = x2.join_since(ROOM, seq1, &epoch).await;
    assert_eq!(j["gap"], false, "{j}");
    assert_eq!(epoch_of(&j), epoch, "{j}");
    let hist: Vec<(u64, String, String)> = j["history"]
        .as_array()
        .expect("joined.history")
        .iter()
        .map(|h| {
            (
                h["seq"].as_u64().expect("seq"),
                h["id"].as_str().expect("id").to_string(),
                h["text"].as_str().expect("text").to_string(),
            )
        })
        .collect();
    assert_eq!(
        hist,
        vec![
            (s2, m2, "missed 1".to_string()),
            (s3, m3, "missed 2".to_string())
        ],
        "history since {seq1} on B: {j}"
    );
    assert!(
        member_list(&j).iter().any(|(mid, _, _)| *mid == id),
        "X is a member after resuming on B: {j}"
    );

    // Past the end of the grace period that started on A: Y saw no
    // presence at all for X, neither left nor joined.
    let fy = frames_until(&mut y, dropped + GRACE + Duration::from_millis(1500)).await;
    assert!(
        presences(&fy).is_empty(),
        "Y (on C) saw presence while X moved from A to B within the grace: {fy:?}"
    );
    for (node, hub) in [("A", &hub_a), ("B", &hub_b), ("C", &hub_c)] {
        assert_members(hub, 2, &format!("/api/rooms on {node}")).await;
    }

    // X's message from B reaches Y on C, and X itself.
    let (mid, _) = x2.say(ROOM, "hello from B").await;
    let m = recv_message(&mut y, "y", &mid).await;
    assert_eq!(m["from"]["id"], id.as_str(), "{m}");
    assert_eq!(m["text"], "hello from B", "{m}");
    recv_message(&mut x2, "x2", &mid).await;
    // And Y's messages reach X on B.
    let (yid, _) = y.say(ROOM, "welcome back").await;
    recv_message(&mut x2, "x2", &yid).await;
}

/// Resuming on B while the connection on A is still open closes the one on
/// A with 1000; the new one works; Y (on A) sees no presence for X, not
/// even after A's grace period for the closed connection would have ended.
#[tokio::test]
async fn resume_on_another_node_closes_the_old_connection_with_1000() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));
    let (mut old, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_a).await;
    next_presence(&mut old, "X", Duration::from_secs(5)).await;

    let mut new = TestClient::connect(&hub_b).await;
    let w = new.hello_resume(&old.session).await;
    let resumed_at = Instant::now();
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], old.id.as_str(), "{w}");
    assert_eq!(w["you"]["name"], old.name.as_str(), "{w}");
    let code = old.expect_close_within(Duration::from_secs(5)).await;
    eprintln!(
        "old connection on A closed {:?} after the resume on B",
        resumed_at.elapsed()
    );
    assert_eq!(code, 1000, "the connection on A after a resume on B");

    let j = new.join(ROOM).await;
    assert!(
        member_list(&j).iter().any(|(mid, _, _)| *mid == old.id),
        "{j}"
    );
    let (mid, _) = y.say(ROOM, "hello again").await;
    recv_message(&mut new, "new", &mid).await;
    let (nid, _) = new.say(ROOM, "here, on B").await;
    let m = recv_message(&mut y, "y", &nid).await;
    assert_eq!(m["from"]["id"], old.id.as_str(), "{m}");

    // A takeover is not a departure, now or after the grace period.
    let fy = frames_until(&mut y, resumed_at + GRACE + Duration::from_millis(1500)).await;
    assert!(
        presences(&fy).is_empty(),
        "Y (on A) saw presence for a session that moved to B: {fy:?}"
    );
    assert_members(&hub_a, 2, "/api/rooms on A").await;
    assert_members(&hub_b, 2, "/api/rooms on B").await;
    let (mid, _) = y.say(ROOM, "still there?").await;
    recv_message(&mut new, "new", &mid).await;
}

/// X on A drops and the grace period ends (Y on B sees X leave); X then
/// resumes on B: same identity, back in the room, and Y sees X join again
/// exactly once.
#[tokio::test]
async fn resume_on_another_node_after_the_grace_rejoins_with_presence() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let grace1 = |t: &mut String| set(t, "sessions", "resume_grace_secs", "1");
    let (hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", grace1),
        cluster_hub_with(&redis, "hub-b", grace1)
    );
    let (x, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;
    let (x_id, x_name, token) = (x.id.clone(), x.name.clone(), x.session.clone());
    drop(x);
    let p = next_presence(&mut y, "Y", Duration::from_secs(5)).await;
    assert_eq!(p["left"]["id"], x_id.as_str(), "{p}");
    assert_members(&hub_b, 1, "/api/rooms on B").await;

    let mut x2 = TestClient::connect(&hub_b).await;
    let w = x2.hello_resume(&token).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], x_id.as_str(), "{w}");
    assert_eq!(w["you"]["name"], x_name.as_str(), "{w}");
    assert_eq!(w["joined"], json!([ROOM]), "{w}");
    let j = x2.join(ROOM).await;
    assert!(member_list(&j).iter().any(|(id, _, _)| *id == x_id), "{j}");
    let p = next_presence(&mut y, "Y", Duration::from_secs(5)).await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": ROOM,
               "joined": {"id": x_id, "name": x_name, "role": "peer"}}),
        "Y sees X come back"
    );
    let fy = frames_for(&mut y, QUIET).await;
    assert!(presences(&fy).is_empty(), "Y: presence repeated: {fy:?}");
    assert_members(&hub_a, 2, "/api/rooms on A").await;
    assert_members(&hub_b, 2, "/api/rooms on B").await;
}

/// X on A drops and does not come back: after the grace period (1 s here)
/// Y on B sees `left`, not before, and both nodes count one member.
#[tokio::test]
async fn a_dropped_connection_leaves_after_the_grace_on_every_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let grace1 = |t: &mut String| set(t, "sessions", "resume_grace_secs", "1");
    let grace = Duration::from_secs(1);
    let (hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", grace1),
        cluster_hub_with(&redis, "hub-b", grace1)
    );
    let (x, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;
    let x_id = x.id.clone();
    let dropped = Instant::now();
    drop(x);

    let p = next_presence(&mut y, "Y", grace + Duration::from_secs(4)).await;
    let waited = dropped.elapsed();
    eprintln!("Y saw X leave {waited:?} after the drop");
    assert_eq!(
        p,
        json!({"type": "presence", "room": ROOM, "left": {"id": x_id}}),
        "Y on B"
    );
    assert!(
        waited >= grace - Duration::from_millis(300),
        "left came before the grace period ended: {waited:?}"
    );
    assert_members(&hub_a, 1, "/api/rooms on A").await;
    assert_members(&hub_b, 1, "/api/rooms on B").await;
    let fy = frames_for(&mut y, QUIET).await;
    assert!(presences(&fy).is_empty(), "Y: a repeated presence: {fy:?}");
}

/// Hub A is SIGKILLed: within node_timeout + sweep + slack, Y on B sees X
/// (who was on A) leave, `/api/rooms` on B counts 1, a newcomer on B does
/// not see X among the members, and B keeps serving.
#[tokio::test]
async fn a_killed_node_leaves_no_ghost_members() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let fast = |t: &mut String| {
        set(t, "cluster", "node_timeout_ms", "1500");
        set(t, "cluster", "sweep_interval_ms", "500");
    };
    let (mut hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", fast),
        cluster_hub_with(&redis, "hub-b", fast)
    );
    let (mut x, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;
    next_presence(&mut x, "X", Duration::from_secs(5)).await;
    let x_id = x.id.clone();
    assert_members(&hub_b, 2, "/api/rooms on B").await;

    let killed = Instant::now();
    sigkill(&hub_a);
    assert!(
        hub_a.wait_exit(Duration::from_secs(5)).await.is_some(),
        "hub A still runs after SIGKILL"
    );

    let p = next_presence(&mut y, "Y", Duration::from_secs(6)).await;
    eprintln!("Y saw X leave {:?} after A was killed", killed.elapsed());
    assert_eq!(
        p,
        json!({"type": "presence", "room": ROOM, "left": {"id": x_id}}),
        "Y on B after A died"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "{:?}",
        killed.elapsed()
    );
    assert_members(&hub_b, 1, "/api/rooms on B").await;

    // B keeps serving.
    let (mid, _) = y.say(ROOM, "anyone?").await;
    recv_message(&mut y, "y", &mid).await;
    let (_z, jz) = peer(&hub_b).await;
    assert!(
        !member_list(&jz).iter().any(|(id, _, _)| *id == x_id),
        "a ghost of X in joined.members on B: {jz}"
    );
    assert_eq!(member_list(&jz).len(), 2, "{jz}");
    let fy = frames_for(&mut y, QUIET).await;
    assert!(
        !presences(&fy)
            .iter()
            .any(|p| p["left"]["id"] == x_id.as_str()),
        "Y: X left twice: {fy:?}"
    );
    // The client on A noticed too (no hang).
    let code = x.expect_close_within(Duration::from_secs(5)).await;
    assert_eq!(code, 1006, "a killed node sends no close frame");
}

/// Hub A is SIGKILLed and X, who was on A, resumes on B right away (as a
/// client does when its node goes), before A's heartbeat expires: same
/// identity, still in the room, and the sweep of A's members must not
/// remove X, who is now B's. Y on B sees no presence for X at all.
#[tokio::test]
async fn resuming_on_another_node_after_a_crash_keeps_the_member() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let fast = |t: &mut String| {
        set(t, "cluster", "node_timeout_ms", "3000");
        set(t, "cluster", "sweep_interval_ms", "500");
    };
    let (mut hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", fast),
        cluster_hub_with(&redis, "hub-b", fast)
    );
    let (mut x, jx) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;
    next_presence(&mut x, "X", Duration::from_secs(5)).await;
    let epoch = epoch_of(&jx);
    let (x_id, token) = (x.id.clone(), x.session.clone());

    let killed = Instant::now();
    sigkill(&hub_a);
    assert!(
        hub_a.wait_exit(Duration::from_secs(5)).await.is_some(),
        "hub A still runs after SIGKILL"
    );
    drop(x);

    let mut x2 = TestClient::connect(&hub_b).await;
    let w = x2.hello_resume(&token).await;
    // A's members are swept 2-3 s after the kill (heartbeat every
    // node_timeout / 3): X must be B's before that.
    let resumed_after = killed.elapsed();
    assert!(
        resumed_after < Duration::from_millis(1500),
        "the test was too slow to resume before the sweep: {resumed_after:?}"
    );
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], x_id.as_str(), "{w}");
    assert_eq!(w["joined"], json!([ROOM]), "{w}");
    let j = x2.join_since(ROOM, 0, &epoch).await;
    assert!(member_list(&j).iter().any(|(id, _, _)| *id == x_id), "{j}");

    // Well past node_timeout + sweep: Y saw no presence for X, and X is
    // still a member on B.
    let fy = frames_until(&mut y, killed + Duration::from_millis(5500)).await;
    assert!(
        presences(&fy).is_empty(),
        "Y saw presence for X, who resumed on B after A died: {fy:?}"
    );
    assert_members(&hub_b, 2, "/api/rooms on B").await;
    let (mid, _) = y.say(ROOM, "still with us?").await;
    recv_message(&mut x2, "X on B", &mid).await;
    let (xid, _) = x2.say(ROOM, "yes").await;
    recv_message(&mut y, "Y", &xid).await;
}

// ---------------------------------------------------------------------------
// Limits across nodes
// ---------------------------------------------------------------------------

/// `identity_messages_per_10s` = 3: three sends on A use up the person's
/// allowance, and the fourth, after resuming on B, is refused.
#[tokio::test]
async fn the_identity_limit_follows_the_person_to_another_node() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let three = |t: &mut String| set(t, "rate_limits", "identity_messages_per_10s", "3");
    let (hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", three),
        cluster_hub_with(&redis, "hub-b", three)
    );
    let (mut x, _) = peer(&hub_a).await;
    for i in 0..3 {
        x.say(ROOM, &format!("on A {i}")).await;
    }
    let (id, token) = (x.id.clone(), x.session.clone());
    drop(x);

    let mut x2 = TestClient::connect(&hub_b).await;
    let w = x2.hello_resume(&token).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], id.as_str(), "{w}");
    x2.join(ROOM).await;
    let r = x2.send_text(ROOM, "on B").await;
    let ms = assert_rate_limited(&r);
    eprintln!("fourth message on B refused, retry after {ms} ms");

    // Another person on B is not limited by X's sends.
    let (mut other, _) = peer(&hub_b).await;
    other.say(ROOM, "someone else").await;
}

/// `room_messages_per_second` = 1, burst 2: peers on A and B together use
/// the room's burst, and the third quick send is refused on either node.
#[tokio::test]
async fn the_room_limit_is_shared_by_all_nodes() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let slow_room = |t: &mut String| {
        set(t, "rate_limits", "room_messages_per_second", "1");
        set(t, "rate_limits", "room_messages_burst", "2");
    };
    let (hub_a, hub_b) = tokio::join!(
        cluster_hub_with(&redis, "hub-a", slow_room),
        cluster_hub_with(&redis, "hub-b", slow_room)
    );
    let (mut x, _) = peer(&hub_a).await;
    let (mut y, _) = peer(&hub_b).await;

    let start = Instant::now();
    x.say(ROOM, "one, from A").await;
    y.say(ROOM, "two, from B").await;
    let ra = x.send_text(ROOM, "three, from A").await;
    let rb = y.send_text(ROOM, "three, from B").await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "the sends were too slow to test a 1/s limit: {took:?}"
    );
    let ms_a = assert_rate_limited(&ra);
    let ms_b = assert_rate_limited(&rb);
    eprintln!("third sends refused: A retry {ms_a} ms, B retry {ms_b} ms");
}

// ---------------------------------------------------------------------------
// Unknown tokens
// ---------------------------------------------------------------------------

/// An unknown resume token on a cluster node is not an error: a fresh
/// identity, `resumed` false, in no rooms.
#[tokio::test]
async fn an_unknown_token_on_a_cluster_node_gives_a_fresh_identity() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (hub_a, hub_b) = tokio::join!(cluster_hub(&redis, "hub-a"), cluster_hub(&redis, "hub-b"));
    let (x, _) = peer(&hub_a).await;
    let unknown = [
        "nonsense".to_string(),
        "A".repeat(43),
        // A well-formed token that was never issued.
        "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE".to_string(),
    ];
    for hub in [&hub_a, &hub_b] {
        for token in &unknown {
            let mut c = TestClient::connect(hub).await;
            let w = c.hello_resume(token).await;
            assert_eq!(w["resumed"], false, "{w}");
            assert_ne!(w["you"]["id"], x.id.as_str(), "{w}");
            assert_eq!(w["you"]["role"], "peer", "{w}");
            let s = w["session"].as_str().unwrap_or("");
            assert!(s.len() >= 22 && s != token, "{w}");
            assert_ne!(s, x.session, "{w}");
            assert_eq!(w["joined"].as_array().map(Vec::len).unwrap_or(0), 0, "{w}");
            // The fresh identity works.
            c.join(ROOM).await;
        }
    }
}

/// `/api/rooms` on `hub` shows `want` members in the room, within 2 s. A
/// node answers from its own count when a Redis read times out (a loaded
/// machine), so the cluster-wide figure is polled rather than read once.
async fn assert_members(hub: &TestHub, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = hub.room_members(ROOM).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got} members, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
