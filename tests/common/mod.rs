//! Black-box harness for the Hearth integration tests.
//!
//! `TestHub` runs the real `hearth` binary on port 0 with a config written
//! to its own temporary directory (based on `tests/config/test.toml`) and
//! kills it on drop. `TestClient` is a WebSocket client that speaks the
//! wire protocol of `shared/PROTOCOL.md`. Every wait is bounded: a test
//! fails with a message rather than hanging.

#![allow(dead_code, unreachable_pub)]

pub mod labelled;
pub mod redis;
pub mod webhook;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hearth");
/// The base test configuration (short timeouts, generous limits).
pub const TEST_CONFIG: &str = include_str!("../config/test.toml");
/// The three rooms every configuration must have.
pub const ROOMS: [&str; 3] = ["bereavement", "substance-use", "anxiety"];

/// Default bound for waiting on one frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound for waiting on a close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty temporary directory, removed by `TempDir`'s drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "hearth-it-{}-{}-{nanos}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Config editing
// ---------------------------------------------------------------------------

/// Sets `key = value` (value as TOML text) inside `[section]`. Panics when
/// the key is not there, so a renamed key fails loudly.
pub fn set(toml: &mut String, section: &str, key: &str, value: &str) {
    let header = format!("[{section}]");
    let mut lines: Vec<String> = toml.lines().map(str::to_string).collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no section {header} in the test config"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map(|i| start + 1 + i)
        .unwrap_or(lines.len());
    let idx = (start + 1..end)
        .find(|i| key_of(&lines[*i]) == Some(key))
        .unwrap_or_else(|| panic!("no key {section}.{key} in the test config"));
    lines[idx] = format!("{key} = {value}");
    *toml = lines.join("\n") + "\n";
}

/// Sets `key = value` for the room whose id is `room`.
pub fn set_room(toml: &mut String, room: &str, key: &str, value: &str) {
    let mut lines: Vec<String> = toml.lines().map(str::to_string).collect();
    let id_line = format!("id = \"{room}\"");
    let at = lines
        .iter()
        .position(|l| l.trim() == id_line)
        .unwrap_or_else(|| panic!("no room {room} in the test config"));
    // The room's table starts at the closest [[rooms]] above its id.
    let start = lines[..at]
        .iter()
        .rposition(|l| l.trim() == "[[rooms]]")
        .expect("[[rooms]] header");
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim() == "[[rooms]]")
        .map(|i| start + 1 + i)
        .unwrap_or(lines.len());
    let idx = (start + 1..end)
        .find(|i| key_of(&lines[*i]) == Some(key))
        .unwrap_or_else(|| panic!("no key {key} in room {room}"));
    lines[idx] = format!("{key} = {value}");
    *toml = lines.join("\n") + "\n";
}

fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('#') && !k.contains(' ')).then_some(k)
}

// ---------------------------------------------------------------------------
// The hub process
// ---------------------------------------------------------------------------

/// A running `hearth serve` process, killed on drop.
pub struct TestHub {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    config_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl TestHub {
    /// Starts a hub with `tests/config/test.toml` as it is.
    pub async fn start() -> TestHub {
        TestHub::start_full(|_| {}, &[]).await
    }

    /// Starts a hub after `edit` changed the test config text.
    pub async fn start_with(edit: impl FnOnce(&mut String)) -> TestHub {
        TestHub::start_full(edit, &[]).await
    }

    /// Starts a hub with an edited config and extra environment variables.
    pub async fn start_full(edit: impl FnOnce(&mut String), env: &[(&str, &str)]) -> TestHub {
        let dir = TempDir::new();
        let mut toml = TEST_CONFIG.to_string();
        edit(&mut toml);
        let config_path = dir.path().join("hearth.toml");
        std::fs::write(&config_path, &toml).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let data_dir = dir.path().join("data");

        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (k, _) in std::env::vars() {
            if k.starts_with("HEARTH_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HEARTH_LISTEN", "127.0.0.1:0")
            .env("HEARTH_DATA_DIR", &data_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn hearth");

        // Read stdout until the listening line, then keep draining it so the
        // server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.trim().strip_prefix("hearth listening on http://") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(
                            rest.parse()
                                .map_err(|e| format!("bad address in {line:?}: {e}")),
                        );
                    }
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err("stdout closed before the listening line".into()));
            }
        });
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .expect("join");
        let addr = match got {
            Ok(Ok(a)) => a,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("hearth did not start: {other:?}\n--- stderr ---\n{log}");
            }
        };
        let hub = TestHub {
            child,
            addr,
            dir,
            config_path,
            stderr_path,
            exited: None,
        };
        // A cluster node listens before its Redis connection is up; like a
        // load balancer, wait (briefly) for readiness, so that a test's
        // first join does not race the connection. Tests that start a node
        // with Redis down simply go on after the wait.
        if env
            .iter()
            .any(|(k, v)| *k == "HEARTH_REDIS_URL" && !v.is_empty())
        {
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until && hub.http_get("/readyz").await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        hub
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The hub's `HEARTH_DATA_DIR` (durable files such as `audit.log`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server wrote to stderr so far (its logs).
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A minimal HTTP/1.1 GET: `(status, body)`.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// The full `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let (status, body) = self.http_get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// The value of one series in `/metrics`, named exactly as printed
    /// (with labels, e.g. `hearth_rate_limited_total{scope="identity"}`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        parse_metric(&text, name).unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Polls `metric(name)` until `ok` holds, or panics after `timeout`.
    pub async fn wait_metric(
        &self,
        name: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("metric {name} = {v} did not reach the expected value within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /api/rooms` as JSON.
    pub async fn api_rooms(&self) -> Value {
        let (status, body) = self.http_get("/api/rooms").await;
        assert_eq!(status, 200, "/api/rooms: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/rooms not JSON ({e}): {body}"))
    }

    /// The member count `/api/rooms` reports for `room`.
    pub async fn room_members(&self, room: &str) -> u64 {
        let v = self.api_rooms().await;
        v["rooms"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["id"] == room))
            .and_then(|r| r["members"].as_u64())
            .unwrap_or_else(|| panic!("room {room} with members not in {v}"))
    }

    /// Sends SIGTERM to the server process.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit, polling; `None` if it is still
    /// running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server process with SIGKILL (no shutdown path runs) and
    /// waits for it to be gone.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.exited = Some(s);
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.stderr_log();
            let tail: String = {
                let start = log.len().saturating_sub(6000);
                let mut s = start;
                while !log.is_char_boundary(s) {
                    s += 1;
                }
                log[s..].to_string()
            };
            eprintln!("--- hearth stderr (tail) ---\n{tail}\n--- end ---");
        }
    }
}

/// Finds one series in Prometheus text.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| series.trim() == name)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// A minimal HTTP/1.1 GET over raw TCP: `(status, body)`. Handles
/// `Content-Length` and chunked bodies.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect for HTTP");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"));
    parse_http_response(&raw)
}

/// A minimal HTTP/1.1 request over raw TCP with extra `headers` and a
/// `body` (sent with `Content-Length` unless the method is GET or HEAD and
/// the body is empty): `(status, body, headers)`, header names lower-cased.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Vec<(String, String)>) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect for HTTP");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} timed out"));
    let (status, body) = parse_http_response(&raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, body, headers)
}

fn parse_http_response(raw: &[u8]) -> (u16, String) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response has a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_txt = String::from_utf8_lossy(&rest[..nl]).to_string();
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
            rest = &rest[nl + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    }
    (status, String::from_utf8_lossy(&body).to_string())
}

// ---------------------------------------------------------------------------
// The WebSocket client
// ---------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What reading the socket produced.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    /// A close frame with this code (1005 when it carried none).
    Close(u16),
    /// The connection ended without a close frame.
    Ended(String),
    Timeout,
}

/// A protocol client. Replies to `request` are matched by `ref`; anything
/// that arrives meanwhile is kept in order for `recv`.
pub struct TestClient<S = MaybeTlsStream<TcpStream>> {
    pub ws: WebSocketStream<S>,
    backlog: VecDeque<Value>,
    next_ref: u64,
    /// Set by `hello`.
    pub id: String,
    pub name: String,
    pub session: String,
}

/// Why an upgrade failed: the HTTP status when the server answered one.
#[derive(Debug)]
pub enum ConnectError {
    Status(u16, String),
    Other(String),
}

impl TestClient {
    /// Opens `/ws` (no `Origin` header); panics on failure.
    pub async fn connect(hub: &TestHub) -> TestClient {
        TestClient::try_connect(hub, None)
            .await
            .unwrap_or_else(|e| panic!("connect failed: {e:?}"))
    }

    /// Opens `/ws` with an optional `Origin` header.
    pub async fn try_connect(
        hub: &TestHub,
        origin: Option<&str>,
    ) -> Result<TestClient, ConnectError> {
        let mut req = hub.ws_url().into_client_request().expect("client request");
        if let Some(o) = origin {
            req.headers_mut()
                .insert("Origin", HeaderValue::from_str(o).expect("origin header"));
        }
        let fut = tokio_tungstenite::connect_async(req);
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Err(_) => Err(ConnectError::Other("upgrade timed out".into())),
            Ok(Ok((ws, _))) => Ok(TestClient::wrap(ws)),
            Ok(Err(WsError::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .unwrap_or_default();
                Err(ConnectError::Status(resp.status().as_u16(), body))
            }
            Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
        }
    }

    /// Opens `/ws` over a socket whose kernel receive buffer is set to
    /// `recv_buffer` bytes, so that a client that stops reading backs up
    /// into the server quickly.
    pub async fn connect_small_buffer(hub: &TestHub, recv_buffer: u32) -> TestClient {
        let tcp = small_buffer_tcp(hub, recv_buffer).await;
        let fut = tokio_tungstenite::client_async(hub.ws_url(), MaybeTlsStream::Plain(tcp));
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("upgrade timed out")
            .expect("upgrade");
        TestClient::wrap(ws)
    }

    /// A connected client that has said hello.
    pub async fn joined_peer(hub: &TestHub, room: &str) -> TestClient {
        let mut c = TestClient::connect(hub).await;
        c.hello().await;
        c.join(room).await;
        c
    }

    /// Like `connect_small_buffer`, but writes can be switched off with the
    /// returned `Mute`: from then on nothing the client writes (pongs, close
    /// replies) reaches the server, as with a peer that stopped running.
    pub async fn connect_small_buffer_muted(
        hub: &TestHub,
        recv_buffer: u32,
    ) -> (TestClient<MuteStream>, Mute) {
        let tcp = small_buffer_tcp(hub, recv_buffer).await;
        let mute = Mute(Arc::new(AtomicBool::new(false)));
        let stream = MuteStream {
            inner: tcp,
            muted: mute.0.clone(),
        };
        let fut = tokio_tungstenite::client_async(hub.ws_url(), stream);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("upgrade timed out")
            .expect("upgrade");
        (TestClient::wrap(ws), mute)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TestClient<S> {
    fn wrap(ws: WebSocketStream<S>) -> TestClient<S> {
        TestClient {
            ws,
            backlog: VecDeque::new(),
            next_ref: 1,
            id: String::new(),
            name: String::new(),
            session: String::new(),
        }
    }

    // ---- sending ----------------------------------------------------------

    pub async fn try_send(&mut self, msg: Message) -> Result<(), WsError> {
        match tokio::time::timeout(Duration::from_secs(10), self.ws.send(msg)).await {
            Ok(r) => r,
            Err(_) => Err(WsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "send timed out",
            ))),
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_raw_text(&v.to_string()).await;
    }

    pub async fn send_raw_text(&mut self, text: &str) {
        self.try_send(Message::text(text.to_string()))
            .await
            .unwrap_or_else(|e| panic!("send failed: {e}"));
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.try_send(Message::binary(data.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("send failed: {e}"));
    }

    // ---- receiving --------------------------------------------------------

    /// Reads the socket once (ignoring pings and pongs), bounded by `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Event::Timeout,
                Ok(n) => n,
            };
            match next {
                None => return Event::Ended("stream ended".into()),
                Some(Err(e)) => return Event::Ended(e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {t}"));
                    assert!(v.is_object(), "server frame is not an object: {v}");
                    assert!(v["type"].is_string(), "server frame without type: {v}");
                    return Event::Frame(v);
                }
                Some(Ok(Message::Binary(b))) => {
                    panic!("server sent a binary frame of {} bytes", b.len())
                }
                Some(Ok(Message::Close(cf))) => {
                    return Event::Close(cf.map(|c| u16::from(c.code)).unwrap_or(1005))
                }
                Some(Ok(_)) => continue, // ping, pong, raw frame
            }
        }
    }

    /// The next frame; panics on close, end or after `RECV_TIMEOUT`.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        match self.next_event(RECV_TIMEOUT).await {
            Event::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame if one arrives within `timeout`; panics on close.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        match self.next_event(timeout).await {
            Event::Frame(v) => Some(v),
            Event::Timeout => None,
            other => panic!("expected a frame or silence, got {other:?}"),
        }
    }

    /// The next frame of type `ty`, discarding others.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Some(v) if v["type"] == ty => return v,
                Some(_) => continue,
                None => panic!("no {ty:?} frame within {RECV_TIMEOUT:?}"),
            }
        }
    }

    /// Reads until a close frame and returns its code, discarding other
    /// frames; 1006 when the connection ended without one.
    pub async fn expect_close(&mut self) -> u16 {
        self.expect_close_within(CLOSE_TIMEOUT).await
    }

    pub async fn expect_close_within(&mut self, timeout: Duration) -> u16 {
        self.backlog.clear();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Event::Frame(_) => continue,
                Event::Close(code) => return code,
                Event::Ended(_) => return 1006,
                Event::Timeout => panic!("no close within {timeout:?}"),
            }
        }
    }

    /// Frames already received but not yet taken.
    pub fn backlog(&self) -> &VecDeque<Value> {
        &self.backlog
    }

    // ---- requests ---------------------------------------------------------

    /// Sends `frame` (adding a fresh string `ref` when it has none) and
    /// returns the reply carrying that `ref`. Other frames are kept for `recv`.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        if frame.get("ref").is_none() {
            frame["ref"] = json!(format!("t{}", self.next_ref));
            self.next_ref += 1;
        }
        let rf = frame["ref"].clone();
        self.send_json(frame.clone()).await;
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Event::Frame(v) if v.get("ref") == Some(&rf) => return v,
                Event::Frame(v) => self.backlog.push_back(v),
                other => panic!("no reply to {frame}: {other:?}"),
            }
        }
    }

    /// The next frame of type `ty` within `timeout`, skipping (and
    /// dropping) any other frames; panics with the type when none comes.
    pub async fn next_of(&mut self, ty: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Some(v) if v["type"] == ty => return v,
                Some(_) => continue,
                None => panic!("no {ty} within {timeout:?}"),
            }
        }
    }

    /// `hello` without resume; returns the `welcome` and records identity.
    pub async fn hello(&mut self) -> Value {
        self.hello_with(json!({"type": "hello"})).await
    }

    /// `hello` with a staff token in `auth`; returns the `welcome`.
    pub async fn hello_auth(&mut self, token: &str) -> Value {
        self.hello_with(json!({"type": "hello", "auth": token}))
            .await
    }

    /// `hello` with a resume token.
    pub async fn hello_resume(&mut self, token: &str) -> Value {
        self.hello_with(json!({"type": "hello", "resume": token}))
            .await
    }

    pub async fn hello_with(&mut self, frame: Value) -> Value {
        let w = self.request(frame).await;
        assert_eq!(w["type"], "welcome", "hello answered with {w}");
        self.id = w["you"]["id"].as_str().expect("you.id").to_string();
        self.name = w["you"]["name"].as_str().expect("you.name").to_string();
        self.session = w["session"].as_str().expect("session").to_string();
        w
    }

    /// `join` without `since`; asserts `joined`.
    pub async fn join(&mut self, room: &str) -> Value {
        let j = self.request(json!({"type": "join", "room": room})).await;
        assert_eq!(j["type"], "joined", "join {room} answered with {j}");
        j
    }

    /// `join` with `since`; asserts `joined`.
    pub async fn join_since(&mut self, room: &str, seq: u64, epoch: &str) -> Value {
        let j = self
            .request(json!({"type": "join", "room": room, "since": {"seq": seq, "epoch": epoch}}))
            .await;
        assert_eq!(j["type"], "joined", "join {room} answered with {j}");
        j
    }

    pub async fn leave(&mut self, room: &str) -> Value {
        self.request(json!({"type": "leave", "room": room})).await
    }

    /// `send`; returns the reply (`ok` or `error`).
    pub async fn send_text(&mut self, room: &str, text: &str) -> Value {
        self.request(json!({"type": "send", "room": room, "text": text}))
            .await
    }

    /// `send` that must be accepted: returns `(id, seq)`.
    pub async fn say(&mut self, room: &str, text: &str) -> (String, u64) {
        let r = self.send_text(room, text).await;
        assert_eq!(r["type"], "ok", "send answered with {r}");
        (
            r["id"].as_str().expect("ok.id").to_string(),
            r["seq"].as_u64().expect("ok.seq"),
        )
    }

    /// Sends a close frame and waits (bounded) for the server to finish.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Switches a `MuteStream`'s writes off.
#[derive(Clone)]
pub struct Mute(Arc<AtomicBool>);

impl Mute {
    pub fn mute(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A TCP stream whose writes can be silently discarded.
pub struct MuteStream {
    inner: TcpStream,
    muted: Arc<AtomicBool>,
}

impl AsyncRead for MuteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.muted.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.muted.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.muted.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Asserts that `v` is an `error` with `code` and a readable `message`.
pub fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["type"], "error", "expected error {code}, got {v}");
    assert_eq!(v["code"], code, "expected error {code}, got {v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        !msg.trim().is_empty(),
        "error {code} without a readable message: {v}"
    );
}

/// Mints a staff token with `hearth token --role ROLE --name NAME --ttl TTL`
/// signed with `secret` (as `HEARTH_STAFF_SECRET`); panics when it fails.
pub fn mint_staff_token(secret: &str, role: &str, name: &str, ttl: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--role", role, "--name", name, "--ttl", ttl])
        .env("HEARTH_STAFF_SECRET", secret)
        .stdin(Stdio::null())
        .output()
        .expect("run hearth token");
    assert!(
        out.status.success(),
        "hearth token failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!token.is_empty(), "hearth token printed nothing");
    token
}

/// Runs `hearth check-config --config PATH`: `(success, stdout, stderr)`.
pub fn check_config(path: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(path)
        .env_remove("HEARTH_LISTEN")
        .env_remove("HEARTH_REDIS_URL")
        .env_remove("HEARTH_NODE_ID")
        .output()
        .expect("run check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A small seeded PRNG (xorshift64*), so fuzz runs are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A TCP connection to the hub whose kernel receive buffer is `recv_buffer`
/// bytes, so a client that stops reading backs up into the server quickly.
async fn small_buffer_tcp(hub: &TestHub, recv_buffer: u32) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(recv_buffer)
        .expect("set_recv_buffer_size");
    tokio::time::timeout(Duration::from_secs(5), sock.connect(hub.addr()))
        .await
        .expect("tcp connect timed out")
        .expect("tcp connect")
}
