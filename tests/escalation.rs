//! Escalations seen from outside: the `escalation` event for connected
//! clinicians (and the queue for staff who sign in later), `ack` and
//! `resolve` by frame and by the staff API, signed webhooks with retries and
//! dead letters, re-escalation to the next tier when nobody acknowledges,
//! and an escalation that survives a SIGKILL of the node.

mod common;

use std::time::Duration;

use common::webhook::{expected_signature, Receiver};
use common::{assert_error, http_request, mint_staff_token, set, TestClient, TestHub};
use serde_json::{json, Value};

const SECRET: &str = "escalation-test-secret-0123456789";
const HOOK_SECRET: &str = "webhook-secret-abcdef";
const ROOM: &str = "anxiety";
const QUIET: Duration = Duration::from_millis(400);
const IMMINENT: &str =
    "i have all the pills ready and im taking them tonight when everyone is asleep. goodbye";
const HIGH: &str = "honestly i want to kill myself";

fn fast_retries(t: &mut String) {
    set(t, "escalation", "retry_min_ms", "50");
    set(t, "escalation", "retry_max_ms", "200");
}

async fn hub_with(edit: impl FnOnce(&mut String), webhook: Option<&str>) -> TestHub {
    let mut env = vec![("HEARTH_STAFF_SECRET", SECRET)];
    if let Some(url) = webhook {
        env.push(("HEARTH_WEBHOOK_URL", url));
        env.push(("HEARTH_WEBHOOK_SECRET", HOOK_SECRET));
    }
    TestHub::start_full(edit, &env).await
}

async fn clinician(hub: &TestHub) -> (TestClient, String) {
    let token = mint_staff_token(SECRET, "clinician", "Dr Ada", "1h");
    let mut c = TestClient::connect(hub).await;
    let w = c.hello_auth(&token).await;
    assert_eq!(w["type"], "welcome", "{w}");
    (c, token)
}

async fn peer(hub: &TestHub) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    c.hello_with(json!({"type": "hello", "locale": "en-US"}))
        .await;
    c.join(ROOM).await;
    c
}

async fn drain(c: &mut TestClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = c.recv_within(QUIET).await {
        out.push(v);
    }
    out
}

async fn api(hub: &TestHub, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, text, _) = http_request(
        hub.addr(),
        method,
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Raises one escalation from a fresh peer; returns the peer.
async fn raise(hub: &TestHub, text: &str) -> TestClient {
    let mut p = peer(hub).await;
    let ok = p.send_text(ROOM, text).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    p
}

#[tokio::test]
async fn a_crisis_message_raises_an_escalation_that_a_connected_clinician_sees() {
    let hub = hub_with(|_| {}, None).await;
    let (mut doc, _) = clinician(&hub).await;
    let mut other = peer(&hub).await;
    let mut p = peer(&hub).await;
    let (ctx_id, _) = other.say(ROOM, "rough week for everyone i think").await;
    drain(&mut p).await;
    drain(&mut other).await;

    let ok = p.send_text(ROOM, IMMINENT).await;
    assert_eq!(ok["held"], true, "imminent is held by default: {ok}");
    let flagged_id = ok["id"].as_str().expect("id").to_string();
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;

    let id = e["id"].as_str().expect("id");
    assert!(id.starts_with("esc_"), "{e}");
    assert_eq!(e["level"], "imminent", "{e}");
    assert_eq!(e["state"], "open", "{e}");
    assert_eq!(e["room"], ROOM, "{e}");
    assert_eq!(e["peer"]["id"], p.id.as_str(), "{e}");
    assert_eq!(e["peer"]["name"], p.name.as_str(), "{e}");
    assert!(
        e["categories"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("suicide"))),
        "{e}"
    );
    assert!(
        e["signals"].as_array().is_some_and(|s| !s.is_empty()),
        "{e}"
    );
    let created = e["created_ts"].as_u64().expect("created_ts");
    assert_eq!(e["ack_deadline_ts"].as_u64(), Some(created + 60_000), "{e}");
    let excerpt = e["excerpt"].as_array().expect("excerpt");
    let last = excerpt.last().expect("flagged line");
    assert_eq!(last["id"], flagged_id.as_str(), "{e}");
    assert_eq!(last["text"], IMMINENT, "{e}");
    assert_eq!(last["flagged"], true, "{e}");
    assert!(
        excerpt
            .iter()
            .any(|l| l["id"] == ctx_id.as_str() && l["flagged"].is_null()),
        "the earlier room message is context: {e}"
    );
    // Neither the room nor the person sees the escalation itself.
    for (who, c) in [("sender", &mut p), ("other peer", &mut other)] {
        let got = drain(c).await;
        assert!(
            got.iter().all(|v| v["type"] != "escalation"),
            "{who} saw the escalation: {got:?}"
        );
    }
    let m = hub.metrics_text().await;
    assert!(
        m.contains("hearth_escalations_raised_total{level=\"imminent\"} 1"),
        "{m}"
    );
    assert!(m.contains("hearth_escalations{state=\"open\"} 1"), "{m}");
}

#[tokio::test]
async fn staff_who_arrive_later_get_the_queue_clinicians_all_moderators_their_room() {
    let hub = hub_with(|_| {}, None).await;
    let _p = raise(&hub, HIGH).await;

    let (mut doc, _) = clinician(&hub).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(e["level"], "high", "{e}");
    assert_eq!(e["state"], "open", "{e}");

    let mod_token = mint_staff_token(SECRET, "moderator", "Mod Mo", "1h");
    let mut m = TestClient::connect(&hub).await;
    m.hello_auth(&mod_token).await;
    let before = drain(&mut m).await;
    assert!(
        before.iter().all(|v| v["type"] != "escalation"),
        "a moderator is not paged for every room: {before:?}"
    );
    let ok = m.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let got = m.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(got["id"], e["id"], "{got}");
}

#[tokio::test]
async fn ack_and_resolve_by_frame_and_by_the_staff_api() {
    let hub = hub_with(|_| {}, None).await;
    let (mut doc, token) = clinician(&hub).await;
    let mut p = raise(&hub, HIGH).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    let id = e["id"].as_str().expect("id").to_string();

    // Peers cannot touch escalations.
    let r = p.request(json!({"type": "ack", "escalation": id})).await;
    assert_error(&r, "forbidden");

    let ok = doc.request(json!({"type": "ack", "escalation": id})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let e2 = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(e2["state"], "acknowledged", "{e2}");
    assert_eq!(e2["acknowledged"]["by"]["name"], "Dr Ada", "{e2}");
    // Acknowledging again is harmless.
    let again = doc.request(json!({"type": "ack", "escalation": id})).await;
    assert_eq!(again["type"], "ok", "{again}");

    let (s, list) = api(&hub, "GET", "/api/staff/escalations", &token, "").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["escalations"][0]["state"], "acknowledged", "{list}");

    let path = format!("/api/staff/escalations/{id}/resolve");
    let (s, r) = api(
        &hub,
        "POST",
        &path,
        &token,
        r#"{"note":"called back, safe with family"}"#,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "resolved", "{r}");
    assert_eq!(
        r["resolved"]["note"], "called back, safe with family",
        "{r}"
    );
    let e3 = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(e3["state"], "resolved", "{e3}");

    let (s, r) = api(&hub, "POST", &path, &token, "").await;
    assert_eq!((s, r["code"].as_str()), (409, Some("bad_request")), "{r}");
    let (s, r) = api(
        &hub,
        "POST",
        "/api/staff/escalations/esc_nope/ack",
        &token,
        "",
    )
    .await;
    assert_eq!(s, 404, "{r}");
    let bad = doc
        .request(json!({"type": "resolve", "escalation": "esc_nope"}))
        .await;
    assert_error(&bad, "bad_request");
    let (s, _) = api(&hub, "GET", "/api/staff/escalations", "not-a-token", "").await;
    assert_eq!(s, 401);

    let (_, open) = api(&hub, "GET", "/api/staff/escalations", &token, "").await;
    assert_eq!(open["escalations"], json!([]), "{open}");
    let (_, all) = api(&hub, "GET", "/api/staff/escalations?state=all", &token, "").await;
    assert_eq!(
        all["escalations"].as_array().map(Vec::len),
        Some(1),
        "{all}"
    );
    let (s, _) = api(&hub, "GET", "/api/staff/escalations?state=lost", &token, "").await;
    assert_eq!(s, 400);

    // Every transition is in the audit log.
    let (_, audit) = api(&hub, "GET", "/api/staff/audit", &token, "").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "escalation_raised",
        "escalation_acknowledged",
        "escalation_resolved",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
async fn the_webhook_gets_the_escalation_signed_with_its_idempotency_key() {
    let rx = Receiver::start().await;
    let hub = hub_with(fast_retries, Some(&rx.url())).await;
    let _p = raise(&hub, IMMINENT).await;
    let got = rx
        .wait_until("one delivery", Duration::from_secs(10), |r| !r.is_empty())
        .await;
    let r = &got[0];
    let body = r.json();
    assert_eq!(body["type"], "escalation", "{body}");
    assert_eq!(body["level"], "imminent", "{body}");
    assert_eq!(r.idempotency_key.as_deref(), body["id"].as_str(), "{body}");
    assert_eq!(
        r.signature.as_deref(),
        Some(expected_signature(HOOK_SECRET, &r.body).as_str())
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    tokio::time::sleep(QUIET).await;
    assert_eq!(rx.received().len(), 1, "delivered once, not again");
}

#[tokio::test]
async fn a_failing_webhook_is_retried_with_the_same_key_until_it_accepts() {
    let rx = Receiver::start().await;
    rx.fail_first(2);
    let hub = hub_with(fast_retries, Some(&rx.url())).await;
    let (_, token) = clinician(&hub).await;
    let _p = raise(&hub, HIGH).await;
    let got = rx
        .wait_until("an accepted delivery", Duration::from_secs(10), |r| {
            r.iter().any(|x| x.status == 200)
        })
        .await;
    assert_eq!(got.len(), 3, "two failures, then success");
    let keys: Vec<_> = got.iter().map(|r| r.idempotency_key.clone()).collect();
    assert!(
        keys.iter().all(|k| k == &keys[0] && k.is_some()),
        "{keys:?}"
    );
    // Recorded a moment after the target answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let d = loop {
        let (_, list) = api(&hub, "GET", "/api/staff/escalations", &token, "").await;
        let d = list["escalations"][0]["deliveries"][0].clone();
        if d["state"] == "delivered" || std::time::Instant::now() >= deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_dead_lettered_and_staff_see_it() {
    let rx = Receiver::start().await;
    rx.fail_always(true);
    let hub = hub_with(
        |t| {
            fast_retries(t);
            set(t, "escalation", "webhook_attempts", "3");
        },
        Some(&rx.url()),
    )
    .await;
    let (mut doc, token) = clinician(&hub).await;
    let _p = raise(&hub, HIGH).await;
    let first = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(first["deliveries"][0]["state"], "pending", "{first}");
    // The clinician is told when delivery is given up.
    let dead = doc.next_of("escalation", Duration::from_secs(10)).await;
    let d = &dead["deliveries"][0];
    assert_eq!(d["state"], "dead", "{dead}");
    assert_eq!(d["attempts"], 3, "{dead}");
    assert!(
        d["last_error"].as_str().is_some_and(|e| e.contains("503")),
        "{dead}"
    );
    assert_eq!(rx.received().len(), 3);
    let (_, list) = api(&hub, "GET", "/api/staff/escalations", &token, "").await;
    assert_eq!(
        list["escalations"][0]["deliveries"][0]["state"], "dead",
        "{list}"
    );
    assert_eq!(
        list["escalations"][0]["state"], "open",
        "still open: {list}"
    );
    assert_eq!(
        hub.metric("hearth_escalation_dead_letters_total").await,
        1.0
    );
}

/// Tier 1 by HEARTH_WEBHOOK_URL, tier 2 in the config; deadline 2 s.
async fn tiered(t1: &Receiver, t2: &Receiver) -> TestHub {
    let tier2 = t2.url();
    hub_with(
        move |t| {
            fast_retries(t);
            set(t, "escalation", "ack_high_secs", "2");
            let from = "name = \"clinical lead\"\nwebhooks = []";
            assert!(t.contains(from), "test config tiers changed");
            *t = t.replace(
                from,
                &format!("name = \"clinical lead\"\nwebhooks = [\"{tier2}\"]"),
            );
        },
        Some(&t1.url()),
    )
    .await
}

#[tokio::test]
async fn no_acknowledgement_by_the_deadline_moves_it_to_the_next_tier() {
    let (t1, t2) = (Receiver::start().await, Receiver::start().await);
    let hub = tiered(&t1, &t2).await;
    let (mut doc, _) = clinician(&hub).await;
    let _p = raise(&hub, HIGH).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(e["tier"], 1, "{e}");
    t1.wait_until("tier 1", Duration::from_secs(5), |r| !r.is_empty())
        .await;
    assert!(t2.received().is_empty(), "tier 2 before the deadline");
    let got = t2
        .wait_until("tier 2 after the deadline", Duration::from_secs(10), |r| {
            !r.is_empty()
        })
        .await;
    let body = got[0].json();
    assert_eq!(body["id"], e["id"], "{body}");
    assert_eq!(body["tier"], 2, "{body}");
    assert_eq!(body["tier_name"], "clinical lead", "{body}");
    let again = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(
        (again["tier"].as_u64(), again["state"].as_str()),
        (Some(2), Some("open"))
    );
}

#[tokio::test]
async fn an_acknowledgement_before_the_deadline_stops_the_reescalation() {
    let (t1, t2) = (Receiver::start().await, Receiver::start().await);
    let hub = tiered(&t1, &t2).await;
    let (mut doc, _) = clinician(&hub).await;
    let _p = raise(&hub, HIGH).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    let ok = doc
        .request(json!({"type": "ack", "escalation": e["id"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    // Well past the 2 s deadline.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(t2.received().is_empty(), "tier 2 was paged after an ack");
    assert_eq!(t1.accepted().len(), 1);
}

#[tokio::test]
async fn an_escalation_raised_just_before_a_sigkill_still_reaches_the_webhook() {
    let rx = Receiver::start().await;
    // The target is down while the first node lives, so nothing can be
    // recorded as delivered before the kill.
    rx.fail_always(true);
    let mut first = hub_with(fast_retries, Some(&rx.url())).await;
    let data = first.data_dir();
    let mut p = peer(&first).await;
    let ok = p.send_text(ROOM, IMMINENT).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    first.sigkill();
    rx.fail_always(false);
    let data_env = data.to_string_lossy().to_string();
    let url = rx.url();
    let second = TestHub::start_full(
        fast_retries,
        &[
            ("HEARTH_STAFF_SECRET", SECRET),
            ("HEARTH_WEBHOOK_URL", url.as_str()),
            ("HEARTH_WEBHOOK_SECRET", HOOK_SECRET),
            ("HEARTH_DATA_DIR", data_env.as_str()),
        ],
    )
    .await;
    let got = rx
        .wait_until("delivery after the restart", Duration::from_secs(10), |r| {
            r.iter().any(|x| x.status == 200)
        })
        .await;
    let body = got
        .iter()
        .find(|x| x.status == 200)
        .expect("accepted")
        .json();
    assert_eq!(body["level"], "imminent", "{body}");
    assert_eq!(body["peer"]["id"], p.id.as_str(), "{body}");
    // Still open, and shown to a clinician who signs in to the new node.
    let (mut doc, _) = clinician(&second).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(
        (e["id"].clone(), e["state"].as_str()),
        (body["id"].clone(), Some("open"))
    );
    drop(first);
}

#[tokio::test]
async fn webhooks_without_a_secret_refuse_to_start_with_a_clear_message() {
    let rx = Receiver::start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["check-config", "--config", "tests/config/test.toml"])
        .env("HEARTH_WEBHOOK_URL", rx.url())
        .env_remove("HEARTH_WEBHOOK_SECRET")
        .output()
        .expect("run check-config");
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HEARTH_WEBHOOK_SECRET"), "{text}");
}

#[tokio::test]
async fn earlier_signals_from_the_same_person_raise_a_later_message() {
    let hub = hub_with(|_| {}, None).await;
    let (mut doc, _) = clinician(&hub).await;
    let mut p = peer(&hub).await;
    let mut other = peer(&hub).await;
    // One preparation act that stays below high on its own (many single
    // acts are escalated at once by the classifier's model; this wording
    // is not, so the risk memory is what raises the next message).
    p.send_text(ROOM, "finally sorted my will").await;
    // The same words from someone without that history stay below high.
    other
        .send_text(ROOM, "i'm fine now 🙂 don't worry about me")
        .await;
    tokio::time::sleep(QUIET).await;
    let before: Vec<Value> = drain(&mut doc).await;
    assert!(
        before.iter().all(|v| v["type"] != "escalation"),
        "no escalation yet: {before:?}"
    );
    drain(&mut p).await;
    p.send_text(ROOM, "i'm fine now 🙂 don't worry about me")
        .await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(e["peer"]["id"], p.id.as_str(), "{e}");
    assert_eq!(e["level"], "high", "{e}");
    assert!(
        e["signals"].to_string().contains("context."),
        "the context rule is named: {e}"
    );
    let got = drain(&mut p).await;
    assert!(
        got.iter()
            .any(|v| v["type"] == "support" && v["level"] == "high"),
        "{got:?}"
    );
}

#[tokio::test]
async fn urging_a_named_person_raises_an_escalation_about_them() {
    let hub = hub_with(|_| {}, None).await;
    let (mut doc, _) = clinician(&hub).await;
    let target = peer(&hub).await;
    let mut bully = peer(&hub).await;
    let text = format!("{} just kill yourself already", target.name);
    let ok = bully.send_text(ROOM, &text).await;
    assert_eq!(ok["held"], true, "urging is held: {ok}");
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    assert_eq!(
        e["peer"]["id"],
        target.id.as_str(),
        "about the person urged: {e}"
    );
    assert_eq!(e["level"], "high", "{e}");
    assert!(e["signals"].to_string().contains("named_target"), "{e}");
    let last = e["excerpt"]
        .as_array()
        .and_then(|x| x.last().cloned())
        .expect("line");
    assert_eq!(last["from"]["id"], bully.id.as_str(), "{e}");
    // Urging nobody in particular raises none.
    bully.send_text(ROOM, "kys").await;
    let more = drain(&mut doc).await;
    assert!(
        more.iter()
            .all(|v| v["type"] != "escalation" || v["id"] == e["id"]),
        "{more:?}"
    );
}
