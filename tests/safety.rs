//! The safety step of `send`, seen from the clients: the private `support`
//! event with resources for the sender's locale, the `flag` to watching
//! staff, messages held for review (and released by staff), and policy
//! blocks with a sentence saying why.

mod common;

use std::time::Duration;

use common::{assert_error, mint_staff_token, TestClient, TestHub};
use serde_json::{json, Value};

const SECRET: &str = "safety-test-secret-0123456789";
const ROOM: &str = "anxiety";
const QUIET: Duration = Duration::from_millis(400);

async fn hub() -> TestHub {
    TestHub::start_full(|_| {}, &[("HEARTH_STAFF_SECRET", SECRET)]).await
}

async fn peer_with_locale(hub: &TestHub, locale: &str) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    c.hello_with(json!({"type": "hello", "locale": locale}))
        .await;
    c.join(ROOM).await;
    c
}

async fn watcher(hub: &TestHub) -> TestClient {
    let token = mint_staff_token(SECRET, "moderator", "Mod Mo", "1h");
    let mut s = TestClient::connect(hub).await;
    s.hello_auth(&token).await;
    let ok = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    s
}

/// Every frame that arrives within `QUIET`.
async fn drain(c: &mut TestClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = c.recv_within(QUIET).await {
        out.push(v);
    }
    out
}

fn of_type<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
    frames.iter().filter(|v| v["type"] == ty).collect()
}

#[tokio::test]
async fn a_crisis_message_brings_support_and_a_flag_and_is_delivered() {
    let hub = hub().await;
    let mut s = watcher(&hub).await;
    let mut a = peer_with_locale(&hub, "en-GB").await;
    let mut b = peer_with_locale(&hub, "en-US").await;
    drain(&mut s).await;
    drain(&mut a).await;
    let ok = a.send_text(ROOM, "honestly i want to kill myself").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert!(ok["seq"].as_u64().is_some(), "delivered, not held: {ok}");
    let id = ok["id"].as_str().expect("id").to_string();

    let got = drain(&mut a).await;
    let support = of_type(&got, "support");
    assert_eq!(support.len(), 1, "{got:?}");
    let sp = support[0];
    assert_eq!(sp["level"], "high", "{sp}");
    assert!(sp["text"].as_str().is_some_and(|t| !t.is_empty()), "{sp}");
    let contacts = sp["resources"].to_string();
    assert!(contacts.contains("116 123"), "UK resources for en-GB: {sp}");
    assert!(
        sp.get("ref").is_none(),
        "support is an event, not a reply: {sp}"
    );

    // The room sees the message, never the support.
    let got_b = drain(&mut b).await;
    assert_eq!(of_type(&got_b, "message").len(), 1, "{got_b:?}");
    assert!(of_type(&got_b, "support").is_empty(), "{got_b:?}");
    assert!(of_type(&got_b, "flag").is_empty(), "{got_b:?}");

    // Staff get the flag.
    let got_s = drain(&mut s).await;
    let flags = of_type(&got_s, "flag");
    assert_eq!(flags.len(), 1, "{got_s:?}");
    let f = flags[0];
    assert_eq!(
        (f["room"].as_str(), f["message"].as_str()),
        (Some(ROOM), Some(id.as_str()))
    );
    assert_eq!(f["level"], "high");
    assert!(
        f["categories"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("suicide"))),
        "{f}"
    );
    assert_eq!(f["held"], false);
    assert!(
        f.get("text").is_none(),
        "a delivered message's words come as its `message`: {f}"
    );
}

#[tokio::test]
async fn an_imminent_message_is_held_for_staff_then_released() {
    let hub = hub().await;
    let mut s = watcher(&hub).await;
    let mut a = peer_with_locale(&hub, "en-US").await;
    let mut b = peer_with_locale(&hub, "en-US").await;
    drain(&mut s).await;
    drain(&mut a).await;
    let ok = a
        .send_text(
            ROOM,
            "i have all the pills ready and im taking them tonight when everyone is asleep. goodbye",
        )
        .await;
    assert_eq!(
        (ok["type"].as_str(), ok["held"].as_bool()),
        (Some("ok"), Some(true)),
        "{ok}"
    );
    assert!(
        ok.get("seq").is_none(),
        "a held message has no seq yet: {ok}"
    );
    let id = ok["id"].as_str().expect("id").to_string();
    let got = drain(&mut a).await;
    let support = of_type(&got, "support");
    assert_eq!(support.len(), 1, "{got:?}");
    assert_eq!(support[0]["level"], "imminent");
    assert!(
        support[0]["resources"].to_string().contains("988"),
        "{got:?}"
    );
    assert!(
        of_type(&drain(&mut b).await, "message").is_empty(),
        "held, not delivered"
    );

    let got_s = drain(&mut s).await;
    let flags = of_type(&got_s, "flag");
    assert_eq!(flags.len(), 1, "{got_s:?}");
    assert_eq!(
        (flags[0]["level"].as_str(), flags[0]["held"].as_bool()),
        (Some("imminent"), Some(true))
    );
    // Nobody else has the words of a held message: its reviewers get them.
    assert!(
        flags[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("pills")),
        "{got_s:?}"
    );
    assert!(flags[0]["ts"].as_u64().is_some(), "{got_s:?}");

    // A human has answered; the message goes to the room.
    let r = s
        .request(json!({"type": "release", "room": ROOM, "message": id}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let m = b.recv_type("message").await;
    assert_eq!(m["id"], id.as_str());
    assert!(
        m["text"].as_str().is_some_and(|t| t.contains("pills")),
        "{m}"
    );
}

#[tokio::test]
async fn staff_who_start_watching_get_the_messages_still_held() {
    let hub = hub().await;
    let mut a = peer_with_locale(&hub, "en-GB").await;
    let mut b = peer_with_locale(&hub, "en-GB").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let ok = a
            .send_text(
                ROOM,
                "i have all the pills ready and im taking them tonight when everyone is asleep. goodbye",
            )
            .await;
        assert_eq!(ok["held"], true, "{ok}");
        ids.push(ok["id"].as_str().expect("id").to_string());
    }

    // Nobody was watching; a moderator who starts now gets both flags,
    // with the words, after the watch reply.
    let mut s = watcher(&hub).await;
    let got = drain(&mut s).await;
    let flags = of_type(&got, "flag");
    let flagged: Vec<&str> = flags.iter().filter_map(|f| f["message"].as_str()).collect();
    assert_eq!(flagged, ids, "oldest first: {got:?}");
    for f in &flags {
        assert_eq!(
            (f["held"].as_bool(), f["room"].as_str()),
            (Some(true), Some(ROOM)),
            "{f}"
        );
        assert!(
            f["text"].as_str().is_some_and(|t| t.contains("pill")),
            "{f}"
        );
        assert!(f["level"].as_str().is_some_and(|l| l != "none"), "{f}");
    }

    // Released, it is no longer waiting: a new watcher gets only the other.
    let r = s
        .request(json!({"type": "release", "room": ROOM, "message": ids[0]}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    assert_eq!(b.recv_type("message").await["id"], ids[0].as_str());
    let mut s2 = watcher(&hub).await;
    let got = drain(&mut s2).await;
    let flagged: Vec<&Value> = of_type(&got, "flag")
        .into_iter()
        .map(|f| &f["message"])
        .collect();
    assert_eq!(flagged, vec![&json!(ids[1])], "{got:?}");
}

#[tokio::test]
async fn contact_details_are_blocked_with_a_reason() {
    let hub = hub().await;
    let mut a = peer_with_locale(&hub, "en-GB").await;
    let mut b = peer_with_locale(&hub, "en-GB").await;
    drain(&mut a).await;
    let e = a
        .send_text(
            ROOM,
            "add me on snap if u want to talk outside here: quiet.heron.88",
        )
        .await;
    assert_error(&e, "blocked");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.to_lowercase().contains("contact")),
        "the sentence says why: {e}"
    );
    assert!(of_type(&drain(&mut b).await, "message").is_empty());
    // Still a member, still able to talk.
    let ok = a.send_text(ROOM, "sorry, forgot the rules").await;
    assert_eq!(ok["type"], "ok", "{ok}");
}

#[tokio::test]
async fn help_seeking_gets_resources_without_a_flag() {
    let hub = hub().await;
    let mut s = watcher(&hub).await;
    let mut a = peer_with_locale(&hub, "en-GB").await;
    drain(&mut s).await;
    drain(&mut a).await;
    let ok = a
        .send_text(
            ROOM,
            "whats the number for the crisis line again? asking for later",
        )
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert!(ok["seq"].as_u64().is_some(), "delivered: {ok}");
    let got = drain(&mut a).await;
    let support = of_type(&got, "support");
    assert_eq!(support.len(), 1, "{got:?}");
    assert_eq!(support[0]["level"], "none");
    assert!(
        support[0]["resources"].to_string().contains("116 123"),
        "{got:?}"
    );
    assert!(of_type(&drain(&mut s).await, "flag").is_empty());
}

#[tokio::test]
async fn support_comes_in_the_persons_language() {
    let hub = hub().await;
    let mut en = peer_with_locale(&hub, "en-GB").await;
    let mut es = peer_with_locale(&hub, "es-ES").await;
    drain(&mut en).await;
    drain(&mut es).await;
    en.send_text(ROOM, "i want to kill myself").await;
    es.send_text(ROOM, "quiero matarme, ya no puedo más").await;
    let en_support = of_type(&drain(&mut en).await, "support")
        .first()
        .map(|v| (*v).clone())
        .expect("english support");
    let es_support = of_type(&drain(&mut es).await, "support")
        .first()
        .map(|v| (*v).clone())
        .expect("spanish support");
    assert!(
        es_support["resources"].to_string().contains("024"),
        "{es_support}"
    );
    assert!(
        !es_support["resources"].to_string().contains("116 123"),
        "{es_support}"
    );
    assert_ne!(en_support["text"], es_support["text"]);
    assert!(
        es_support["text"]
            .as_str()
            .is_some_and(|t| t.contains("Gracias")),
        "{es_support}"
    );
}

#[tokio::test]
async fn ordinary_messages_bring_neither_support_nor_flags() {
    let hub = hub().await;
    let mut s = watcher(&hub).await;
    let mut a = peer_with_locale(&hub, "en-GB").await;
    drain(&mut s).await;
    drain(&mut a).await;
    for text in [
        "has anyone tried box breathing before exams?",
        "this exam is killing me lol",
        "two years ago i was in a really dark place, today i ran my first 10k",
    ] {
        let ok = a.send_text(ROOM, text).await;
        assert_eq!(ok["type"], "ok", "{text}: {ok}");
        assert!(ok.get("held").is_none(), "{text}: {ok}");
    }
    let got = drain(&mut a).await;
    assert!(of_type(&got, "support").is_empty(), "{got:?}");
    assert!(of_type(&drain(&mut s).await, "flag").is_empty());
}
