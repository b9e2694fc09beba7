//! Bad input is answered with an error and never closes the connection;
//! staff frames are forbidden for peers; oversized frames close 1009.

mod common;

use common::{assert_error, TestClient, TestHub};
use serde_json::{json, Value};

/// After an error, the connection must still work: a join succeeds.
async fn still_works(c: &mut TestClient) {
    let j = c.join("anxiety").await;
    assert_eq!(j["room"], "anxiety");
}

async fn ready_client(hub: &TestHub) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    c.hello().await;
    c
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_open() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    let cases = [
        "not json at all",
        "{\"type\":\"join\",\"room\":",
        "",
        "   ",
        "[1,2,3]",
        "\"hello\"",
        "42",
        "null",
        "true",
        "{}",
        "{\"room\":\"anxiety\"}",
        "{\"type\":5,\"room\":\"anxiety\"}",
        "{\"type\":null}",
        "{\"type\":[\"join\"]}",
        "{\"type\":{\"a\":1}}",
        "{\"type\":\"join\",\"type\":}",
    ];
    for raw in cases {
        c.send_raw_text(raw).await;
        let e = c.recv().await;
        assert_error(&e, "bad_request");
        assert!(e.get("ref").is_none(), "no ref could be read: {e}");
        still_works(&mut c).await;
    }
}

#[tokio::test]
async fn wrong_or_missing_fields_get_bad_request_with_ref() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    let cases: Vec<Value> = vec![
        json!({"type": "join"}),
        json!({"type": "join", "room": 5}),
        json!({"type": "join", "room": null}),
        json!({"type": "join", "room": ["anxiety"]}),
        json!({"type": "join", "room": "anxiety", "since": "yesterday"}),
        json!({"type": "join", "room": "anxiety", "since": {"seq": -1, "epoch": "x"}}),
        json!({"type": "join", "room": "anxiety", "since": {"seq": 1}}),
        json!({"type": "join", "room": "anxiety", "since": {"seq": "1", "epoch": "x"}}),
        json!({"type": "leave"}),
        json!({"type": "leave", "room": true}),
        json!({"type": "send", "room": "anxiety"}),
        json!({"type": "send", "text": "hi"}),
        json!({"type": "send", "room": "anxiety", "text": 12}),
        json!({"type": "send", "room": "anxiety", "text": {"t": "hi"}}),
        json!({"type": "typing"}),
        json!({"type": "typing", "room": 1.5}),
        json!({"type": "report", "room": "anxiety"}),
        json!({"type": "report", "room": "anxiety", "message": 9}),
        json!({"type": "report", "room": "anxiety", "message": "m_x", "reason": 3}),
    ];
    for (i, mut frame) in cases.into_iter().enumerate() {
        frame["ref"] = json!(i);
        let e = c.request(frame.clone()).await;
        assert_error(&e, "bad_request");
        assert_eq!(e["ref"], i, "{frame} -> {e}");
        still_works(&mut c).await;
    }
}

#[tokio::test]
async fn bad_ref_is_bad_request() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    for rf in [json!({"a": 1}), json!([1]), json!(1.5), json!(true)] {
        c.send_json(json!({"type": "join", "room": "anxiety", "ref": rf}))
            .await;
        let e = c.recv().await;
        assert_error(&e, "bad_request");
        still_works(&mut c).await;
    }
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    let w = c
        .request(json!({"type": "hello", "colour": "blue", "nested": {"x": [1, 2]}}))
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    let j = c
        .request(json!({"type": "join", "room": "anxiety", "extra": 1}))
        .await;
    assert_eq!(j["type"], "joined", "{j}");
    let ok = c
        .request(json!({"type": "send", "room": "anxiety", "text": "hi", "bold": true}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
}

#[tokio::test]
async fn unknown_type_gets_unknown_type() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    for ty in ["dance", "HELLO", "Join", "", "send ", "welcome", "message"] {
        let e = c.request(json!({"type": ty, "ref": "u"})).await;
        assert_error(&e, "unknown_type");
        assert_eq!(e["ref"], "u");
        still_works(&mut c).await;
    }
}

#[tokio::test]
async fn unknown_type_before_hello_is_an_error_and_connection_stays_open() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    let e = c.request(json!({"type": "dance"})).await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(
        e["code"] == "unknown_type" || e["code"] == "bad_request",
        "{e}"
    );
    c.hello().await;
    still_works(&mut c).await;
}

#[tokio::test]
async fn binary_frame_is_bad_request() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    c.send_binary(br#"{"type":"join","room":"anxiety"}"#).await;
    let e = c.recv().await;
    assert_error(&e, "bad_request");
    c.send_binary(&[0, 159, 146, 150, 255]).await;
    let e = c.recv().await;
    assert_error(&e, "bad_request");
    still_works(&mut c).await;
}

#[tokio::test]
async fn staff_frames_are_forbidden_for_peers() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    c.join("anxiety").await;
    let frames = [
        json!({"type": "watch", "room": "anxiety"}),
        json!({"type": "mute", "room": "anxiety", "peer": "p_abc", "seconds": 600}),
        json!({"type": "kick", "room": "anxiety", "peer": "p_abc"}),
        json!({"type": "ban", "peer": "p_abc", "seconds": 86400, "reason": "x"}),
        json!({"type": "delete", "room": "anxiety", "message": "m_x"}),
        json!({"type": "slow_mode", "room": "anxiety", "seconds": 30}),
        json!({"type": "lock", "room": "anxiety", "locked": true}),
        json!({"type": "release", "room": "anxiety", "message": "m_x"}),
        json!({"type": "announce", "room": "anxiety", "text": "hello all"}),
        json!({"type": "ack", "escalation": "esc_x"}),
        json!({"type": "resolve", "escalation": "esc_x", "note": "n"}),
        json!({"type": "care", "escalation": "esc_x"}),
        // Even without their fields.
        json!({"type": "ban"}),
    ];
    for f in frames {
        let e = c.request(f.clone()).await;
        assert_error(&e, "forbidden");
        still_works(&mut c).await;
    }
}

#[tokio::test]
async fn frame_over_max_frame_bytes_closes_1009() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    // tests/config/test.toml: websocket.max_frame_bytes = 16384.
    let text = "a".repeat(20_000);
    let frame = json!({"type": "send", "room": "anxiety", "text": text}).to_string();
    // The server may close while we are still writing; that is fine.
    let _ = c
        .try_send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await;
    assert_eq!(c.expect_close().await, 1009);
}

#[tokio::test]
async fn frame_just_under_max_frame_bytes_is_read() {
    let hub = TestHub::start().await;
    let mut c = ready_client(&hub).await;
    c.join("anxiety").await;
    // A well-formed frame of about 16000 bytes whose text is too long is
    // answered with too_large, not a close.
    let head = json!({"type": "send", "room": "anxiety", "text": ""})
        .to_string()
        .len();
    let text = "a".repeat(16_384 - head - 20);
    let e = c.send_text("anxiety", &text).await;
    assert_error(&e, "too_large");
    still_works(&mut c).await;
}
