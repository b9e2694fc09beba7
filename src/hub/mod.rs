//! The hub: identities, rooms, membership, presence and the send pipeline.
//! The only place room state changes.
//!
//! Sessions call it with decoded frames; it answers with results and pushes
//! room traffic into connections' bounded outboxes. It asks `safety` for
//! limits and verdicts and hands messages to the `fanout` backend, which
//! numbers and stores them and delivers them back through `RoomTable`.
//! It never touches a socket and never awaits one.

mod pseudonym;
pub(crate) mod rooms;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use base64::Engine;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fanout::memory::MemoryFanout;
use crate::fanout::{Backend, Draft, Fanout, FanoutError};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Member, Ref, Role, RoomInfo, ServerFrame, Since};
use crate::safety::{self, Limited, Limiters, TextError, Verdict};
use crate::session::outbox::{CloseReason, Outbox};
use rooms::{Attach, RoomMember, RoomTable};

/// Why the hub refused a request. Each maps to a contract error code and a
/// sentence a person can read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HubError {
    #[error("no such room")]
    NoSuchRoom,
    #[error("room is full")]
    RoomFull,
    #[error("not a member of the room")]
    NotJoined,
    #[error("empty message")]
    Empty,
    #[error("message too long: {chars} > {max}")]
    TooLarge { chars: usize, max: usize },
    #[error("rate limited ({scope})")]
    RateLimited {
        scope: &'static str,
        retry_after_ms: u64,
    },
    #[error("blocked: {0}")]
    Blocked(&'static str),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl HubError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HubError::NoSuchRoom => ErrorCode::NoSuchRoom,
            HubError::RoomFull => ErrorCode::RoomFull,
            HubError::NotJoined => ErrorCode::NotJoined,
            HubError::Empty => ErrorCode::Empty,
            HubError::TooLarge { .. } => ErrorCode::TooLarge,
            HubError::RateLimited { .. } => ErrorCode::RateLimited,
            HubError::Blocked(_) => ErrorCode::Blocked,
            HubError::BadRequest(_) => ErrorCode::BadRequest,
            HubError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// The sentence shown to the person.
    pub fn sentence(&self) -> String {
        match self {
            HubError::TooLarge { chars, max } => format!(
                "That message is too long ({chars} characters; the limit is {max}). Please shorten it and send again."
            ),
            HubError::RateLimited { retry_after_ms, .. } => format!(
                "Slow down a little — you can send again in {} s.",
                retry_after_ms.div_ceil(1000).max(1)
            ),
            HubError::Blocked(why) => (*why).to_string(),
            HubError::BadRequest(why) => (*why).to_string(),
            other => other.code().sentence().to_string(),
        }
    }

    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            HubError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }
}

impl From<FanoutError> for HubError {
    fn from(e: FanoutError) -> Self {
        HubError::Unavailable(e.to_string())
    }
}

/// A connection as the hub knows it after `hello`.
#[derive(Clone)]
pub struct Conn {
    pub id: u64,
    /// The identity's internal number (never sent to clients).
    pub key: u64,
    pub member: Member,
    pub outbox: Arc<Outbox>,
}

/// What `hello` returns for the `welcome` frame.
pub struct Hello {
    pub conn: Conn,
    pub token: String,
    pub resumed: bool,
    /// Rooms the resumed identity is still a member of.
    pub joined: Vec<String>,
}

/// A peer's report, kept for staff. Holds the message id, never its text.
#[derive(Debug, Clone, Serialize)]
pub struct StoredReport {
    pub id: String,
    pub room: String,
    pub message: String,
    pub reason: String,
    pub reporter: String,
    pub ts: u64,
}

/// A successful `send`.
#[derive(Debug, PartialEq)]
pub struct Sent {
    pub id: String,
    pub seq: Option<u64>,
    pub held: bool,
}

struct Identity {
    member: Member,
    token_hash: [u8; 32],
    /// Rooms this identity belongs to; kept for the whole session TTL so a
    /// resume restores them even after the grace period ended.
    rooms: Vec<u32>,
    /// The live connection, if any, and its outbox (to close it on takeover).
    conn: Option<(u64, Arc<Outbox>)>,
    /// When the last connection ended (for the TTL).
    detached_at: Option<Instant>,
}

#[derive(Default)]
struct SessionTable {
    by_key: HashMap<u64, Identity>,
    by_token: HashMap<[u8; 32], u64>,
    ids: HashSet<String>,
}

/// A clone-cheap handle to the hub.
#[derive(Clone)]
pub struct HubHandle {
    inner: Arc<HubInner>,
}

struct HubInner {
    cfg: Arc<Config>,
    node: String,
    rooms: Arc<RoomTable>,
    backend: Backend,
    // parking_lot: held for map lookups and edits only, never across
    // `.await`, and never while a room lock is held.
    sessions: Mutex<SessionTable>,
    limiters: Limiters,
    // parking_lot: a bounded queue, pushed to and read briefly.
    reports: Mutex<VecDeque<StoredReport>>,
    metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn limited(scope: &'static str, l: Limited) -> HubError {
    HubError::RateLimited {
        scope,
        retry_after_ms: l.retry_after_ms(),
    }
}

impl HubHandle {
    pub fn new(cfg: Arc<Config>, metrics: Arc<Metrics>, shutdown: CancellationToken) -> HubHandle {
        let node = if cfg.server.node_id.is_empty() {
            pseudonym::random_id("hub-", 6)
        } else {
            cfg.server.node_id.clone()
        };
        let rooms = Arc::new(RoomTable::new(
            &cfg.rooms,
            metrics.clone(),
            cfg.websocket.outbound_queue,
        ));
        let backend = Backend::Memory(MemoryFanout::new(
            cfg.rooms.len(),
            cfg.history.max,
            Duration::from_secs(cfg.history.ttl_secs),
            rooms.clone(),
        ));
        HubHandle {
            inner: Arc::new(HubInner {
                limiters: Limiters::new(&cfg.rate_limits),
                node,
                rooms,
                backend,
                sessions: Mutex::new(SessionTable::default()),
                reports: Mutex::new(VecDeque::new()),
                metrics,
                next_conn: AtomicU64::new(1),
                shutdown,
                cfg,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn limiters(&self) -> &Limiters {
        &self.inner.limiters
    }

    pub fn next_conn_id(&self) -> u64 {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The public room list (welcome, `/api/rooms`).
    pub fn room_list(&self) -> Vec<RoomInfo> {
        self.inner
            .rooms
            .rooms
            .iter()
            .map(|r| RoomInfo {
                id: r.cfg.id.clone(),
                title: r.cfg.title.clone(),
                description: r.cfg.description.clone(),
                members: r.state.lock().members.len(),
                capacity: r.cfg.capacity,
                locked: false,
            })
            .collect()
    }

    pub fn room_count(&self) -> usize {
        self.inner.rooms.rooms.len()
    }

    /// Reports waiting for staff, newest last.
    pub fn reports(&self) -> Vec<StoredReport> {
        self.inner.reports.lock().iter().cloned().collect()
    }

    /// Handles `hello`: resumes the identity behind `resume` when it is live,
    /// else mints a fresh one.
    pub fn hello(&self, outbox: Arc<Outbox>, resume: Option<&str>) -> Result<Hello, HubError> {
        let conn_id = self.next_conn_id();
        let h = &self.inner;
        if let Some(token) = resume {
            let hash = hash_token(token);
            let found = {
                let mut s = h.sessions.lock();
                let ttl = Duration::from_secs(h.cfg.sessions.resume_ttl_secs);
                match s.by_token.get(&hash).copied() {
                    Some(key) => s.by_key.get_mut(&key).and_then(|ident| {
                        let expired = ident.detached_at.is_some_and(|at| at.elapsed() > ttl);
                        if expired {
                            return None;
                        }
                        let previous = ident.conn.replace((conn_id, outbox.clone()));
                        ident.detached_at = None;
                        Some((key, ident.member.clone(), ident.rooms.clone(), previous))
                    }),
                    None => None,
                }
            };
            if let Some((key, member, rooms, previous)) = found {
                let conn = Conn {
                    id: conn_id,
                    key,
                    member,
                    outbox,
                };
                if let Some((_, prev)) = previous {
                    prev.close(CloseReason {
                        code: protocol::close::NORMAL,
                        reason: "this session was resumed on another connection",
                    });
                }
                let joined = self.reattach(&conn, &rooms);
                return Ok(Hello {
                    conn,
                    token: token.to_string(),
                    resumed: true,
                    joined,
                });
            }
        }
        let token = {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let mut s = h.sessions.lock();
        if s.by_key.len() >= h.cfg.sessions.max_sessions {
            return Err(HubError::Unavailable("session table full".into()));
        }
        let key = loop {
            let k: u64 = rand::random();
            if !s.by_key.contains_key(&k) {
                break k;
            }
        };
        let id = loop {
            let id = pseudonym::random_id("p_", 6);
            if !s.ids.contains(&id) {
                break id;
            }
        };
        let member = Member {
            id: id.clone(),
            name: pseudonym::pseudonym(),
            role: Role::Peer,
        };
        let token_hash = hash_token(&token);
        s.ids.insert(id);
        s.by_token.insert(token_hash, key);
        s.by_key.insert(
            key,
            Identity {
                member: member.clone(),
                token_hash,
                rooms: Vec::new(),
                conn: Some((conn_id, outbox.clone())),
                detached_at: None,
            },
        );
        drop(s);
        Metrics::gauge(&h.metrics.sessions, 1);
        Ok(Hello {
            conn: Conn {
                id: conn_id,
                key,
                member,
                outbox,
            },
            token,
            resumed: false,
            joined: Vec::new(),
        })
    }

    /// Puts a resumed identity back in its rooms, paused until it re-joins.
    /// Rooms it can no longer enter (full) are dropped from its list.
    fn reattach(&self, conn: &Conn, rooms: &[u32]) -> Vec<String> {
        let mut kept = Vec::new();
        for idx in rooms {
            let Some(room) = self.inner.rooms.by_idx(*idx) else {
                continue;
            };
            let mut st = room.state.lock();
            let ok = if let Some(m) = st.members.get_mut(&conn.key) {
                m.attach = Attach::Paused { conn: conn.id };
                true
            } else if st.members.len() < room.cfg.capacity {
                st.members.insert(
                    conn.key,
                    RoomMember {
                        member: conn.member.clone(),
                        attach: Attach::Paused { conn: conn.id },
                    },
                );
                Metrics::gauge(&self.inner.metrics.members, 1);
                self.inner
                    .rooms
                    .presence(&st, &room.cfg.id, Some(&conn.member), None, conn.key);
                true
            } else {
                false
            };
            drop(st);
            if ok {
                kept.push(room.cfg.id.clone());
            }
        }
        if kept.len() != rooms.len() {
            let mut s = self.inner.sessions.lock();
            if let Some(ident) = s.by_key.get_mut(&conn.key) {
                ident.rooms.retain(|i| {
                    self.inner
                        .rooms
                        .by_idx(*i)
                        .is_some_and(|r| kept.contains(&r.cfg.id))
                });
            }
        }
        kept
    }

    /// Handles `join`. Queues the `joined` reply (with history) itself, so
    /// that no live message can overtake it or be lost between the two.
    pub async fn join(
        &self,
        conn: &Conn,
        rf: Option<&Ref>,
        room_id: &str,
        since: Option<&Since>,
    ) -> Result<(), HubError> {
        let h = &self.inner;
        let room = h.rooms.get(room_id).ok_or(HubError::NoSuchRoom)?;
        {
            let mut st = room.state.lock();
            let pending = Attach::Pending {
                conn: conn.id,
                outbox: conn.outbox.clone(),
                held: Vec::new(),
            };
            if let Some(m) = st.members.get_mut(&conn.key) {
                m.attach = pending;
            } else {
                if st.members.len() >= room.cfg.capacity {
                    return Err(HubError::RoomFull);
                }
                st.members.insert(
                    conn.key,
                    RoomMember {
                        member: conn.member.clone(),
                        attach: pending,
                    },
                );
                Metrics::gauge(&h.metrics.members, 1);
                h.rooms
                    .presence(&st, room_id, Some(&conn.member), None, conn.key);
            }
        }
        {
            let mut s = h.sessions.lock();
            if let Some(ident) = s.by_key.get_mut(&conn.key) {
                if !ident.rooms.contains(&room.idx) {
                    ident.rooms.push(room.idx);
                }
            }
        }
        let slice = match h
            .backend
            .history(room.idx, since, h.cfg.history.on_join)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // Leave the member in place but stop holding frames for it.
                let mut st = room.state.lock();
                if let Some(m) = st.members.get_mut(&conn.key) {
                    m.attach = Attach::Paused { conn: conn.id };
                }
                return Err(e.into());
            }
        };
        let mut st = room.state.lock();
        let members: Vec<Member> = st.members.values().map(|m| m.member.clone()).collect();
        let Some(me) = st.members.get_mut(&conn.key) else {
            return Err(HubError::NotJoined);
        };
        let held = match std::mem::replace(
            &mut me.attach,
            Attach::Live {
                conn: conn.id,
                outbox: conn.outbox.clone(),
            },
        ) {
            Attach::Pending { held, .. } => held,
            _ => Vec::new(),
        };
        let history: Vec<&RawValue> = slice
            .items
            .iter()
            .filter_map(|f| serde_json::from_str(f.as_str()).ok())
            .collect();
        let joined = ServerFrame::Joined {
            rf,
            room: room_id,
            epoch: &slice.epoch,
            seq: slice.seq,
            guidelines: &room.cfg.guidelines,
            members,
            staff_watching: 0,
            history,
            gap: slice.gap,
        }
        .encode();
        h.rooms.push(&conn.outbox, joined.into());
        for (seq, frame) in held {
            if seq > slice.seq {
                h.rooms.push(&conn.outbox, frame);
            }
        }
        Ok(())
    }

    /// Handles `leave`. Leaving a room one is not in succeeds (idempotent).
    pub fn leave(&self, conn: &Conn, room_id: &str) -> Result<(), HubError> {
        let h = &self.inner;
        let room = h.rooms.get(room_id).ok_or(HubError::NoSuchRoom)?;
        {
            let mut s = h.sessions.lock();
            if let Some(ident) = s.by_key.get_mut(&conn.key) {
                ident.rooms.retain(|i| *i != room.idx);
            }
        }
        let mut st = room.state.lock();
        if st.members.remove(&conn.key).is_some() {
            Metrics::gauge(&h.metrics.members, -1);
            h.rooms
                .presence(&st, room_id, None, Some(&conn.member.id), conn.key);
        }
        Ok(())
    }

    fn require_member(&self, conn: &Conn, room_id: &str) -> Result<&rooms::Room, HubError> {
        self.member_room(conn, room_id, false)
    }

    /// The room, if this connection's identity is a member of it. With
    /// `go_live`, a resumed member that has not re-joined yet starts
    /// receiving the room's messages from now on (its own included): a send
    /// shows it wants the room live again, and what it missed before stays
    /// available through `join` with `since`.
    fn member_room(
        &self,
        conn: &Conn,
        room_id: &str,
        go_live: bool,
    ) -> Result<&rooms::Room, HubError> {
        let room = self.inner.rooms.get(room_id).ok_or(HubError::NoSuchRoom)?;
        let mut st = room.state.lock();
        match st.members.get_mut(&conn.key) {
            Some(m) if m.attach.conn() == conn.id => {
                if go_live && matches!(m.attach, Attach::Paused { .. }) {
                    m.attach = Attach::Live {
                        conn: conn.id,
                        outbox: conn.outbox.clone(),
                    };
                }
                Ok(room)
            }
            _ => Err(HubError::NotJoined),
        }
    }

    /// Handles `send`: checks, limits, verdict, publish.
    pub async fn send(&self, conn: &Conn, room_id: &str, raw: &str) -> Result<Sent, HubError> {
        let started = Instant::now();
        let h = &self.inner;
        let room = self.member_room(conn, room_id, true)?;
        let text = safety::prepare_text(raw, h.cfg.limits.max_text_chars).map_err(|e| match e {
            TextError::Empty => HubError::Empty,
            TextError::TooLarge { chars, max } => HubError::TooLarge { chars, max },
        })?;
        if let Err(l) = h.limiters.identity_message(conn.key) {
            Metrics::inc(&h.metrics.rate_limited_identity);
            return Err(limited("identity", l));
        }
        if let Err(l) = h.limiters.room_message(room.idx) {
            Metrics::inc(&h.metrics.rate_limited_room);
            return Err(limited("room", l));
        }
        let id = pseudonym::random_id("m_", 12);
        match safety::judge(room_id, &text) {
            Verdict::Deliver => {}
            Verdict::Block(why) => return Err(HubError::Blocked(why)),
            Verdict::Hold => {
                return Ok(Sent {
                    id,
                    seq: None,
                    held: true,
                })
            }
        }
        let draft = Draft {
            id: &id,
            ts: now_ms(),
            from: &conn.member,
            text: &text,
        };
        let seq = h.backend.publish(room.idx, room_id, draft).await?;
        Metrics::inc(&h.metrics.messages_in);
        h.metrics.observe_fanout(started.elapsed());
        Ok(Sent {
            id,
            seq: Some(seq),
            held: false,
        })
    }

    /// Handles `typing`: shown to the room's other live members, best effort.
    /// `permit` is the caller's rate limit, asked only for a valid request;
    /// a refusal drops the indicator silently.
    pub fn typing(
        &self,
        conn: &Conn,
        room_id: &str,
        permit: impl FnOnce() -> bool,
    ) -> Result<(), HubError> {
        let room = self.require_member(conn, room_id)?;
        if !permit() {
            return Ok(());
        }
        let frame: Utf8Bytes = ServerFrame::Typing {
            room: room_id,
            from: &conn.member,
        }
        .encode()
        .into();
        let st = room.state.lock();
        for (key, m) in &st.members {
            if *key == conn.key {
                continue;
            }
            if let Attach::Live { outbox, .. } = &m.attach {
                outbox.push_lossy(frame.clone());
            }
        }
        Ok(())
    }

    /// Handles `report`: kept for staff; the author is never told. Only
    /// members may report, reports share the identity's message limit (so
    /// one person cannot flush the queue), and a repeated report of the same
    /// message by the same person is kept once.
    pub fn report(
        &self,
        conn: &Conn,
        room_id: &str,
        message: &str,
        reason: Option<&str>,
    ) -> Result<(), HubError> {
        let h = &self.inner;
        if message.is_empty() || message.chars().count() > 64 {
            return Err(HubError::BadRequest(
                "\"message\" must be the id of the message you are reporting.",
            ));
        }
        self.require_member(conn, room_id)?;
        {
            let q = h.reports.lock();
            let dup = q
                .iter()
                .any(|r| r.reporter == conn.member.id && r.message == message && r.room == room_id);
            if dup {
                return Ok(());
            }
        }
        if let Err(l) = h.limiters.identity_message(conn.key) {
            Metrics::inc(&h.metrics.rate_limited_identity);
            return Err(limited("identity", l));
        }
        let reason: String = reason
            .map(protocol::normalise_text)
            .unwrap_or_default()
            .trim()
            .chars()
            .take(h.cfg.limits.max_report_reason_chars)
            .collect();
        let report = StoredReport {
            id: pseudonym::random_id("r_", 12),
            room: room_id.to_string(),
            message: message.to_string(),
            reason: if reason.is_empty() {
                "unspecified".into()
            } else {
                reason
            },
            reporter: conn.member.id.clone(),
            ts: now_ms(),
        };
        let mut q = h.reports.lock();
        if q.len() >= h.cfg.limits.max_reports_stored {
            q.pop_front();
        }
        q.push_back(report);
        drop(q);
        Metrics::inc(&h.metrics.reports);
        Ok(())
    }

    /// A connection ended. Its identity stays in its rooms for the resume
    /// grace period, then leaves them (unless it resumed meanwhile).
    pub fn disconnect(&self, conn: &Conn) {
        let h = &self.inner;
        let rooms = {
            let mut s = h.sessions.lock();
            match s.by_key.get_mut(&conn.key) {
                Some(ident) if ident.conn.as_ref().is_some_and(|(id, _)| *id == conn.id) => {
                    ident.conn = None;
                    ident.detached_at = Some(Instant::now());
                    ident.rooms.clone()
                }
                // Already taken over by a newer connection: nothing is ours.
                _ => return,
            }
        };
        for idx in &rooms {
            if let Some(room) = h.rooms.by_idx(*idx) {
                let mut st = room.state.lock();
                if let Some(m) = st.members.get_mut(&conn.key) {
                    if m.attach.conn() == conn.id {
                        m.attach = Attach::Detached { conn: conn.id };
                    }
                }
            }
        }
        if rooms.is_empty() {
            return;
        }
        let hub = self.clone();
        let conn_id = conn.id;
        let key = conn.key;
        let member_id = conn.member.id.clone();
        let grace = Duration::from_secs(h.cfg.sessions.resume_grace_secs);
        let shutdown = h.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => hub.expire_grace(key, conn_id, &member_id),
                _ = shutdown.cancelled() => {}
            }
        });
    }

    /// The grace period of a dropped connection ended: leave its rooms if it
    /// is still detached from that same connection.
    fn expire_grace(&self, key: u64, conn_id: u64, member_id: &str) {
        let h = &self.inner;
        for room in &h.rooms.rooms {
            let mut st = room.state.lock();
            let gone = matches!(
                st.members.get(&key).map(|m| &m.attach),
                Some(Attach::Detached { conn }) if *conn == conn_id
            );
            if gone {
                st.members.remove(&key);
                Metrics::gauge(&h.metrics.members, -1);
                h.rooms
                    .presence(&st, &room.cfg.id, None, Some(member_id), key);
            }
        }
    }

    /// Periodic upkeep: expire sessions past their TTL, expired history and
    /// recovered rate-limit keys. Runs until shutdown.
    pub async fn run_maintenance(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            self.expire_sessions();
            let Backend::Memory(m) = &self.inner.backend;
            m.expire();
            self.inner.limiters.housekeeping();
        }
    }

    fn expire_sessions(&self) {
        let h = &self.inner;
        let ttl = Duration::from_secs(h.cfg.sessions.resume_ttl_secs);
        let mut s = h.sessions.lock();
        let expired: Vec<u64> = s
            .by_key
            .iter()
            .filter(|(_, i)| i.conn.is_none() && i.detached_at.is_some_and(|t| t.elapsed() > ttl))
            .map(|(k, _)| *k)
            .collect();
        for key in &expired {
            if let Some(ident) = s.by_key.remove(key) {
                s.by_token.remove(&ident.token_hash);
                s.ids.remove(&ident.member.id);
            }
        }
        drop(s);
        Metrics::gauge(&h.metrics.sessions, -(expired.len() as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> HubHandle {
        let cfg = Config::parse(crate::config::DEFAULT_TOML).expect("config");
        HubHandle::new(
            Arc::new(cfg),
            Arc::new(Metrics::default()),
            CancellationToken::new(),
        )
    }

    fn drain(o: &Outbox) -> Vec<serde_json::Value> {
        let mut buf = VecDeque::new();
        o.drain_into(&mut buf);
        buf.iter()
            .map(|f| serde_json::from_str(f.as_str()).expect("json"))
            .collect()
    }

    #[tokio::test]
    async fn messages_reach_members_in_seq_order() {
        let hub = hub();
        let a = hub
            .hello(Arc::new(Outbox::new(64)), None)
            .expect("hello")
            .conn;
        let b = hub
            .hello(Arc::new(Outbox::new(64)), None)
            .expect("hello")
            .conn;
        hub.join(&a, None, "anxiety", None).await.expect("join");
        hub.join(&b, None, "anxiety", None).await.expect("join");
        for t in ["one", "two"] {
            hub.send(&a, "anxiety", t).await.expect("send");
        }
        let got = drain(&b.outbox);
        assert_eq!(got[0]["type"], "joined");
        assert_eq!(got[1]["type"], "message");
        assert_eq!(got[1]["seq"], 1);
        assert_eq!(got[2]["seq"], 2);
        let got_a = drain(&a.outbox);
        let kinds: Vec<_> = got_a.iter().map(|v| v["type"].clone()).collect();
        assert_eq!(kinds, ["joined", "presence", "message", "message"]);
    }

    #[tokio::test]
    async fn errors_for_bad_sends() {
        let hub = hub();
        let a = hub
            .hello(Arc::new(Outbox::new(64)), None)
            .expect("hello")
            .conn;
        assert_eq!(hub.send(&a, "nope", "x").await, Err(HubError::NoSuchRoom));
        assert_eq!(hub.send(&a, "anxiety", "x").await, Err(HubError::NotJoined));
        hub.join(&a, None, "anxiety", None).await.expect("join");
        assert_eq!(hub.send(&a, "anxiety", "  ").await, Err(HubError::Empty));
        let long = "x".repeat(2001);
        assert!(matches!(
            hub.send(&a, "anxiety", &long).await,
            Err(HubError::TooLarge {
                chars: 2001,
                max: 2000
            })
        ));
        for _ in 0..5 {
            hub.send(&a, "anxiety", "hi").await.expect("within limit");
        }
        let e = hub.send(&a, "anxiety", "hi").await.expect_err("limited");
        assert!(matches!(e, HubError::RateLimited { .. }));
        assert!(e.retry_after_ms().is_some_and(|ms| ms > 0));
    }

    #[tokio::test]
    async fn reports_are_kept_for_staff_without_message_text() {
        let hub = hub();
        let a = hub
            .hello(Arc::new(Outbox::new(64)), None)
            .expect("hello")
            .conn;
        let b = hub
            .hello(Arc::new(Outbox::new(64)), None)
            .expect("hello")
            .conn;
        assert_eq!(
            hub.report(&b, "anxiety", "m_x", Some("unkind")),
            Err(HubError::NotJoined)
        );
        hub.join(&a, None, "anxiety", None).await.expect("join");
        hub.join(&b, None, "anxiety", None).await.expect("join");
        let sent = hub.send(&a, "anxiety", "secret words").await.expect("send");
        hub.report(&b, "anxiety", &sent.id, Some("unkind"))
            .expect("report");
        hub.report(&b, "anxiety", &sent.id, None)
            .expect("repeat is ok");
        let reports = hub.reports();
        assert_eq!(reports.len(), 1, "a repeated report is kept once");
        let r = &reports[0];
        assert_eq!(
            (r.room.as_str(), r.message.as_str()),
            ("anxiety", sent.id.as_str())
        );
        assert_eq!(
            (r.reason.as_str(), r.reporter.as_str()),
            ("unkind", b.member.id.as_str())
        );
        let stored = serde_json::to_string(r).expect("json");
        assert!(!stored.contains("secret"), "{stored}");
    }

    #[tokio::test]
    async fn resume_restores_identity_and_rooms() {
        let hub = hub();
        let first = hub.hello(Arc::new(Outbox::new(64)), None).expect("hello");
        hub.join(&first.conn, None, "bereavement", None)
            .await
            .expect("join");
        hub.disconnect(&first.conn);
        let again = hub
            .hello(Arc::new(Outbox::new(64)), Some(&first.token))
            .expect("resume");
        assert!(again.resumed);
        assert_eq!(again.conn.member, first.conn.member);
        assert_eq!(again.joined, ["bereavement"]);
        let fresh = hub
            .hello(Arc::new(Outbox::new(64)), Some("not-a-token"))
            .expect("fresh");
        assert!(!fresh.resumed);
        assert_ne!(fresh.conn.member.id, first.conn.member.id);
    }
}
