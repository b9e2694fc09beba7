//! Staff tokens: HS256 JSON Web Tokens signed with `HEARTH_STAFF_SECRET`.
//!
//! Owns the token format (header, claims, signature), the rules for names,
//! ids and lifetimes, and the secret's handling. `hearth token` mints with
//! [`mint`]; a session checks `hello.auth` with [`verify`]. Everything here is
//! pure apart from [`StaffSecret::from_env`] and [`now_secs`]; it must not
//! touch hub, session or room state, and it never logs a token or the secret.
//!
//! Hand-rolled on `hmac` + `sha2` rather than the `jsonwebtoken` crate: that
//! one needs a crypto-backend feature (and panics at run time without one)
//! and pulls in a C build, for what is one MAC and two JSON objects here.
//!
//! Only HS256 is accepted; the header's `alg` is checked before the signature
//! and the claims are read only after the signature matched, so neither
//! `alg: none` nor a forged payload gets anywhere.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::protocol::Role;

type HmacSha256 = Hmac<Sha256>;

/// The environment variable that holds the signing secret. It is read from
/// the environment only, never from a flag or the config file, so it stays
/// out of shell history, process listings and the repository.
pub const SECRET_ENV: &str = "HEARTH_STAFF_SECRET";
/// Shortest secret accepted, in bytes (after trimming surrounding whitespace).
pub const MIN_SECRET_LEN: usize = 16;
/// Longest token accepted; longer input is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Shortest lifetime a token can be minted with.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime a token can be minted with: there is no revocation list,
/// so a lost token stays valid until it expires.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How far in the future `iat` may lie, for clocks that disagree a little
/// between the machine that minted the token and the node checking it.
pub const CLOCK_LEEWAY_SECS: u64 = 30;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 40;
/// Longest staff id (`sub`), in characters.
pub const MAX_ID_CHARS: usize = 64;

/// The only header this module writes.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Letters and digits that cannot be confused with each other (no l/1, o/0),
/// the same alphabet as peer ids, so staff ids read alike.
const ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
const GENERATED_ID_PREFIX: &str = "s_";
const GENERATED_ID_LEN: usize = 8;
/// Peer ids start with this; a staff id that did too could pass for a peer.
const PEER_ID_PREFIX: &str = "p_";

/// Why a token could not be minted or was refused. Every message is meant to
/// be shown to a person as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("HEARTH_STAFF_SECRET must be at least 16 characters")]
    WeakSecret,
    #[error("the staff name must be 1 to 40 characters (after trimming spaces) with no control characters")]
    BadName,
    #[error("the staff id must be 1 to 64 letters, digits, '_', '-' or '.', and must not start with \"p_\" (that prefix is for peers)")]
    BadId,
    #[error("the staff role must be \"moderator\" or \"clinician\"")]
    BadRole,
    #[error("the token lifetime must be a whole number with an optional unit s, m, h or d (such as 90s, 30m, 8h or 2d), from 1 minute to 30 days")]
    BadTtl,
    #[error("the staff token is longer than the 4096 bytes this server accepts")]
    TooLong,
    #[error("the staff token is not three base64url parts separated by dots")]
    Malformed,
    #[error("the staff token's header is not a JSON object this server understands")]
    BadHeader,
    #[error("the staff token is not signed with HS256, the only algorithm this server accepts")]
    UnsupportedAlgorithm,
    #[error("the staff token's signature does not match this server's secret")]
    BadSignature,
    #[error("the staff token's claims are missing, malformed or of the wrong type")]
    BadClaims,
    #[error("the staff token has expired")]
    Expired,
    #[error("the staff token was issued in the future; check the clocks of this server and of the machine that minted it")]
    NotYetValid,
    #[error("the staff token's claims could not be encoded")]
    Encode,
}

impl TokenError {
    /// True for a token that was once good and has run out, as opposed to
    /// one that was never valid: the former deserves "ask for a new token".
    pub fn is_expired(&self) -> bool {
        matches!(self, TokenError::Expired)
    }
}

/// The roles a staff token can carry. Peers have no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    Moderator,
    Clinician,
}

impl StaffRole {
    /// The wire name, as in the token and in `protocol::Role`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StaffRole::Moderator => "moderator",
            StaffRole::Clinician => "clinician",
        }
    }

    /// The role this staff member has in presence and on the wire.
    pub fn role(&self) -> Role {
        match self {
            StaffRole::Moderator => Role::Moderator,
            StaffRole::Clinician => Role::Clinician,
        }
    }

    /// Exact match only: a token is machine-written, so "Moderator" in one
    /// means something other than this module wrote it.
    fn from_claim(s: &str) -> Option<Self> {
        match s {
            "moderator" => Some(StaffRole::Moderator),
            "clinician" => Some(StaffRole::Clinician),
            _ => None,
        }
    }
}

impl From<StaffRole> for Role {
    fn from(r: StaffRole) -> Role {
        r.role()
    }
}

impl fmt::Display for StaffRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For people typing a role: surrounding spaces and case are forgiven.
impl FromStr for StaffRole {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        StaffRole::from_claim(&s.trim().to_ascii_lowercase()).ok_or(TokenError::BadRole)
    }
}

/// What a staff token says. `exp` and `iat` are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Stable staff id, shown as the member id in presence.
    pub sub: String,
    /// Display name, already trimmed.
    pub name: String,
    pub role: StaffRole,
    pub exp: u64,
    pub iat: u64,
    /// Unique per token, so a single token can be told apart (audit, or a
    /// deny-list later) from others for the same person.
    pub jti: String,
}

/// Claims as found in a token, before the role and values are checked, so
/// that a wrong role can be told apart from a broken payload.
#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    name: String,
    role: String,
    exp: u64,
    iat: u64,
    jti: String,
    /// Never written here, but honoured if another issuer sets it.
    #[serde(default)]
    nbf: Option<u64>,
}

/// The key that signs and verifies staff tokens. Holds the keyed MAC state,
/// not the text; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct StaffSecret(HmacSha256);

impl StaffSecret {
    /// From the value of `HEARTH_STAFF_SECRET`. Surrounding whitespace is
    /// dropped so that a trailing newline from a secrets file does not make
    /// one node's key differ from another's.
    pub fn new(s: &str) -> Result<StaffSecret, TokenError> {
        StaffSecret::from_bytes(s.as_bytes())
    }

    /// Reads `HEARTH_STAFF_SECRET`: `Ok(None)` when it is unset or blank (no
    /// staff logins), an error when it is set but too short.
    pub fn from_env() -> Result<Option<StaffSecret>, TokenError> {
        match std::env::var_os(SECRET_ENV) {
            None => Ok(None),
            Some(v) => {
                let bytes = v.into_encoded_bytes();
                if bytes.trim_ascii().is_empty() {
                    Ok(None)
                } else {
                    StaffSecret::from_bytes(&bytes).map(Some)
                }
            }
        }
    }

    fn from_bytes(bytes: &[u8]) -> Result<StaffSecret, TokenError> {
        let key = bytes.trim_ascii();
        if key.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret);
        }
        // HMAC takes keys of any length, so this cannot fail in practice.
        HmacSha256::new_from_slice(key)
            .map(StaffSecret)
            .map_err(|_| TokenError::WeakSecret)
    }

    fn mac(&self, signed: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(signed);
        mac
    }
}

impl fmt::Debug for StaffSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaffSecret(<redacted>)")
    }
}

/// Mints a token for `name` with `role`, valid from `now_secs` for `ttl`.
/// `sub` defaults to a fresh `s_` id; pass the same id again to give one
/// person a stable identity across tokens.
pub fn mint(
    secret: &StaffSecret,
    role: StaffRole,
    name: &str,
    ttl: Duration,
    now_secs: u64,
    sub: Option<&str>,
) -> Result<(String, Claims), TokenError> {
    let name = check_name(name)?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(TokenError::BadTtl);
    }
    let exp = now_secs
        .checked_add(ttl.as_secs())
        .ok_or(TokenError::BadTtl)?;
    let sub = match sub {
        Some(s) => {
            check_id(s)?;
            s.to_owned()
        }
        None => random_id(),
    };
    let claims = Claims {
        sub,
        name: name.to_owned(),
        role,
        exp,
        iat: now_secs,
        jti: random_jti(),
    };
    let payload = serde_json::to_vec(&claims).map_err(|_| TokenError::Encode)?;

    let mut token = URL_SAFE_NO_PAD.encode(HEADER_JSON);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature = secret.mac(token.as_bytes()).finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    // Unreachable with today's name and id limits; kept so that a token this
    // function returns is always one `verify` would read.
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    Ok((token, claims))
}

/// Checks `token` against `secret` at `now_secs` and returns its claims.
/// Never panics, whatever the input.
pub fn verify(secret: &StaffSecret, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };

    check_header(&decode_part(header_b64)?)?;

    let signature = decode_part(signature_b64)?;
    let signed = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(TokenError::Malformed)?;
    // Constant time, and before the payload is so much as decoded.
    secret
        .mac(signed.as_bytes())
        .verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;

    let payload = decode_part(payload_b64)?;
    let raw: RawClaims = serde_json::from_slice(&payload).map_err(|_| TokenError::BadClaims)?;
    let role = StaffRole::from_claim(&raw.role).ok_or(TokenError::BadRole)?;
    // A signed token whose name or id `mint` would have refused came from
    // some other issuer holding the secret; don't let it put odd text in
    // presence.
    if check_name(&raw.name).ok() != Some(raw.name.as_str()) || check_id(&raw.sub).is_err() {
        return Err(TokenError::BadClaims);
    }
    if raw.jti.is_empty() {
        return Err(TokenError::BadClaims);
    }
    if raw.exp <= now_secs {
        return Err(TokenError::Expired);
    }
    let latest_start = now_secs.saturating_add(CLOCK_LEEWAY_SECS);
    if raw.iat > latest_start || raw.nbf.is_some_and(|nbf| nbf > latest_start) {
        return Err(TokenError::NotYetValid);
    }
    Ok(Claims {
        sub: raw.sub,
        name: raw.name,
        role,
        exp: raw.exp,
        iat: raw.iat,
        jti: raw.jti,
    })
}

/// Parses a lifetime: "90s", "30m", "8h", "2d", or a plain number of seconds.
/// Only the syntax is checked here; [`mint`] enforces the allowed range.
pub fn parse_ttl(s: &str) -> Result<Duration, TokenError> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 's'),
    };
    // `u64::from_str` would also take a leading '+'.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::BadTtl);
    }
    let n: u64 = digits.parse().map_err(|_| TokenError::BadTtl)?;
    let scale: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 60 * 60,
        'd' => 24 * 60 * 60,
        _ => return Err(TokenError::BadTtl),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or(TokenError::BadTtl)
}

/// Seconds since the Unix epoch by the system clock (0 if it reads earlier).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` since the Unix epoch as an RFC 3339 UTC time, e.g.
/// "2027-01-15T08:00:00Z", for telling a person when a token expires.
pub fn rfc3339_utc(secs: u64) -> String {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`, for non-negative days only.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a
    // 400-year era and each year ends in February.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

/// The trimmed name, if it is 1–40 characters with no control characters.
fn check_name(name: &str) -> Result<&str, TokenError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(TokenError::BadName);
    }
    Ok(name)
}

/// Ids end up in presence, logs and the audit trail: keep them plain ASCII.
fn check_id(id: &str) -> Result<(), TokenError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && !id.starts_with(PEER_ID_PREFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadId)
    }
}

fn random_id() -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(GENERATED_ID_PREFIX.len() + GENERATED_ID_LEN);
    s.push_str(GENERATED_ID_PREFIX);
    for _ in 0..GENERATED_ID_LEN {
        s.push(char::from(
            ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())],
        ));
    }
    s
}

fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The no-pad engine also refuses padding and non-zero trailing bits, so
/// each part has exactly one spelling and a signature cannot be re-spelled.
fn decode_part(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

fn check_header(bytes: &[u8]) -> Result<(), TokenError> {
    let header: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| TokenError::BadHeader)?;
    let header = header.as_object().ok_or(TokenError::BadHeader)?;
    // RFC 7515 §4.1.11: extensions marked critical must be understood, and
    // this module understands none.
    if header.contains_key("crit") {
        return Err(TokenError::BadHeader);
    }
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some("HS256") => Ok(()),
        _ => Err(TokenError::UnsupportedAlgorithm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SECRET: &str = "correct horse battery staple";
    const NOW: u64 = 1_800_000_000;
    const EIGHT_HOURS: Duration = Duration::from_secs(8 * 3600);

    fn secret() -> StaffSecret {
        StaffSecret::new(SECRET).expect("a long enough secret")
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn unb64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).expect("base64url")
    }

    /// HMAC-SHA256 computed here, independently of `StaffSecret`.
    fn hmac_of(key: &str, data: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// A token with any header and payload, correctly signed with `key`, so
    /// that checks after the signature can be reached.
    fn forge(key: &str, header: &Value, payload: &Value) -> String {
        let signed = format!("{}.{}", b64(header.to_string()), b64(payload.to_string()));
        let sig = hmac_of(key, signed.as_bytes());
        format!("{signed}.{}", b64(sig))
    }

    fn good_header() -> Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    fn good_claims() -> Value {
        json!({
            "sub": "s_abcdefgh",
            "name": "Sam",
            "role": "moderator",
            "exp": NOW + 3600,
            "iat": NOW,
            "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims
            .as_object_mut()
            .expect("an object")
            .remove(key)
            .expect("the key was there");
        claims
    }

    fn check(token: &str) -> Result<Claims, TokenError> {
        verify(&secret(), token, NOW)
    }

    fn minted() -> (String, Claims) {
        mint(
            &secret(),
            StaffRole::Moderator,
            "Sam",
            EIGHT_HOURS,
            NOW,
            None,
        )
        .expect("mint")
    }

    fn parts(token: &str) -> Vec<&str> {
        token.split('.').collect()
    }

    #[test]
    fn round_trip() {
        let (token, claims) = mint(
            &secret(),
            StaffRole::Clinician,
            "  Dr Ada  ",
            EIGHT_HOURS,
            NOW,
            None,
        )
        .expect("mint");
        assert_eq!(claims.name, "Dr Ada");
        assert_eq!(claims.role, StaffRole::Clinician);
        assert_eq!(claims.iat, NOW);
        assert_eq!(claims.exp, NOW + 8 * 3600);
        assert_eq!(claims.sub.len(), 10);
        assert!(claims.sub.starts_with("s_"));
        assert!(claims.sub[2..].bytes().all(|b| ID_ALPHABET.contains(&b)));
        assert_eq!(unb64(&claims.jti).len(), 16);
        assert_eq!(verify(&secret(), &token, NOW), Ok(claims.clone()));
        // Still good one second before it runs out.
        assert_eq!(verify(&secret(), &token, claims.exp - 1), Ok(claims));
    }

    #[test]
    fn given_id_is_kept_and_fresh_ones_differ() {
        let (_, c) = mint(
            &secret(),
            StaffRole::Moderator,
            "Sam",
            EIGHT_HOURS,
            NOW,
            Some("mod-sam.1"),
        )
        .expect("mint");
        assert_eq!(c.sub, "mod-sam.1");
        let (_, a) = minted();
        let (_, b) = minted();
        assert_ne!(a.sub, b.sub);
        assert_ne!(a.jti, b.jti);
    }

    #[test]
    fn signature_is_hmac_sha256_of_header_dot_payload() {
        let (token, _) = minted();
        let p = parts(&token);
        assert_eq!(p.len(), 3);
        assert_eq!(unb64(p[0]), HEADER_JSON.as_bytes());
        let expected = hmac_of(SECRET, format!("{}.{}", p[0], p[1]).as_bytes());
        assert_eq!(unb64(p[2]), expected);
        let payload: Value = serde_json::from_slice(&unb64(p[1])).expect("JSON payload");
        let mut keys: Vec<_> = payload
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        assert_eq!(keys, ["exp", "iat", "jti", "name", "role", "sub"]);
        assert_eq!(payload["role"], "moderator");
        assert_eq!(payload["name"], "Sam");
        assert_eq!(payload["exp"], NOW + 8 * 3600);
    }

    #[test]
    fn a_token_forged_with_the_right_key_verifies() {
        // The other half of the independent check: verify accepts what a
        // plain HMAC-SHA256 over "header.payload" signs, with or without typ.
        let t = forge(SECRET, &good_header(), &good_claims());
        assert_eq!(check(&t).expect("valid").name, "Sam");
        let t = forge(SECRET, &json!({"alg": "HS256"}), &good_claims());
        assert!(check(&t).is_ok());
    }

    #[test]
    fn changed_payload_is_refused() {
        let (token, _) = minted();
        let p = parts(&token);
        let mut payload: Value = serde_json::from_slice(&unb64(p[1])).expect("JSON");
        payload["role"] = json!("clinician");
        let tampered = format!("{}.{}.{}", p[0], b64(payload.to_string()), p[2]);
        assert_eq!(check(&tampered), Err(TokenError::BadSignature));
    }

    #[test]
    fn changed_signature_is_refused() {
        let (token, _) = minted();
        let p = parts(&token);
        let mut sig = unb64(p[2]);
        sig[0] ^= 1;
        let tampered = format!("{}.{}.{}", p[0], p[1], b64(&sig));
        assert_eq!(check(&tampered), Err(TokenError::BadSignature));
        let short = format!("{}.{}.{}", p[0], p[1], b64(&sig[..31]));
        assert_eq!(check(&short), Err(TokenError::BadSignature));
        let empty = format!("{}.{}.", p[0], p[1]);
        assert_eq!(check(&empty), Err(TokenError::BadSignature));
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let (token, _) = minted();
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'A', b'z', b'-', b'_', b'.', b'0'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[i] = replacement;
                let changed = String::from_utf8(changed).expect("ASCII");
                assert!(check(&changed).is_err(), "accepted a change at {i}");
            }
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let header = json!({"alg": "none", "typ": "JWT"});
        let unsigned = format!(
            "{}.{}.",
            b64(header.to_string()),
            b64(good_claims().to_string())
        );
        assert_eq!(check(&unsigned), Err(TokenError::UnsupportedAlgorithm));
        // Even with a signature that would match.
        let signed = forge(SECRET, &header, &good_claims());
        assert_eq!(check(&signed), Err(TokenError::UnsupportedAlgorithm));
    }

    #[test]
    fn other_or_missing_algs_are_refused() {
        for header in [
            json!({"alg": "HS512", "typ": "JWT"}),
            json!({"alg": "RS256"}),
            json!({"alg": "hs256"}),
            json!({"alg": 256}),
            json!({"alg": null}),
            json!({"typ": "JWT"}),
            json!({}),
        ] {
            let t = forge(SECRET, &header, &good_claims());
            assert_eq!(check(&t), Err(TokenError::UnsupportedAlgorithm), "{header}");
        }
    }

    #[test]
    fn headers_that_are_not_json_objects_or_are_critical_are_refused() {
        for header in [
            json!(["HS256"]),
            json!("HS256"),
            json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
        ] {
            let t = forge(SECRET, &header, &good_claims());
            assert_eq!(check(&t), Err(TokenError::BadHeader), "{header}");
        }
        let not_json = format!("{}.{}.{}", b64("{alg"), b64("{}"), b64([0u8; 32]));
        assert_eq!(check(&not_json), Err(TokenError::BadHeader));
    }

    #[test]
    fn wrong_secret_is_refused() {
        let (token, _) = minted();
        let other = StaffSecret::new("another secret of some length").expect("secret");
        assert_eq!(verify(&other, &token, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn missing_claims_are_refused() {
        for key in ["sub", "name", "role", "exp", "iat", "jti"] {
            let t = forge(SECRET, &good_header(), &without(good_claims(), key));
            assert_eq!(check(&t), Err(TokenError::BadClaims), "without {key}");
        }
    }

    #[test]
    fn claims_of_the_wrong_type_or_value_are_refused() {
        let cases = [
            ("exp", json!((NOW + 3600).to_string())),
            ("exp", json!((NOW + 3600) as f64 + 0.5)),
            ("exp", json!(null)),
            ("iat", json!(-1)),
            ("iat", json!([NOW])),
            ("sub", json!(42)),
            ("sub", json!(null)),
            ("sub", json!("")),
            ("sub", json!("p_abc123")),
            ("sub", json!("has space")),
            ("name", json!(7)),
            ("name", json!("")),
            ("name", json!(" Sam ")),
            ("name", json!("Sam\u{7}")),
            ("name", json!("x".repeat(41))),
            ("role", json!(1)),
            ("role", json!(null)),
            ("jti", json!(false)),
            ("jti", json!("")),
        ];
        for (key, value) in cases {
            let t = forge(
                SECRET,
                &good_header(),
                &with(good_claims(), key, value.clone()),
            );
            assert_eq!(check(&t), Err(TokenError::BadClaims), "{key}: {value}");
        }
        for payload in [json!([1, 2]), json!("claims"), json!(null)] {
            let t = forge(SECRET, &good_header(), &payload);
            assert_eq!(check(&t), Err(TokenError::BadClaims), "{payload}");
        }
    }

    #[test]
    fn roles_other_than_staff_are_refused() {
        for role in ["peer", "admin", "Moderator", "MODERATOR", " moderator", ""] {
            let t = forge(
                SECRET,
                &good_header(),
                &with(good_claims(), "role", json!(role)),
            );
            assert_eq!(check(&t), Err(TokenError::BadRole), "{role:?}");
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (token, claims) = minted();
        let err = verify(&secret(), &token, claims.exp).expect_err("expired at exp");
        assert_eq!(err, TokenError::Expired);
        assert!(err.is_expired());
        assert!(!TokenError::BadSignature.is_expired());
        assert_eq!(
            verify(&secret(), &token, claims.exp + 86_400),
            Err(TokenError::Expired)
        );
        let t = forge(
            SECRET,
            &good_header(),
            &with(good_claims(), "exp", json!(0)),
        );
        assert_eq!(check(&t), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_from_the_future_are_refused_beyond_the_leeway() {
        let future = |iat: u64| {
            let claims = with(good_claims(), "iat", json!(iat));
            forge(
                SECRET,
                &good_header(),
                &with(claims, "exp", json!(iat + 3600)),
            )
        };
        assert!(check(&future(NOW + CLOCK_LEEWAY_SECS)).is_ok());
        assert_eq!(
            check(&future(NOW + CLOCK_LEEWAY_SECS + 1)),
            Err(TokenError::NotYetValid)
        );
        let (token, _) = mint(
            &secret(),
            StaffRole::Moderator,
            "Sam",
            EIGHT_HOURS,
            NOW + 3600,
            None,
        )
        .expect("mint");
        assert_eq!(check(&token), Err(TokenError::NotYetValid));
        let nbf = forge(
            SECRET,
            &good_header(),
            &with(good_claims(), "nbf", json!(NOW + 600)),
        );
        assert_eq!(check(&nbf), Err(TokenError::NotYetValid));
    }

    #[test]
    fn oversized_tokens_are_refused_first() {
        assert_eq!(
            check(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong)
        );
        // Correctly signed, but too long all the same.
        let padded = with(good_claims(), "pad", json!("x".repeat(MAX_TOKEN_LEN)));
        let t = forge(SECRET, &good_header(), &padded);
        assert_eq!(check(&t), Err(TokenError::TooLong));
        // Unknown claims are fine as long as the whole fits.
        let small = with(good_claims(), "pad", json!("x".repeat(100)));
        assert!(check(&forge(SECRET, &good_header(), &small)).is_ok());
    }

    #[test]
    fn wrong_number_of_parts_is_refused() {
        let (token, _) = minted();
        let p = parts(&token);
        for t in [
            format!("{}.{}", p[0], p[1]),
            format!("{}.{}.{}.{}", p[0], p[1], p[2], p[2]),
            format!("{token}."),
            p[0].to_string(),
        ] {
            assert_eq!(check(&t), Err(TokenError::Malformed), "{t}");
        }
    }

    #[test]
    fn bad_base64_is_refused() {
        let (token, _) = minted();
        let p = parts(&token);
        for t in [
            format!("{}=.{}.{}", p[0], p[1], p[2]),
            format!("{}.{}.{}=", p[0], p[1], p[2]),
            format!("{}.{}.{}", p[0].replace('e', "+"), p[1], p[2]),
            format!("{}.{}.{}", p[0], p[1], p[2].replacen(|_| true, "*", 1)),
            // A signature with a non-zero trailing bit is another spelling
            // of the same bytes; refuse it rather than accept two spellings.
            {
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let mut sig = p[2].to_string();
                let last = sig.pop().expect("non-empty") as u8;
                let value = ALPHABET
                    .iter()
                    .position(|&c| c == last)
                    .expect("a base64url character");
                // 32 bytes in 43 characters leave the last two bits unused.
                assert_eq!(value & 0b11, 0);
                format!("{}.{}.{sig}{}", p[0], p[1], char::from(ALPHABET[value + 1]))
            },
        ] {
            assert_eq!(check(&t), Err(TokenError::Malformed), "{t}");
        }
        // A truncated signature: depending on its random last bits it is
        // bad base64 or a 31-byte signature; refused either way.
        let short = format!("{}.{}.{}", p[0], p[1], &p[2][..p[2].len() - 1]);
        assert!(
            matches!(
                check(&short),
                Err(TokenError::Malformed | TokenError::BadSignature)
            ),
            "{short}"
        );
        // Bad base64 in a payload whose signature matches.
        let signed = format!("{}.{}", p[0], "!!!!");
        let sig = hmac_of(SECRET, signed.as_bytes());
        let t = format!("{signed}.{}", b64(sig));
        assert_eq!(check(&t), Err(TokenError::Malformed));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let inputs = [
            "",
            ".",
            "..",
            "...",
            "abc",
            "a.b.c",
            "🙂.🙂.🙂",
            "Bearer x.y.z",
            "eyJhbGciOiJIUzI1NiJ9..",
            "\0.\0.\0",
            "eyJ.eyJ.eyJ",
        ];
        for input in inputs {
            assert!(check(input).is_err(), "{input:?}");
        }
        // Deterministic pseudo-random strings over the characters that matter.
        let alphabet = b"eyJAz09-_.=+/ \"{}";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 200) as usize;
            let s: String = (0..len)
                .map(|i| {
                    let idx = (state.rotate_left(i as u32 % 64) as usize + i) % alphabet.len();
                    char::from(alphabet[idx])
                })
                .collect();
            assert!(check(&s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn ttl_parsing() {
        let ok = [
            ("90s", 90),
            ("30m", 1800),
            ("8h", 8 * 3600),
            ("2d", 2 * 86_400),
            ("3600", 3600),
            (" 8h ", 8 * 3600),
            ("8H", 8 * 3600),
            ("0", 0),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_ttl(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for s in [
            "",
            "h",
            "-5",
            "+5",
            "1.5h",
            "8w",
            "8hh",
            "8 h",
            "h8",
            "٣h",
            "99999999999999999999",
            "999999999999999999d",
        ] {
            assert_eq!(parse_ttl(s), Err(TokenError::BadTtl), "{s:?}");
        }
    }

    #[test]
    fn ttl_range_is_enforced_by_mint() {
        let try_ttl = |secs: u64| {
            mint(
                &secret(),
                StaffRole::Moderator,
                "Sam",
                Duration::from_secs(secs),
                NOW,
                None,
            )
            .map(|(_, c)| c.exp - c.iat)
        };
        assert_eq!(try_ttl(59), Err(TokenError::BadTtl));
        assert_eq!(try_ttl(0), Err(TokenError::BadTtl));
        assert_eq!(try_ttl(60), Ok(60));
        assert_eq!(try_ttl(30 * 86_400), Ok(30 * 86_400));
        assert_eq!(try_ttl(30 * 86_400 + 1), Err(TokenError::BadTtl));
        let overflow = mint(
            &secret(),
            StaffRole::Moderator,
            "Sam",
            EIGHT_HOURS,
            u64::MAX - 10,
            None,
        );
        assert_eq!(overflow.map(|_| ()), Err(TokenError::BadTtl));
    }

    #[test]
    fn name_rules() {
        let mint_name = |name: &str| {
            mint(
                &secret(),
                StaffRole::Moderator,
                name,
                EIGHT_HOURS,
                NOW,
                None,
            )
            .map(|(_, c)| c.name)
        };
        assert_eq!(mint_name("  Sam  ").as_deref(), Ok("Sam"));
        assert_eq!(mint_name("Zoë Ødegård").as_deref(), Ok("Zoë Ødegård"));
        let forty = "é".repeat(40);
        assert_eq!(mint_name(&forty), Ok(forty.clone()));
        let (token, _) = mint(
            &secret(),
            StaffRole::Moderator,
            &forty,
            EIGHT_HOURS,
            NOW,
            None,
        )
        .expect("mint");
        assert_eq!(check(&token).expect("valid").name, forty);
        for bad in [
            String::new(),
            "   ".to_string(),
            "x".repeat(41),
            "Sam\nSmith".to_string(),
            "Sam\u{1b}[31m".to_string(),
            "Sam\u{7f}".to_string(),
        ] {
            assert_eq!(mint_name(&bad), Err(TokenError::BadName), "{bad:?}");
        }
    }

    #[test]
    fn id_rules() {
        let mint_id = |id: &str| {
            mint(
                &secret(),
                StaffRole::Moderator,
                "Sam",
                EIGHT_HOURS,
                NOW,
                Some(id),
            )
            .map(|(_, c)| c.sub)
        };
        assert_eq!(mint_id("mod_sam-2.b").as_deref(), Ok("mod_sam-2.b"));
        assert!(mint_id(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "p_abc123",
            "has space",
            "sam@example",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(mint_id(bad), Err(TokenError::BadId), "{bad:?}");
        }
    }

    #[test]
    fn secrets() {
        assert_eq!(
            StaffSecret::new("fifteen chars!!").map(|_| ()),
            Err(TokenError::WeakSecret)
        );
        assert_eq!(
            StaffSecret::new("  fifteen chars!!\n").map(|_| ()),
            Err(TokenError::WeakSecret)
        );
        assert!(StaffSecret::new("sixteen chars!!!").is_ok());
        assert_eq!(
            TokenError::WeakSecret.to_string(),
            "HEARTH_STAFF_SECRET must be at least 16 characters"
        );
        // A trailing newline from a secrets file signs the same tokens.
        let (token, _) = minted();
        let padded = StaffSecret::new(&format!("{SECRET}\n")).expect("secret");
        assert!(verify(&padded, &token, NOW).is_ok());
    }

    #[test]
    fn secret_debug_hides_the_secret() {
        let shown = format!("{:?} {:#?}", secret(), secret());
        assert!(!shown.contains(SECRET));
        assert!(!shown.contains("horse"));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn roles() {
        assert_eq!(StaffRole::Moderator.as_str(), "moderator");
        assert_eq!(StaffRole::Clinician.as_str(), "clinician");
        assert_eq!(Role::from(StaffRole::Moderator), Role::Moderator);
        assert_eq!(Role::from(StaffRole::Clinician), Role::Clinician);
        assert_eq!(
            serde_json::to_string(&StaffRole::Clinician).expect("json"),
            "\"clinician\""
        );
        assert_eq!(" Moderator ".parse(), Ok(StaffRole::Moderator));
        assert_eq!("clinician".parse(), Ok(StaffRole::Clinician));
        assert_eq!("peer".parse::<StaffRole>(), Err(TokenError::BadRole));
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            TokenError::Expired.to_string(),
            "the staff token has expired"
        );
        assert_eq!(
            TokenError::BadSignature.to_string(),
            "the staff token's signature does not match this server's secret"
        );
        for e in [
            TokenError::BadName,
            TokenError::BadId,
            TokenError::BadRole,
            TokenError::BadTtl,
            TokenError::TooLong,
            TokenError::Malformed,
            TokenError::BadHeader,
            TokenError::UnsupportedAlgorithm,
            TokenError::BadClaims,
            TokenError::NotYetValid,
            TokenError::Encode,
        ] {
            let s = e.to_string();
            assert!(s.len() > 20 && !s.ends_with('.'), "{e:?}: {s}");
        }
    }

    #[test]
    fn rfc3339_formatting() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (68_169_600, "1972-02-29T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (1_800_000_000, "2027-01-15T08:00:00Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ];
        for (secs, text) in cases {
            assert_eq!(rfc3339_utc(secs), text);
        }
        // Must not overflow or panic at the far end.
        assert!(!rfc3339_utc(u64::MAX).is_empty());
    }
}
