//! One task per WebSocket connection: handshake, decode, per-connection
//! limits, pings, and draining the bounded outbound queue into the socket.
//!
//! Owns the connection's lifecycle and its close code. Everything it knows
//! about rooms and identities comes from `hub`; it must not change room state
//! itself. Replies go through the same `Outbox` as room traffic, so a
//! connection has exactly one writer and one order.

pub mod outbox;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::Message;

use crate::http::Socket;
use crate::hub::{Action, Actor, Conn, EscalationAction, HubError, HubHandle};
use crate::metrics::Metrics;
use crate::protocol::{
    self, close, ClientFrame, ErrorCode, Limits, Ref, ServerFrame, ServerInfo, StaffFrame,
};
use crate::safety::ConnectionLimits;
use outbox::Outbox;

/// A socket that accepts no bytes for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// An idle connection's write buffer is shrunk back when it grew past this.
const KEEP_BUFFER: usize = 64;
/// A text message longer than this goes out as continuation frames of at
/// most this many bytes, each flushed on its own. tungstenite's write
/// buffer keeps the capacity of the most it ever held, for the life of the
/// connection: without this, a `welcome` listing 100 rooms (~10 KB) or a
/// `joined` listing 1 000 members (~60 KB) would stay pinned to every
/// connection that received one. (Small frames are batched up to
/// `write_buffer_bytes`, see [`feed_text`].)
pub const FRAGMENT: usize = 2048;
/// The most a server frame's header takes (unmasked, 64-bit length).
const FRAME_HEADER: usize = 10;

/// How the connection ends.
enum End {
    /// Send a close frame with this code and reason.
    Close(u16, &'static str),
    /// The peer is gone or unresponsive: just drop the socket.
    Drop,
    /// The peer sent a close frame: answer it (tungstenite queued the reply).
    PeerClosed,
}

/// Counts the connection in the gauge for exactly as long as it lives.
struct Gauge(Arc<Metrics>);

impl Gauge {
    fn new(m: Arc<Metrics>) -> Gauge {
        Metrics::gauge(&m.connections, 1);
        Gauge(m)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        Metrics::gauge(&self.0.connections, -1);
    }
}

struct Session {
    hub: HubHandle,
    outbox: Arc<Outbox>,
    limits: ConnectionLimits,
    conn: Option<Conn>,
    /// When the last rate-limit refusal said the client may send again. A
    /// frame that arrives earlier ignored that advice and counts as a strike.
    limited_until: Option<Instant>,
    /// Keyed hash of the source address (see `Conn::addr_tag`).
    addr_tag: u64,
}

/// Runs one connection until it closes. Errors end here: they are logged
/// once and never reach the accept loop.
pub async fn run(mut ws: Socket, hub: HubHandle, shutdown: CancellationToken, addr_tag: u64) {
    let _gauge = Gauge::new(hub.metrics().clone());
    let cfg = hub.config().websocket.clone();
    let mut s = Session {
        outbox: Arc::new(Outbox::new(cfg.outbound_queue)),
        limits: hub.limiters().for_connection(),
        conn: None,
        limited_until: None,
        addr_tag,
        hub,
    };
    let handshake = tokio::time::sleep(Duration::from_secs(cfg.handshake_timeout_secs));
    tokio::pin!(handshake);
    let ping_every = Duration::from_secs(cfg.ping_interval_secs);
    let idle = Duration::from_secs(cfg.idle_timeout_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_rx = Instant::now();
    let mut buf: VecDeque<Utf8Bytes> = VecDeque::new();
    let batch = cfg.write_buffer_bytes;

    let end = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                break End::Close(close::RESTARTING, "server restarting; reconnect with resume");
            }
            _ = s.outbox.ready() => {
                let closing = s.outbox.drain_into(&mut buf);
                if let Err(end) = write_all(&mut ws, &mut buf, batch, &shutdown).await {
                    break end;
                }
                if buf.capacity() > KEEP_BUFFER {
                    buf.shrink_to(KEEP_BUFFER);
                }
                if let Some(reason) = closing {
                    break End::Close(reason.code, reason.reason);
                }
            }
            _ = &mut handshake, if s.conn.is_none() => {
                break End::Close(close::HANDSHAKE_TIMEOUT, "no hello within the handshake timeout");
            }
            _ = ping.tick() => {
                if last_rx.elapsed() > idle {
                    tracing::debug!("connection idle past its timeout; dropping");
                    break End::Drop;
                }
                let sent = tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Ping(Bytes::new()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break End::Drop;
                }
            }
            msg = ws.next() => {
                let msg = match msg {
                    None => break End::Drop,
                    Some(Err(e)) => break read_error(e),
                    Some(Ok(m)) => m,
                };
                last_rx = Instant::now();
                match msg {
                    Message::Text(text) => {
                        if let Err(end) = s.limit_frame(Some(text.as_str())) {
                            match end {
                                Some(end) => break end,
                                None => continue,
                            }
                        }
                        // Boxed: the frame handlers' state is large and only
                        // lives while a frame is handled; inline, every idle
                        // connection would carry it.
                        if let Some(end) = Box::pin(s.on_text(text.as_str())).await {
                            break end;
                        }
                    }
                    Message::Binary(_) => {
                        if let Err(end) = s.limit_frame(None) {
                            match end {
                                Some(end) => break end,
                                None => continue,
                            }
                        }
                        Metrics::inc(&s.hub.metrics().bad_frames);
                        s.error(None, ErrorCode::BadRequest, "Hearth speaks JSON in text frames; binary frames are not accepted.");
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    Message::Close(_) => break End::PeerClosed,
                }
            }
        }
    };

    // Stop the hub queueing for us before anything else.
    s.outbox.close(outbox::CloseReason {
        code: close::NORMAL,
        reason: "closing",
    });
    if let Some(conn) = s.conn.take() {
        s.hub.disconnect(&conn);
    }
    match end {
        End::Close(code, reason) => {
            if code == close::FLOODING {
                Metrics::inc(&s.hub.metrics().flood_disconnects);
            }
            tracing::debug!(code, reason, "closing connection");
            Box::pin(close_gracefully(
                &mut ws, &s.outbox, &mut buf, batch, code, reason,
            ))
            .await;
        }
        End::PeerClosed => {
            // Sends the close reply tungstenite queued when the frame arrived.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
        }
        End::Drop => {}
    }
}

/// Sends what is still queued (an error explaining the close, say), then the
/// close frame, then waits briefly for the peer's close reply, so the TCP
/// connection ends cleanly instead of with a reset that would discard the
/// close frame (and everything before it) on the client's side.
async fn close_gracefully(
    ws: &mut Socket,
    outbox: &Outbox,
    buf: &mut VecDeque<Utf8Bytes>,
    batch: usize,
    code: u16,
    reason: &'static str,
) {
    let _ = outbox.drain_into(buf);
    let frame = Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }));
    let send = async {
        let mut pending = 0;
        for f in buf.drain(..) {
            pending = feed_text(ws, f, pending, batch).await?;
        }
        ws.send(frame).await
    };
    if !matches!(tokio::time::timeout(CLOSE_TIMEOUT, send).await, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Writes queued frames with one flush. A socket that does not accept them
/// within `WRITE_TIMEOUT` is dead to us; shutdown does not wait for it.
async fn write_all(
    ws: &mut Socket,
    buf: &mut VecDeque<Utf8Bytes>,
    batch: usize,
    shutdown: &CancellationToken,
) -> Result<(), End> {
    if buf.is_empty() {
        return Ok(());
    }
    let write = async {
        let mut pending = 0;
        for frame in buf.drain(..) {
            pending = feed_text(ws, frame, pending, batch).await?;
        }
        ws.flush().await
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, write) => r,
        _ = shutdown.cancelled() => {
            return Err(End::Close(close::RESTARTING, "server restarting; reconnect with resume"));
        }
    };
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "write failed");
            Err(End::Drop)
        }
        Err(_) => {
            tracing::debug!("write timed out; dropping connection");
            Err(End::Drop)
        }
    }
}

/// Queues one text message for the next flush, given `pending` bytes
/// queued since the last one; returns the bytes queued now.
///
/// tungstenite's write buffer keeps the largest capacity it ever reached,
/// so it is kept at about `batch` bytes: the queue is flushed before a frame
/// would take it past `batch` (tungstenite itself writes only once it is
/// past `write_buffer_bytes`, and would then have doubled it), and a message
/// longer than [`FRAGMENT`] goes out on its own, as fragments flushed one by
/// one.
async fn feed_text(
    ws: &mut Socket,
    text: Utf8Bytes,
    pending: usize,
    batch: usize,
) -> Result<usize, tungstenite::Error> {
    // The bytes were checked to be UTF-8 when the frame was encoded; a raw
    // frame sends them without checking again.
    let mut bytes = Bytes::from(text);
    if bytes.len() <= FRAGMENT {
        let size = bytes.len() + FRAME_HEADER;
        let pending = if pending > 0 && pending + size > batch {
            ws.flush().await?;
            0
        } else {
            pending
        };
        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
        ws.feed(Message::Frame(frame)).await?;
        return Ok(pending + size);
    }
    ws.flush().await?;
    let mut op = Data::Text;
    while !bytes.is_empty() {
        let part = bytes.split_to(FRAGMENT.min(bytes.len()));
        let last = bytes.is_empty();
        ws.send(Message::Frame(Frame::message(part, OpCode::Data(op), last)))
            .await?;
        op = Data::Continue;
    }
    Ok(0)
}

/// A read error: an oversized frame gets 1009, anything else ends quietly.
fn read_error(e: tungstenite::Error) -> End {
    match e {
        tungstenite::Error::Capacity(_) => {
            End::Close(close::TOO_BIG, "frame larger than the server accepts")
        }
        e => {
            tracing::debug!(cause = %e, "read failed");
            End::Drop
        }
    }
}

impl Session {
    fn push(&self, frame: String) {
        // A reply that overflows the queue closes the connection with 4009,
        // exactly like room traffic would.
        let _ = self.outbox.push(frame.into());
    }

    fn error(&self, rf: Option<&Ref>, code: ErrorCode, message: &str) {
        self.push(
            ServerFrame::Error {
                rf,
                code,
                message,
                retry_after_ms: None,
                until: None,
            }
            .encode(),
        );
    }

    fn hub_error(&self, rf: Option<&Ref>, e: &HubError) {
        self.push(
            ServerFrame::Error {
                rf,
                code: e.code(),
                message: &e.sentence(),
                retry_after_ms: e.retry_after_ms(),
                until: e.until(),
            }
            .encode(),
        );
    }

    fn ok(&self, rf: Option<&Ref>) {
        self.push(
            ServerFrame::Ok {
                rf,
                id: None,
                seq: None,
                held: None,
            }
            .encode(),
        );
    }

    /// Records a rate-limit refusal that told the client to wait
    /// `retry_after_ms`. Returns `Some` when the client is flooding: it keeps
    /// sending before the wait it was given has passed. A client that waits
    /// as told is never closed.
    fn refused(&mut self, retry_after_ms: u64) -> Option<End> {
        let now = Instant::now();
        let ignored_advice = self.limited_until.is_some_and(|t| now < t);
        self.limited_until = Some(now + Duration::from_millis(retry_after_ms));
        if ignored_advice && !self.limits.strike() {
            return Some(End::Close(
                close::FLOODING,
                "kept sending after being rate-limited",
            ));
        }
        None
    }

    /// The per-connection limit on any data frame. `Err(None)`: refused,
    /// answered with `rate_limited`; `Err(Some(end))`: refused once too
    /// often, the connection is flooding.
    fn limit_frame(&mut self, text: Option<&str>) -> Result<(), Option<End>> {
        let Err(l) = self.limits.frame() else {
            return Ok(());
        };
        Metrics::inc(&self.hub.metrics().rate_limited_connection);
        let rf = text.and_then(|t| protocol::decode(t).0);
        let e = HubError::RateLimited {
            scope: "connection",
            retry_after_ms: l.retry_after_ms(),
        };
        self.hub_error(rf.as_ref(), &e);
        Err(self.refused(l.retry_after_ms()))
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        let (rf, frame) = protocol::decode(text);
        let rf = rf.as_ref();
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                Metrics::inc(&self.hub.metrics().bad_frames);
                self.error(rf, e.code(), &e.to_string());
                return None;
            }
        };
        let Some(conn) = self.conn.clone() else {
            return self.on_hello(rf, frame).await;
        };
        match frame {
            ClientFrame::Hello(_) => {
                self.error(
                    rf,
                    ErrorCode::BadRequest,
                    "This connection has already said hello.",
                );
            }
            ClientFrame::Join(j) => {
                if let Err(e) = self.hub.join(&conn, rf, &j.room, j.since.as_ref()).await {
                    self.hub_error(rf, &e);
                }
            }
            ClientFrame::Leave(l) => match self.hub.leave(&conn, &l.room).await {
                Ok(()) => self.push(ServerFrame::Left { rf, room: &l.room }.encode()),
                Err(e) => self.hub_error(rf, &e),
            },
            ClientFrame::Send(m) => match self.hub.send(&conn, &m.room, &m.text).await {
                Ok(sent) => self.push(
                    ServerFrame::Ok {
                        rf,
                        id: Some(&sent.id),
                        seq: sent.seq,
                        held: sent.held.then_some(true),
                    }
                    .encode(),
                ),
                Err(e) => {
                    self.hub_error(rf, &e);
                    if let Some(ms) = e.retry_after_ms() {
                        return self.refused(ms);
                    }
                }
            },
            ClientFrame::Typing(t) => {
                let limits = &self.limits;
                if let Err(e) = self.hub.typing(&conn, &t.room, || limits.typing()).await {
                    self.hub_error(rf, &e);
                }
            }
            ClientFrame::Report(r) => {
                match self
                    .hub
                    .report(&conn, &r.room, &r.message, r.reason.as_deref())
                    .await
                {
                    Ok(()) => self.ok(rf),
                    Err(e) => {
                        self.hub_error(rf, &e);
                        if let Some(ms) = e.retry_after_ms() {
                            return self.refused(ms);
                        }
                    }
                }
            }
            ClientFrame::Staff(ty, frame) => return self.on_staff(rf, &conn, ty, frame).await,
        }
        None
    }

    /// A staff frame. Peers get `forbidden` whatever its fields; staff whose
    /// token has expired or was revoked get `unauthorized` and close 4003.
    async fn on_escalation(&mut self, rf: Option<&Ref>, actor: &Actor, act: EscalationAction) {
        match self.hub.escalation_action(actor, act).await {
            Ok(v) => {
                let id = v["id"].as_str().map(str::to_string);
                self.push(
                    ServerFrame::Ok {
                        rf,
                        id: id.as_deref(),
                        seq: None,
                        held: None,
                    }
                    .encode(),
                )
            }
            Err(e) => self.hub_error(rf, &e),
        }
    }

    async fn on_staff(
        &mut self,
        rf: Option<&Ref>,
        conn: &Conn,
        ty: &str,
        frame: Result<StaffFrame, protocol::DecodeError>,
    ) -> Option<End> {
        let Some(staff) = conn.staff.as_ref() else {
            let msg = format!("Only moderators and clinicians can use \"{ty}\".");
            self.error(rf, ErrorCode::Forbidden, &msg);
            return None;
        };
        if let Err(why) = self.hub.staff_still_valid(staff).await {
            self.error(rf, ErrorCode::Unauthorized, why);
            return Some(End::Close(
                close::UNAUTHORIZED,
                "staff token no longer valid",
            ));
        }
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                Metrics::inc(&self.hub.metrics().bad_frames);
                self.error(rf, e.code(), &e.to_string());
                return None;
            }
        };
        let actor = Actor {
            member: conn.member.clone(),
        };
        let action = match Action::from_frame(frame) {
            Ok(a) => a,
            Err(StaffFrame::Watch(w)) => {
                if let Err(e) = self.hub.watch(conn, rf, &w.room).await {
                    self.hub_error(rf, &e);
                }
                return None;
            }
            Err(StaffFrame::Unwatch(w)) => {
                match self.hub.unwatch(conn, &w.room).await {
                    Ok(()) => self.ok(rf),
                    Err(e) => self.hub_error(rf, &e),
                }
                return None;
            }
            Err(StaffFrame::Ack(r)) => {
                let act = EscalationAction::Ack { id: r.escalation };
                self.on_escalation(rf, &actor, act).await;
                return None;
            }
            Err(StaffFrame::Resolve(r)) => {
                let act = EscalationAction::Resolve {
                    id: r.escalation,
                    note: r.note,
                };
                self.on_escalation(rf, &actor, act).await;
                return None;
            }
            Err(StaffFrame::Care(c)) => {
                match self.hub.open_care(&actor, &c.escalation).await {
                    Ok(room) => self.push(
                        ServerFrame::Ok {
                            rf,
                            id: Some(&room),
                            seq: None,
                            held: None,
                        }
                        .encode(),
                    ),
                    Err(e) => self.hub_error(rf, &e),
                }
                return None;
            }
            // `Action::from_frame` returns nothing else.
            Err(_) => return None,
        };
        match self.hub.moderate(&actor, action).await {
            Ok(out) => self.push(
                ServerFrame::Ok {
                    rf,
                    id: out.id.as_deref(),
                    seq: out.seq,
                    held: None,
                }
                .encode(),
            ),
            Err(e) => self.hub_error(rf, &e),
        }
        None
    }

    async fn on_hello(&mut self, rf: Option<&Ref>, frame: ClientFrame) -> Option<End> {
        let ClientFrame::Hello(hello) = frame else {
            self.error(
                rf,
                ErrorCode::BadRequest,
                "Say hello first: the first frame on a connection must be \"hello\".",
            );
            return None;
        };
        let welcome = if let Some(token) = hello.auth.as_deref() {
            let staff = match self.hub.verify_staff(token).await {
                Ok(s) => s,
                Err(why) => {
                    self.error(rf, ErrorCode::Unauthorized, &why);
                    return Some(End::Close(close::UNAUTHORIZED, "staff sign-in refused"));
                }
            };
            self.hub.hello_staff(self.outbox.clone(), staff).await
        } else {
            match self
                .hub
                .hello(self.outbox.clone(), hello.resume.as_deref(), self.addr_tag)
                .await
            {
                Ok(w) => w,
                Err(e) => {
                    self.hub_error(rf, &e);
                    return None;
                }
            }
        };
        let cfg = self.hub.config();
        let frame = ServerFrame::Welcome {
            rf,
            session: &welcome.token,
            you: &welcome.conn.member,
            resumed: welcome.resumed,
            rooms: self.hub.room_list().await,
            joined: welcome.joined,
            limits: Limits {
                max_text_chars: cfg.limits.max_text_chars,
                messages_per_10s: cfg.rate_limits.identity_messages_per_10s,
            },
            server: ServerInfo {
                version: env!("CARGO_PKG_VERSION"),
                node: self.hub.node().to_string(),
            },
        }
        .encode();
        self.push(frame);
        // Staff who sign in learn at once what is waiting for them.
        for f in self.hub.escalation_queue(&welcome.conn.member, None) {
            let _ = self.outbox.push(f);
        }
        for f in self
            .hub
            .care_invites(&welcome.conn.member, welcome.conn.key)
        {
            let _ = self.outbox.push(f);
        }
        let mut conn = welcome.conn;
        // For support resources in the person's language; a locale tag is
        // short, anything longer is not one.
        conn.locale = hello
            .locale
            .as_deref()
            .filter(|l| !l.is_empty() && l.len() <= 35)
            .map(Arc::from);
        self.conn = Some(conn);
        None
    }
}
