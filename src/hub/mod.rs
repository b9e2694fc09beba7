//! The hub: identities, rooms, membership, presence and the send pipeline.
//! The only place room state changes.
//!
//! Sessions call it with decoded frames; it answers with results and pushes
//! room traffic into connections' bounded outboxes. It asks `safety` for
//! limits and verdicts and hands messages to the `fanout` backend, which
//! numbers and stores them and delivers them back through `RoomTable`.
//! It never touches a socket and never awaits one.

mod care;
mod escalate;
mod moderation;
mod pseudonym;
pub(crate) mod rooms;
mod screening;
mod staff;

pub use escalate::EscalationAction;
pub use moderation::{Action, Actor, Outcome};
pub use staff::{StaffLogin, StaffSession};

use std::collections::{HashMap, VecDeque};
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
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::durable::DurableLog;
use crate::escalation::Escalations;
use crate::fanout::memory::MemoryFanout;
use crate::fanout::redis::{JoinOutcome, RedisFanout, SessionRecord};
use crate::fanout::{Backend, Control, Draft, EventKind, Fanout, FanoutError};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Member, Ref, Role, RoomInfo, ServerFrame, Since};
use crate::safety::classifier::Classifier;
use crate::safety::context::{RiskMemory, RiskMemoryConfig};
use crate::safety::{self, Limited, Limiters, TextError, Verdict};
use crate::session::outbox::{CloseReason, Outbox};
use crate::staff::token::StaffSecret;
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
    #[error("staff only")]
    Forbidden,
    #[error("muted until {until}")]
    Muted { until: u64 },
    #[error("banned until {until}")]
    Banned { until: u64 },
    #[error("room locked")]
    RoomLocked,
    #[error("slow mode")]
    SlowMode { retry_after_ms: u64 },
    #[error("no such escalation")]
    NoSuchEscalation(String),
    #[error("escalation already resolved")]
    EscalationResolved(String),
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
            HubError::Forbidden => ErrorCode::Forbidden,
            HubError::Muted { .. } => ErrorCode::Muted,
            HubError::Banned { .. } => ErrorCode::Banned,
            HubError::RoomLocked => ErrorCode::RoomLocked,
            HubError::SlowMode { .. } => ErrorCode::SlowMode,
            HubError::NoSuchEscalation(_) | HubError::EscalationResolved(_) => {
                ErrorCode::BadRequest
            }
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
            HubError::SlowMode { retry_after_ms } => format!(
                "This room is in slow mode; you can send again in {} s.",
                retry_after_ms.div_ceil(1000).max(1)
            ),
            HubError::Blocked(why) => (*why).to_string(),
            HubError::BadRequest(why) => (*why).to_string(),
            HubError::NoSuchEscalation(id) => format!(
                "There is no escalation {:?} (it may have been removed after its retention period).",
                id.chars().take(40).collect::<String>()
            ),
            HubError::EscalationResolved(id) => format!(
                "Escalation {:?} is already resolved.",
                id.chars().take(40).collect::<String>()
            ),
            other => other.code().sentence().to_string(),
        }
    }

    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            HubError::RateLimited { retry_after_ms, .. }
            | HubError::SlowMode { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// When a mute or ban ends (ms since the Unix epoch).
    pub fn until(&self) -> Option<u64> {
        match self {
            HubError::Muted { until } | HubError::Banned { until } => Some(*until),
            _ => None,
        }
    }
}

/// Why a hub could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Fanout(#[from] FanoutError),
    #[error("{0}")]
    Staff(String),
    #[error("the safety rules (config/safety) are not usable: {0}")]
    Safety(String),
    #[error("the data directory cannot keep safety data durably: {0}")]
    Data(#[from] crate::durable::DurableError),
    #[error("escalations cannot start: {0}")]
    Escalation(String),
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
    /// A keyed hash of the connection's source address (never the address
    /// itself): lets a ban make the address's new connections slower.
    pub addr_tag: u64,
    /// Set for a staff member: what its token allows, until when.
    pub staff: Option<Arc<StaffSession>>,
    /// `hello.locale`, for support resources in the person's language.
    pub locale: Option<Arc<str>>,
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
    /// Rooms (by index) where staff muted it, until when (ms).
    mutes: HashMap<u32, u64>,
    /// Banned until (ms); 0 = not banned.
    banned_until: u64,
    /// The address tag of its latest connection.
    addr_tag: u64,
    /// Staff only: the token its connection signed in with.
    staff: Option<Arc<StaffSession>>,
}

#[derive(Default)]
struct SessionTable {
    by_key: HashMap<u64, Identity>,
    by_token: HashMap<[u8; 32], u64>,
    /// Peer id → identity key.
    ids: HashMap<String, u64>,
}

/// Receives cluster control messages for the hub without keeping it alive.
struct ControlHandler(std::sync::Weak<HubInner>);

impl Control for ControlHandler {
    fn taken_over(&self, member_id: &str) {
        if let Some(inner) = self.0.upgrade() {
            HubHandle { inner }.taken_over(member_id);
        }
    }

    fn revoked(&self, jti: &str, exp: u64) {
        if let Some(inner) = self.0.upgrade() {
            HubHandle { inner }.revoked_elsewhere(jti, exp);
        }
    }

    fn muted(&self, peer: &str, room: &str, until: u64) {
        if let Some(inner) = self.0.upgrade() {
            HubHandle { inner }.local_mute(peer, room, until);
        }
    }

    fn kicked(&self, peer: &str, room: &str) {
        if let Some(inner) = self.0.upgrade() {
            HubHandle { inner }.local_kick(peer, room);
        }
    }

    fn probation(&self, tag: u64, until: u64) {
        if let Some(inner) = self.0.upgrade() {
            let left = Duration::from_millis(until.saturating_sub(now_ms()));
            inner.limiters.put_on_probation(tag, left);
        }
    }

    fn address_key(&self, key: [u8; 32]) {
        if let Some(inner) = self.0.upgrade() {
            inner.limiters.set_address_key(key);
        }
    }

    fn banned(&self, peer: &str, until: u64) {
        if let Some(inner) = self.0.upgrade() {
            let hub = HubHandle { inner };
            let peer = peer.to_string();
            tokio::spawn(async move { hub.local_ban(&peer, until).await });
        }
    }
}

/// The identity's internal number, the same on every node.
fn key_of(token_hash: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&token_hash[..8]);
    u64::from_le_bytes(b)
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
    /// Messages held for staff review, by message id.
    held: moderation::HeldStore,
    /// The audit log (embedded mode; cluster mode keeps it in Redis).
    audit: Option<DurableLog>,
    /// Signs and verifies staff tokens; `None` = staff sign-in refused.
    staff_secret: Option<StaffSecret>,
    /// The crisis classifier and policy filters (rules from config/safety).
    classifier: Classifier,
    /// Durable escalation records, their hooks and deadlines.
    escalations: Arc<Escalations>,
    // parking_lot: one observe per screened message, never across `.await`.
    risk: Mutex<RiskMemory>,
    // parking_lot: revoked token ids and their expiry (s), looked up and
    // changed briefly, never across `.await`.
    revoked: Mutex<HashMap<String, u64>>,
    /// Where revocations are kept in embedded mode.
    revocations: Option<DurableLog>,
    metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
}

fn cfg_retention_secs(cfg: &Config) -> u64 {
    cfg.escalation.retention_days.saturating_mul(86_400)
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
    /// Builds the hub and its fan-out backend (Redis when `redis_url` is
    /// set). Nothing connects yet: `spawn_background` starts that.
    pub fn new(
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<HubHandle, StartError> {
        // Care-room slots are rooms too (never listed, joined by
        // invitation).
        let cfg = Arc::new(cfg.with_care_rooms());
        let staff_secret = match cfg.staff_secret.as_deref() {
            None => None,
            Some(s) => Some(StaffSecret::new(s).map_err(|e| StartError::Staff(e.to_string()))?),
        };
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
        let backend = if cfg.server.redis_url.is_empty() {
            Backend::Memory(MemoryFanout::new(
                cfg.rooms.len(),
                cfg.history.max,
                Duration::from_secs(cfg.history.ttl_secs),
                rooms.clone(),
            ))
        } else {
            Backend::Redis(RedisFanout::new(
                &cfg,
                &node,
                rooms.clone(),
                metrics.clone(),
            )?)
        };
        // Embedded mode keeps safety data in fsync'd files; cluster mode in
        // Redis. A node that cannot keep them durable does not start.
        let (audit, revocations, revoked) = if matches!(backend, Backend::Memory(_)) {
            let dir = &cfg.server.data_dir;
            let audit = DurableLog::open(dir, "audit.log").map_err(StartError::Data)?;
            let revocations = DurableLog::open(dir, "revoked.log").map_err(StartError::Data)?;
            let now = now_ms() / 1000;
            let revoked: HashMap<String, u64> = revocations
                .read_all()
                .map_err(StartError::Data)?
                .into_iter()
                .filter_map(|r| {
                    let jti = r["jti"].as_str()?.to_string();
                    let exp = r["exp"].as_u64()?;
                    (exp > now).then_some((jti, exp))
                })
                .collect();
            (Some(audit), Some(revocations), revoked)
        } else {
            (None, None, HashMap::new())
        };
        let classifier = Classifier::builtin().map_err(|e| StartError::Safety(e.to_string()))?;
        let hooks = Escalations::hooks_from_config(&cfg.escalation)
            .map_err(|e| StartError::Escalation(e.to_string()))?;
        let escalations = Arc::new(
            Escalations::open(
                cfg.escalation.clone(),
                &cfg.server.data_dir,
                hooks,
                metrics.clone(),
                match &backend {
                    Backend::Redis(r) => Some((r.escalation_log(), cfg.cluster.node_timeout_ms)),
                    Backend::Memory(_) => None,
                },
            )
            .map_err(|e| StartError::Escalation(e.to_string()))?,
        );
        let hub = HubHandle {
            inner: Arc::new(HubInner {
                classifier,
                escalations,
                risk: Mutex::new(RiskMemory::new(RiskMemoryConfig {
                    window_ms: cfg.safety.risk_window_secs.saturating_mul(1000),
                    ..RiskMemoryConfig::default()
                })),
                staff_secret,
                revoked: Mutex::new(revoked),
                revocations,
                limiters: Limiters::new(&cfg.rate_limits),
                node,
                rooms,
                backend,
                sessions: Mutex::new(SessionTable::default()),
                reports: Mutex::new(VecDeque::new()),
                held: Default::default(),
                audit,
                metrics,
                next_conn: AtomicU64::new(1),
                shutdown,
                cfg,
            }),
        };
        if let Backend::Redis(r) = &hub.inner.backend {
            r.set_control(Arc::new(ControlHandler(Arc::downgrade(&hub.inner))));
        }
        hub.inner
            .escalations
            .set_outlet(Arc::new(escalate::HubOutlet(Arc::downgrade(&hub.inner))));
        if let Backend::Memory(m) = &hub.inner.backend {
            // Care rooms keep their history as long as their escalation.
            let ttl = Duration::from_secs(cfg_retention_secs(&hub.inner.cfg));
            for r in hub.inner.rooms.care_slots() {
                m.set_ttl(r.idx, ttl);
            }
        }
        hub.restore_care_rooms();
        Ok(hub)
    }

    /// Starts the hub's background tasks: maintenance, and in cluster mode
    /// the Redis subscriber, dispatcher and health checks.
    pub fn spawn_background(&self, tracker: &TaskTracker) {
        tracker.spawn(self.clone().run_maintenance());
        tracker.spawn(
            self.inner
                .escalations
                .clone()
                .run(self.inner.shutdown.clone()),
        );
        if let Backend::Redis(r) = &self.inner.backend {
            r.spawn(tracker, &self.inner.shutdown);
        }
    }

    /// Cluster mode, i.e. rooms are shared through Redis.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    /// Whether this node can accept peers and their messages (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.inner.backend.is_ready()
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

    /// The public room list (welcome, `/api/rooms`). In cluster mode the
    /// counts span every node; if Redis cannot say, this node's are shown.
    pub async fn room_list(&self) -> Vec<RoomInfo> {
        let counts = match &self.inner.backend {
            Backend::Redis(r) => r.room_counts(self.inner.rooms.listed().count()).await.ok(),
            Backend::Memory(_) => None,
        };
        self.inner
            .rooms
            .rooms
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.cfg.care)
            .map(|(i, r)| {
                let local = {
                    let st = r.state.lock();
                    (st.members.len(), st.locked)
                };
                let (members, locked) = counts
                    .as_ref()
                    .and_then(|c| c.get(i).copied())
                    .unwrap_or(local);
                RoomInfo {
                    id: r.cfg.id.clone(),
                    title: r.cfg.title.clone(),
                    description: r.cfg.description.clone(),
                    members,
                    capacity: r.cfg.capacity,
                    locked,
                }
            })
            .collect()
    }

    pub fn room_count(&self) -> usize {
        self.inner.rooms.listed().count()
    }

    /// Reports waiting for staff, newest last.
    pub fn reports(&self) -> Vec<StoredReport> {
        self.inner.reports.lock().iter().cloned().collect()
    }

    fn redis(&self) -> Option<&RedisFanout> {
        match &self.inner.backend {
            Backend::Redis(r) => Some(r),
            Backend::Memory(_) => None,
        }
    }

    /// Handles `hello`: resumes the identity behind `resume` when it is live
    /// (on this node, or in cluster mode on any node), else mints a fresh one.
    pub async fn hello(
        &self,
        outbox: Arc<Outbox>,
        resume: Option<&str>,
        addr_tag: u64,
    ) -> Result<Hello, HubError> {
        let conn_id = self.next_conn_id();
        if let Some(token) = resume {
            if let Some(h) = self.resume_here(&outbox, conn_id, token, addr_tag) {
                return Ok(self.finish_resume(h).await);
            }
            if let Some(r) = self.redis() {
                let hash = hash_token(token);
                if let Some(record) = r.load_session(&hash).await? {
                    if record.member.role == Role::Peer {
                        let sanctions = r.sanctions(&record.member.id).await?;
                        let h = self.adopt(&outbox, conn_id, token, record, addr_tag);
                        self.apply_sanctions(h.0.key, sanctions);
                        if let Err(e) = r.announce_takeover(&h.0.member.id).await {
                            tracing::warn!(error = %e, "could not tell other nodes about a resume");
                        }
                        return Ok(self.finish_resume(h).await);
                    }
                }
            }
        }
        self.mint(outbox, conn_id, addr_tag).await
    }

    /// `hello` from a staff member whose token the caller verified. Staff
    /// identities are keyed by the token's subject, never by a resume
    /// token (so no peer can resume into one); a second connection takes
    /// the identity over, as a resume does for peers.
    pub async fn hello_staff(&self, outbox: Arc<Outbox>, login: StaffLogin) -> Hello {
        let StaffLogin { member, session } = login;
        let h = &self.inner;
        let conn_id = self.next_conn_id();
        let hash = hash_token(&format!("staff\u{0}{}", member.id));
        let key = key_of(&hash);
        let (rooms, previous, fresh) = {
            let mut s = h.sessions.lock();
            let fresh = !s.by_key.contains_key(&key);
            let ident = s.by_key.entry(key).or_insert_with(|| Identity {
                member: member.clone(),
                token_hash: hash,
                rooms: Vec::new(),
                conn: None,
                detached_at: None,
                mutes: HashMap::new(),
                banned_until: 0,
                addr_tag: 0,
                staff: None,
            });
            // The name or role may have changed with a new token.
            ident.member = member.clone();
            ident.staff = Some(session.clone());
            let previous = ident.conn.replace((conn_id, outbox.clone()));
            ident.detached_at = None;
            let rooms = ident.rooms.clone();
            s.ids.insert(member.id.clone(), key);
            (rooms, previous, fresh)
        };
        if fresh {
            Metrics::gauge(&h.metrics.sessions, 1);
        }
        if let Some((_, prev)) = previous {
            prev.close(CloseReason {
                code: protocol::close::NORMAL,
                reason: "this session was resumed on another connection",
            });
        }
        let conn = Conn {
            id: conn_id,
            key,
            member,
            outbox,
            addr_tag: 0,
            staff: Some(session),
            locale: None,
        };
        let joined = self.reattach(&conn, &rooms).await;
        // Staff sign in with their token every time; this string resumes
        // nothing (it is not mapped to the identity).
        let token = {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        Hello {
            conn,
            token,
            resumed: !fresh,
            joined,
        }
    }

    /// A resume of an identity this node holds. Returns the connection,
    /// the token and its rooms.
    fn resume_here(
        &self,
        outbox: &Arc<Outbox>,
        conn_id: u64,
        token: &str,
        addr_tag: u64,
    ) -> Option<(Conn, String, Vec<u32>)> {
        let h = &self.inner;
        let hash = hash_token(token);
        let ttl = Duration::from_secs(h.cfg.sessions.resume_ttl_secs);
        let (key, member, rooms, previous) = {
            let mut s = h.sessions.lock();
            let key = s.by_token.get(&hash).copied()?;
            let ident = s.by_key.get_mut(&key)?;
            if ident.detached_at.is_some_and(|at| at.elapsed() > ttl) {
                return None;
            }
            let previous = ident.conn.replace((conn_id, outbox.clone()));
            ident.detached_at = None;
            ident.addr_tag = addr_tag;
            (key, ident.member.clone(), ident.rooms.clone(), previous)
        };
        if let Some((_, prev)) = previous {
            prev.close(CloseReason {
                code: protocol::close::NORMAL,
                reason: "this session was resumed on another connection",
            });
        }
        let conn = Conn {
            id: conn_id,
            key,
            member,
            outbox: outbox.clone(),
            addr_tag,
            staff: None,
            locale: None,
        };
        Some((conn, token.to_string(), rooms))
    }

    /// Takes in a session another node (or an earlier life of this one)
    /// stored in Redis.
    fn adopt(
        &self,
        outbox: &Arc<Outbox>,
        conn_id: u64,
        token: &str,
        record: SessionRecord,
        addr_tag: u64,
    ) -> (Conn, String, Vec<u32>) {
        let h = &self.inner;
        let hash = hash_token(token);
        let key = key_of(&hash);
        let rooms: Vec<u32> = record
            .rooms
            .iter()
            .filter_map(|id| h.rooms.get(id).map(|r| r.idx))
            .collect();
        let mut s = h.sessions.lock();
        let fresh = !s.by_key.contains_key(&key);
        s.ids.insert(record.member.id.clone(), key);
        s.by_token.insert(hash, key);
        s.by_key.insert(
            key,
            Identity {
                member: record.member.clone(),
                token_hash: hash,
                rooms: rooms.clone(),
                conn: Some((conn_id, outbox.clone())),
                detached_at: None,
                mutes: HashMap::new(),
                banned_until: 0,
                addr_tag,
                staff: None,
            },
        );
        drop(s);
        if fresh {
            Metrics::gauge(&h.metrics.sessions, 1);
        }
        let conn = Conn {
            id: conn_id,
            key,
            member: record.member,
            outbox: outbox.clone(),
            addr_tag,
            staff: None,
            locale: None,
        };
        (conn, token.to_string(), rooms)
    }

    /// Mutes and a ban stored in Redis, for a session adopted here.
    fn apply_sanctions(&self, key: u64, sanctions: crate::fanout::redis::Sanctions) {
        let h = &self.inner;
        let mut s = h.sessions.lock();
        if let Some(ident) = s.by_key.get_mut(&key) {
            ident.banned_until = sanctions.banned_until;
            for (room, until) in sanctions.mutes {
                if let Some(r) = h.rooms.get(&room) {
                    ident.mutes.insert(r.idx, until);
                }
            }
        }
    }

    async fn finish_resume(&self, (conn, token, rooms): (Conn, String, Vec<u32>)) -> Hello {
        let joined = self.reattach(&conn, &rooms).await;
        Hello {
            conn,
            token,
            resumed: true,
            joined,
        }
    }

    /// A fresh identity: token, pseudonym and (cluster mode) its record.
    async fn mint(
        &self,
        outbox: Arc<Outbox>,
        conn_id: u64,
        addr_tag: u64,
    ) -> Result<Hello, HubError> {
        let h = &self.inner;
        let ttl = Duration::from_secs(h.cfg.sessions.resume_ttl_secs);
        let token = {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let token_hash = hash_token(&token);
        let key = key_of(&token_hash);
        let mut id = String::new();
        for _ in 0..8 {
            let candidate = pseudonym::random_id("p_", 6);
            if h.sessions.lock().ids.contains_key(&candidate) {
                continue;
            }
            let unique = match self.redis() {
                Some(r) => r.reserve_peer_id(&candidate, ttl).await?,
                None => true,
            };
            if unique {
                id = candidate;
                break;
            }
        }
        if id.is_empty() {
            return Err(HubError::Unavailable("no free peer id".into()));
        }
        let member = Member {
            id: id.clone(),
            name: pseudonym::pseudonym(),
            role: Role::Peer,
        };
        if let Some(r) = self.redis() {
            let record = SessionRecord {
                member: member.clone(),
                rooms: Vec::new(),
            };
            r.save_session(&token_hash, &record, ttl).await?;
        }
        let mut s = h.sessions.lock();
        if s.by_key.len() >= h.cfg.sessions.max_sessions {
            return Err(HubError::Unavailable("session table full".into()));
        }
        s.ids.insert(id, key);
        s.by_token.insert(token_hash, key);
        s.by_key.insert(
            key,
            Identity {
                member: member.clone(),
                token_hash,
                rooms: Vec::new(),
                conn: Some((conn_id, outbox.clone())),
                detached_at: None,
                mutes: HashMap::new(),
                banned_until: 0,
                addr_tag,
                staff: None,
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
                addr_tag,
                staff: None,
                locale: None,
            },
            token,
            resumed: false,
            joined: Vec::new(),
        })
    }

    /// Stores the identity's current rooms in Redis (cluster mode), so a
    /// resume on any node restores them.
    async fn save_session(&self, key: u64) {
        let Some(r) = self.redis() else {
            return;
        };
        let h = &self.inner;
        let found = {
            let s = h.sessions.lock();
            // Staff sessions are never stored: they sign in with their token.
            s.by_key
                .get(&key)
                .filter(|i| i.member.role == Role::Peer)
                .map(|i| {
                    let rooms = i
                        .rooms
                        .iter()
                        .filter_map(|idx| h.rooms.by_idx(*idx).map(|r| r.id().to_string()))
                        .collect();
                    (
                        i.token_hash,
                        SessionRecord {
                            member: i.member.clone(),
                            rooms,
                        },
                    )
                })
        };
        let Some((hash, record)) = found else {
            return;
        };
        let ttl = Duration::from_secs(h.cfg.sessions.resume_ttl_secs);
        if let Err(e) = r.save_session(&hash, &record, ttl).await {
            tracing::warn!(error = %e, "could not store a session in redis");
        }
    }

    /// Puts a resumed identity back in its rooms, paused until it re-joins.
    /// Rooms it can no longer enter (full) are dropped from its list.
    async fn reattach(&self, conn: &Conn, rooms: &[u32]) -> Vec<String> {
        let h = &self.inner;
        let mut kept = Vec::new();
        for idx in rooms {
            let Some(room) = h.rooms.by_idx(*idx) else {
                continue;
            };
            if room.cfg.care && !self.care_allowed(room, &conn.member) {
                continue;
            }
            let ok = match self.redis() {
                None => self.reattach_local(conn, room),
                Some(r) => {
                    let fresh = self.hold_place(conn, room, Attach::Paused { conn: conn.id });
                    match r
                        .join_member(room.idx, &room.id(), &conn.member, room.cfg.capacity)
                        .await
                    {
                        Ok(JoinOutcome::Joined(_)) => true,
                        // Redis unreachable: keep it, a later join repairs.
                        Err(_) => true,
                        Ok(JoinOutcome::Full | JoinOutcome::Locked) => {
                            if fresh {
                                self.drop_place(conn, room);
                            }
                            false
                        }
                    }
                }
            };
            if ok {
                kept.push(room.id().to_string());
            }
        }
        if kept.len() != rooms.len() {
            {
                let mut s = h.sessions.lock();
                if let Some(ident) = s.by_key.get_mut(&conn.key) {
                    ident.rooms.retain(|i| {
                        h.rooms
                            .by_idx(*i)
                            .is_some_and(|r| kept.iter().any(|k| **k == *r.id()))
                    });
                }
            }
            self.save_session(conn.key).await;
        }
        kept
    }

    fn reattach_local(&self, conn: &Conn, room: &rooms::Room) -> bool {
        let mut st = room.state.lock();
        if let Some(m) = st.members.get_mut(&conn.key) {
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
                .presence(&mut st, &room.id(), Some(&conn.member), None, conn.key);
            true
        } else {
            false
        }
    }

    /// Cluster mode: this node's entry for a member (capacity and presence
    /// are Redis's). Returns whether the entry is new.
    fn hold_place(&self, conn: &Conn, room: &rooms::Room, attach: Attach) -> bool {
        let mut st = room.state.lock();
        if let Some(m) = st.members.get_mut(&conn.key) {
            m.attach = attach;
            false
        } else {
            st.members.insert(
                conn.key,
                RoomMember {
                    member: conn.member.clone(),
                    attach,
                },
            );
            Metrics::gauge(&self.inner.metrics.members, 1);
            true
        }
    }

    fn drop_place(&self, conn: &Conn, room: &rooms::Room) {
        let mut st = room.state.lock();
        if st.members.remove(&conn.key).is_some() {
            Metrics::gauge(&self.inner.metrics.members, -1);
        }
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
        // A care room is private: to anyone else it does not exist.
        if room.cfg.care && !self.care_allowed(room, &conn.member) {
            return Err(HubError::NoSuchRoom);
        }
        if let Some(until) = self.banned_until(conn.key) {
            return Err(HubError::Banned { until });
        }
        let pending = Attach::Pending {
            conn: conn.id,
            outbox: conn.outbox.clone(),
            held: Vec::new(),
        };
        let (fresh, cluster_members) = match self.redis() {
            None => (self.enter_local(conn, room, pending)?, None),
            Some(r) => {
                let fresh = self.hold_place(conn, room, pending);
                let outcome = match r.prepare(room.idx).await {
                    Ok(()) => {
                        r.join_member(room.idx, room_id, &conn.member, room.cfg.capacity)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(JoinOutcome::Joined(j)) => (fresh, Some((j.members, j.watching))),
                    Ok(JoinOutcome::Full) => {
                        self.drop_place(conn, room);
                        return Err(HubError::RoomFull);
                    }
                    Ok(JoinOutcome::Locked) => {
                        self.drop_place(conn, room);
                        return Err(HubError::RoomLocked);
                    }
                    Err(e) => {
                        self.abandon_join(conn, room, fresh);
                        return Err(e.into());
                    }
                }
            }
        };
        let added = {
            let mut s = h.sessions.lock();
            match s.by_key.get_mut(&conn.key) {
                Some(ident) if !ident.rooms.contains(&room.idx) => {
                    ident.rooms.push(room.idx);
                    true
                }
                _ => false,
            }
        };
        if added {
            self.save_session(conn.key).await;
        }
        let slice = match h
            .backend
            .history(room.idx, since, h.cfg.history.on_join)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.abandon_join(conn, room, fresh && self.redis().is_none());
                return Err(e.into());
            }
        };
        let mut st = room.state.lock();
        let (members, watching) = match cluster_members {
            Some(m) => m,
            None => (
                st.members.values().map(|m| m.member.clone()).collect(),
                st.watchers.len(),
            ),
        };
        let Some(me) = st.members.get_mut(&conn.key) else {
            return Err(HubError::NotJoined);
        };
        let held = me.go_live(conn.id, &conn.outbox, slice.seq);
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
            staff_watching: watching,
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

    /// Embedded mode: enters the room (capacity, presence) as `attach`.
    fn enter_local(
        &self,
        conn: &Conn,
        room: &rooms::Room,
        attach: Attach,
    ) -> Result<bool, HubError> {
        let h = &self.inner;
        let mut st = room.state.lock();
        if let Some(m) = st.members.get_mut(&conn.key) {
            m.attach = attach;
            return Ok(false);
        }
        // Staff may enter a locked room; a locked room keeps its members.
        if st.locked && conn.member.role == Role::Peer {
            return Err(HubError::RoomLocked);
        }
        if st.members.len() >= room.cfg.capacity {
            return Err(HubError::RoomFull);
        }
        st.members.insert(
            conn.key,
            RoomMember {
                member: conn.member.clone(),
                attach,
            },
        );
        Metrics::gauge(&h.metrics.members, 1);
        h.rooms
            .presence(&mut st, &room.id(), Some(&conn.member), None, conn.key);
        Ok(true)
    }

    /// A join failed half way: a brand-new local entry is removed (cluster
    /// mode, where Redis may not have it); an existing one stays a member
    /// but stops holding frames.
    fn abandon_join(&self, conn: &Conn, room: &rooms::Room, remove: bool) {
        if remove && self.redis().is_some() {
            self.drop_place(conn, room);
            return;
        }
        let mut st = room.state.lock();
        if let Some(m) = st.members.get_mut(&conn.key) {
            m.attach = Attach::Paused { conn: conn.id };
        }
    }

    /// Handles `leave`. Leaving a room one is not in succeeds (idempotent).
    pub async fn leave(&self, conn: &Conn, room_id: &str) -> Result<(), HubError> {
        let h = &self.inner;
        let room = h.rooms.get(room_id).ok_or(HubError::NoSuchRoom)?;
        let removed_from_list = {
            let mut s = h.sessions.lock();
            match s.by_key.get_mut(&conn.key) {
                Some(ident) => {
                    let before = ident.rooms.len();
                    ident.rooms.retain(|i| *i != room.idx);
                    ident.rooms.len() != before
                }
                None => false,
            }
        };
        match self.redis() {
            None => {
                let mut st = room.state.lock();
                if st.members.remove(&conn.key).is_some() {
                    Metrics::gauge(&h.metrics.members, -1);
                    h.rooms
                        .presence(&mut st, room_id, None, Some(&conn.member.id), conn.key);
                }
            }
            Some(r) => {
                self.drop_place(conn, room);
                r.leave_member(room.idx, room_id, &conn.member.id, None)
                    .await?;
                if removed_from_list {
                    self.save_session(conn.key).await;
                }
            }
        }
        Ok(())
    }

    fn require_member(&self, conn: &Conn, room_id: &str) -> Result<&rooms::Room, HubError> {
        self.member_room(conn, room_id, false).map(|(room, _)| room)
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
    ) -> Result<(&rooms::Room, bool), HubError> {
        let room = self.inner.rooms.get(room_id).ok_or(HubError::NoSuchRoom)?;
        let mut st = room.state.lock();
        match st.members.get_mut(&conn.key) {
            Some(m) if m.attach.conn() == conn.id => {
                let wake = go_live && matches!(m.attach, Attach::Paused { .. });
                if wake {
                    m.attach = Attach::Live {
                        conn: conn.id,
                        outbox: conn.outbox.clone(),
                        after: 0,
                    };
                }
                Ok((room, wake))
            }
            _ => Err(HubError::NotJoined),
        }
    }

    /// One message (or report) against the identity's limit: this node's
    /// limiter in embedded mode, a Redis one in cluster mode so the limit
    /// follows the person from node to node.
    async fn identity_limit(&self, conn: &Conn) -> Result<(), HubError> {
        let h = &self.inner;
        let refused = match self.redis() {
            None => h
                .limiters
                .identity_message(conn.key)
                .err()
                .map(|l| l.retry_after_ms()),
            Some(r) => {
                let n = h.cfg.rate_limits.identity_messages_per_10s;
                let key = format!("id:{}", conn.member.id);
                r.limit(&key, n, Duration::from_secs(10), n).await?.err()
            }
        };
        match refused {
            None => Ok(()),
            Some(retry_after_ms) => {
                Metrics::inc(&h.metrics.rate_limited_identity);
                Err(HubError::RateLimited {
                    scope: "identity",
                    retry_after_ms,
                })
            }
        }
    }

    /// Handles `send`: checks, limits, verdict, publish.
    pub async fn send(&self, conn: &Conn, room_id: &str, raw: &str) -> Result<Sent, HubError> {
        let started = Instant::now();
        let h = &self.inner;
        let (room, woke) = self.member_room(conn, room_id, true)?;
        if woke {
            // A resumed member going live: this node may not carry the
            // room's traffic yet (cluster mode).
            h.backend.prepare(room.idx).await?;
        }
        let text = safety::prepare_text(raw, h.cfg.limits.max_text_chars).map_err(|e| match e {
            TextError::Empty => HubError::Empty,
            TextError::TooLarge { chars, max } => HubError::TooLarge { chars, max },
        })?;
        if let Err(e) = self.identity_limit(conn).await {
            if matches!(e, HubError::Unavailable(_)) {
                // Redis is unreachable, so the message cannot go out; but a
                // person in crisis is still answered (`support`) and their
                // escalation kept (spooled until Redis is back).
                let id = pseudonym::random_id("m_", 12);
                let _ = self.assess(conn, room, room_id, &id, &text).await;
            }
            return Err(e);
        }
        // In cluster mode the room limit is checked inside the publish
        // script, cluster-wide.
        if self.redis().is_none() {
            if let Err(l) = h.limiters.room_message(room.idx) {
                Metrics::inc(&h.metrics.rate_limited_room);
                return Err(limited("room", l));
            }
        }
        self.check_sanctions(conn, room.idx)?;
        let id = pseudonym::random_id("m_", 12);
        let (verdict, flag) = self.assess(conn, room, room_id, &id, &text).await;
        match verdict {
            Verdict::Deliver => {}
            Verdict::Block(why) => return Err(HubError::Blocked(why)),
            Verdict::Hold => {
                self.hold(
                    &id,
                    moderation::HeldMessage {
                        room: room.idx,
                        from: conn.member.clone(),
                        text: text.clone(),
                        ts: now_ms(),
                        flag: flag.map(|f| f.to_string()),
                    },
                )
                .await?;
                return Ok(Sent {
                    id,
                    seq: None,
                    held: true,
                });
            }
        }
        let draft = Draft {
            id: &id,
            ts: now_ms(),
            from: &conn.member,
            text: &text,
        };
        let seq = match h.backend.publish(room.idx, room_id, draft).await {
            Ok(seq) => seq,
            Err(FanoutError::RoomLimited { retry_after_ms }) => {
                Metrics::inc(&h.metrics.rate_limited_room);
                return Err(HubError::RateLimited {
                    scope: "room",
                    retry_after_ms,
                });
            }
            Err(FanoutError::SlowMode { retry_after_ms }) => {
                return Err(HubError::SlowMode { retry_after_ms })
            }
            Err(e) => return Err(e.into()),
        };
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
    pub async fn typing(
        &self,
        conn: &Conn,
        room_id: &str,
        permit: impl FnOnce() -> bool,
    ) -> Result<(), HubError> {
        let room = self.require_member(conn, room_id)?;
        if !permit() {
            return Ok(());
        }
        let text = ServerFrame::Typing {
            room: room_id,
            from: &conn.member,
        }
        .encode();
        if let Some(r) = self.redis() {
            // Best effort, like the indicator itself.
            let _ = r
                .publish_event(room.idx, EventKind::Typing, &conn.member.id, &text)
                .await;
            return Ok(());
        }
        let frame: Utf8Bytes = text.into();
        let mut st = room.state.lock();
        self.inner
            .rooms
            .fan_event(&mut st, &conn.member.id, &frame, EventKind::Typing);
        Ok(())
    }

    /// Handles `report`: kept for staff; the author is never told. Only
    /// members may report, reports share the identity's message limit (so
    /// one person cannot flush the queue), and a repeated report of the same
    /// message by the same person is kept once.
    pub async fn report(
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
        self.identity_limit(conn).await?;
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
        {
            let mut q = h.reports.lock();
            if q.len() >= h.cfg.limits.max_reports_stored {
                q.pop_front();
            }
            q.push_back(report.clone());
        }
        Metrics::inc(&h.metrics.reports);
        if let Some(r) = self.redis() {
            let json = serde_json::from_str(&moderation::report_frame(&report))
                .unwrap_or(serde_json::Value::Null);
            r.add_report(&json, h.cfg.limits.max_reports_stored).await?;
        }
        self.report_to_staff(&report).await;
        Ok(())
    }

    /// A connection ended. Its identity stays in its rooms for the resume
    /// grace period, then leaves them (unless it resumed meanwhile).
    pub fn disconnect(&self, conn: &Conn) {
        let h = &self.inner;
        self.drop_watches(conn.id);
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
        let cluster = self.redis().is_some();
        if rooms.is_empty() && !cluster {
            return;
        }
        let hub = self.clone();
        let conn_id = conn.id;
        let key = conn.key;
        let member_id = conn.member.id.clone();
        let grace = Duration::from_secs(h.cfg.sessions.resume_grace_secs);
        let shutdown = h.shutdown.clone();
        tokio::spawn(async move {
            // The resume TTL counts from now, on every node.
            hub.save_session(key).await;
            if rooms.is_empty() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(grace) => hub.expire_grace(key, conn_id, &member_id).await,
                _ = shutdown.cancelled() => {}
            }
        });
    }

    /// The grace period of a dropped connection ended: leave its rooms if it
    /// is still detached from that same connection.
    async fn expire_grace(&self, key: u64, conn_id: u64, member_id: &str) {
        let h = &self.inner;
        let mut left = Vec::new();
        for room in &h.rooms.rooms {
            let mut st = room.state.lock();
            let gone = matches!(
                st.members.get(&key).map(|m| &m.attach),
                Some(Attach::Detached { conn }) if *conn == conn_id
            );
            if gone {
                st.members.remove(&key);
                Metrics::gauge(&h.metrics.members, -1);
                if self.redis().is_none() {
                    h.rooms
                        .presence(&mut st, &room.id(), None, Some(member_id), key);
                }
                left.push(room);
            }
        }
        if let Some(r) = self.redis() {
            for room in left {
                // Only if this node still owns it: the person may have
                // resumed on another node meanwhile.
                let owner = Some(r.instance());
                if let Err(e) = r.leave_member(room.idx, &room.id(), member_id, owner).await {
                    tracing::warn!(error = %e, "could not remove a departed member in redis");
                }
            }
        }
    }

    /// Another node now serves this identity: close our connection for it
    /// and forget it here, without presence (it is still in its rooms).
    fn taken_over(&self, member_id: &str) {
        let h = &self.inner;
        let removed = {
            let mut s = h.sessions.lock();
            let Some(key) = s.ids.remove(member_id) else {
                return;
            };
            let ident = s.by_key.remove(&key);
            if let Some(i) = &ident {
                s.by_token.remove(&i.token_hash);
            }
            ident.map(|i| (key, i))
        };
        let Some((key, ident)) = removed else {
            return;
        };
        Metrics::gauge(&h.metrics.sessions, -1);
        if let Some((_, outbox)) = &ident.conn {
            outbox.close(CloseReason {
                code: protocol::close::NORMAL,
                reason: "this session was resumed on another connection",
            });
        }
        for idx in &ident.rooms {
            if let Some(room) = h.rooms.by_idx(*idx) {
                if room.state.lock().members.remove(&key).is_some() {
                    Metrics::gauge(&h.metrics.members, -1);
                }
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
            self.expire_revocations();
            self.close_invalid_staff();
            self.sweep_care_rooms().await;
            let rooms = &self.inner.rooms;
            self.inner
                .backend
                .maintain(|idx| {
                    rooms.by_idx(idx).is_some_and(|r| {
                        let st = r.state.lock();
                        !st.members.is_empty() || !st.watchers.is_empty()
                    })
                })
                .await;
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

    /// An embedded hub with its own data directory (also used by the
    /// other hub modules' tests).
    pub(super) fn hub() -> HubHandle {
        let mut cfg = Config::parse(crate::config::DEFAULT_TOML).expect("config");
        // Each test hub keeps its audit log in its own directory.
        cfg.server.data_dir = std::env::temp_dir().join(format!(
            "hearth-hub-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        HubHandle::new(
            Arc::new(cfg),
            Arc::new(Metrics::default()),
            CancellationToken::new(),
        )
        .expect("embedded hub")
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
            .hello(Arc::new(Outbox::new(64)), None, 0)
            .await
            .expect("hello")
            .conn;
        let b = hub
            .hello(Arc::new(Outbox::new(64)), None, 0)
            .await
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
            .hello(Arc::new(Outbox::new(64)), None, 0)
            .await
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
            .hello(Arc::new(Outbox::new(64)), None, 0)
            .await
            .expect("hello")
            .conn;
        let b = hub
            .hello(Arc::new(Outbox::new(64)), None, 0)
            .await
            .expect("hello")
            .conn;
        assert_eq!(
            hub.report(&b, "anxiety", "m_x", Some("unkind")).await,
            Err(HubError::NotJoined)
        );
        hub.join(&a, None, "anxiety", None).await.expect("join");
        hub.join(&b, None, "anxiety", None).await.expect("join");
        let sent = hub.send(&a, "anxiety", "secret words").await.expect("send");
        hub.report(&b, "anxiety", &sent.id, Some("unkind"))
            .await
            .expect("report");
        hub.report(&b, "anxiety", &sent.id, None)
            .await
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
        let first = hub
            .hello(Arc::new(Outbox::new(64)), None, 0)
            .await
            .expect("hello");
        hub.join(&first.conn, None, "bereavement", None)
            .await
            .expect("join");
        hub.disconnect(&first.conn);
        let again = hub
            .hello(Arc::new(Outbox::new(64)), Some(&first.token), 0)
            .await
            .expect("resume");
        assert!(again.resumed);
        assert_eq!(again.conn.member, first.conn.member);
        assert_eq!(again.joined, ["bereavement"]);
        let fresh = hub
            .hello(Arc::new(Outbox::new(64)), Some("not-a-token"), 0)
            .await
            .expect("fresh");
        assert!(!fresh.resumed);
        assert_ne!(fresh.conn.member.id, first.conn.member.id);
    }
}
