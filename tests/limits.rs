//! Rate limits, flooding, typing, reports, slow consumers and liveness.

mod common;

use common::{assert_error, ConnectError, Event, TestClient, TestHub};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn identity_limit_is_rate_limited_and_follows_a_resume() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "rate_limits", "identity_messages_per_10s", "3");
    })
    .await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let w_limits = {
        let mut c = TestClient::connect(&hub).await;
        c.hello().await["limits"].clone()
    };
    assert_eq!(w_limits["messages_per_10s"], 3);
    for i in 0..3 {
        a.say("anxiety", &format!("ok {i}")).await;
    }
    let e = a
        .request(json!({"type": "send", "ref": "over", "room": "anxiety", "text": "one too many"}))
        .await;
    assert_error(&e, "rate_limited");
    assert_eq!(e["ref"], "over");
    let retry = e["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms integer");
    assert!(retry > 0 && retry <= 10_000, "retry_after_ms {retry}");
    assert!(
        hub.metric("hearth_rate_limited_total{scope=\"identity\"}")
            .await
            >= 1.0
    );

    // Someone else is not affected.
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    b.say("anxiety", "my own budget").await;

    // A reconnect does not reset the budget.
    let token = a.session.clone();
    drop(a);
    let mut a2 = TestClient::connect(&hub).await;
    let w = a2.hello_resume(&token).await;
    assert_eq!(w["resumed"], true);
    a2.join("anxiety").await;
    let e = a2.send_text("anxiety", "after resume").await;
    assert_error(&e, "rate_limited");
    assert!(e["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");
}

#[tokio::test]
async fn connection_frame_limit_is_rate_limited() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "rate_limits", "connection_frames_per_second", "1");
        common::set(t, "rate_limits", "connection_frames_burst", "5");
        common::set(t, "rate_limits", "flood_strikes", "100");
    })
    .await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let mut limited = None;
    for i in 0..10 {
        let r = c
            .request(json!({"type": "join", "room": "anxiety", "ref": i}))
            .await;
        if r["type"] == "error" {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r["type"], "joined", "{r}");
    }
    let (i, e) = limited.expect("the per-connection frame limit never applied");
    // A burst of 5 frames (hello + 4 joins); one more may have been
    // replenished (1/s) if the machine was very slow.
    assert!((4..=5).contains(&i), "limited at join {i}");
    assert_error(&e, "rate_limited");
    assert_eq!(e["ref"], i);
    assert!(e["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");
    assert!(
        hub.metric("hearth_rate_limited_total{scope=\"connection\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn binary_frames_count_towards_the_connection_frame_limit() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "rate_limits", "connection_frames_per_second", "1");
        common::set(t, "rate_limits", "connection_frames_burst", "5");
        common::set(t, "rate_limits", "flood_strikes", "100");
    })
    .await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    for _ in 0..10 {
        c.send_binary(b"\x00\x01").await;
    }
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(c.recv().await["code"].as_str().unwrap_or("").to_string());
    }
    assert!(
        codes.iter().any(|c| c == "rate_limited"),
        "10 binary frames against a burst of 5 were never limited: {codes:?}"
    );
}

#[tokio::test]
async fn room_limit_is_shared_by_all_senders() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "rate_limits", "room_messages_per_second", "1");
        common::set(t, "rate_limits", "room_messages_burst", "2");
    })
    .await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    a.say("anxiety", "one").await;
    b.say("anxiety", "two").await;
    let e = a.send_text("anxiety", "three").await;
    assert_error(&e, "rate_limited");
    assert!(e["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");
    // Another room has its own budget.
    a.join("bereavement").await;
    a.say("bereavement", "elsewhere").await;
    assert!(
        hub.metric("hearth_rate_limited_total{scope=\"room\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn flooding_after_rate_limits_closes_4008() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "rate_limits", "identity_messages_per_10s", "1");
        common::set(t, "rate_limits", "flood_strikes", "3");
    })
    .await;
    let mut c = TestClient::joined_peer(&hub, "anxiety").await;
    c.say("anxiety", "allowed").await;
    let mut limited = 0;
    let code = loop {
        assert!(
            limited <= 20,
            "still open after {limited} rate-limited sends"
        );
        let sent = c
            .try_send(tokio_tungstenite::tungstenite::Message::text(
                json!({"type": "send", "room": "anxiety", "text": "more"}).to_string(),
            ))
            .await;
        if sent.is_err() {
            break c.expect_close().await;
        }
        match c.next_event(Duration::from_secs(5)).await {
            Event::Frame(v) => {
                assert_error(&v, "rate_limited");
                limited += 1;
            }
            Event::Close(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4008);
    // The first refusal only starts the clock; each of the next three sends
    // ignores its retry_after_ms (a strike); the fourth strike closes, after
    // its own refusal has been delivered.
    assert!(
        (4..=5).contains(&limited),
        "flood_strikes = 3: {limited} rate-limited replies before the close"
    );
    assert!(hub.metric("hearth_flood_disconnects_total").await >= 1.0);
    // A flood closes the connection, not the identity's session.
    let mut again = TestClient::connect(&hub).await;
    let w = again.hello_resume(&c.session).await;
    assert_eq!(w["resumed"], true);
}

#[tokio::test]
async fn per_address_connect_limit_refuses_the_upgrade_with_429() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "rate_limits", "address_connects_per_minute", "1");
        common::set(t, "rate_limits", "address_connects_burst", "2");
    })
    .await;
    let _a = TestClient::connect(&hub).await;
    let _b = TestClient::connect(&hub).await;
    match TestClient::try_connect(&hub, None).await {
        Err(ConnectError::Status(429, body)) => {
            assert!(body.contains("rate_limited"), "{body}");
        }
        Err(e) => panic!("expected HTTP 429, got {e:?}"),
        Ok(_) => panic!("third connection within the burst of 2 was accepted"),
    }
    assert!(
        hub.metric("hearth_rate_limited_total{scope=\"address\"}")
            .await
            >= 1.0
    );
    // Plain HTTP is not affected.
    assert_eq!(hub.http_get("/healthz").await.0, 200);
    // Existing connections keep working.
    let mut a = _a;
    a.hello().await;
    a.join("anxiety").await;
}

#[tokio::test]
async fn typing_reaches_others_not_the_sender_and_excess_is_dropped_silently() {
    let hub = TestHub::start().await;
    // tests/config/test.toml: rate_limits.typing_per_10s = 5.
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    let mut outsider = TestClient::joined_peer(&hub, "bereavement").await;
    a.recv_type("presence").await;
    for i in 0..8 {
        a.send_json(json!({"type": "typing", "room": "anxiety", "ref": i}))
            .await;
    }
    a.say("anxiety", "done typing").await;
    // The sender got no typing echo and no error: just its own message.
    let first = a.recv().await;
    assert_eq!(first["type"], "message", "{first}");
    assert!(a.recv_within(Duration::from_millis(200)).await.is_none());

    let mut typing = 0;
    loop {
        let v = b.recv().await;
        match v["type"].as_str() {
            Some("typing") => {
                assert_eq!(v["room"], "anxiety");
                assert_eq!(v["from"]["id"], a.id.as_str());
                assert_eq!(v["from"]["name"], a.name.as_str());
                assert_eq!(v["from"]["role"], "peer");
                assert!(v.get("ref").is_none(), "{v}");
                typing += 1;
            }
            Some("message") => break,
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(typing, 5, "typing_per_10s = 5");
    assert!(outsider
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());
}

#[tokio::test]
async fn report_is_ok_and_the_author_is_never_told() {
    let hub = TestHub::start().await;
    let mut author = TestClient::joined_peer(&hub, "anxiety").await;
    let mut reporter = TestClient::joined_peer(&hub, "anxiety").await;
    author.recv_type("presence").await;
    let (id, _) = author.say("anxiety", "something unkind").await;
    author.recv_type("message").await;
    reporter.recv_type("message").await;

    let ok = reporter
        .request(json!({"type": "report", "ref": 9, "room": "anxiety",
                        "message": id, "reason": "harassment"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ok["ref"], 9);
    // Reporting the same message again is fine but kept once.
    let ok = reporter
        .request(json!({"type": "report", "room": "anxiety", "message": id}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(hub.metric("hearth_reports_total").await, 1.0);
    // Without a reason, too.
    let (other, _) = author.say("anxiety", "something else").await;
    author.recv_type("message").await;
    reporter.recv_type("message").await;
    let ok = reporter
        .request(json!({"type": "report", "room": "anxiety", "message": other}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(hub.metric("hearth_reports_total").await, 2.0);

    // The author's stream shows nothing about it.
    author.say("anxiety", "next").await;
    let next = author.recv().await;
    assert_eq!(next["type"], "message", "{next}");
    assert_eq!(next["text"], "next");
    assert!(author
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());
    // Nor does anyone else's.
    let next = reporter.recv().await;
    assert_eq!(next["type"], "message", "{next}");

    let e = reporter
        .request(json!({"type": "report", "room": "lobby", "message": id}))
        .await;
    assert_error(&e, "no_such_room");
}

/// A hub where one slow reader overflows quickly: an outbound queue of 8
/// frames and messages of ~36 KB.
async fn slow_hub() -> TestHub {
    TestHub::start_with(|t| {
        common::set(t, "websocket", "outbound_queue", "8");
        common::set(t, "websocket", "max_frame_bytes", "65536");
        // Keep the slow client from being dropped as idle instead.
        common::set(t, "websocket", "idle_timeout_secs", "60");
        common::set(t, "limits", "max_text_chars", "10000");
    })
    .await
}

/// With `slow` in the room and not reading, a fast peer sends big messages
/// until the hub reports a slow-consumer disconnect. The fast peer must
/// receive every message promptly throughout. Returns the last seq sent.
async fn overflow_slow_reader(hub: &TestHub) -> u64 {
    let mut fast = TestClient::joined_peer(hub, "anxiety").await;
    // ~36 KB per message: kernel buffers fill after a few MB at most.
    let text: String = "🙂".repeat(9_000);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut seq = 0;
    let mut overflowed = false;
    let mut extra = 0;
    // Keep going for 5 more messages after the overflow was seen.
    while extra < 5 {
        assert!(
            seq < 600 && started.elapsed() < Duration::from_secs(40),
            "no slow-consumer disconnect after {seq} messages"
        );
        let t = Instant::now();
        let (_, s) = fast.say("anxiety", &text).await;
        let m = fast.recv_type("message").await;
        seq += 1;
        assert_eq!(s, seq);
        assert_eq!(m["seq"], seq, "the fast peer misses nothing");
        slowest = slowest.max(t.elapsed());
        if overflowed {
            extra += 1;
        } else if seq % 5 == 0 {
            overflowed = hub.metric("hearth_slow_consumer_disconnects_total").await >= 1.0;
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "fast peer waited {slowest:?} for a message"
    );
    seq
}

/// Reads the slow client's backlog: messages in seq order, then a close.
async fn drain_until_close<S>(slow: &mut TestClient<S>, sent: u64) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut last = 0u64;
    loop {
        match slow.next_event(Duration::from_secs(15)).await {
            Event::Frame(v) => {
                if v["type"] == "message" {
                    let s = v["seq"].as_u64().expect("seq");
                    assert!(s > last, "out of order: {s} after {last}");
                    last = s;
                }
            }
            Event::Close(code) => {
                assert!(
                    last < sent,
                    "the slow client cannot have received everything"
                );
                return Ok(code);
            }
            other => return Err(format!("{other:?} after message {last} of {sent}")),
        }
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_4009_while_others_keep_up() {
    let hub = slow_hub().await;
    let (mut slow, mute) = TestClient::connect_small_buffer_muted(&hub, 4096).await;
    slow.hello().await;
    slow.join("anxiety").await;
    // From here on the slow client neither reads nor writes (not even pongs).
    mute.mute();
    let sent = overflow_slow_reader(&hub).await;
    // When it reads again it finds messages in seq order, then 4009.
    let code = drain_until_close(&mut slow, sent)
        .await
        .unwrap_or_else(|e| panic!("expected close 4009, got {e}"));
    assert_eq!(code, 4009);
    // The identity survives: it can come back with resume.
    let mut back = TestClient::connect(&hub).await;
    let w = back.hello_resume(&slow.session).await;
    assert_eq!(w["resumed"], true);
}

#[tokio::test]
async fn slow_consumer_that_reads_again_gets_close_4009() {
    let hub = slow_hub().await;
    let mut slow = TestClient::connect_small_buffer(&hub, 4096).await;
    slow.hello().await;
    slow.join("anxiety").await;
    // A normal client that simply stops reading for a while; when it reads
    // again it also answers the pings it finds (as every client library does).
    let sent = overflow_slow_reader(&hub).await;
    let code = drain_until_close(&mut slow, sent)
        .await
        .unwrap_or_else(|e| panic!("expected close 4009, got {e}"));
    assert_eq!(code, 4009);
}

#[tokio::test]
async fn client_that_never_answers_pings_is_dropped_after_idle_timeout() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "websocket", "ping_interval_secs", "1");
        common::set(t, "websocket", "idle_timeout_secs", "2");
    })
    .await;
    let mut silent = TestClient::connect(&hub).await;
    silent.hello().await;
    assert_eq!(hub.metric("hearth_connections").await, 1.0);
    // Stop reading entirely: pings go unanswered.
    let started = Instant::now();
    hub.wait_metric("hearth_connections", Duration::from_secs(8), |v| v == 0.0)
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "dropped before the idle timeout: {took:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn client_that_answers_pings_outlives_the_idle_timeout() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "websocket", "ping_interval_secs", "1");
        common::set(t, "websocket", "idle_timeout_secs", "2");
    })
    .await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    // Reading answers the pings; nothing else arrives.
    assert!(c.recv_within(Duration::from_secs(4)).await.is_none());
    assert_eq!(hub.metric("hearth_connections").await, 1.0);
    c.join("anxiety").await;
}

#[tokio::test]
async fn a_client_that_waits_as_told_is_never_closed() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "rate_limits", "connection_frames_per_second", "10");
        common::set(t, "rate_limits", "connection_frames_burst", "1");
        common::set(t, "rate_limits", "flood_strikes", "1");
    })
    .await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let mut refusals = 0;
    let mut accepted = 0;
    while accepted < 20 {
        assert!(refusals < 200, "too many refusals");
        let reply = c
            .request(json!({"type": "leave", "ref": accepted, "room": "bereavement"}))
            .await;
        match reply["type"].as_str() {
            Some("left") => accepted += 1,
            _ => {
                assert_error(&reply, "rate_limited");
                refusals += 1;
                let ms = reply["retry_after_ms"].as_u64().expect("retry_after_ms");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
    assert!(
        refusals > 0,
        "the limit was never reached; the test proves nothing"
    );
    assert_eq!(hub.metric("hearth_flood_disconnects_total").await, 0.0);
}
