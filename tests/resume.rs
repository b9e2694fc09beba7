//! Resume: the same identity on a new connection, presence across the
//! grace period, catching up with `since`, and session takeover.

mod common;

use common::{TestClient, TestHub};
use serde_json::json;
use std::time::{Duration, Instant};

/// tests/config/test.toml: sessions.resume_grace_secs = 2.
const GRACE: Duration = Duration::from_secs(2);

#[tokio::test]
async fn resume_restores_identity_and_rooms() {
    let hub = TestHub::start().await;
    let mut a = TestClient::connect(&hub).await;
    a.hello().await;
    a.join("anxiety").await;
    a.join("bereavement").await;
    let (id, name, token) = (a.id.clone(), a.name.clone(), a.session.clone());
    drop(a);

    let mut again = TestClient::connect(&hub).await;
    let w = again
        .request(json!({"type": "hello", "ref": "r", "resume": token}))
        .await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["ref"], "r");
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], id.as_str());
    assert_eq!(w["you"]["name"], name.as_str());
    assert_eq!(w["you"]["role"], "peer");
    let mut joined: Vec<String> = w["joined"]
        .as_array()
        .expect("welcome.joined after resume")
        .iter()
        .map(|r| r.as_str().expect("room id").to_string())
        .collect();
    joined.sort();
    assert_eq!(joined, vec!["anxiety", "bereavement"]);
    let s = w["session"].as_str().expect("session");
    assert!(s.len() >= 22, "{w}");

    // The resumed connection works, and the (possibly new) token resumes again.
    let j = again.join("anxiety").await;
    assert!(j["members"]
        .as_array()
        .expect("members")
        .iter()
        .any(|m| m["id"] == id.as_str()));
    let token2 = s.to_string();
    drop(again);
    let mut third = TestClient::connect(&hub).await;
    let w = third.hello_resume(&token2).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["you"]["id"], id.as_str());
}

#[tokio::test]
async fn unknown_token_gives_a_fresh_identity() {
    let hub = TestHub::start().await;
    let mut a = TestClient::connect(&hub).await;
    a.hello().await;
    for token in ["nonsense", "", &"A".repeat(43), &"ü".repeat(300)] {
        let mut c = TestClient::connect(&hub).await;
        let w = c.hello_resume(token).await;
        assert_eq!(w["resumed"], false, "{w}");
        assert_ne!(w["you"]["id"], a.id.as_str());
        assert_ne!(w["session"], token);
        assert!(w["session"].as_str().is_some_and(|s| s.len() >= 22));
        assert_eq!(w["joined"].as_array().map(|j| j.len()).unwrap_or(0), 0);
    }
}

#[tokio::test]
async fn reconnecting_within_grace_does_not_flap_presence() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let b = TestClient::joined_peer(&hub, "anxiety").await;
    let p = a.recv_type("presence").await;
    assert_eq!(p["joined"]["id"], b.id.as_str());
    let token = b.session.clone();
    let b_id = b.id.clone();
    drop(b);

    let mut b2 = TestClient::connect(&hub).await;
    let w = b2.hello_resume(&token).await;
    assert_eq!(w["resumed"], true);
    b2.join("anxiety").await;

    // Wait past the grace period of the dropped connection: A sees nothing
    // at all, neither left nor joined.
    let quiet_until = Instant::now() + GRACE + Duration::from_millis(1000);
    let seen = a
        .recv_within(quiet_until.saturating_duration_since(Instant::now()))
        .await;
    assert!(
        seen.is_none(),
        "A saw {seen:?} while B reconnected within the grace period"
    );
    assert_eq!(hub.room_members("anxiety").await, 2);

    // B is still a full member: A's message reaches it.
    a.say("anxiety", "still there?").await;
    let m = b2.recv_type("message").await;
    assert_eq!(m["text"], "still there?");
    let members = a.join("anxiety").await["members"].clone();
    assert!(members
        .as_array()
        .expect("members")
        .iter()
        .any(|m| m["id"] == b_id.as_str()));
}

#[tokio::test]
async fn after_the_grace_period_others_see_left() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let b = TestClient::joined_peer(&hub, "anxiety").await;
    a.recv_type("presence").await;
    let b_id = b.id.clone();
    let dropped = Instant::now();
    drop(b);

    let deadline = dropped + GRACE + Duration::from_secs(4);
    let p = a
        .recv_within(deadline.saturating_duration_since(Instant::now()))
        .await
        .expect("no presence left within grace + 4 s");
    assert_eq!(p["type"], "presence", "{p}");
    let waited = dropped.elapsed();
    assert_eq!(p["room"], "anxiety");
    assert_eq!(p["left"]["id"], b_id.as_str(), "{p}");
    assert!(
        waited >= GRACE - Duration::from_millis(300),
        "left came before the grace period ended: {waited:?}"
    );
    assert_eq!(hub.room_members("anxiety").await, 1);
}

#[tokio::test]
async fn leave_then_disconnect_is_immediate_and_not_repeated() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    a.recv_type("presence").await;
    b.leave("anxiety").await;
    let p = a.recv_type("presence").await;
    assert_eq!(p["left"]["id"], b.id.as_str());
    drop(b);
    // No second left after the grace period.
    assert!(a
        .recv_within(GRACE + Duration::from_millis(800))
        .await
        .is_none());
}

#[tokio::test]
async fn resume_then_join_since_recovers_missed_messages() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join("anxiety").await;
    let epoch = j["epoch"].as_str().expect("epoch").to_string();
    a.say("anxiety", "before").await;
    let m = b.recv_type("message").await;
    let last_seq = m["seq"].as_u64().expect("seq");
    let token = b.session.clone();
    drop(b);

    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(a.say("anxiety", &format!("missed {i}")).await);
    }

    let mut b2 = TestClient::connect(&hub).await;
    let w = b2.hello_resume(&token).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["joined"], json!(["anxiety"]));
    // Messages published between resume and join are not lost either.
    a.say("anxiety", "between").await;
    let j = b2.join_since("anxiety", last_seq, &epoch).await;
    assert_eq!(j["gap"], false, "{j}");
    let hist = j["history"].as_array().expect("history");
    let got: Vec<(u64, String)> = hist
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().expect("seq"),
                m["text"].as_str().expect("text").to_string(),
            )
        })
        .collect();
    let mut want: Vec<(u64, String)> = missed
        .iter()
        .enumerate()
        .map(|(i, (_, seq))| (*seq, format!("missed {i}")))
        .collect();
    want.push((last_seq + 4, "between".into()));
    assert_eq!(got, want);
    // Then live traffic, with no duplicate of the history.
    a.say("anxiety", "live").await;
    let m = b2.recv_type("message").await;
    assert_eq!(m["text"], "live");
    assert_eq!(m["seq"], last_seq + 5);
}

#[tokio::test]
async fn resuming_while_the_old_connection_is_open_closes_it_with_1000() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut old = TestClient::joined_peer(&hub, "anxiety").await;
    a.recv_type("presence").await;
    let mut new = TestClient::connect(&hub).await;
    let w = new.hello_resume(&old.session).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["you"]["id"], old.id.as_str());
    assert_eq!(old.expect_close().await, 1000);

    // The takeover is not a departure: A sees no presence, and the new
    // connection receives the room's traffic after joining again.
    new.join("anxiety").await;
    a.say("anxiety", "hello again").await;
    let next = a.recv().await;
    assert_eq!(next["type"], "message", "no presence expected: {next}");
    let m = new.recv_type("message").await;
    assert_eq!(m["text"], "hello again");
    assert_eq!(hub.room_members("anxiety").await, 2);
}

#[tokio::test]
async fn resume_after_grace_rejoins_with_presence() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let b = TestClient::joined_peer(&hub, "anxiety").await;
    a.recv_type("presence").await;
    let (token, b_id) = (b.session.clone(), b.id.clone());
    drop(b);
    let deadline = Instant::now() + GRACE + Duration::from_secs(4);
    let p = a
        .recv_within(deadline.saturating_duration_since(Instant::now()))
        .await
        .expect("presence left after grace");
    assert_eq!(p["left"]["id"], b_id.as_str());

    // The session outlives the grace period (TTL): same identity.
    let mut b2 = TestClient::connect(&hub).await;
    let w = b2.hello_resume(&token).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["you"]["id"], b_id.as_str());
    let j = b2.join("anxiety").await;
    assert!(j["members"]
        .as_array()
        .expect("members")
        .iter()
        .any(|m| m["id"] == b_id.as_str()));
    // A sees it come back exactly once.
    let p = a.recv_type("presence").await;
    assert_eq!(p["joined"]["id"], b_id.as_str());
    a.say("anxiety", "welcome back").await;
    let next = a.recv().await;
    assert_eq!(next["type"], "message", "{next}");
}

#[tokio::test]
async fn a_resumed_peer_that_sends_before_rejoining_gets_its_own_message() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let b = TestClient::joined_peer(&hub, "anxiety").await;
    a.recv_type("presence").await;
    let token = b.session.clone();
    drop(b);

    let mut b2 = TestClient::connect(&hub).await;
    let w = b2.hello_resume(&token).await;
    assert_eq!(w["joined"], json!(["anxiety"]));
    // Sending into a restored room makes it live for this connection: the
    // sender receives its own message, and later traffic, like everyone.
    let (id, seq) = b2.say("anxiety", "still here").await;
    let own = b2.recv_type("message").await;
    assert_eq!(own["id"], id.as_str());
    assert_eq!(own["seq"], seq);
    a.say("anxiety", "welcome back").await;
    let next = b2.recv_type("message").await;
    assert_eq!(next["text"], "welcome back");
    assert_eq!(next["seq"], seq + 1);
}
