//! Rooms: join, leave, presence, capacity and the public room list.

mod common;

use common::{assert_error, TestClient, TestHub, ROOMS};
use serde_json::{json, Value};
use std::time::Duration;

fn member_ids(joined: &Value) -> Vec<String> {
    joined["members"]
        .as_array()
        .expect("members list")
        .iter()
        .map(|m| m["id"].as_str().expect("member id").to_string())
        .collect()
}

#[tokio::test]
async fn join_returns_joined_with_the_contract_shape() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let j = c
        .request(json!({"type": "join", "room": "anxiety", "ref": 2}))
        .await;
    assert_eq!(j["type"], "joined", "{j}");
    assert_eq!(j["ref"], 2);
    assert_eq!(j["room"], "anxiety");
    assert!(
        j["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "epoch: {j}"
    );
    assert_eq!(j["seq"], 0, "a fresh room has seq 0: {j}");
    assert!(
        j["guidelines"]
            .as_str()
            .is_some_and(|g| !g.trim().is_empty()),
        "{j}"
    );
    let members = j["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{j}");
    assert_eq!(members[0]["id"], c.id.as_str());
    assert_eq!(members[0]["name"], c.name.as_str());
    assert_eq!(members[0]["role"], "peer");
    assert_eq!(j["staff_watching"], 0);
    assert_eq!(j["history"], json!([]));
    assert_eq!(j["gap"], false);
}

#[tokio::test]
async fn every_configured_room_can_be_joined() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let mut epochs = Vec::new();
    for room in ROOMS {
        let j = c.join(room).await;
        assert_eq!(j["room"], room);
        epochs.push(j["epoch"].as_str().expect("epoch").to_string());
    }
    for room in ROOMS {
        assert_eq!(hub.room_members(room).await, 1);
    }
}

#[tokio::test]
async fn unknown_room_is_no_such_room() {
    let hub = TestHub::start().await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    for room in [
        "lobby",
        "",
        "ANXIETY",
        "anxiety ",
        "../anxiety",
        &"x".repeat(200),
    ] {
        let e = c.request(json!({"type": "join", "room": room})).await;
        assert_error(&e, "no_such_room");
    }
    let e = c.request(json!({"type": "leave", "room": "lobby"})).await;
    assert_error(&e, "no_such_room");
    let e = c.send_text("lobby", "hi").await;
    assert_error(&e, "no_such_room");
    c.join("anxiety").await;
}

#[tokio::test]
async fn joining_twice_is_idempotent() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let first = b.join("anxiety").await;
    let second = b.join("anxiety").await;
    assert_eq!(member_ids(&first).len(), 2);
    assert_eq!(member_ids(&second).len(), 2, "{second}");
    assert_eq!(first["epoch"], second["epoch"]);
    assert_eq!(hub.room_members("anxiety").await, 2);

    // A saw exactly one presence for B: the next thing after it is A's own message.
    let p = a.recv_type("presence").await;
    assert_eq!(p["joined"]["id"], b.id.as_str());
    a.say("anxiety", "after the joins").await;
    let next = a.recv().await;
    assert_eq!(
        next["type"], "message",
        "no second presence expected: {next}"
    );
}

#[tokio::test]
async fn others_see_presence_joined_and_left() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "bereavement").await;
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join("bereavement").await;
    let ids = member_ids(&j);
    assert!(ids.contains(&a.id) && ids.contains(&b.id), "{j}");

    let p = a.recv().await;
    assert_eq!(p["type"], "presence", "{p}");
    assert_eq!(p["room"], "bereavement");
    assert_eq!(p["joined"]["id"], b.id.as_str());
    assert_eq!(p["joined"]["name"], b.name.as_str());
    assert_eq!(p["joined"]["role"], "peer");
    assert!(p.get("left").is_none(), "{p}");
    assert!(p.get("ref").is_none(), "events carry no ref: {p}");

    let l = b
        .request(json!({"type": "leave", "room": "bereavement", "ref": 3}))
        .await;
    assert_eq!(l, json!({"type": "left", "ref": 3, "room": "bereavement"}));

    let p = a.recv().await;
    assert_eq!(p["type"], "presence", "{p}");
    assert_eq!(p["room"], "bereavement");
    assert_eq!(p["left"]["id"], b.id.as_str());
    assert!(p.get("joined").is_none(), "{p}");
    assert!(p.get("ref").is_none(), "{p}");
    assert_eq!(hub.room_members("bereavement").await, 1);
}

#[tokio::test]
async fn the_joiner_gets_no_presence_for_itself() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    a.say("anxiety", "first").await;
    let m = a.recv().await;
    assert_eq!(m["type"], "message", "{m}");
}

#[tokio::test]
async fn after_leave_sending_is_not_joined_and_traffic_stops() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    let l = b.leave("anxiety").await;
    assert_eq!(l["type"], "left");
    let e = b.send_text("anxiety", "still here?").await;
    assert_error(&e, "not_joined");
    a.say("anxiety", "only for members").await;
    // B receives nothing from the room any more.
    assert!(b.recv_within(Duration::from_millis(300)).await.is_none());
    // And can come back.
    let j = b.join("anxiety").await;
    assert_eq!(j["seq"], 1);
}

#[tokio::test]
async fn members_are_per_room() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "bereavement").await;
    a.say("anxiety", "anxiety only").await;
    let e = b.send_text("anxiety", "wrong room").await;
    assert_error(&e, "not_joined");
    // B is in another room: it sees neither A's presence nor message.
    b.say("bereavement", "mine").await;
    let m = b.recv().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["room"], "bereavement");
    assert_eq!(m["text"], "mine");
}

#[tokio::test]
async fn full_room_is_room_full() {
    let hub = TestHub::start_with(|t| common::set_room(t, "anxiety", "capacity", "2")).await;
    let _a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let e = c
        .request(json!({"type": "join", "room": "anxiety", "ref": "full"}))
        .await;
    assert_error(&e, "room_full");
    assert_eq!(e["ref"], "full");
    // Other rooms are unaffected.
    c.join("bereavement").await;
    // A member re-joining a full room is still idempotent.
    b.join("anxiety").await;
    // When someone leaves, there is space again.
    b.leave("anxiety").await;
    let j = c.join("anxiety").await;
    assert_eq!(member_ids(&j).len(), 2);

    let rooms = hub.api_rooms().await;
    let anxiety = rooms["rooms"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == "anxiety"))
        .cloned()
        .expect("anxiety");
    assert_eq!(anxiety["capacity"], 2);
    assert_eq!(anxiety["members"], 2);
}

#[tokio::test]
async fn api_rooms_counts_members() {
    let hub = TestHub::start().await;
    let v = hub.api_rooms().await;
    let rooms = v["rooms"].as_array().expect("rooms array");
    assert_eq!(rooms.len(), 3, "{v}");
    for r in rooms {
        assert_eq!(r["members"], 0, "{r}");
        for k in ["id", "title", "description"] {
            assert!(r[k].is_string(), "{k} in {r}");
        }
        assert!(r["capacity"].is_u64(), "{r}");
        assert!(r["locked"].is_boolean(), "{r}");
    }
    let _a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::joined_peer(&hub, "anxiety").await;
    b.join("substance-use").await;
    assert_eq!(hub.room_members("anxiety").await, 2);
    assert_eq!(hub.room_members("substance-use").await, 1);
    assert_eq!(hub.room_members("bereavement").await, 0);
    b.leave("anxiety").await;
    assert_eq!(hub.room_members("anxiety").await, 1);

    // The welcome's room list agrees.
    let mut c = TestClient::connect(&hub).await;
    let w = c.hello().await;
    let anxiety = w["rooms"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == "anxiety"))
        .cloned()
        .expect("anxiety");
    assert_eq!(anxiety["members"], 1);
}
