//! The staff HTTP API under `/api/staff/`: the same powers as the staff
//! WebSocket frames, for tools and the staff console, with
//! `Authorization: Bearer <staff token>`.
//!
//! Owns request parsing and the mapping of hub results to HTTP statuses.
//! It authorises every request itself (401 without a valid token) and then
//! calls the hub; it never changes room state directly.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::escalation::State as EscState;
use crate::hub::{Action, Actor, EscalationAction, HubError};
use crate::protocol::{self, ClientFrame, ErrorCode, StaffFrame};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/staff/me", get(me))
        .route("/api/staff/rooms", get(rooms))
        .route("/api/staff/actions", post(action))
        .route("/api/staff/reports", get(reports))
        .route("/api/staff/audit", get(audit))
        .route("/api/staff/tokens/revoke", post(revoke))
        .route("/api/staff/escalations", get(escalations))
        .route("/api/staff/escalations/{id}", get(escalation))
        .route("/api/staff/escalations/{id}/ack", post(ack))
        .route("/api/staff/escalations/{id}/resolve", post(resolve))
}

/// A signed-in staff member, from the bearer token.
struct Staff {
    actor: Actor,
}

async fn authorise(app: &AppState, headers: &HeaderMap) -> Result<Staff, Response> {
    // The scheme name is case-insensitive (RFC 7235, section 2.1).
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(unauthorized(
            "This needs a staff token: send it as \"Authorization: Bearer <token>\".",
        ));
    };
    match app.hub.verify_staff(token).await {
        Ok(login) => Ok(Staff {
            actor: Actor {
                member: login.member,
            },
        }),
        Err(why) => Err(unauthorized(&why)),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: ErrorCode::Unauthorized,
        message: message.to_string(),
        retry_after_ms: None,
    }
    .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn bad_request(message: impl Into<String>) -> Response {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: ErrorCode::BadRequest,
        message: message.into(),
        retry_after_ms: None,
    }
    .into_response()
}

/// A hub refusal as an HTTP response: the same code and sentence as on the
/// WebSocket, with a fitting status.
fn hub_error(e: &HubError) -> Response {
    let code = e.code();
    let status = match code {
        ErrorCode::NoSuchRoom => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::RateLimited | ErrorCode::SlowMode => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::RoomFull | ErrorCode::RoomLocked | ErrorCode::Muted | ErrorCode::Banned => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError {
        status,
        code,
        message: e.sentence(),
        retry_after_ms: e.retry_after_ms(),
    }
    .into_response()
}

async fn me(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match authorise(&app, &headers).await {
        Ok(s) => Json(json!({ "you": s.actor.member })).into_response(),
        Err(r) => r,
    }
}

async fn rooms(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&app, &headers).await {
        return r;
    }
    match app.hub.staff_rooms().await {
        Ok(rooms) => Json(json!({ "rooms": rooms })).into_response(),
        Err(e) => hub_error(&e),
    }
}

/// `POST /api/staff/actions` with a body shaped like the staff frame:
/// `{"type":"mute","room":"anxiety","peer":"p_…","seconds":600}`.
async fn action(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let staff = match authorise(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("The body must be UTF-8 JSON.");
    };
    let (_, frame) = protocol::decode(text);
    let frame = match frame {
        Ok(ClientFrame::Staff(_, Ok(f))) => f,
        Ok(ClientFrame::Staff(_, Err(e))) | Err(e) => return bad_request(e.to_string()),
        Ok(_) => {
            return bad_request(
                "\"type\" must be a moderation action: mute, kick, ban, delete, slow_mode, lock, release, announce or dismiss_report.",
            )
        }
    };
    let action = match Action::from_frame(frame) {
        Ok(a) => a,
        Err(StaffFrame::Ack(r)) => {
            let act = EscalationAction::Ack { id: r.escalation };
            return escalation_reply(app.hub.escalation_action(&staff.actor, act).await);
        }
        Err(StaffFrame::Resolve(r)) => {
            let act = EscalationAction::Resolve {
                id: r.escalation,
                note: r.note,
            };
            return escalation_reply(app.hub.escalation_action(&staff.actor, act).await);
        }
        Err(StaffFrame::Care(c)) => {
            return match app.hub.open_care(&staff.actor, &c.escalation).await {
                Ok(room) => Json(json!({ "ok": true, "room": room })).into_response(),
                Err(e @ (HubError::NoSuchEscalation(_) | HubError::EscalationResolved(_))) => {
                    escalation_reply(Err(e))
                }
                Err(e) => hub_error(&e),
            }
        }
        Err(_) => return bad_request("Watching a room needs a WebSocket connection (/ws)."),
    };
    match app.hub.moderate(&staff.actor, action).await {
        Ok(out) => {
            let mut body = json!({ "ok": true });
            if let Some(id) = out.id {
                body["id"] = json!(id);
            }
            if let Some(seq) = out.seq {
                body["seq"] = json!(seq);
            }
            Json(body).into_response()
        }
        Err(e) => hub_error(&e),
    }
}

/// Query parameters, read after the token is checked (so a caller without
/// one always hears 401 first), with a clear error for a bad value.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        let raw = raw.unwrap_or_default();
        Params(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`, clamped to 1..=1000; `Err` names the problem.
    fn limit(&self, default: usize) -> Result<usize, &'static str> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map(|n| n.clamp(1, 1000))
                .map_err(|_| "\"limit\" must be a whole number from 1 to 1000."),
        }
    }
}

async fn reports(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorise(&app, &headers).await {
        return r;
    }
    let q = Params::parse(raw);
    let limit = match q.limit(100) {
        Ok(l) => l,
        Err(why) => return bad_request(why),
    };
    match app.hub.open_reports(q.get("room"), limit).await {
        Ok(reports) => Json(json!({ "reports": reports })).into_response(),
        Err(e) => hub_error(&e),
    }
}

/// Newest first; pass the last entry's `id` as `before` for the next page.
async fn audit(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorise(&app, &headers).await {
        return r;
    }
    let q = Params::parse(raw);
    let limit = match q.limit(50) {
        Ok(l) => l,
        Err(why) => return bad_request(why),
    };
    let before = q.get("before");
    if before.is_some_and(|b| crate::durable::parse_id(b).is_none()) {
        return bad_request("\"before\" must be the id of an audit entry, like 1795572704036-0.");
    }
    match app.hub.audit_page(before, limit).await {
        Ok(entries) => {
            let next = if entries.len() == limit {
                entries
                    .last()
                    .and_then(|e| e["id"].as_str())
                    .map(str::to_string)
            } else {
                None
            };
            Json(json!({ "entries": entries, "next": next })).into_response()
        }
        Err(e) => hub_error(&e),
    }
}

#[derive(Deserialize)]
struct RevokeBody {
    jti: String,
    #[serde(default)]
    exp: u64,
}

/// Revokes a staff token by its id (`jti`) before it expires.
async fn revoke(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let staff = match authorise(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let parsed: Result<RevokeBody, _> = serde_json::from_slice(&body);
    let Ok(b) = parsed else {
        return bad_request("The body must be {\"jti\": \"<token id>\"}, optionally with \"exp\".");
    };
    match app.hub.revoke(&staff.actor, &b.jti, b.exp).await {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => hub_error(&e),
    }
}

/// `GET /api/staff/escalations?state=open,acknowledged&room=…`: oldest
/// first. Without `state`, the ones not yet resolved.
async fn escalations(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = authorise(&app, &headers).await {
        return r;
    }
    let q = Params::parse(raw);
    let states = match q.get("state") {
        None => vec![EscState::Open, EscState::Acknowledged],
        Some(list) => {
            let mut out = Vec::new();
            for s in list.split(',') {
                match s {
                    "open" => out.push(EscState::Open),
                    "acknowledged" => out.push(EscState::Acknowledged),
                    "resolved" => out.push(EscState::Resolved),
                    "all" => out.extend([EscState::Open, EscState::Acknowledged, EscState::Resolved]),
                    _ => {
                        return bad_request(
                            "\"state\" is a comma-separated list of open, acknowledged, resolved (or all).",
                        )
                    }
                }
            }
            out
        }
    };
    let list = app.hub.escalation_list(&states, q.get("room"));
    Json(json!({ "escalations": list })).into_response()
}

async fn escalation(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorise(&app, &headers).await {
        return r;
    }
    match app.hub.escalations().view(&id) {
        Some(v) => Json(v).into_response(),
        None => escalation_reply(Err(HubError::NoSuchEscalation(id))),
    }
}

async fn ack(State(app): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let staff = match authorise(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let act = EscalationAction::Ack { id };
    escalation_reply(app.hub.escalation_action(&staff.actor, act).await)
}

#[derive(Deserialize, Default)]
struct ResolveBody {
    #[serde(default)]
    note: Option<String>,
}

/// `POST /api/staff/escalations/{id}/resolve`, optionally with
/// `{"note": "…"}`.
async fn resolve(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let staff = match authorise(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let parsed: ResolveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ResolveBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(_) => return bad_request("The body must be empty or {\"note\": \"…\"}."),
        }
    };
    let act = EscalationAction::Resolve {
        id,
        note: parsed.note,
    };
    escalation_reply(app.hub.escalation_action(&staff.actor, act).await)
}

/// The record, or 404 for an unknown escalation and 409 for one already
/// resolved.
fn escalation_reply(r: Result<serde_json::Value, HubError>) -> Response {
    let status = match &r {
        Ok(_) => StatusCode::OK,
        Err(HubError::NoSuchEscalation(_)) => StatusCode::NOT_FOUND,
        Err(HubError::EscalationResolved(_)) => StatusCode::CONFLICT,
        Err(e) => return hub_error(e),
    };
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError {
            status,
            code: e.code(),
            message: e.sentence(),
            retry_after_ms: None,
        }
        .into_response(),
    }
}
