//! Care rooms: a clinician opens a private room with the person from an
//! escalation (`care`); the person gets `invited` and joins it like any
//! room; nobody else can find, join or watch it.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, http_request, mint_staff_token, TestClient, TestHub};
use serde_json::{json, Value};

const SECRET: &str = "care-room-test-secret-0123456789";
const ROOM: &str = "anxiety";
const HIGH: &str = "honestly i want to kill myself";
const QUIET: Duration = Duration::from_millis(400);

async fn hub() -> TestHub {
    TestHub::start_full(|_| {}, &[("HEARTH_STAFF_SECRET", SECRET)]).await
}

async fn staff(hub: &TestHub, role: &str, name: &str) -> (TestClient, String) {
    let token = mint_staff_token(SECRET, role, name, "1h");
    let mut c = TestClient::connect(hub).await;
    let w = c.hello_auth(&token).await;
    assert_eq!(w["type"], "welcome", "{w}");
    (c, token)
}

async fn peer(hub: &TestHub) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    c.hello().await;
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

/// A peer who raised an escalation, the clinician who saw it, its id.
async fn escalated(hub: &TestHub) -> (TestClient, TestClient, String, String) {
    let (mut doc, token) = staff(hub, "clinician", "Dr Ada").await;
    let mut p = peer(hub).await;
    p.send_text(ROOM, HIGH).await;
    let e = doc.next_of("escalation", Duration::from_secs(5)).await;
    drain(&mut p).await;
    let id = e["id"].as_str().expect("id").to_string();
    (p, doc, id, token)
}

#[tokio::test]
async fn a_clinician_opens_a_care_room_and_the_person_is_invited_and_joins() {
    let hub = hub().await;
    let (mut p, mut doc, esc, token) = escalated(&hub).await;

    let ok = doc
        .request(json!({"type": "care", "escalation": esc}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let room = ok["id"].as_str().expect("room id").to_string();
    assert!(room.starts_with("care-"), "{ok}");

    let inv = p.next_of("invited", Duration::from_secs(5)).await;
    assert_eq!(inv["room"], room.as_str(), "{inv}");
    assert_eq!(inv["by"]["name"], "Dr Ada", "{inv}");
    assert_eq!(inv["by"]["role"], "clinician", "{inv}");

    let j = p.join(&room).await;
    assert_eq!(j["type"], "joined", "{j}");
    let j = doc.join(&room).await;
    assert_eq!(j["type"], "joined", "{j}");
    drain(&mut p).await;

    // Contact details may be shared here: it can be what keeps someone safe.
    let ok = p
        .send_text(&room, "my number is 555 0134 2211, please call")
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let m = doc.next_of("message", Duration::from_secs(5)).await;
    assert_eq!(m["room"], room.as_str(), "{m}");
    assert_eq!(m["from"]["id"], p.id.as_str(), "{m}");

    // The record says where the care is happening; the audit log too.
    let (_, body, _) = http_request(
        hub.addr(),
        "GET",
        &format!("/api/staff/escalations/{esc}"),
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    let rec: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(rec["care_room"]["room"], room.as_str(), "{rec}");
    let (_, audit, _) = http_request(
        hub.addr(),
        "GET",
        "/api/staff/audit",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert!(audit.contains("care_opened"), "{audit}");
}

#[tokio::test]
async fn nobody_else_can_find_join_or_watch_a_care_room() {
    let hub = hub().await;
    let (_p, mut doc, esc, _) = escalated(&hub).await;
    let ok = doc
        .request(json!({"type": "care", "escalation": esc}))
        .await;
    let room = ok["id"].as_str().expect("room id").to_string();

    let mut stranger = peer(&hub).await;
    assert_error(
        &stranger
            .request(json!({"type": "join", "room": room}))
            .await,
        "no_such_room",
    );
    let (mut m, _) = staff(&hub, "moderator", "Mod Mo").await;
    assert_error(
        &m.request(json!({"type": "watch", "room": room})).await,
        "no_such_room",
    );
    assert_error(
        &m.request(json!({"type": "join", "room": room})).await,
        "no_such_room",
    );
    // Only clinicians open care rooms.
    assert_error(
        &m.request(json!({"type": "care", "escalation": esc})).await,
        "forbidden",
    );
    // The internal slot names lead nowhere either.
    assert_error(
        &stranger
            .request(json!({"type": "join", "room": "care-slot-0"}))
            .await,
        "no_such_room",
    );
    // Not in any room list.
    let w = TestClient::connect(&hub).await.hello().await;
    assert!(!w["rooms"].to_string().contains("care-"), "{w}");
    let rooms = hub.api_rooms().await;
    assert!(!rooms.to_string().contains("care-"), "{rooms}");
}

#[tokio::test]
async fn an_invitation_waits_for_a_person_who_reconnects() {
    let hub = hub().await;
    let (p, mut doc, esc, _) = escalated(&hub).await;
    let session = p.session.clone();
    drop(p);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = doc
        .request(json!({"type": "care", "escalation": esc}))
        .await;
    let room = ok["id"].as_str().expect("room id").to_string();
    let mut back = TestClient::connect(&hub).await;
    let w = back.hello_resume(&session).await;
    assert_eq!(w["resumed"], true, "{w}");
    let inv = back.next_of("invited", Duration::from_secs(5)).await;
    assert_eq!(inv["room"], room.as_str(), "{inv}");
    assert_eq!(back.join(&room).await["type"], "joined");
}

#[tokio::test]
async fn a_second_clinician_is_let_into_the_same_room() {
    let hub = hub().await;
    let (mut p, mut doc, esc, _) = escalated(&hub).await;
    let first = doc
        .request(json!({"type": "care", "escalation": esc}))
        .await;
    let room = first["id"].as_str().expect("room id").to_string();
    let (mut lead, _) = staff(&hub, "clinician", "Dr Bea").await;
    // Before being let in, the room does not exist for them.
    assert_error(
        &lead.request(json!({"type": "join", "room": room})).await,
        "no_such_room",
    );
    let second = lead
        .request(json!({"type": "care", "escalation": esc}))
        .await;
    assert_eq!(second["id"], room.as_str(), "{second}");
    assert_eq!(lead.join(&room).await["type"], "joined");
    assert_eq!(p.join(&room).await["type"], "joined");
    let unknown = lead
        .request(json!({"type": "care", "escalation": "esc_nope"}))
        .await;
    assert_error(&unknown, "bad_request");
}

#[tokio::test]
async fn a_resolved_and_empty_care_room_frees_its_slot_with_nothing_left_behind() {
    let hub = TestHub::start_full(
        |t| common::set(t, "escalation", "care_rooms", "1"),
        &[("HEARTH_STAFF_SECRET", SECRET)],
    )
    .await;
    let (mut p, mut doc, esc, token) = escalated(&hub).await;
    let ok = doc
        .request(json!({"type": "care", "escalation": esc}))
        .await;
    let room = ok["id"].as_str().expect("room id").to_string();
    p.join(&room).await;
    p.say(&room, "thank you for staying with me").await;

    // The only slot is taken: a second escalation cannot have one yet.
    let mut q = peer(&hub).await;
    q.send_text(ROOM, HIGH).await;
    // (Updates of the first one arrive too: it now has a care room.)
    let esc2 = loop {
        let e = doc.next_of("escalation", Duration::from_secs(5)).await;
        if e["id"] != esc.as_str() {
            break e["id"].as_str().expect("id").to_string();
        }
    };
    let full = doc
        .request(json!({"type": "care", "escalation": esc2}))
        .await;
    assert_error(&full, "bad_request");

    let ok = doc
        .request(json!({"type": "resolve", "escalation": esc, "note": "safe"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    p.leave(&room).await;
    // Freed by the periodic upkeep (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(25);
    let room2 = loop {
        let r = doc
            .request(json!({"type": "care", "escalation": esc2}))
            .await;
        if r["type"] == "ok" {
            break r["id"].as_str().expect("room id").to_string();
        }
        assert!(Instant::now() < deadline, "the slot was never freed: {r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_ne!(room2, room, "a new room gets a new id");
    // The old id leads nowhere, and the new room starts empty.
    let mut fresh = peer(&hub).await;
    let r = fresh.request(json!({"type": "join", "room": room})).await;
    assert_error(&r, "no_such_room");
    // (q sat idle through the wait; it resumes on a new connection.)
    let mut q2 = TestClient::connect(&hub).await;
    q2.hello_resume(&q.session).await;
    let j = q2.join(&room2).await;
    assert_eq!(j["history"], json!([]), "{j}");
    // The first room's conversation stays with its escalation record.
    let (_, body, _) = http_request(
        hub.addr(),
        "GET",
        &format!("/api/staff/escalations/{esc}"),
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    let rec: Value = serde_json::from_str(&body).expect("json");
    assert!(rec["care_room"]["closed_ts"].is_u64(), "{rec}");
    assert_eq!(
        rec["care_room"]["transcript"][0]["text"], "thank you for staying with me",
        "{rec}"
    );
}
