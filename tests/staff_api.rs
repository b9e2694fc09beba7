//! The staff HTTP API (embedded mode), black-box: bearer-token sign-in on
//! every route, `/api/staff/me`, the rooms as staff see them, moderation
//! actions over HTTP, reports, the paged audit log, and token revocation
//! (which, like the audit log, survives a restart on the same data dir).

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{assert_error, http_request, mint_staff_token, Event, TempDir, TestClient, TestHub};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

/// The secret every staff hub here runs with, and tokens are minted with.
const SECRET: &str = "api-test-secret-0123456789abcdef";
const ROOM: &str = "anxiety";
const OTHER_ROOM: &str = "bereavement";
/// How long "nothing arrives" is waited for.
const QUIET: Duration = Duration::from_millis(400);

/// Every staff route with a body that would be accepted from a valid token.
const ROUTES: [(&str, &str, &str); 6] = [
    ("GET", "/api/staff/me", ""),
    ("GET", "/api/staff/rooms", ""),
    (
        "POST",
        "/api/staff/actions",
        r#"{"type":"lock","room":"anxiety","locked":true}"#,
    ),
    ("GET", "/api/staff/reports", ""),
    ("GET", "/api/staff/audit", ""),
    (
        "POST",
        "/api/staff/tokens/revoke",
        r#"{"jti":"0123456789abcdef"}"#,
    ),
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn staff_hub() -> TestHub {
    TestHub::start_full(|_| {}, &[("HEARTH_STAFF_SECRET", SECRET)]).await
}

/// A staff hub whose `HEARTH_DATA_DIR` is `dir` (so a restart keeps it).
async fn staff_hub_in(dir: &TempDir) -> TestHub {
    let data = dir.path().to_str().expect("utf-8 temp path").to_string();
    TestHub::start_full(
        |_| {},
        &[("HEARTH_STAFF_SECRET", SECRET), ("HEARTH_DATA_DIR", &data)],
    )
    .await
}

/// Stops a hub the way an operator does (SIGTERM) and waits for it.
async fn stop(mut hub: TestHub) {
    hub.sigterm();
    let status = hub.wait_exit(Duration::from_secs(12)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "hub did not exit cleanly after SIGTERM: {status:?}"
    );
}

fn token(role: &str, name: &str) -> String {
    mint_staff_token(SECRET, role, name, "1h")
}

/// The claims of a JWT, unverified.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("JSON payload")
}

fn claim(token: &str, name: &str) -> String {
    claims_of(token)[name]
        .as_str()
        .unwrap_or_else(|| panic!("token without a string {name} claim"))
        .to_string()
}

/// An HS256 token with arbitrary claims, signed with `secret`.
fn forge_token(secret: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC key");
    mac.update(signed.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{sig}")
}

/// One HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    raw: String,
    headers: Vec<(String, String)>,
}

impl Resp {
    /// The body as JSON; panics (showing it) when it is not.
    fn json(&self) -> Value {
        serde_json::from_str(&self.raw).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}), status {}: {}",
                self.status, self.raw
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request to the staff API, with `Authorization: <auth>` when given.
async fn call(hub: &TestHub, method: &str, path: &str, auth: Option<&str>, body: &str) -> Resp {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let (status, raw, headers) = http_request(hub.addr(), method, path, &headers, body).await;
    Resp {
        status,
        raw,
        headers,
    }
}

async fn get(hub: &TestHub, path: &str, token: &str) -> Resp {
    call(hub, "GET", path, Some(&format!("Bearer {token}")), "").await
}

async fn post(hub: &TestHub, path: &str, token: &str, body: &Value) -> Resp {
    let auth = format!("Bearer {token}");
    call(hub, "POST", path, Some(&auth), &body.to_string()).await
}

/// `GET` that must answer 200 with JSON.
async fn get_ok(hub: &TestHub, path: &str, token: &str) -> Value {
    let r = get(hub, path, token).await;
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.json()
}

/// `POST /api/staff/actions` that must answer 200 `{"ok":true,…}`.
async fn act(hub: &TestHub, token: &str, action: Value) -> Value {
    let r = post(hub, "/api/staff/actions", token, &action).await;
    assert_eq!(r.status, 200, "action {action}: {r:?}");
    let v = r.json();
    assert_eq!(v["ok"], true, "action {action}: {v}");
    v
}

/// Asserts an API error: the status, `{"code":…, "message":<sentence>}`.
fn assert_api_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}, got {r:?}");
    let v = r.json();
    assert_eq!(v["code"], code, "expected code {code}: {v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.trim().len() > 3,
        "error {code} without a readable message: {v}"
    );
}

fn assert_unauthorized(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    let v = r.json();
    assert_eq!(v["code"], "unauthorized", "{what}: {v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(msg.trim().len() > 3, "{what}: no readable message: {v}");
    let www = r.header("WWW-Authenticate").unwrap_or("");
    assert!(
        www == "Bearer" || www.starts_with("Bearer "),
        "{what}: WWW-Authenticate is {www:?}: {r:?}"
    );
}

/// A connection signed in with `token`.
async fn staff_ws(hub: &TestHub, token: &str) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    c.hello_auth(token).await;
    c
}

/// A connection signed in with a token that has just been revoked may not
/// act any more: either the server has closed it with 4003 already, or its
/// next staff frame is refused `unauthorized`, then it closes with 4003. A
/// staff frame may still be accepted only within `within` of the
/// revocation (the time it takes to reach another node). Returns which of
/// the two happened.
async fn assert_revoked_connection(ws: &mut TestClient, within: Duration) -> &'static str {
    let deadline = Instant::now() + within;
    for n in 0.. {
        let rf = format!("revoked-{n}");
        let frame = json!({"type": "lock", "ref": rf, "room": ROOM, "locked": true});
        // The server may have closed the connection already.
        let _ = ws.try_send(Message::text(frame.to_string())).await;
        loop {
            match ws.next_event(Duration::from_secs(5)).await {
                Event::Frame(v) if v["ref"] == rf.as_str() && v["type"] == "error" => {
                    assert_error(&v, "unauthorized");
                    let code = ws.expect_close_within(Duration::from_secs(5)).await;
                    assert_eq!(code, 4003, "close after {v}");
                    return "refused";
                }
                Event::Frame(v) if v["ref"] == rf.as_str() => {
                    assert_eq!(v["type"], "ok", "{v}");
                    assert!(
                        Instant::now() < deadline,
                        "a connection signed in with a revoked token still acts: {v}"
                    );
                    break;
                }
                Event::Frame(_) => continue,
                Event::Close(code) => {
                    assert_eq!(code, 4003, "a revoked staff connection closed with {code}");
                    return "closed";
                }
                other => panic!("revoked staff connection: expected 4003, got {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// Every frame that arrives within `wait` (none once the connection is
/// quiet for that long).
async fn drain(c: &mut TestClient, wait: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Some(v) = c.recv_within(wait).await {
        got.push(v);
    }
    got
}

/// The next `message` event with this id, skipping other frames.
async fn recv_message(c: &mut TestClient, id: &str) -> Value {
    loop {
        let m = c.recv_type("message").await;
        if m["id"] == id {
            return m;
        }
    }
}

fn room_entry<'a>(rooms: &'a Value, id: &str) -> &'a Value {
    rooms["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no rooms list: {rooms}"))
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("room {id} not listed: {rooms}"))
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|m| {
            m["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no id: {m}"))
                .to_string()
        })
        .collect()
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Checks the shape every audit entry has.
fn assert_audit_entry(e: &Value) {
    assert!(
        e["id"].as_str().is_some_and(|i| !i.is_empty()),
        "no id: {e}"
    );
    assert!(e["ts"].as_u64().is_some(), "no ts: {e}");
    for k in ["id", "name", "role"] {
        assert!(e["actor"][k].as_str().is_some(), "no actor.{k}: {e}");
    }
    assert!(e["action"].as_str().is_some(), "no action: {e}");
}

// ---------------------------------------------------------------------------
// Signing in
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_route_refuses_a_missing_or_bad_token() {
    let hub = staff_hub().await;
    let other = mint_staff_token(
        "another-secret-0123456789abcdef",
        "moderator",
        "Mod Mo",
        "1h",
    );
    let good = token("moderator", "Mod Mo");
    let other_auth = format!("Bearer {other}");
    let auths: [(&str, Option<&str>); 5] = [
        ("no Authorization", None),
        ("Bearer garbage", Some("Bearer garbage")),
        ("empty bearer", Some("Bearer ")),
        ("token signed with another secret", Some(&other_auth)),
        ("token without the Bearer scheme", Some(&good)),
    ];
    for (method, path, body) in ROUTES {
        for (what, auth) in auths {
            let r = call(&hub, method, path, auth, body).await;
            assert_unauthorized(&r, &format!("{method} {path} with {what}"));
        }
    }
    // Nothing happened: the lock was not applied, the audit log is empty.
    let mut p = TestClient::connect(&hub).await;
    p.hello().await;
    p.join(ROOM).await;
    let audit = get_ok(&hub, "/api/staff/audit", &good).await;
    assert_eq!(audit["entries"], json!([]), "{audit}");
    // The good token still works after all that.
    let me = get_ok(&hub, "/api/staff/me", &good).await;
    assert_eq!(me["you"]["name"], "Mod Mo", "{me}");
}

#[tokio::test]
async fn every_route_refuses_tokens_on_a_hub_without_a_staff_secret() {
    let hub = TestHub::start().await;
    let t = token("moderator", "Mod Mo");
    for (method, path, body) in ROUTES {
        let r = call(&hub, method, path, Some(&format!("Bearer {t}")), body).await;
        assert_unauthorized(&r, &format!("{method} {path} on a hub without a secret"));
        let r = call(&hub, method, path, None, body).await;
        assert_unauthorized(&r, &format!("{method} {path} without a token"));
    }
}

#[tokio::test]
async fn expired_and_tampered_tokens_are_refused() {
    let hub = staff_hub().await;
    let good = token("moderator", "Mod Mo");
    let mut claims = claims_of(&good);
    let now = claims["iat"].as_u64().expect("iat claim");
    claims["iat"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    let expired = forge_token(SECRET, &claims);
    // The forgery is faithful: the same claims with a future exp pass.
    claims["exp"] = json!(now + 3600);
    get_ok(&hub, "/api/staff/me", &forge_token(SECRET, &claims)).await;

    let r = get(&hub, "/api/staff/me", &expired).await;
    assert_unauthorized(&r, "expired token");
    let msg = r.json()["message"].as_str().unwrap_or("").to_lowercase();
    assert!(msg.contains("expired"), "the sentence should say so: {r:?}");

    // A peer role in a validly signed token is not staff.
    claims["role"] = json!("peer");
    let r = get(&hub, "/api/staff/me", &forge_token(SECRET, &claims)).await;
    assert_unauthorized(&r, "token with role peer");
    // One character of the payload changed: a bad signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let flipped = if parts[1].ends_with('A') { 'B' } else { 'A' };
    parts[1].pop();
    parts[1].push(flipped);
    let r = get(&hub, "/api/staff/me", &parts.join(".")).await;
    assert_unauthorized(&r, "tampered token");
    // A peer's resume token is not a staff token.
    let mut p = TestClient::connect(&hub).await;
    p.hello().await;
    let r = get(&hub, "/api/staff/me", &p.session).await;
    assert_unauthorized(&r, "a peer's session token");
}

/// RFC 7235 §2.1: the authentication scheme is case-insensitive, so
/// `bearer` and `BEARER` name the same scheme as `Bearer`.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {t}");
        let r = call(&hub, "GET", "/api/staff/me", Some(&auth), "").await;
        assert_eq!(r.status, 200, "Authorization: {scheme} <token>: {r:?}");
    }
}

#[tokio::test]
async fn me_describes_the_token_holder() {
    let hub = staff_hub().await;
    for (role, name) in [("moderator", "Mod Mo"), ("clinician", "Dr Ada")] {
        let t = token(role, name);
        let v = get_ok(&hub, "/api/staff/me", &t).await;
        assert_eq!(
            v,
            json!({"you": {"id": claim(&t, "sub"), "name": name, "role": role}}),
            "{role}"
        );
    }
}

// ---------------------------------------------------------------------------
// Rooms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rooms_lists_members_watchers_and_settings() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let sub = claim(&t, "sub");

    let empty = get_ok(&hub, "/api/staff/rooms", &t).await;
    for id in common::ROOMS {
        let r = room_entry(&empty, id);
        assert!(r["title"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        assert_eq!(r["capacity"], 30, "{r}");
        assert_eq!(r["locked"], false, "{r}");
        assert_eq!(r["slow_mode"], 0, "{r}");
        assert_eq!(r["members"], json!([]), "{r}");
        assert_eq!(r["watchers"], json!([]), "{r}");
    }
    assert_eq!(room_entry(&empty, ROOM)["title"], "Anxiety");

    let p = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = staff_ws(&hub, &t).await;
    let w = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");

    let v = get_ok(&hub, "/api/staff/rooms", &t).await;
    let r = room_entry(&v, ROOM);
    assert_eq!(
        r["members"],
        json!([{"id": p.id, "name": p.name, "role": "peer"}]),
        "{r}"
    );
    assert_eq!(
        r["watchers"],
        json!([{"id": sub, "name": "Mod Mo", "role": "moderator"}]),
        "{r}"
    );
    let o = room_entry(&v, OTHER_ROOM);
    assert_eq!(o["members"], json!([]), "{o}");
    assert_eq!(o["watchers"], json!([]), "{o}");

    // Settings changed over the API show.
    act(
        &hub,
        &t,
        json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;
    act(
        &hub,
        &t,
        json!({"type": "slow_mode", "room": ROOM, "seconds": 30}),
    )
    .await;
    let v = get_ok(&hub, "/api/staff/rooms", &t).await;
    let r = room_entry(&v, ROOM);
    assert_eq!(r["locked"], true, "{r}");
    assert_eq!(r["slow_mode"], 30, "{r}");
    assert_eq!(room_entry(&v, OTHER_ROOM)["locked"], false, "{v}");

    // A watcher that leaves is no longer listed.
    s.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = get_ok(&hub, "/api/staff/rooms", &t).await;
        if room_entry(&v, ROOM)["watchers"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "watcher still listed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn action_lock_stops_new_joins_until_unlocked() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let mut member = TestClient::joined_peer(&hub, ROOM).await;
    let v = act(
        &hub,
        &t,
        json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;
    assert_eq!(v, json!({"ok": true}));

    let mut newcomer = TestClient::connect(&hub).await;
    newcomer.hello().await;
    let e = newcomer
        .request(json!({"type": "join", "room": ROOM}))
        .await;
    assert_error(&e, "room_locked");
    // Members stay and may talk.
    member.say(ROOM, "still here").await;

    act(
        &hub,
        &t,
        json!({"type": "lock", "room": ROOM, "locked": false}),
    )
    .await;
    newcomer.join(ROOM).await;
}

#[tokio::test]
async fn action_announce_is_a_message_from_the_staff_member() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut b = TestClient::joined_peer(&hub, ROOM).await;
    let (_, s0) = a.say(ROOM, "before").await;

    let v = act(
        &hub,
        &t,
        json!({"type": "announce", "room": ROOM, "text": "hello"}),
    )
    .await;
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("announce without id: {v}"))
        .to_string();
    assert_eq!(v["seq"], s0 + 1, "{v}");
    for c in [&mut a, &mut b] {
        let m = recv_message(c, &id).await;
        assert_eq!(m["room"], ROOM, "{m}");
        assert_eq!(m["seq"], s0 + 1, "{m}");
        assert_eq!(m["text"], "hello", "{m}");
        assert_eq!(
            m["from"],
            json!({"id": claim(&t, "sub"), "name": "Mod Mo", "role": "moderator"}),
            "{m}"
        );
    }
    // A clinician's announcement carries its role.
    let c = token("clinician", "Dr Ada");
    let v = act(
        &hub,
        &c,
        json!({"type": "announce", "room": ROOM, "text": "hi all"}),
    )
    .await;
    let m = recv_message(&mut a, v["id"].as_str().expect("id")).await;
    assert_eq!(m["from"]["role"], "clinician", "{m}");
}

#[tokio::test]
async fn action_mute_refuses_the_peers_sends_until_lifted() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let mut p = TestClient::joined_peer(&hub, ROOM).await;
    p.join(OTHER_ROOM).await;
    let v = act(
        &hub,
        &t,
        json!({"type": "mute", "room": ROOM, "peer": p.id, "seconds": 60}),
    )
    .await;
    assert_eq!(v, json!({"ok": true}));
    let e = p.send_text(ROOM, "can I talk").await;
    assert_error(&e, "muted");
    assert!(e["until"].as_u64().is_some(), "muted without until: {e}");
    // Only in that room.
    p.say(OTHER_ROOM, "elsewhere is fine").await;

    act(
        &hub,
        &t,
        json!({"type": "mute", "room": ROOM, "peer": p.id, "seconds": 0}),
    )
    .await;
    p.say(ROOM, "thank you").await;
}

#[tokio::test]
async fn action_kick_and_delete_over_http() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut b = TestClient::joined_peer(&hub, ROOM).await;
    let (mid, _) = a.say(ROOM, "to be removed").await;

    act(
        &hub,
        &t,
        json!({"type": "delete", "room": ROOM, "message": mid}),
    )
    .await;
    for c in [&mut a, &mut b] {
        let d = c.recv_type("deleted").await;
        assert_eq!(d, json!({"type": "deleted", "room": ROOM, "message": mid}));
    }

    act(
        &hub,
        &t,
        json!({"type": "kick", "room": ROOM, "peer": b.id}),
    )
    .await;
    let k = b.recv_type("kicked").await;
    assert_eq!(k["room"], ROOM, "{k}");
    let e = b.send_text(ROOM, "hello?").await;
    assert_error(&e, "not_joined");
}

#[tokio::test]
async fn actions_refuse_malformed_bodies_and_unknown_rooms() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let p = TestClient::joined_peer(&hub, ROOM).await;
    let auth = format!("Bearer {t}");
    let bad_bodies = [
        "not json",
        "",
        "[1,2]",
        "\"lock\"",
        r#"{"room":"anxiety","locked":true}"#,
        r#"{"type":"lock","room":"anxiety"}"#,
        r#"{"type":"lock","locked":true}"#,
        r#"{"type":"mute","room":"anxiety","seconds":60}"#,
        r#"{"type":"announce","room":"anxiety"}"#,
        r#"{"type":"lock","room":"anxiety","locked":"yes"}"#,
        r#"{"type":"frobnicate","room":"anxiety"}"#,
        r#"{"type":"watch","room":"anxiety"}"#,
        r#"{"type":"unwatch","room":"anxiety"}"#,
        r#"{"type":"hello"}"#,
        r#"{"type":"send","room":"anxiety","text":"hi"}"#,
    ];
    for body in bad_bodies {
        let r = call(&hub, "POST", "/api/staff/actions", Some(&auth), body).await;
        assert_api_error(&r, 400, "bad_request");
        assert!(
            r.header("WWW-Authenticate").is_none(),
            "400 with WWW-Authenticate: {r:?}"
        );
    }
    let unknown = [
        json!({"type": "lock", "room": "no-such-room", "locked": true}),
        json!({"type": "announce", "room": "no-such-room", "text": "hi"}),
        json!({"type": "mute", "room": "no-such-room", "peer": p.id, "seconds": 60}),
        json!({"type": "slow_mode", "room": "no-such-room", "seconds": 5}),
    ];
    for body in unknown {
        let r = post(&hub, "/api/staff/actions", &t, &body).await;
        assert_api_error(&r, 404, "no_such_room");
    }
    // A revoke body without a jti.
    for body in ["{}", "not json", r#"{"jti":5}"#] {
        let r = call(&hub, "POST", "/api/staff/tokens/revoke", Some(&auth), body).await;
        assert_api_error(&r, 400, "bad_request");
    }
    // None of it was carried out or audited.
    let audit = get_ok(&hub, "/api/staff/audit", &t).await;
    assert_eq!(audit["entries"], json!([]), "{audit}");
    let rooms = get_ok(&hub, "/api/staff/rooms", &t).await;
    assert_eq!(room_entry(&rooms, ROOM)["locked"], false, "{rooms}");
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reports_are_listed_newest_first_filtered_and_dismissed() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let mut author = TestClient::joined_peer(&hub, ROOM).await;
    author.join(OTHER_ROOM).await;
    let mut reporter = TestClient::joined_peer(&hub, ROOM).await;
    reporter.join(OTHER_ROOM).await;
    let (m1, _) = author.say(ROOM, "something hurtful").await;
    let (m2, _) = author.say(OTHER_ROOM, "something else hurtful").await;

    let none = get_ok(&hub, "/api/staff/reports", &t).await;
    assert_eq!(none, json!({"reports": []}));

    let r = reporter
        .request(json!({"type": "report", "room": ROOM, "message": m1, "reason": "harassment"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = reporter
        .request(json!({"type": "report", "room": OTHER_ROOM, "message": m2, "reason": "spam"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");

    let all = get_ok(&hub, "/api/staff/reports", &t).await;
    let list = all["reports"].as_array().expect("reports list");
    assert_eq!(list.len(), 2, "{all}");
    let (newest, oldest) = (&list[0], &list[1]);
    assert_eq!(newest["room"], OTHER_ROOM, "newest first: {all}");
    assert_eq!(newest["message"], m2.as_str(), "{all}");
    assert_eq!(newest["reason"], "spam", "{all}");
    assert_eq!(oldest["room"], ROOM, "{all}");
    assert_eq!(oldest["message"], m1.as_str(), "{all}");
    assert_eq!(oldest["reason"], "harassment", "{all}");
    for rep in list {
        assert!(rep["id"].as_str().is_some_and(|s| !s.is_empty()), "{rep}");
        assert_eq!(rep["reporter"], reporter.id.as_str(), "{rep}");
        assert!(rep["ts"].as_u64().is_some(), "{rep}");
    }
    assert!(
        newest["ts"].as_u64() >= oldest["ts"].as_u64(),
        "newest first: {all}"
    );
    let rid = oldest["id"].as_str().expect("id").to_string();

    let only = get_ok(&hub, &format!("/api/staff/reports?room={ROOM}"), &t).await;
    assert_eq!(ids_of(&only["reports"]), vec![rid.clone()], "{only}");
    let none = get_ok(&hub, "/api/staff/reports?room=substance-use", &t).await;
    assert_eq!(none["reports"], json!([]), "{none}");

    let v = act(&hub, &t, json!({"type": "dismiss_report", "report": rid})).await;
    assert_eq!(v, json!({"ok": true}));
    let after = get_ok(&hub, "/api/staff/reports", &t).await;
    let ids = ids_of(&after["reports"]);
    assert_eq!(ids.len(), 1, "{after}");
    assert!(
        !ids.contains(&rid),
        "dismissed report still listed: {after}"
    );
    let only = get_ok(&hub, &format!("/api/staff/reports?room={ROOM}"), &t).await;
    assert_eq!(only["reports"], json!([]), "{only}");
    // Dismissing it again: there is no such open report.
    let r = post(
        &hub,
        "/api/staff/actions",
        &t,
        &json!({"type": "dismiss_report", "report": rid}),
    )
    .await;
    assert_api_error(&r, 400, "bad_request");
    // The author was told nothing.
    let seen = drain(&mut author, QUIET).await;
    assert!(
        seen.iter().all(|v| v["type"] != "report"),
        "the author was told: {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audit_is_newest_first_and_pages_with_a_cursor() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    let sub = claim(&t, "sub");
    let mut s = staff_ws(&hub, &token("clinician", "Dr Ada")).await;

    act(
        &hub,
        &t,
        json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;
    // An action over the WebSocket is in the same log.
    let r = s
        .request(json!({"type": "slow_mode", "room": ROOM, "seconds": 10}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    act(
        &hub,
        &t,
        json!({"type": "announce", "room": ROOM, "text": "hi"}),
    )
    .await;

    let all = get_ok(&hub, "/api/staff/audit", &t).await;
    let entries = all["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3, "{all}");
    assert!(all["next"].is_null(), "a complete page has no next: {all}");
    for e in entries {
        assert_audit_entry(e);
        assert_eq!(e["room"], ROOM, "{e}");
    }
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, vec!["announce", "slow_mode", "lock"], "{all}");
    assert_eq!(
        entries[0]["actor"],
        json!({"id": sub, "name": "Mod Mo", "role": "moderator"})
    );
    assert_eq!(
        entries[1]["actor"],
        json!({"id": s.id, "name": "Dr Ada", "role": "clinician"})
    );
    assert_eq!(entries[1]["seconds"], 10, "{all}");
    assert_eq!(entries[2]["locked"], true, "{all}");
    let ts: Vec<u64> = entries
        .iter()
        .map(|e| e["ts"].as_u64().expect("ts"))
        .collect();
    assert!(ts[0] >= ts[1] && ts[1] >= ts[2], "newest first: {all}");

    let p1 = get_ok(&hub, "/api/staff/audit?limit=2", &t).await;
    let page1 = p1["entries"].as_array().expect("entries");
    assert_eq!(page1.as_slice(), &entries[..2], "{p1}");
    let next = p1["next"]
        .as_str()
        .unwrap_or_else(|| panic!("a full page without a next cursor: {p1}"))
        .to_string();
    let p2 = get_ok(
        &hub,
        &format!("/api/staff/audit?before={}&limit=2", enc(&next)),
        &t,
    )
    .await;
    let page2 = p2["entries"].as_array().expect("entries");
    assert_eq!(page2.as_slice(), &entries[2..], "{p2}");
    assert!(p2["next"].is_null(), "the last page has next null: {p2}");
}

#[tokio::test]
async fn audit_and_reports_refuse_bad_query_parameters() {
    let hub = staff_hub().await;
    let t = token("moderator", "Mod Mo");
    act(
        &hub,
        &t,
        json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;
    for q in [
        "/api/staff/audit?before=garbage",
        "/api/staff/audit?before=1-2-3",
        "/api/staff/audit?before=",
        "/api/staff/audit?limit=abc",
        "/api/staff/audit?limit=-1",
        "/api/staff/reports?limit=abc",
    ] {
        let r = get(&hub, q, &t).await;
        assert_api_error(&r, 400, "bad_request");
    }
    // A cursor past every entry is simply an empty last page.
    let v = get_ok(&hub, "/api/staff/audit?before=1-0", &t).await;
    assert_eq!(v, json!({"entries": [], "next": null}));
}

#[tokio::test]
async fn audit_log_survives_a_restart() {
    let data = TempDir::new();
    let t = token("moderator", "Mod Mo");
    let hub = staff_hub_in(&data).await;
    act(
        &hub,
        &t,
        json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;
    act(
        &hub,
        &t,
        json!({"type": "announce", "room": ROOM, "text": "hi"}),
    )
    .await;
    let before = get_ok(&hub, "/api/staff/audit", &t).await;
    assert_eq!(
        before["entries"].as_array().map(Vec::len),
        Some(2),
        "{before}"
    );
    stop(hub).await;

    let hub = staff_hub_in(&data).await;
    let after = get_ok(&hub, "/api/staff/audit", &t).await;
    assert_eq!(after["entries"], before["entries"], "after a restart");
    act(
        &hub,
        &t,
        json!({"type": "lock", "room": ROOM, "locked": false}),
    )
    .await;
    let more = get_ok(&hub, "/api/staff/audit", &t).await;
    let entries = more["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3, "{more}");
    assert_eq!(entries[0]["action"], "lock", "{more}");
    assert_eq!(entries[0]["locked"], false, "{more}");
    assert_eq!(
        &entries[1..],
        before["entries"].as_array().expect("entries").as_slice()
    );
}

// ---------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoked_token_is_refused_everywhere_and_stays_revoked_after_a_restart() {
    let data = TempDir::new();
    let a = token("moderator", "Mod A");
    let b = token("moderator", "Mod B");
    let b_jti = claim(&b, "jti");
    let hub = staff_hub_in(&data).await;

    // B works, on HTTP and on a WebSocket.
    let me = get_ok(&hub, "/api/staff/me", &b).await;
    assert_eq!(me["you"]["name"], "Mod B", "{me}");
    let mut ws_b = staff_ws(&hub, &b).await;
    let r = ws_b
        .request(json!({"type": "lock", "room": ROOM, "locked": false}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");

    let r = post(&hub, "/api/staff/tokens/revoke", &a, &json!({"jti": b_jti})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"ok": true}));

    // HTTP: 401.
    let r = get(&hub, "/api/staff/me", &b).await;
    assert_unauthorized(&r, "revoked token on /api/staff/me");
    let r = post(
        &hub,
        "/api/staff/actions",
        &b,
        &json!({"type": "lock", "room": ROOM, "locked": true}),
    )
    .await;
    assert_unauthorized(&r, "revoked token on /api/staff/actions");
    // A new sign-in: unauthorized, close 4003.
    let mut c = TestClient::connect(&hub).await;
    let e = c
        .request(json!({"type": "hello", "ref": "h", "auth": b}))
        .await;
    assert_error(&e, "unauthorized");
    assert_eq!(e["ref"], "h", "{e}");
    assert_eq!(c.expect_close_within(Duration::from_secs(5)).await, 4003);
    // The connection already signed in with B can no longer act.
    let how = assert_revoked_connection(&mut ws_b, Duration::ZERO).await;
    eprintln!("the connection signed in with the revoked token was {how}");
    // ...and the lock it tried was not carried out.
    let mut p = TestClient::connect(&hub).await;
    p.hello().await;
    p.join(ROOM).await;

    // A is unaffected; the audit log says who revoked what.
    let me = get_ok(&hub, "/api/staff/me", &a).await;
    assert_eq!(me["you"]["name"], "Mod A", "{me}");
    let audit = get_ok(&hub, "/api/staff/audit", &a).await;
    let entries = audit["entries"].as_array().expect("entries");
    let rev = entries
        .iter()
        .find(|e| e["action"] == "revoke_token")
        .unwrap_or_else(|| panic!("no revoke_token entry: {audit}"));
    assert_audit_entry(rev);
    assert_eq!(rev["actor"]["id"], claim(&a, "sub").as_str(), "{rev}");
    assert_eq!(rev["target"], b_jti.as_str(), "{rev}");
    assert_eq!(
        entries[0]["action"], "revoke_token",
        "newest first: {audit}"
    );

    // Restart on the same data dir: still revoked.
    stop(hub).await;
    let hub = staff_hub_in(&data).await;
    let r = get(&hub, "/api/staff/me", &b).await;
    assert_unauthorized(&r, "revoked token after a restart");
    let mut c = TestClient::connect(&hub).await;
    let e = c.request(json!({"type": "hello", "auth": b})).await;
    assert_error(&e, "unauthorized");
    assert_eq!(c.expect_close_within(Duration::from_secs(5)).await, 4003);
    get_ok(&hub, "/api/staff/me", &a).await;
    let audit = get_ok(&hub, "/api/staff/audit", &a).await;
    assert!(
        audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["action"] == "revoke_token" && e["target"] == b_jti.as_str()),
        "revoke_token entry lost in a restart: {audit}"
    );
}
