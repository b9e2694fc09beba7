//! `hearth token` as an operator runs it: the built binary, its exit codes,
//! stdout holding nothing but the token, and HEARTH_STAFF_SECRET taken from
//! the environment only.

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

const SECRET: &str = "a-long-test-secret-for-token-cli";

/// Runs `hearth token ARGS` with `secret` as HEARTH_STAFF_SECRET, or with it
/// removed when `None`.
fn hearth_token(secret: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.arg("token")
        .args(args)
        .env_remove("HEARTH_STAFF_SECRET");
    if let Some(secret) = secret {
        cmd.env("HEARTH_STAFF_SECRET", secret);
    }
    cmd.output().expect("run the hearth binary")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn payload_of(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token}");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("base64url header"))
            .expect("JSON header");
    assert_eq!(header["alg"], "HS256");
    assert!(!URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("base64url signature")
        .is_empty());
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url payload"))
        .expect("JSON payload")
}

#[test]
fn prints_one_token_with_the_requested_claims() {
    let before = now();
    let out = hearth_token(
        Some(SECRET),
        &["--role", "clinician", "--name", "Dr Ada", "--ttl", "2h"],
    );
    let after = now();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));

    let stdout = text(&out.stdout);
    assert!(stdout.ends_with('\n'));
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout is only the token: {stdout:?}"
    );
    let token = stdout.trim_end();
    assert!(!token.contains(char::is_whitespace));

    let claims = payload_of(token);
    assert_eq!(claims["role"], "clinician");
    assert_eq!(claims["name"], "Dr Ada");
    let exp = claims["exp"].as_u64().expect("numeric exp");
    assert!(
        (before + 7200..=after + 7200).contains(&exp),
        "exp {exp} should be now + 2h"
    );
    let iat = claims["iat"].as_u64().expect("numeric iat");
    assert!((before..=after).contains(&iat));
    let sub = claims["sub"].as_str().expect("string sub");
    assert!(sub.starts_with("s_"), "{sub}");
    assert!(claims["jti"].is_string());

    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("token for Dr Ada (clinician, id s_"),
        "{stderr}"
    );
    assert!(stderr.contains("expires 20"), "{stderr}");
    assert!(!stderr.contains(SECRET) && !stdout.contains(SECRET));
}

#[test]
fn default_ttl_is_eight_hours_and_id_is_kept() {
    let before = now();
    let out = hearth_token(
        Some(SECRET),
        &["--role", "moderator", "--name", "Sam", "--id", "mod-sam"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let claims = payload_of(text(&out.stdout).trim_end());
    assert_eq!(claims["role"], "moderator");
    assert_eq!(claims["sub"], "mod-sam");
    let exp = claims["exp"].as_u64().expect("numeric exp");
    assert!(exp >= before + 8 * 3600 && exp <= now() + 8 * 3600);
}

#[test]
fn without_the_secret_it_refuses_with_exit_2() {
    for secret in [None, Some(""), Some("   ")] {
        let out = hearth_token(secret, &["--role", "moderator", "--name", "Sam"]);
        assert_eq!(out.status.code(), Some(2), "secret {secret:?}");
        assert!(out.stdout.is_empty());
        let stderr = text(&out.stderr);
        assert!(stderr.contains("HEARTH_STAFF_SECRET"), "{stderr}");
        assert!(stderr.contains("not set"), "{stderr}");
    }
}

#[test]
fn a_weak_secret_is_refused_with_exit_2() {
    let out = hearth_token(Some("short"), &["--role", "moderator", "--name", "Sam"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("HEARTH_STAFF_SECRET must be at least 16 characters"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("short"),
        "the secret is not echoed: {stderr}"
    );
}

#[test]
fn bad_role_name_or_ttl_is_refused_with_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--role", "peer", "--name", "Sam"], "role"),
        (&["--role", "admin", "--name", "Sam"], "role"),
        (&["--role", "moderator", "--name", "   "], "name"),
        (&["--role", "moderator", "--name", &*"x".repeat(41)], "name"),
        (
            &["--role", "moderator", "--name", "Sam", "--ttl", "8w"],
            "lifetime",
        ),
        (
            &["--role", "moderator", "--name", "Sam", "--ttl", "10s"],
            "lifetime",
        ),
        (
            &["--role", "moderator", "--name", "Sam", "--ttl", "31d"],
            "lifetime",
        ),
        (
            &["--role", "moderator", "--name", "Sam", "--id", "p_abc"],
            "id",
        ),
    ];
    for (args, word) in cases {
        let out = hearth_token(Some(SECRET), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(word), "{args:?}: {stderr}");
    }
    // A missing flag is a usage error, also exit 2.
    let out = hearth_token(Some(SECRET), &["--role", "moderator"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
