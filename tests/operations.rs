//! The operator contract: HTTP endpoints, Origin checks, graceful shutdown
//! on SIGTERM and `check-config`.

mod common;

use common::{check_config, ConnectError, TempDir, TestClient, TestHub, TEST_CONFIG};
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test]
async fn health_readiness_and_pages_are_200() {
    let hub = TestHub::start().await;
    let (status, _) = hub.http_get("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = hub.http_get("/readyz").await;
    assert_eq!(status, 200);
    let (status, _) = hub.http_get("/").await;
    assert_eq!(status, 200);
    // The staff console: public page, the token is asked for in it.
    let (status, body) = hub.http_get("/staff").await;
    assert_eq!(status, 200);
    assert!(body.contains("Staff sign-in"), "{body}");
    for asset in ["/static/staff.js", "/static/common.js", "/static/theme.css"] {
        assert_eq!(hub.http_get(asset).await.0, 200, "{asset}");
    }
}

#[tokio::test]
async fn metrics_expose_the_contract_series() {
    let hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let _b = TestClient::joined_peer(&hub, "anxiety").await;
    a.say("anxiety", "counted").await;

    let text = hub.metrics_text().await;
    for name in [
        "hearth_connections",
        "hearth_rooms",
        "hearth_room_members",
        "hearth_messages_in_total",
        "hearth_messages_out_total",
        "hearth_rate_limited_total",
        "hearth_slow_consumer_disconnects_total",
        "hearth_fanout_seconds_bucket",
    ] {
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    let m = |n: &str| common::parse_metric(&text, n).unwrap_or_else(|| panic!("{n}"));
    assert_eq!(m("hearth_connections"), 2.0);
    assert_eq!(m("hearth_rooms"), 3.0);
    assert_eq!(m("hearth_room_members"), 2.0);
    assert_eq!(m("hearth_messages_in_total"), 1.0);
    assert_eq!(m("hearth_messages_out_total"), 2.0, "one frame per member");
    assert_eq!(m("hearth_slow_consumer_disconnects_total"), 0.0);
    assert_eq!(m("hearth_fanout_seconds_bucket{le=\"+Inf\"}"), 1.0);
    assert_eq!(m("hearth_fanout_seconds_count"), 1.0);
    // Every line is either a comment or `series value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (_, v) = line.rsplit_once(' ').expect("series value");
        assert!(v.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
}

#[tokio::test]
async fn connections_gauge_follows_clients() {
    let hub = TestHub::start().await;
    assert_eq!(hub.metric("hearth_connections").await, 0.0);
    let a = TestClient::connect(&hub).await;
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    hub.wait_metric("hearth_connections", Duration::from_secs(3), |v| v == 2.0)
        .await;
    drop(a);
    b.close().await;
    hub.wait_metric("hearth_connections", Duration::from_secs(5), |v| v == 0.0)
        .await;
}

#[tokio::test]
async fn api_rooms_is_json() {
    let hub = TestHub::start().await;
    let (status, body) = hub.http_get("/api/rooms").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let ids: Vec<&str> = v["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    for want in common::ROOMS {
        assert!(ids.contains(&want), "{want} missing: {v}");
    }
}

#[tokio::test]
async fn unknown_path_is_404() {
    let hub = TestHub::start().await;
    assert_eq!(hub.http_get("/no/such/thing").await.0, 404);
}

#[tokio::test]
async fn foreign_origin_is_refused_with_403() {
    let hub = TestHub::start().await;
    for origin in ["http://evil.example", "null", "http://allowed.example.evil"] {
        match TestClient::try_connect(&hub, Some(origin)).await {
            Err(ConnectError::Status(403, _)) => {}
            Err(e) => panic!("{origin}: expected 403, got {e:?}"),
            Ok(_) => panic!("{origin}: upgrade from a foreign origin was accepted"),
        }
    }
    assert_eq!(hub.metric("hearth_origin_refused_total").await, 3.0);
    assert_eq!(hub.metric("hearth_connections").await, 0.0);
}

#[tokio::test]
async fn allowed_same_host_and_absent_origins_can_connect() {
    let hub = TestHub::start().await;
    let own = format!("http://{}", hub.addr());
    for origin in [Some("http://allowed.example"), Some(own.as_str()), None] {
        let mut c = TestClient::try_connect(&hub, origin)
            .await
            .unwrap_or_else(|e| panic!("{origin:?}: {e:?}"));
        let w = c.hello().await;
        assert_eq!(w["type"], "welcome");
    }
}

#[tokio::test]
async fn wildcard_origin_allows_any() {
    let hub = TestHub::start_with(|t| {
        common::set(t, "server", "allowed_origins", "[\"*\"]");
    })
    .await;
    let mut c = TestClient::try_connect(&hub, Some("https://anywhere.example"))
        .await
        .expect("wildcard origin");
    c.hello().await;
}

#[tokio::test]
async fn sigterm_closes_clients_1012_and_exits_0() {
    let mut hub = TestHub::start().await;
    let mut a = TestClient::joined_peer(&hub, "anxiety").await;
    let mut b = TestClient::connect(&hub).await;
    b.hello().await;
    let started = Instant::now();
    hub.sigterm();
    let (ca, cb) = tokio::join!(a.expect_close(), b.expect_close());
    assert_eq!(ca, 1012, "joined client");
    assert_eq!(cb, 1012, "idle client");
    let status = hub
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("process did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn sigterm_without_clients_exits_0_promptly() {
    let mut hub = TestHub::start().await;
    let started = Instant::now();
    hub.sigterm();
    let status = hub
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("process did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_exits_even_with_a_client_that_ignores_the_close() {
    let mut hub = TestHub::start().await;
    // Connected but never reads: it cannot answer the close handshake.
    let mut c = TestClient::connect(&hub).await;
    c.hello().await;
    let started = Instant::now();
    hub.sigterm();
    let status = hub
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("process did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(c.expect_close().await, 1012);
}

fn write_config(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn check_config_accepts_the_shipped_default_and_the_test_config() {
    let default = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let (ok, out, err) = check_config(&default);
    assert!(ok, "config/default.toml rejected: {out} {err}");
    let dir = TempDir::new();
    let p = write_config(&dir, "test.toml", TEST_CONFIG);
    let (ok, out, err) = check_config(&p);
    assert!(ok, "tests/config/test.toml rejected: {out} {err}");
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = TempDir::new();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            TEST_CONFIG.replace("[history]", "[history]\nbogus = 1"),
            "history.bogus",
        ),
        (
            "zero capacity",
            {
                let mut t = TEST_CONFIG.to_string();
                common::set_room(&mut t, "bereavement", "capacity", "0");
                t
            },
            "rooms[0].capacity",
        ),
        (
            "zero capacity in the third room",
            {
                let mut t = TEST_CONFIG.to_string();
                common::set_room(&mut t, "anxiety", "capacity", "0");
                t
            },
            "rooms[2].capacity",
        ),
        (
            "wrong type",
            {
                let mut t = TEST_CONFIG.to_string();
                common::set(&mut t, "websocket", "outbound_queue", "\"lots\"");
                t
            },
            "websocket.outbound_queue",
        ),
        (
            "missing key",
            TEST_CONFIG.replace("resume_grace_secs = 2\n", ""),
            "resume_grace_secs",
        ),
        (
            "bad listen address",
            {
                let mut t = TEST_CONFIG.to_string();
                common::set(&mut t, "server", "listen", "\"nowhere\"");
                t
            },
            "server.listen",
        ),
        (
            "idle not longer than ping",
            {
                let mut t = TEST_CONFIG.to_string();
                common::set(&mut t, "websocket", "idle_timeout_secs", "1");
                t
            },
            "websocket.idle_timeout_secs",
        ),
        (
            "log filter that does not parse",
            {
                let mut t = TEST_CONFIG.to_string();
                common::set(&mut t, "log", "filter", "\"info,hearth=loud\"");
                t
            },
            "log.filter",
        ),
    ];
    for (what, text, key) in cases {
        let p = write_config(&dir, "bad.toml", &text);
        let (ok, out, err) = check_config(&p);
        assert!(!ok, "{what}: accepted ({out})");
        assert!(
            err.contains(key),
            "{what}: stderr does not name {key}: {err}"
        );
    }
    let (ok, _, err) = check_config(&dir.path().join("missing.toml"));
    assert!(!ok);
    assert!(!err.trim().is_empty());
}

#[test]
fn serve_refuses_a_bad_config() {
    let dir = TempDir::new();
    let p = write_config(
        &dir,
        "bad.toml",
        &TEST_CONFIG.replace("[history]", "[history]\nbogus = 1"),
    );
    let mut child = std::process::Command::new(common::BIN)
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .env("HEARTH_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve kept running with a bad config");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    assert!(!status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("history.bogus"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("hearth listening"),
        "a bad config must not start serving"
    );
}
