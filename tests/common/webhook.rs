//! A local webhook receiver for escalation tests: records every request
//! (headers and raw body), checks nothing itself, and answers with a status
//! the test controls (fail the first N, fail always, or succeed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The status this request was answered with.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    fail_first: AtomicU32,
    fail_always: AtomicBool,
}

pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook receiver");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            shared,
            _task: task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer 500 to the next `n` requests.
    pub fn fail_first(&self, n: u32) {
        self.shared.fail_first.store(n, Ordering::SeqCst);
    }

    /// Answer 503 to every request until called again with `false`.
    pub fn fail_always(&self, on: bool) {
        self.shared.fail_always.store(on, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().expect("lock").clone()
    }

    /// The requests answered with 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until `pred` holds for the requests so far; panics with what
    /// arrived after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            if Instant::now() >= deadline {
                let bodies: Vec<String> = got
                    .iter()
                    .map(|r| format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
                    .collect();
                panic!("webhook: {what} not seen within {timeout:?}; got {bodies:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = if s.fail_always.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if s
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    s.got.lock().expect("lock").push(Received {
        signature: h("x-hearth-signature"),
        idempotency_key: h("idempotency-key"),
        content_type: h("content-type"),
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}

/// `sha256=<hex>` as the receiver computes it, to compare with the header.
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}
