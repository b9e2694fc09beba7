//! Staff support (embedded mode), black-box: signing in with a staff token,
//! the staff frames (watch, mute, kick, ban, delete, slow mode, lock,
//! release, announce, reports), what peers may not do, and the audit log.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{assert_error, mint_staff_token, TempDir, TestClient, TestHub, BIN, TEST_CONFIG};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The secret every staff hub here runs with, and tokens are minted with.
const SECRET: &str = "test-secret-0123456789abcdef";
const ROOM: &str = "anxiety";
const OTHER_ROOM: &str = "bereavement";
/// How long "nothing arrives" is waited for.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn staff_hub() -> TestHub {
    TestHub::start_full(|_| {}, &[("HEARTH_STAFF_SECRET", SECRET)]).await
}

fn token(role: &str, name: &str) -> String {
    mint_staff_token(SECRET, role, name, "1h")
}

/// A connection signed in with a fresh staff token.
async fn staff(hub: &TestHub, role: &str, name: &str) -> TestClient {
    let mut c = TestClient::connect(hub).await;
    c.hello_auth(&token(role, name)).await;
    c
}

async fn moderator(hub: &TestHub) -> TestClient {
    staff(hub, "moderator", "Mod Mo").await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The claims of a JWT, unverified.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("JSON payload")
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

/// Every frame that arrives within `wait` (none once the connection is
/// quiet for that long).
async fn drain(c: &mut TestClient, wait: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Some(v) = c.recv_within(wait).await {
        got.push(v);
    }
    got
}

/// Asserts that no frame of type `ty` arrives within `wait`.
async fn assert_no(c: &mut TestClient, ty: &str, wait: Duration) {
    let got = drain(c, wait).await;
    assert!(
        got.iter().all(|v| v["type"] != ty),
        "expected no {ty:?} frame, got {got:?}"
    );
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

/// The next `presence` frame for `room` with a `left` or `joined` entry.
async fn recv_presence(c: &mut TestClient, room: &str, kind: &str) -> Value {
    loop {
        let p = c.recv_type("presence").await;
        if p["room"] == room && p.get(kind).is_some() {
            return p;
        }
    }
}

fn member_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("members is not a list: {list}"))
        .iter()
        .map(|m| m["id"].as_str().expect("member id").to_string())
        .collect()
}

fn audit_path(hub: &TestHub) -> PathBuf {
    hub.data_dir().join("audit.log")
}

/// The audit log, one JSON object per line.
fn audit_lines(hub: &TestHub) -> Vec<Value> {
    let text = std::fs::read_to_string(audit_path(hub)).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Signing in
// ---------------------------------------------------------------------------

#[tokio::test]
async fn staff_token_signs_in_with_its_role_name_and_id() {
    let hub = staff_hub().await;
    for (role, name) in [("moderator", "Mod Mo"), ("clinician", "Dr Ada")] {
        let t = token(role, name);
        let sub = claims_of(&t)["sub"]
            .as_str()
            .expect("sub claim")
            .to_string();
        let mut c = TestClient::connect(&hub).await;
        let w = c
            .request(json!({"type": "hello", "ref": "h1", "auth": t}))
            .await;
        assert_eq!(w["type"], "welcome", "{w}");
        assert_eq!(w["ref"], "h1", "{w}");
        assert_eq!(w["you"]["role"], role, "{w}");
        assert_eq!(w["you"]["name"], name, "{w}");
        assert_eq!(w["you"]["id"], sub.as_str(), "{w}");
        assert!(sub.starts_with("s_"), "staff id {sub}");
        assert!(w["rooms"].is_array(), "{w}");
        // The connection works.
        let j = c.join(ROOM).await;
        assert!(member_ids(&j["members"]).contains(&sub), "{j}");
    }
}

async fn assert_refused(hub: &TestHub, auth: &str) -> Value {
    let mut c = TestClient::connect(hub).await;
    let e = c
        .request(json!({"type": "hello", "ref": 1, "auth": auth}))
        .await;
    assert_error(&e, "unauthorized");
    assert_eq!(e["ref"], 1, "{e}");
    assert_eq!(
        c.expect_close_within(Duration::from_secs(5)).await,
        4003,
        "after {e}"
    );
    e
}

#[tokio::test]
async fn bad_tokens_get_unauthorized_and_close_4003() {
    let hub = staff_hub().await;
    assert_refused(&hub, "not-a-token").await;
    assert_refused(&hub, "").await;
    assert_refused(&hub, "a.b.c").await;
    // Signed with another secret: a bad signature.
    let other = mint_staff_token("another-secret-0123456789", "moderator", "Mod Mo", "1h");
    assert_refused(&hub, &other).await;
    // A good token with one character of the payload changed.
    let good = token("moderator", "Mod Mo");
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let flipped = if parts[1].ends_with('A') { 'B' } else { 'A' };
    parts[1].pop();
    parts[1].push(flipped);
    assert_refused(&hub, &parts.join(".")).await;

    // A peer can still say hello afterwards.
    let mut p = TestClient::connect(&hub).await;
    let w = p.hello().await;
    assert_eq!(w["you"]["role"], "peer");
}

#[tokio::test]
async fn expired_token_is_refused_with_a_sentence_saying_so() {
    let hub = staff_hub().await;
    let now = now_ms() / 1000;
    // The forging is right: the same claims, not expired, sign in.
    let live = forge_token(
        SECRET,
        &json!({"sub": "s_forged1", "name": "Old Hand", "role": "moderator",
                "exp": now + 600, "iat": now - 60, "jti": "jti-live-1"}),
    );
    let mut c = TestClient::connect(&hub).await;
    let w = c.hello_auth(&live).await;
    assert_eq!(w["you"]["id"], "s_forged1", "{w}");
    assert_eq!(w["you"]["role"], "moderator", "{w}");

    let expired = forge_token(
        SECRET,
        &json!({"sub": "s_forged2", "name": "Old Hand", "role": "moderator",
                "exp": now - 60, "iat": now - 3600, "jti": "jti-expired-1"}),
    );
    let e = assert_refused(&hub, &expired).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("expired"),
        "{e}"
    );
}

#[tokio::test]
async fn without_a_secret_staff_sign_in_is_not_set_up() {
    let hub = TestHub::start().await;
    let e = assert_refused(&hub, &token("moderator", "Mod Mo")).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("not set up"),
        "{e}"
    );
    // Peers are unaffected.
    let mut p = TestClient::joined_peer(&hub, ROOM).await;
    p.say(ROOM, "hello").await;
}

#[tokio::test]
async fn weak_secret_refuses_to_start() {
    let dir = TempDir::new();
    let config = dir.path().join("hearth.toml");
    std::fs::write(&config, TEST_CONFIG).expect("write config");
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    for (k, _) in std::env::vars() {
        if k.starts_with("HEARTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HEARTH_LISTEN", "127.0.0.1:0")
        .env("HEARTH_DATA_DIR", dir.path().join("data"))
        .env("HEARTH_STAFF_SECRET", "short-secret");
    let mut child = cmd.spawn().expect("spawn hearth");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hearth kept running with a 12-character HEARTH_STAFF_SECRET");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!status.success(), "exit {status}; stderr: {log}");
    assert!(log.contains("HEARTH_STAFF_SECRET"), "stderr: {log}");
    assert!(!log.contains("short-secret"), "the secret leaked: {log}");
}

// ---------------------------------------------------------------------------
// Who may send staff frames
// ---------------------------------------------------------------------------

#[tokio::test]
async fn peers_are_forbidden_every_staff_frame() {
    let hub = staff_hub().await;
    let mut p = TestClient::joined_peer(&hub, ROOM).await;
    let (mid, _) = p.say(ROOM, "just a message").await;
    let me = p.id.clone();
    let frames = [
        json!({"type": "watch", "room": ROOM}),
        json!({"type": "unwatch", "room": ROOM}),
        json!({"type": "mute", "room": ROOM, "peer": me, "seconds": 60}),
        json!({"type": "kick", "room": ROOM, "peer": me}),
        json!({"type": "ban", "peer": me, "seconds": 60, "reason": "x"}),
        json!({"type": "delete", "room": ROOM, "message": mid}),
        json!({"type": "slow_mode", "room": ROOM, "seconds": 30}),
        json!({"type": "lock", "room": ROOM, "locked": true}),
        json!({"type": "release", "room": ROOM, "message": mid}),
        json!({"type": "announce", "room": ROOM, "text": "hi all"}),
        json!({"type": "ack", "escalation": "esc_x"}),
        json!({"type": "resolve", "escalation": "esc_x", "note": "done"}),
        json!({"type": "care", "escalation": "esc_x"}),
        json!({"type": "dismiss_report", "report": "r_x"}),
    ];
    for f in frames {
        let ty = f["type"].as_str().expect("type").to_string();
        let r = p.request(f.clone()).await;
        assert_error(&r, "forbidden");
        // Without any fields, and with nonsense ones, the same.
        let r = p.request(json!({"type": ty})).await;
        assert_error(&r, "forbidden");
        let r = p
            .request(json!({"type": ty, "room": 7, "seconds": "lots"}))
            .await;
        assert_error(&r, "forbidden");
    }
    // Still open and still a member; nothing changed.
    let (_, _) = p.say(ROOM, "still here").await;
    let mut q = TestClient::connect(&hub).await;
    q.hello().await;
    let j = q.join(ROOM).await;
    assert!(member_ids(&j["members"]).contains(&me), "{j}");
    assert!(
        audit_lines(&hub).is_empty(),
        "peers' refused frames were audited"
    );
}

#[tokio::test]
async fn malformed_staff_frames_are_bad_request() {
    let hub = staff_hub().await;
    let mut p = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = moderator(&hub).await;
    let frames = [
        json!({"type": "mute", "room": ROOM, "peer": p.id}),
        json!({"type": "mute", "room": ROOM, "peer": p.id, "seconds": -5}),
        json!({"type": "mute", "room": ROOM, "peer": p.id, "seconds": "60"}),
        json!({"type": "kick", "room": ROOM}),
        json!({"type": "ban", "seconds": 60}),
        json!({"type": "delete", "room": ROOM}),
        json!({"type": "slow_mode", "room": ROOM}),
        json!({"type": "lock", "room": ROOM, "locked": "yes"}),
        json!({"type": "lock", "locked": true}),
        json!({"type": "watch"}),
        json!({"type": "watch", "room": 5}),
        json!({"type": "announce", "room": ROOM}),
        json!({"type": "dismiss_report"}),
        json!({"type": "release", "room": ROOM}),
    ];
    for f in frames {
        let r = s.request(f.clone()).await;
        assert_error(&r, "bad_request");
    }
    // Out-of-range values.
    let r = s
        .request(json!({"type": "slow_mode", "room": ROOM, "seconds": 3601}))
        .await;
    assert_error(&r, "bad_request");
    let r = s
        .request(json!({"type": "mute", "room": ROOM, "peer": p.id, "seconds": 400 * 24 * 3600}))
        .await;
    assert_error(&r, "bad_request");
    // The connection stays open and works.
    let w = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
    // Nothing was done to the peer.
    p.say(ROOM, "not muted").await;
}

#[tokio::test]
async fn escalation_frames_are_not_available_yet() {
    let hub = staff_hub().await;
    let mut s = staff(&hub, "clinician", "Dr Ada").await;
    for f in [
        json!({"type": "ack", "escalation": "esc_abc"}),
        json!({"type": "resolve", "escalation": "esc_abc", "note": "ok"}),
        json!({"type": "care", "escalation": "esc_abc"}),
    ] {
        let r = s.request(f).await;
        assert_error(&r, "bad_request");
    }
    let w = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
}

// ---------------------------------------------------------------------------
// Watching and joining
// ---------------------------------------------------------------------------

#[tokio::test]
async fn watch_streams_the_room_without_membership() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let (m1, _) = a.say(ROOM, "first").await;
    let (m2, s2) = a.say(ROOM, "second").await;

    let mut s = moderator(&hub).await;
    let staff_id = s.id.clone();
    let w = s
        .request(json!({"type": "watch", "ref": "w1", "room": ROOM}))
        .await;
    assert_eq!(w["type"], "ok", "{w}");
    assert_eq!(w["ref"], "w1", "{w}");
    assert_eq!(w["room"], ROOM, "{w}");
    assert!(w["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{w}");
    assert_eq!(w["seq"], s2, "{w}");
    assert_eq!(member_ids(&w["members"]), vec![a.id.clone()], "{w}");
    assert_eq!(w["staff_watching"], 1, "{w}");
    assert_eq!(w["locked"], false, "{w}");
    assert_eq!(w["slow_mode"], 0, "{w}");
    assert_eq!(w["gap"], false, "{w}");
    let hist: Vec<&str> = w["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["id"].as_str().expect("history id"))
        .collect();
    assert_eq!(hist, vec![m1.as_str(), m2.as_str()], "{w}");

    // Live traffic follows in seq order with no gap.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(a.say(ROOM, &format!("live {i}")).await.0);
    }
    for (i, id) in ids.iter().enumerate() {
        let m = s.recv_type("message").await;
        assert_eq!(&m["id"], id, "{m}");
        assert_eq!(m["seq"], s2 + 1 + i as u64, "{m}");
        assert_eq!(m["room"], ROOM, "{m}");
    }

    // A new member does not see the watcher, but sees the count.
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join(ROOM).await;
    let ids_b = member_ids(&j["members"]);
    assert!(!ids_b.contains(&staff_id), "watcher listed: {j}");
    assert!(ids_b.contains(&a.id) && ids_b.contains(&b.id), "{j}");
    assert_eq!(j["staff_watching"], 1, "{j}");

    // The watcher gets presence and typing.
    let p = recv_presence(&mut s, ROOM, "joined").await;
    assert_eq!(p["joined"]["id"], b.id.as_str(), "{p}");
    b.send_json(json!({"type": "typing", "room": ROOM})).await;
    let t = s.recv_type("typing").await;
    assert_eq!(t["room"], ROOM, "{t}");
    assert_eq!(t["from"]["id"], b.id.as_str(), "{t}");
    b.leave(ROOM).await;
    let p = recv_presence(&mut s, ROOM, "left").await;
    assert_eq!(p["left"]["id"], b.id.as_str(), "{p}");

    // Peers never hear about the watcher itself.
    let seen = drain(&mut a, QUIET).await;
    assert!(
        !seen.iter().any(|v| v.to_string().contains(&staff_id)),
        "a peer saw the watcher: {seen:?}"
    );

    // Unwatch: no more traffic; the count drops.
    let u = s.request(json!({"type": "unwatch", "room": ROOM})).await;
    assert_eq!(u["type"], "ok", "{u}");
    drain(&mut s, QUIET).await;
    a.say(ROOM, "after unwatch").await;
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let j = c.join(ROOM).await;
    assert_eq!(j["staff_watching"], 0, "{j}");
    let after = drain(&mut s, QUIET).await;
    assert!(after.is_empty(), "traffic after unwatch: {after:?}");
}

#[tokio::test]
async fn watching_an_unknown_room_is_no_such_room() {
    let hub = staff_hub().await;
    let mut s = moderator(&hub).await;
    let r = s
        .request(json!({"type": "watch", "room": "no-such-room"}))
        .await;
    assert_error(&r, "no_such_room");
    let r = s
        .request(json!({"type": "unwatch", "room": "no-such-room"}))
        .await;
    assert_error(&r, "no_such_room");
}

#[tokio::test]
async fn staff_who_join_and_watch_get_each_event_once() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = moderator(&hub).await;
    s.join(ROOM).await;
    let w = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
    let (id, _) = a.say(ROOM, "once please").await;
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    b.join(ROOM).await;
    let got = drain(&mut s, QUIET).await;
    let copies = got.iter().filter(|v| v["id"] == id.as_str()).count();
    assert_eq!(copies, 1, "message delivered {copies} times: {got:?}");
    let joins = got
        .iter()
        .filter(|v| v["type"] == "presence" && v["joined"]["id"] == b.id.as_str())
        .count();
    assert_eq!(joins, 1, "presence delivered {joins} times: {got:?}");
}

#[tokio::test]
async fn staff_watching_counts_every_watcher() {
    let hub = staff_hub().await;
    let mut s1 = moderator(&hub).await;
    let mut s2 = staff(&hub, "clinician", "Dr Ada").await;
    let w = s1.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["staff_watching"], 1, "{w}");
    let w = s2.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["staff_watching"], 2, "{w}");
    let mut p = TestClient::connect(&hub).await;
    p.hello().await;
    let j = p.join(ROOM).await;
    assert_eq!(j["staff_watching"], 2, "{j}");
    assert_eq!(member_ids(&j["members"]), vec![p.id.clone()], "{j}");
    // A watcher that disconnects stops counting.
    s2.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut q = TestClient::connect(&hub).await;
        q.hello().await;
        let j = q.join(OTHER_ROOM).await;
        assert_eq!(j["staff_watching"], 0, "{j}");
        let j = q.join(ROOM).await;
        if j["staff_watching"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watcher still counted after close: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn staff_who_join_show_with_their_role_and_name() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = moderator(&hub).await;
    let j = s.join(ROOM).await;
    let me = j["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == s.id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("staff not in its own joined: {j}"));
    assert_eq!(me["role"], "moderator", "{j}");
    assert_eq!(me["name"], "Mod Mo", "{j}");

    let p = recv_presence(&mut a, ROOM, "joined").await;
    assert_eq!(p["joined"]["id"], s.id.as_str(), "{p}");
    assert_eq!(p["joined"]["role"], "moderator", "{p}");
    assert_eq!(p["joined"]["name"], "Mod Mo", "{p}");

    let mut c = staff(&hub, "clinician", "Dr Ada").await;
    c.join(ROOM).await;
    let p = recv_presence(&mut a, ROOM, "joined").await;
    assert_eq!(p["joined"]["role"], "clinician", "{p}");
    assert_eq!(p["joined"]["name"], "Dr Ada", "{p}");

    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join(ROOM).await;
    let roles: Vec<(String, String)> = j["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        roles.contains(&("Mod Mo".into(), "moderator".into())),
        "{j}"
    );
    assert!(
        roles.contains(&("Dr Ada".into(), "clinician".into())),
        "{j}"
    );

    // A staff member's own messages carry the role too.
    let (id, _) = s.say(ROOM, "Welcome, everyone.").await;
    let m = recv_message(&mut b, &id).await;
    assert_eq!(m["from"]["role"], "moderator", "{m}");
    assert_eq!(m["from"]["name"], "Mod Mo", "{m}");
}

// ---------------------------------------------------------------------------
// Moderation actions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mute_refuses_sends_in_that_room_until_lifted() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    a.join(OTHER_ROOM).await;
    let mut s = moderator(&hub).await;

    let before = now_ms();
    let r = s
        .request(json!({"type": "mute", "ref": 5, "room": ROOM, "peer": a.id, "seconds": 600}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    assert_eq!(r["ref"], 5, "{r}");
    let after = now_ms();

    let e = a.send_text(ROOM, "can I talk?").await;
    assert_error(&e, "muted");
    let until = e["until"]
        .as_u64()
        .unwrap_or_else(|| panic!("muted without until: {e}"));
    assert!(
        until + 2000 >= before + 600_000 && until <= after + 600_000 + 2000,
        "until {until} not about now + 600 s ({before}..{after}): {e}"
    );
    // Only that room.
    a.say(OTHER_ROOM, "over here I can").await;
    // The mute follows the peer across a resume.
    let session = a.session.clone();
    a.close().await;
    let mut a = TestClient::connect(&hub).await;
    let w = a.hello_resume(&session).await;
    assert_eq!(w["resumed"], true, "{w}");
    a.join(ROOM).await;
    let e = a.send_text(ROOM, "after resume").await;
    assert_error(&e, "muted");
    assert_eq!(e["until"], until, "{e}");

    let r = s
        .request(json!({"type": "mute", "room": ROOM, "peer": a.id, "seconds": 0}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    a.say(ROOM, "thank you").await;

    // An unknown peer.
    let r = s
        .request(json!({"type": "mute", "room": ROOM, "peer": "p_nobody", "seconds": 60}))
        .await;
    assert_error(&r, "bad_request");
    // An unknown room.
    let r = s
        .request(json!({"type": "mute", "room": "nowhere", "peer": a.id, "seconds": 60}))
        .await;
    assert_error(&r, "no_such_room");
}

#[tokio::test]
async fn kick_removes_the_peer_who_may_join_again() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut b = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = moderator(&hub).await;
    let w = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
    drain(&mut a, QUIET).await;

    let r = s
        .request(json!({"type": "kick", "room": ROOM, "peer": a.id}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let k = a.recv_type("kicked").await;
    assert_eq!(k, json!({"type": "kicked", "room": ROOM}));

    let p = recv_presence(&mut b, ROOM, "left").await;
    assert_eq!(p["left"]["id"], a.id.as_str(), "{p}");
    let p = recv_presence(&mut s, ROOM, "left").await;
    assert_eq!(p["left"]["id"], a.id.as_str(), "{p}");

    let e = a.send_text(ROOM, "hey").await;
    assert_error(&e, "not_joined");
    // Not a member any more: others' messages do not reach it.
    let (bid, _) = b.say(ROOM, "quiet now").await;
    let seen = drain(&mut a, QUIET).await;
    assert!(
        !seen.iter().any(|v| v["id"] == bid.as_str()),
        "kicked peer still gets room traffic: {seen:?}"
    );
    let mut q = TestClient::connect(&hub).await;
    q.hello().await;
    let j = q.join(ROOM).await;
    assert!(!member_ids(&j["members"]).contains(&a.id), "{j}");

    // Kicking someone not in the room.
    let r = s
        .request(json!({"type": "kick", "room": ROOM, "peer": a.id}))
        .await;
    assert_error(&r, "bad_request");
    let r = s
        .request(json!({"type": "kick", "room": ROOM, "peer": "p_nobody"}))
        .await;
    assert_error(&r, "bad_request");

    // It may come back.
    let j = a.join(ROOM).await;
    assert!(member_ids(&j["members"]).contains(&a.id), "{j}");
    a.say(ROOM, "back again").await;
}

#[tokio::test]
async fn ban_closes_1008_and_blocks_joining_until_lifted() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    a.join(OTHER_ROOM).await;
    let mut b = TestClient::joined_peer(&hub, ROOM).await;
    let mut c = TestClient::joined_peer(&hub, OTHER_ROOM).await;
    let mut s = moderator(&hub).await;
    let a_id = a.id.clone();
    let a_session = a.session.clone();

    let before = now_ms();
    let r = s
        .request(json!({"type": "ban", "peer": a_id, "seconds": 3600, "reason": "spam"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let after = now_ms();
    assert_eq!(a.expect_close_within(Duration::from_secs(5)).await, 1008);

    let p = recv_presence(&mut b, ROOM, "left").await;
    assert_eq!(p["left"]["id"], a_id.as_str(), "{p}");
    let p = recv_presence(&mut c, OTHER_ROOM, "left").await;
    assert_eq!(p["left"]["id"], a_id.as_str(), "{p}");

    // Resuming works, joining does not.
    let mut a2 = TestClient::connect(&hub).await;
    let w = a2.hello_resume(&a_session).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["you"]["id"], a_id.as_str(), "{w}");
    for room in [ROOM, OTHER_ROOM] {
        let e = a2.request(json!({"type": "join", "room": room})).await;
        assert_error(&e, "banned");
        let until = e["until"]
            .as_u64()
            .unwrap_or_else(|| panic!("banned without until: {e}"));
        assert!(
            until + 2000 >= before + 3_600_000 && until <= after + 3_600_000 + 2000,
            "until {until} not about now + 1 h: {e}"
        );
    }
    let e = a2.send_text(ROOM, "let me in").await;
    assert_error(&e, "not_joined");

    // Lifting the ban.
    let r = s
        .request(json!({"type": "ban", "peer": a_id, "seconds": 0}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let j = a2.join(ROOM).await;
    assert!(member_ids(&j["members"]).contains(&a_id), "{j}");
    a2.say(ROOM, "sorry").await;

    // Banning nobody.
    let r = s
        .request(json!({"type": "ban", "peer": "p_nobody", "seconds": 60}))
        .await;
    assert_error(&r, "bad_request");
}

#[tokio::test]
async fn delete_removes_a_message_for_everyone_and_from_history() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut b = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = moderator(&hub).await;
    let w = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
    let (m1, _) = a.say(ROOM, "something regrettable").await;
    let (m2, _) = a.say(ROOM, "something fine").await;
    recv_message(&mut s, &m2).await;

    let r = s
        .request(json!({"type": "delete", "room": ROOM, "message": m1}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let want = json!({"type": "deleted", "room": ROOM, "message": m1});
    for c in [&mut a, &mut b, &mut s] {
        let d = c.recv_type("deleted").await;
        assert_eq!(d, want);
    }

    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let j = c.join(ROOM).await;
    let hist: Vec<&str> = j["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["id"].as_str().expect("history id"))
        .collect();
    assert!(
        !hist.contains(&m1.as_str()),
        "deleted message in history: {j}"
    );
    assert!(hist.contains(&m2.as_str()), "{j}");
    assert!(
        !j.to_string().contains("something regrettable"),
        "deleted text in history: {j}"
    );

    // Unknown or already deleted ids.
    for id in ["m_doesnotexist", m1.as_str()] {
        let r = s
            .request(json!({"type": "delete", "room": ROOM, "message": id}))
            .await;
        assert_error(&r, "bad_request");
    }
    // A message of another room.
    let r = s
        .request(json!({"type": "delete", "room": OTHER_ROOM, "message": m2}))
        .await;
    assert_error(&r, "bad_request");
}

#[tokio::test]
async fn slow_mode_spaces_peer_messages_but_not_staff() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    a.join(OTHER_ROOM).await;
    let mut s = moderator(&hub).await;
    s.join(ROOM).await;

    let r = s
        .request(json!({"type": "slow_mode", "room": ROOM, "seconds": 20}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    a.say(ROOM, "one").await;
    let e = a.send_text(ROOM, "two").await;
    assert_error(&e, "slow_mode");
    let wait = e["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("slow_mode without retry_after_ms: {e}"));
    assert!(wait > 0 && wait <= 20_000, "{e}");
    // Another room is not slowed.
    a.say(OTHER_ROOM, "elsewhere").await;
    a.say(OTHER_ROOM, "elsewhere again").await;
    // Staff are exempt.
    s.say(ROOM, "staff one").await;
    s.say(ROOM, "staff two").await;
    // A watcher sees the setting.
    let mut s2 = staff(&hub, "moderator", "Mod Two").await;
    let w = s2.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["slow_mode"], 20, "{w}");

    let r = s
        .request(json!({"type": "slow_mode", "room": ROOM, "seconds": 0}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    a.say(ROOM, "three").await;
    a.say(ROOM, "four").await;
}

#[tokio::test]
async fn lock_stops_new_joins_but_not_members_or_staff() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = moderator(&hub).await;

    let r = s
        .request(json!({"type": "lock", "room": ROOM, "locked": true}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");

    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let e = b.request(json!({"type": "join", "room": ROOM})).await;
    assert_error(&e, "room_locked");
    // Other rooms are open.
    b.join(OTHER_ROOM).await;
    // Members keep talking; joining again is idempotent.
    a.say(ROOM, "still here").await;
    a.join(ROOM).await;
    // Staff can enter.
    let mut s2 = staff(&hub, "clinician", "Dr Ada").await;
    s2.join(ROOM).await;
    let w = s.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["locked"], true, "{w}");
    // A new connection's welcome shows it locked.
    let mut d = TestClient::connect(&hub).await;
    let wd = d.hello().await;
    let listed = wd["rooms"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == ROOM))
        .cloned()
        .unwrap_or_else(|| panic!("no {ROOM} in {wd}"));
    assert_eq!(listed["locked"], true, "welcome.rooms: {wd}");
    // The public room list shows it locked.
    let rooms = hub.api_rooms().await;
    let listed = rooms["rooms"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == ROOM))
        .cloned()
        .unwrap_or_else(|| panic!("no {ROOM} in {rooms}"));
    assert_eq!(listed["locked"], true, "{rooms}");

    let r = s
        .request(json!({"type": "lock", "room": ROOM, "locked": false}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    b.join(ROOM).await;
    let mut s3 = staff(&hub, "moderator", "Mod Three").await;
    let w = s3.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["locked"], false, "{w}");
}

#[tokio::test]
async fn announce_is_a_message_from_staff() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let (_, s1) = a.say(ROOM, "before").await;
    let mut s = moderator(&hub).await;
    let r = s
        .request(json!({"type": "announce", "room": ROOM, "text": "Please be kind to each other."}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let id = r["id"]
        .as_str()
        .unwrap_or_else(|| panic!("announce ok without id: {r}"))
        .to_string();
    assert_eq!(r["seq"], s1 + 1, "{r}");
    let m = recv_message(&mut a, &id).await;
    assert_eq!(m["seq"], s1 + 1, "{m}");
    assert_eq!(m["room"], ROOM, "{m}");
    assert_eq!(m["text"], "Please be kind to each other.", "{m}");
    assert_eq!(m["from"]["role"], "moderator", "{m}");
    assert_eq!(m["from"]["name"], "Mod Mo", "{m}");
    assert_eq!(m["from"]["id"], s.id.as_str(), "{m}");
    assert!(m["ts"].as_u64().is_some(), "{m}");

    // A clinician's announcement carries its role; it is in history.
    let mut c = staff(&hub, "clinician", "Dr Ada").await;
    let r = c
        .request(json!({"type": "announce", "room": ROOM, "text": "I am around tonight."}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let cid = r["id"].as_str().expect("id").to_string();
    let m = recv_message(&mut a, &cid).await;
    assert_eq!(m["from"]["role"], "clinician", "{m}");
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let j = b.join(ROOM).await;
    let hist = j["history"].as_array().expect("history");
    assert!(hist.iter().any(|m| m["id"] == id.as_str()), "{j}");

    // Empty and unknown room.
    let r = s
        .request(json!({"type": "announce", "room": ROOM, "text": "   "}))
        .await;
    assert_error(&r, "empty");
    let r = s
        .request(json!({"type": "announce", "room": "nowhere", "text": "hi"}))
        .await;
    assert_error(&r, "no_such_room");
}

#[tokio::test]
async fn release_of_an_unknown_message_is_bad_request() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let (mid, _) = a.say(ROOM, "published already").await;
    let mut s = moderator(&hub).await;
    for id in ["m_nothingheld", mid.as_str()] {
        let r = s
            .request(json!({"type": "release", "room": ROOM, "message": id}))
            .await;
        assert_error(&r, "bad_request");
    }
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reports_reach_watching_staff_and_can_be_dismissed() {
    let hub = staff_hub().await;
    let mut author = TestClient::joined_peer(&hub, ROOM).await;
    let mut reporter = TestClient::joined_peer(&hub, ROOM).await;
    let mut s1 = moderator(&hub).await;
    let w = s1.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
    let (mid, _) = author.say(ROOM, "something hurtful").await;
    drain(&mut author, QUIET).await;

    let before = now_ms();
    let r = reporter
        .request(json!({"type": "report", "room": ROOM, "message": mid, "reason": "harassment"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let rep = s1.recv_type("report").await;
    let rid = rep["id"]
        .as_str()
        .unwrap_or_else(|| panic!("report without id: {rep}"))
        .to_string();
    assert_eq!(rep["room"], ROOM, "{rep}");
    assert_eq!(rep["message"], mid.as_str(), "{rep}");
    assert_eq!(rep["reason"], "harassment", "{rep}");
    assert_eq!(rep["reporter"], reporter.id.as_str(), "{rep}");
    let ts = rep["ts"].as_u64().expect("report ts");
    assert!(ts + 2000 >= before && ts <= now_ms() + 2000, "{rep}");
    assert!(rep.get("ref").is_none(), "{rep}");

    // The author hears nothing of it.
    let seen = drain(&mut author, QUIET).await;
    assert!(seen.is_empty(), "the author was told: {seen:?}");

    // A watcher arriving later gets the queued report right after its ok.
    let mut s2 = staff(&hub, "clinician", "Dr Ada").await;
    let w = s2.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
    let queued = s2.recv().await;
    assert_eq!(queued["type"], "report", "{queued}");
    assert_eq!(queued["id"], rid.as_str(), "{queued}");
    // Watching another room does not bring it.
    let mut s3 = staff(&hub, "moderator", "Mod Three").await;
    let w = s3
        .request(json!({"type": "watch", "room": OTHER_ROOM}))
        .await;
    assert_eq!(w["type"], "ok", "{w}");
    assert_no(&mut s3, "report", QUIET).await;

    // Dismissed: not queued any more.
    let r = s1
        .request(json!({"type": "dismiss_report", "report": rid}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let mut s4 = staff(&hub, "moderator", "Mod Four").await;
    let w = s4.request(json!({"type": "watch", "room": ROOM})).await;
    assert_eq!(w["type"], "ok", "{w}");
    assert_no(&mut s4, "report", QUIET).await;
    let r = s1
        .request(json!({"type": "dismiss_report", "report": rid}))
        .await;
    assert_error(&r, "bad_request");
    let seen = drain(&mut author, QUIET).await;
    assert!(seen.is_empty(), "the author was told: {seen:?}");
}

// ---------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audit_log_records_each_action_in_order_without_message_text() {
    let hub = staff_hub().await;
    let mut a = TestClient::joined_peer(&hub, ROOM).await;
    let mut b = TestClient::joined_peer(&hub, ROOM).await;
    let mut s = moderator(&hub).await;
    let secret_text = "zebra-umbrella-4471 my private story";
    let (mid, _) = a.say(ROOM, secret_text).await;
    b.say(ROOM, "another private line qq-9931").await;

    let t0 = now_ms();
    let mut expect: Vec<Value> = Vec::new();
    let steps = [
        (
            json!({"type": "mute", "room": ROOM, "peer": b.id, "seconds": 60}),
            json!({"action": "mute", "room": ROOM, "target": b.id, "seconds": 60}),
        ),
        (
            json!({"type": "kick", "room": ROOM, "peer": b.id}),
            json!({"action": "kick", "room": ROOM, "target": b.id}),
        ),
        (
            json!({"type": "delete", "room": ROOM, "message": mid}),
            json!({"action": "delete", "room": ROOM, "target": mid}),
        ),
        (
            json!({"type": "slow_mode", "room": ROOM, "seconds": 10}),
            json!({"action": "slow_mode", "room": ROOM, "seconds": 10}),
        ),
        (
            json!({"type": "lock", "room": ROOM, "locked": true}),
            json!({"action": "lock", "room": ROOM, "locked": true}),
        ),
        (
            json!({"type": "announce", "room": ROOM, "text": "Room locked for a moment."}),
            json!({"action": "announce", "room": ROOM}),
        ),
        (
            json!({"type": "ban", "peer": a.id, "seconds": 120, "reason": "spam"}),
            json!({"action": "ban", "target": a.id, "seconds": 120, "reason": "spam"}),
        ),
    ];
    for (frame, want) in steps {
        let r = s.request(frame.clone()).await;
        assert_eq!(r["type"], "ok", "{frame} answered {r}");
        // Durable before ok: the line is there already.
        let lines = audit_lines(&hub);
        assert_eq!(
            lines.len(),
            expect.len() + 1,
            "after {frame}, audit log: {lines:?}"
        );
        expect.push(want);
    }
    // A refused action is not recorded.
    let r = s
        .request(json!({"type": "kick", "room": ROOM, "peer": "p_nobody"}))
        .await;
    assert_error(&r, "bad_request");
    let t1 = now_ms();

    let lines = audit_lines(&hub);
    assert_eq!(lines.len(), expect.len(), "audit log: {lines:?}");
    let mut ids = std::collections::HashSet::new();
    for (line, want) in lines.iter().zip(&expect) {
        assert!(line["id"].as_str().is_some_and(|i| !i.is_empty()), "{line}");
        assert!(ids.insert(line["id"].to_string()), "duplicate id: {line}");
        let ts = line["ts"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ts: {line}"));
        assert!(ts + 1000 >= t0 && ts <= t1 + 1000, "ts {ts}: {line}");
        assert_eq!(line["actor"]["id"], s.id.as_str(), "{line}");
        assert_eq!(line["actor"]["name"], "Mod Mo", "{line}");
        assert_eq!(line["actor"]["role"], "moderator", "{line}");
        for (k, v) in want.as_object().expect("object") {
            assert_eq!(&line[k], v, "field {k} of {line}");
        }
        if want.get("room").is_none() {
            assert!(line.get("room").is_none(), "{line}");
        }
        if want.get("target").is_none() {
            assert!(line.get("target").is_none(), "{line}");
        }
    }
    let raw = std::fs::read_to_string(audit_path(&hub)).expect("audit.log");
    assert!(
        !raw.contains("zebra-umbrella-4471"),
        "peer text in audit.log"
    );
    assert!(!raw.contains("qq-9931"), "peer text in audit.log");
    assert!(!raw.contains("private"), "peer text in audit.log");
}
