//! `loadtest bare`: the floor. A minimal relay on the same stack as Hearth
//! (tokio + tungstenite 0.29, the hub's default buffer sizes and outbound
//! queue) that speaks just enough of Hearth's protocol for a scenario:
//! `hello` → `welcome`, `join` → `joined`, `send` → `ok` plus a `message`
//! with the room's next `seq` to every member, `leave` → `left`. Nothing
//! else: no identities, limits, history, safety or presence.
//!
//! Hearth's throughput and memory can then be given as a fraction of what
//! this stack costs at the least.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The hub's defaults (`config/default.toml`, `[websocket]`).
const READ_BUFFER: usize = 2048;
const WRITE_BUFFER: usize = 8192;
const MAX_WRITE_BUFFER: usize = 131_072;
const MAX_FRAME: usize = 16_384;
const OUTBOUND_QUEUE: usize = 512;

type Outbox = mpsc::Sender<Utf8Bytes>;

#[derive(Default)]
struct Room {
    seq: u64,
    members: HashMap<u64, Outbox>,
}

/// The relay's rooms. A std mutex: held only to number a message and queue
/// it to each member (`try_send`), never across an `.await`; holding it
/// while queueing keeps every member's copy in `seq` order.
#[derive(Default)]
struct Relay {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    ty: String,
    #[serde(rename = "ref", default)]
    reference: Option<Value>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

/// Binds `listen` (loopback only), prints `bare listening on http://ADDR`
/// and serves until the process ends.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let files = crate::sys::raise_open_files_limit(1 << 20);
    if files < 100_000 {
        eprintln!("bare: warning: only {files} open files allowed (ulimit -n)");
    }
    let listener = bind(listen)?;
    println!("bare listening on http://{}", listener.local_addr()?);
    serve_on(listener).await;
    Ok(())
}

/// Binds a loopback address for [`serve_on`].
pub fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    if !listen.ip().is_loopback() {
        anyhow::bail!("bare listens on loopback addresses only (got {listen})");
    }
    // The same backlog as Hearth's listener, so connect bursts compare.
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(listen)
        .with_context(|| format!("bind {listen}"))?;
    Ok(socket.listen(4096)?)
}

/// Serves the relay on `listener` until the task is dropped.
pub async fn serve_on(listener: TcpListener) {
    let relay = Arc::new(Relay::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                eprintln!("bare: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = connection(relay, stream).await;
        });
    }
}

fn lock(relay: &Relay) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
    match relay.rooms.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

async fn connection(relay: Arc<Relay>, stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_frame_size(Some(MAX_FRAME))
        .max_message_size(Some(MAX_FRAME));
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(OUTBOUND_QUEUE);
    let id = relay.next_id.fetch_add(1, Ordering::Relaxed);

    // Writer: feed everything queued, then flush once.
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            sink.feed(Message::Text(first)).await?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(Message::Text(more)).await?;
            }
            sink.flush().await?;
        }
        let _ = sink.close().await;
        anyhow::Ok(())
    });

    let mut joined: Vec<String> = Vec::new();
    let reply = |v: Value| -> Utf8Bytes { v.to_string().into() };
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(f) = serde_json::from_str::<Frame>(text.as_str()) else {
            let _ = tx.try_send(reply(json!({"type": "error", "code": "bad_request"})));
            continue;
        };
        let r = f.reference.unwrap_or(Value::Null);
        let out = match (f.ty.as_str(), f.room) {
            ("hello", _) => reply(json!({
                "type": "welcome", "ref": r, "session": "",
                "you": {"id": format!("c{id}"), "name": "bare", "role": "peer"},
                "resumed": false, "rooms": [],
                "server": {"name": "bare", "version": env!("CARGO_PKG_VERSION"), "node": "bare"},
            })),
            ("join", Some(room)) => {
                let seq = {
                    let mut rooms = lock(&relay);
                    let entry = rooms.entry(room.clone()).or_default();
                    entry.members.insert(id, tx.clone());
                    entry.seq
                };
                if !joined.contains(&room) {
                    joined.push(room.clone());
                }
                reply(json!({"type": "joined", "ref": r, "room": room, "seq": seq}))
            }
            ("leave", Some(room)) => {
                if let Some(entry) = lock(&relay).get_mut(&room) {
                    entry.members.remove(&id);
                }
                joined.retain(|j| *j != room);
                reply(json!({"type": "left", "ref": r, "room": room}))
            }
            ("send", Some(room)) => {
                let text = f.text.unwrap_or_default();
                let mut rooms = lock(&relay);
                match rooms.get_mut(&room) {
                    Some(entry) if entry.members.contains_key(&id) => {
                        entry.seq += 1;
                        let seq = entry.seq;
                        let ts = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        let ok = reply(json!({"type": "ok", "ref": r, "seq": seq}));
                        let _ = tx.try_send(ok);
                        let frame: Utf8Bytes = json!({
                            "type": "message", "room": room, "seq": seq, "ts": ts,
                            "from": {"id": format!("c{id}")}, "text": text,
                        })
                        .to_string()
                        .into();
                        // A member whose queue is full is too slow: drop it
                        // from the room (Hearth closes it with 4009).
                        entry
                            .members
                            .retain(|_, m| m.try_send(frame.clone()).is_ok());
                        continue;
                    }
                    _ => reply(json!({"type": "error", "ref": r, "code": "not_joined"})),
                }
            }
            _ => reply(json!({"type": "error", "ref": r, "code": "unknown_type"})),
        };
        if tx.try_send(out).is_err() {
            break;
        }
    }
    {
        let mut rooms = lock(&relay);
        for room in &joined {
            if let Some(entry) = rooms.get_mut(room) {
                entry.members.remove(&id);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
