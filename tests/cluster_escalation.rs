//! Escalations in cluster mode: one shared log in Redis that every node
//! folds (a clinician on any node sees an escalation raised on any other,
//! and acknowledges it there), one node at a time doing the deliveries and
//! deadlines under a lease, a survivor delivering what a SIGKILLed node
//! raised, and a local spool that keeps an escalation raised while Redis is
//! down until Redis is back.

mod common;

use std::time::{Duration, Instant};

use common::redis::{RedisOpts, RedisServer};
use common::webhook::Receiver;
use common::{http_request, mint_staff_token, set, TestClient, TestHub};
use serde_json::json;

const SECRET: &str = "cluster-escalation-secret-0123456789";
const HOOK_SECRET: &str = "cluster-webhook-secret";
const ROOM: &str = "anxiety";
const HIGH: &str = "honestly i want to kill myself";

/// Short node timeout (= the work lease), fast retries.
fn quick(t: &mut String) {
    set(t, "cluster", "node_timeout_ms", "1500");
    set(t, "cluster", "sweep_interval_ms", "500");
    set(t, "escalation", "retry_min_ms", "50");
    set(t, "escalation", "retry_max_ms", "300");
}

async fn node(redis: &RedisServer, name: &str, webhook: Option<&str>) -> TestHub {
    let url = redis.url();
    let mut env = vec![
        ("HEARTH_REDIS_URL", url.as_str()),
        ("HEARTH_NODE_ID", name),
        ("HEARTH_STAFF_SECRET", SECRET),
    ];
    if let Some(w) = webhook {
        env.push(("HEARTH_WEBHOOK_URL", w));
        env.push(("HEARTH_WEBHOOK_SECRET", HOOK_SECRET));
    }
    TestHub::start_full(quick, &env).await
}

async fn clinician(hub: &TestHub) -> TestClient {
    let token = mint_staff_token(SECRET, "clinician", "Dr Ada", "1h");
    let mut c = TestClient::connect(hub).await;
    let w = c.hello_auth(&token).await;
    assert_eq!(w["type"], "welcome", "{w}");
    c
}

async fn peer(hub: &TestHub) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    c.hello_with(json!({"type": "hello", "locale": "en-US"}))
        .await;
    c.join(ROOM).await;
    c
}

#[tokio::test]
async fn an_escalation_raised_on_one_node_is_seen_and_acknowledged_on_another() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (a, b) = tokio::join!(node(&redis, "hub-a", None), node(&redis, "hub-b", None));
    let mut doc_a = clinician(&a).await;
    let mut doc_b = clinician(&b).await;
    let mut p = peer(&a).await;
    let ok = p.send_text(ROOM, HIGH).await;
    assert_eq!(ok["type"], "ok", "{ok}");

    let on_b = doc_b.next_of("escalation", Duration::from_secs(5)).await;
    let on_a = doc_a.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(on_a["id"], on_b["id"]);
    assert_eq!(on_b["peer"]["id"], p.id.as_str(), "{on_b}");
    assert_eq!(on_b["state"], "open", "{on_b}");

    let ok = doc_b
        .request(json!({"type": "ack", "escalation": on_b["id"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let acked_on_a = doc_a.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(acked_on_a["state"], "acknowledged", "{acked_on_a}");
    assert_eq!(acked_on_a["acknowledged"]["by"]["name"], "Dr Ada");

    // A clinician signing in to either node gets the same queue.
    let mut late = clinician(&b).await;
    let q = late.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(
        (q["id"].clone(), q["state"].clone()),
        (on_b["id"].clone(), json!("acknowledged"))
    );
}

#[tokio::test]
async fn a_survivor_delivers_what_a_killed_node_raised() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let rx = Receiver::start().await;
    // Nobody can deliver while the first node lives.
    rx.fail_always(true);
    let url = rx.url();
    let (mut a, b) = tokio::join!(
        node(&redis, "hub-a", Some(&url)),
        node(&redis, "hub-b", Some(&url))
    );
    let mut p = peer(&a).await;
    let ok = p.send_text(ROOM, HIGH).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    a.sigkill();
    rx.fail_always(false);
    // Within the lease time (node_timeout_ms) plus retries, B delivers.
    let got = rx
        .wait_until("delivery by the survivor", Duration::from_secs(15), |r| {
            r.iter().any(|x| x.status == 200)
        })
        .await;
    let body = got
        .iter()
        .find(|x| x.status == 200)
        .expect("accepted")
        .json();
    assert_eq!(body["peer"]["id"], p.id.as_str(), "{body}");
    let mut doc = clinician(&b).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(e["id"], body["id"]);
    // The survivor records the delivery (a moment after the target took it).
    let token = mint_staff_token(SECRET, "clinician", "Dr Ada", "1h");
    let auth = format!("Bearer {token}");
    let path = format!(
        "/api/staff/escalations/{}",
        body["id"].as_str().unwrap_or("")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text, _) =
            http_request(b.addr(), "GET", &path, &[("Authorization", &auth)], "").await;
        let rec: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if rec["deliveries"][0]["state"] == "delivered" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recorded as delivered: {rec}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(b);
}

#[tokio::test]
async fn an_escalation_raised_while_redis_is_down_is_kept_and_shared_once_it_is_back() {
    let mut redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (a, b) = tokio::join!(node(&redis, "hub-a", None), node(&redis, "hub-b", None));
    let mut doc_a = clinician(&a).await;
    let mut p = peer(&a).await;
    redis.kill();
    // The send itself cannot be published without Redis, but screening and
    // the escalation come first: the person's words reach a clinician.
    let r = p.send_text(ROOM, HIGH).await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(
        p.backlog().iter().any(|v| v["type"] == "support"),
        "the person still gets support: {:?}",
        p.backlog()
    );
    let local = doc_a.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(local["peer"]["id"], p.id.as_str(), "{local}");
    redis.restart().await;
    // Once Redis is back the spooled escalation reaches the other node.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut doc_b = clinician(&b).await;
        if let Some(v) = doc_b.recv_within(Duration::from_secs(1)).await {
            if v["type"] == "escalation" {
                assert_eq!(v["id"], local["id"], "{v}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the spooled escalation never reached node B"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn with_two_nodes_a_webhook_is_sent_each_escalation_once() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let rx = Receiver::start().await;
    let url = rx.url();
    let (a, b) = tokio::join!(
        node(&redis, "hub-a", Some(&url)),
        node(&redis, "hub-b", Some(&url))
    );
    let mut pa = peer(&a).await;
    let mut pb = peer(&b).await;
    pa.send_text(ROOM, HIGH).await;
    pb.send_text(ROOM, HIGH).await;
    rx.wait_until("two deliveries", Duration::from_secs(10), |r| r.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = rx.received();
    let mut keys: Vec<_> = got
        .iter()
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        (got.len(), keys.len()),
        (2, 2),
        "one delivery per escalation: {keys:?}"
    );
}

#[tokio::test]
async fn a_care_room_opened_on_one_node_is_joined_from_another() {
    let redis = RedisServer::start(RedisOpts::ephemeral()).await;
    let (a, b) = tokio::join!(node(&redis, "hub-a", None), node(&redis, "hub-b", None));
    let mut doc = clinician(&a).await;
    let mut p = peer(&b).await;
    p.send_text(ROOM, HIGH).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    let ok = doc
        .request(json!({"type": "care", "escalation": e["id"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let room = ok["id"].as_str().expect("room id").to_string();

    // The person, on the other node, is invited and joins there.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.recv_within(left).await {
            Some(v) if v["type"] == "invited" => {
                assert_eq!(v["room"], room.as_str(), "{v}");
                break;
            }
            Some(_) => continue,
            None => panic!("no invitation on node B"),
        }
    }
    assert_eq!(p.join(&room).await["type"], "joined");
    assert_eq!(doc.join(&room).await["type"], "joined");
    let (mid, _) = p.say(&room, "are you still there?").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match doc.recv_within(left).await {
            Some(v) if v["type"] == "message" && v["id"] == mid.as_str() => break,
            Some(_) => continue,
            None => panic!("the clinician on A never got the message"),
        }
    }
    // Nobody else finds it, on either node.
    for hub in [&a, &b] {
        let mut stranger = peer(hub).await;
        let r = stranger
            .request(json!({"type": "join", "room": room}))
            .await;
        assert_eq!(r["code"], "no_such_room", "{r}");
    }
}
