//! HTTP: the axum router for `/ws`, health, metrics, the public API, the
//! peer page and the staff console (`web/`, embedded in the binary: no build
//! step, no files to deploy beside it).
//!
//! Owns request-level checks that happen before a connection exists: the
//! `Origin` allow-list and the per-address connection limit (the address is
//! hashed inside `safety` and dropped; it is never logged). It must not
//! change room state; `/ws` hands the socket to `session`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod staff_api;
mod upgrade;

pub use upgrade::Socket;

use crate::hub::HubHandle;
use crate::metrics::Metrics;
use crate::protocol::ErrorCode;
use crate::session;

#[derive(Clone)]
pub struct AppState {
    pub hub: HubHandle,
    pub shutdown: CancellationToken,
    /// Sessions are spawned through this so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// A refusal shown to HTTP clients: a code and a sentence, internals stay in logs.
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after_ms: Option<u64>,
}

#[derive(Serialize)]
struct ApiErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ApiErrorBody {
            code: self.code,
            message: &self.message,
            retry_after_ms: self.retry_after_ms,
        });
        let mut resp = (self.status, body).into_response();
        if let Some(ms) = self.retry_after_ms {
            if let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/rooms", get(rooms))
        .route("/api/rooms/{id}/guidelines", get(guidelines))
        .merge(staff_api::routes())
        .merge(pages())
        .with_state(state)
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The pages and their files, compiled in: the peer page at `/`, the staff
/// console at `/staff` (it asks for a staff token in the page), and what
/// they share (`common.js`, `theme.css`, the icon).
const PAGES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../../web/index.html")),
    ("/static/app.js", JS, include_str!("../../web/app.js")),
    ("/static/app.css", CSS, include_str!("../../web/app.css")),
    ("/staff", HTML, include_str!("../../web/staff.html")),
    ("/static/staff.js", JS, include_str!("../../web/staff.js")),
    (
        "/static/staff.css",
        CSS,
        include_str!("../../web/staff.css"),
    ),
    ("/static/common.js", JS, include_str!("../../web/common.js")),
    (
        "/static/theme.css",
        CSS,
        include_str!("../../web/theme.css"),
    ),
    (
        "/static/icon.svg",
        "image/svg+xml",
        include_str!("../../web/icon.svg"),
    ),
];

fn pages() -> Router<AppState> {
    PAGES
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            router.route(
                path,
                get(move || async move { page_asset(content_type, body) }),
            )
        })
}

/// The pages are static files compiled in. Scripts and styles only from
/// this origin (no inline code), sockets only to this origin, no framing.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// A page asset with the headers every one of them carries. `no-cache`:
/// browsers revalidate, so a new binary's page and script never mix with
/// an old cached one (the files are small).
fn page_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// A listed room's guidelines, so the page can show them before `join`
/// (they are otherwise only in `joined`). Care rooms are not listed: 404.
async fn guidelines(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app
        .hub
        .config()
        .rooms
        .iter()
        .find(|r| !r.care && r.id == id)
    {
        Some(r) => {
            Json(serde_json::json!({ "room": r.id, "guidelines": r.guidelines })).into_response()
        }
        None => ApiError {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::NoSuchRoom,
            message: ErrorCode::NoSuchRoom.sentence().into(),
            retry_after_ms: None,
        }
        .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.hub.is_ready() && !app.shutdown.is_cancelled() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let text = app
        .hub
        .metrics()
        .render(app.hub.room_count(), app.hub.limiters().keys());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn rooms(State(app): State<AppState>) -> Response {
    Json(serde_json::json!({ "rooms": app.hub.room_list().await })).into_response()
}

/// Whether a browser page at `origin` may open a socket here. Non-browser
/// clients send no `Origin` and are allowed; so is the page this node serves
/// itself (same host as the request).
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && bare.is_some_and(|b| b.eq_ignore_ascii_case(host))
}

async fn ws(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: upgrade::Upgrade,
) -> Result<Response, ApiError> {
    let metrics = app.hub.metrics();
    if app.shutdown.is_cancelled() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::Unavailable,
            message: "The server is restarting. Please reconnect in a moment.".into(),
            retry_after_ms: Some(1000),
        });
    }
    let cfg = app.hub.config();
    if !origin_allowed(&headers, &cfg.server.allowed_origins) {
        Metrics::inc(&metrics.origin_refused);
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: ErrorCode::Forbidden,
            message: "This page is not allowed to connect to this Hearth server.".into(),
            retry_after_ms: None,
        });
    }
    let addr_tag = match app.hub.limiters().address_connect(addr.ip()) {
        Ok(tag) => tag,
        Err(l) => {
            Metrics::inc(&metrics.rate_limited_address);
            return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: ErrorCode::RateLimited,
            message:
                "Too many new connections from your network. Please wait a moment and try again."
                    .into(),
            retry_after_ms: Some(l.retry_after_ms()),
        });
        }
    };
    let w = &cfg.websocket;
    let hub = app.hub.clone();
    let shutdown = app.shutdown.clone();
    let tracker = app.tracker.clone();
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(w.read_buffer_bytes)
        .write_buffer_size(w.write_buffer_bytes)
        .max_write_buffer_size(w.max_write_buffer_bytes)
        .max_message_size(Some(w.max_frame_bytes))
        .max_frame_size(Some(w.max_frame_bytes));
    Ok(upgrade.on_upgrade(config, tracker, move |socket| {
        session::run(socket, hub, shutdown, addr_tag)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("hv"));
        }
        h.insert(header::HOST, HeaderValue::from_str(host).expect("hv"));
        h
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://hearth.example".to_string()];
        assert!(origin_allowed(&headers(None, "x:1"), &allowed));
        assert!(origin_allowed(
            &headers(Some("https://hearth.example"), "x:1"),
            &allowed
        ));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:9000"), "127.0.0.1:9000"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "x:1"),
            &allowed
        ));
        assert!(!origin_allowed(&headers(Some("null"), "x:1"), &allowed));
        assert!(origin_allowed(
            &headers(Some("https://evil.example"), "x:1"),
            &["*".to_string()]
        ));
    }
}
