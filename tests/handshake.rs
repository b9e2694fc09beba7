//! Handshake: `hello` → `welcome`, `ref` echo, ordering rules, handshake
//! timeout and staff sign-in refusal.

mod common;

use common::{assert_error, TestClient, TestHub, ROOMS};
use serde_json::json;
use std::time::Duration;

fn is_base64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[tokio::test]
async fn welcome_has_the_contract_shape() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.send_json(json!({"type": "hello", "ref": 1, "locale": "en-GB"}))
        .await;
    let w = c.recv().await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["ref"], 1, "{w}");

    let session = w["session"].as_str().expect("session string");
    assert!(session.len() >= 22, "session token too short: {session}");
    assert!(is_base64url(session), "session not base64url: {session}");

    let you = &w["you"];
    let id = you["id"].as_str().expect("you.id");
    assert!(id.starts_with("p_") && id.len() > 2, "you.id: {id}");
    let name = you["name"].as_str().expect("you.name");
    assert_eq!(name.split_whitespace().count(), 2, "name: {name:?}");
    assert_eq!(you["role"], "peer");
    assert_eq!(w["resumed"], false);

    let rooms = w["rooms"].as_array().expect("rooms list");
    for want in ROOMS {
        let r = rooms
            .iter()
            .find(|r| r["id"] == want)
            .unwrap_or_else(|| panic!("room {want} missing from {w}"));
        assert!(r["title"].as_str().is_some_and(|t| !t.is_empty()), "{r}");
        assert!(r["description"].as_str().is_some(), "{r}");
        assert_eq!(r["members"], 0, "{r}");
        assert_eq!(r["capacity"], 30, "{r}");
        assert_eq!(r["locked"], false, "{r}");
    }

    assert_eq!(w["limits"]["max_text_chars"], 2000, "{w}");
    assert_eq!(w["limits"]["messages_per_10s"], 5000, "{w}");
    assert_eq!(w["server"]["version"], env!("CARGO_PKG_VERSION"), "{w}");
    assert!(
        w["server"]["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{w}"
    );
}

#[tokio::test]
async fn welcome_without_ref_has_no_ref() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.send_json(json!({"type": "hello"})).await;
    let w = c.recv().await;
    assert_eq!(w["type"], "welcome");
    assert!(w.get("ref").is_none(), "{w}");
}

#[tokio::test]
async fn node_id_comes_from_the_environment() {
    let hub = TestHub::start_full(|_| {}, &[("HEARTH_NODE_ID", "hub-itest")]).await;
    let mut c = TestClient::connect(&hub).await;
    let w = c.hello().await;
    assert_eq!(w["server"]["node"], "hub-itest", "{w}");
}

#[tokio::test]
async fn every_identity_is_distinct() {
    let hub = TestHub::start().await;
    let mut a = TestClient::connect(&hub).await;
    let mut b = TestClient::connect(&hub).await;
    a.hello().await;
    b.hello().await;
    assert_ne!(a.id, b.id);
    assert_ne!(a.session, b.session);
}

#[tokio::test]
async fn ref_is_echoed_unchanged() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    let w = c.request(json!({"type": "hello", "ref": "hello-1"})).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["ref"], "hello-1");

    let refs = [
        json!("a string ref"),
        json!(42),
        json!(0),
        json!(-7),
        json!(u64::MAX),
        json!(i64::MIN),
        json!("r".repeat(64)),
        json!("ünïcødé ✓"),
    ];
    for rf in refs {
        let j = c
            .request(json!({"type": "join", "room": "anxiety", "ref": rf.clone()}))
            .await;
        assert_eq!(j["type"], "joined", "{j}");
        assert_eq!(j["ref"], rf, "join reply must echo {rf}: {j}");
        // Errors echo it too.
        let e = c
            .request(json!({"type": "join", "room": "nowhere", "ref": rf.clone()}))
            .await;
        assert_error(&e, "no_such_room");
        assert_eq!(e["ref"], rf);
    }
    // An integer ref stays an integer, a string stays a string.
    let r = c
        .request(json!({"type": "leave", "room": "anxiety", "ref": 7}))
        .await;
    assert!(r["ref"].is_u64(), "{r}");
    let r = c
        .request(json!({"type": "leave", "room": "anxiety", "ref": "7"}))
        .await;
    assert!(r["ref"].is_string(), "{r}");
}

#[tokio::test]
async fn ref_longer_than_64_chars_is_bad_request() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    c.send_json(json!({"type": "join", "room": "anxiety", "ref": "r".repeat(65)}))
        .await;
    let e = c.recv().await;
    assert_error(&e, "bad_request");
    c.join("anxiety").await;
}

#[tokio::test]
async fn second_hello_is_bad_request() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    let w = c.hello().await;
    let e = c.request(json!({"type": "hello", "ref": 2})).await;
    assert_error(&e, "bad_request");
    assert_eq!(e["ref"], 2);
    // Identity unchanged and connection still usable.
    let j = c.join("anxiety").await;
    let members = j["members"].as_array().expect("members");
    assert!(members.iter().any(|m| m["id"] == w["you"]["id"]), "{j}");
}

#[tokio::test]
async fn frame_before_hello_is_bad_request_and_connection_stays_open() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    let e = c
        .request(json!({"type": "join", "room": "anxiety", "ref": "early"}))
        .await;
    assert_error(&e, "bad_request");
    assert_eq!(e["ref"], "early");
    let e = c
        .request(json!({"type": "send", "room": "anxiety", "text": "hi"}))
        .await;
    assert_error(&e, "bad_request");
    let w = c.hello().await;
    assert_eq!(w["resumed"], false);
    c.join("anxiety").await;
}

#[tokio::test]
async fn no_hello_within_handshake_timeout_closes_4001() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "websocket", "handshake_timeout_secs", "1");
    })
    .await;
    let mut c = TestClient::connect(&hub).await;
    let started = std::time::Instant::now();
    let code = c.expect_close_within(Duration::from_secs(5)).await;
    assert_eq!(code, 4001);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn non_hello_frames_do_not_extend_the_handshake() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "websocket", "handshake_timeout_secs", "1");
    })
    .await;
    let mut c = TestClient::connect(&hub).await;
    let e = c
        .request(json!({"type": "typing", "room": "anxiety"}))
        .await;
    assert_error(&e, "bad_request");
    assert_eq!(c.expect_close_within(Duration::from_secs(5)).await, 4001);
}

#[tokio::test]
async fn hello_in_time_is_not_closed_by_the_handshake_timer() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "websocket", "handshake_timeout_secs", "1");
    })
    .await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    // Past the handshake timeout the connection still answers.
    assert!(c.recv_within(Duration::from_millis(1500)).await.is_none());
    c.join("anxiety").await;
}

#[tokio::test]
async fn hello_with_auth_closes_4003() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.send_json(json!({"type": "hello", "ref": 1, "auth": "not-a-valid-token"}))
        .await;
    assert_eq!(c.expect_close().await, 4003);
}

#[tokio::test]
async fn hello_with_auth_gets_unauthorized_then_close_4003() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.send_json(json!({"type": "hello", "ref": 1, "auth": "not-a-valid-token"}))
        .await;
    match c.next_event(Duration::from_secs(5)).await {
        common::Event::Frame(e) => {
            assert_error(&e, "unauthorized");
            assert_eq!(e["ref"], 1);
        }
        other => panic!("expected error unauthorized before the close, got {other:?}"),
    }
    assert_eq!(c.expect_close().await, 4003);
}

#[tokio::test]
async fn hello_with_wrong_field_types_is_bad_request() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    for bad in [
        json!({"type": "hello", "resume": 5}),
        json!({"type": "hello", "locale": ["en"]}),
    ] {
        let e = c.request(bad).await;
        assert_error(&e, "bad_request");
    }
    c.hello().await;
}

#[tokio::test]
async fn client_close_is_answered_with_close() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    c.try_send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("send close");
    match c.next_event(Duration::from_secs(5)).await {
        common::Event::Close(code) => assert_eq!(code, 1000),
        other => panic!("expected the server's Close reply, got {other:?}"),
    }
}

/// A message longer than the session's fragment size (a `welcome` with a
/// long room description) goes out as continuation frames; the client gets
/// it whole, and what follows it in order.
#[tokio::test]
async fn long_welcome_arrives_whole_in_fragments() {
    let long = "a room for long talks ".repeat(400); // ~8.8 KB, several fragments
    let quoted = format!("\"{long}\"");
    let hub = TestHub::start_with(|t| common::set_room(t, "anxiety", "description", &quoted)).await;
    let mut c = TestClient::connect(&hub).await;
    c.send_json(json!({"type": "hello", "ref": 1})).await;
    let w = c.recv().await;
    assert_eq!(w["type"], "welcome");
    let rooms = w["rooms"].as_array().expect("rooms");
    let anxiety = rooms
        .iter()
        .find(|r| r["id"] == "anxiety")
        .expect("anxiety listed");
    assert_eq!(anxiety["description"].as_str(), Some(long.as_str()));
    c.send_json(json!({"type": "join", "room": "anxiety", "ref": 2}))
        .await;
    let j = c.recv_type("joined").await;
    assert_eq!(j["ref"], 2, "{j}");
}
