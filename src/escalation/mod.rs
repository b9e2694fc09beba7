//! Escalations: the durable record raised when a message signals a crisis,
//! and everything that keeps it from being lost or ignored.
//!
//! Owns the records and their lifecycle (`open` → `acknowledged` →
//! `resolved`), the store they live in (an append-only, fsync'd log of
//! events under the data directory, folded back into state at start-up),
//! delivery to [`hook::Hook`]s (webhooks: at least once, retried with
//! back-off, dead-lettered after `webhook_attempts` and then shown to staff,
//! never dropped), the acknowledgement deadlines that move an escalation up
//! a tier, and retention.
//!
//! It must not touch rooms, sessions or connections: it reaches people only
//! through the [`Outlet`] the hub gives it (live `escalation` events for
//! connected staff, and the audit log). It decides nothing about a message:
//! `safety` judged it and the hub asked for the escalation.
//!
//! Order of events, always: the record is written and synced, then staff
//! and hooks are told. A crash between the two loses nothing: on restart
//! every delivery not recorded as done is attempted again, so a target may
//! see one twice (its `Idempotency-Key` tells it so) but never zero times.

pub mod hook;
pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::EscalationConfig;
use crate::durable::{DurableError, DurableLog};
use crate::fanout::redis::EscalationLog;
use crate::metrics::Metrics;
use hook::{Hook, HookError, Outgoing};

/// How often deadlines and due retries are looked at.
const TICK: Duration = Duration::from_millis(200);
/// Webhook attempts in flight at once, over all escalations.
const MAX_IN_FLIGHT: usize = 16;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// The longest resolution note kept.
const MAX_NOTE_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Open,
    Acknowledged,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Acknowledged => "acknowledged",
            State::Resolved => "resolved",
        }
    }
}

/// The person an escalation is about: their pseudonym, never an address,
/// a token or anything that identifies them outside Hearth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: String,
    pub name: String,
}

/// A staff member who changed an escalation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffRef {
    pub id: String,
    pub name: String,
    pub role: String,
}

/// One message of the excerpt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcerptLine {
    pub id: String,
    pub from: Person,
    pub text: String,
    pub ts: u64,
    /// The message that raised the escalation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub by: StaffRef,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The record, as staff and webhooks see it (plus `type` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    pub id: String,
    pub level: String,
    pub state: State,
    pub room: String,
    pub peer: Person,
    pub categories: Vec<String>,
    pub excerpt: Vec<ExcerptLine>,
    /// The rule ids that matched, so a clinician can see why.
    pub signals: Vec<String>,
    pub created_ts: u64,
    pub ack_deadline_ts: u64,
    /// The tier told most recently (1 = the first).
    pub tier: u32,
    /// How many times it was told again: moved up a tier, or re-triggered
    /// while acknowledged but unresolved.
    pub round: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Transition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Transition>,
    /// The private room a clinician opened with the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub care_room: Option<CareRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareRecord {
    pub room: String,
    /// Which care slot of the node holds it (internal).
    pub slot: u32,
    pub opened_ts: u64,
    /// Staff let in, the opener first.
    pub staff: Vec<StaffRef>,
    /// Set once the room is closed (its slot freed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ts: Option<u64>,
    /// The room's conversation, kept with the record when it closed (and
    /// deleted with it): care history follows the escalation's retention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transcript: Vec<ExcerptLine>,
}

/// What the hub knows when it asks for an escalation.
pub struct Raise {
    pub level: String,
    pub room: String,
    pub peer: Person,
    pub categories: Vec<String>,
    pub signals: Vec<String>,
    pub excerpt: Vec<ExcerptLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Gave up after `webhook_attempts`: staff see it and must act.
    Dead,
}

/// One target's delivery of one round.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub target: String,
    pub tier: u32,
    pub round: u32,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip)]
    next_at: u64,
    #[serde(skip)]
    in_flight: bool,
    /// Index of the hook in its tier.
    #[serde(skip)]
    hook: usize,
}

struct Entry {
    esc: Escalation,
    deliveries: Vec<Delivery>,
    /// When it was last told (raised, moved up, re-triggered, acknowledged):
    /// the re-trigger clock of an acknowledged escalation.
    touched: u64,
}

/// One line of the store. Folding them in order rebuilds every record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
enum Event {
    Open {
        esc: Box<Escalation>,
    },
    Ack {
        esc_id: String,
        by: StaffRef,
        ts: u64,
    },
    Resolve {
        esc_id: String,
        by: StaffRef,
        ts: u64,
        #[serde(default)]
        note: Option<String>,
    },
    /// Told again: `tier` is the tier now told; a new round of deliveries.
    Round {
        esc_id: String,
        tier: u32,
        round: u32,
        ack_deadline_ts: u64,
        ts: u64,
    },
    /// A care room opened (or another clinician let in).
    Care {
        esc_id: String,
        room: String,
        slot: u32,
        by: StaffRef,
        ts: u64,
    },
    /// The care room was closed and its slot freed.
    CareClosed {
        esc_id: String,
        ts: u64,
        #[serde(default)]
        transcript: Vec<ExcerptLine>,
    },
    Delivered {
        esc_id: String,
        target: String,
        round: u32,
        attempts: u32,
        ts: u64,
    },
    Dead {
        esc_id: String,
        target: String,
        round: u32,
        attempts: u32,
        error: String,
        ts: u64,
    },
}

/// What the escalation service needs from the hub.
pub trait Outlet: Send + Sync {
    /// Shows an `escalation` event (already encoded) to connected
    /// clinicians and to moderators watching `room`.
    fn notify(&self, room: &str, frame: String);

    /// Writes a transition to the audit log.
    fn audit(&self, record: Value) -> BoxFuture<'_, ()>;

    /// The escalation's care room changed (opened, someone let in,
    /// closed): every node brings its room table in line.
    fn care_changed(&self, esc: &Escalation);
}

#[derive(Debug, thiserror::Error)]
pub enum EscalationError {
    #[error("There is no escalation {0:?}.")]
    NotFound(String),
    #[error("Escalation {0:?} is already resolved.")]
    Resolved(String),
    #[error("The escalation store could not be written; nothing was changed: {0}")]
    Store(#[from] DurableError),
    #[error("The escalation store could not be read: {0}")]
    Load(String),
    #[error("The shared escalation log (Redis) could not be reached: {0}")]
    Shared(String),
}

/// Where events are kept.
enum Backing {
    /// Embedded mode: the fsync'd event log under the data directory.
    File(DurableLog),
    /// Cluster mode: the Redis stream every node folds, plus a local spool
    /// for escalations raised while Redis is unreachable.
    Redis {
        log: EscalationLog,
        spool: Arc<DurableLog>,
        /// Records in the spool not yet copied to Redis.
        spooled: AtomicUsize,
        lease_ms: u64,
    },
}

/// The escalation service: one per node.
pub struct Escalations {
    cfg: EscalationConfig,
    backing: Backing,
    // parking_lot: looked up and changed briefly, never across `.await`.
    // Lock order: `table`, then `cursor`.
    table: Mutex<HashMap<String, Entry>>,
    /// Cluster mode: the last stream id folded into `table`.
    cursor: Mutex<Option<(u64, u64)>>,
    /// This node delivers and enforces deadlines (always in embedded mode;
    /// while it holds the lease in cluster mode).
    worker: AtomicBool,
    /// Hooks per tier (index 0 = tier 1).
    tiers: Vec<Vec<Arc<dyn Hook>>>,
    outlet: OnceLock<Arc<dyn Outlet>>,
    wake: Notify,
    in_flight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `esc_` + creation time + randomness: unguessable, and sorts by age.
fn new_id(now: u64) -> String {
    format!("esc_{now:011x}{:08x}", rand::random::<u32>())
}

impl Escalations {
    /// Opens the store and rebuilds every record from it: the event log
    /// under `dir` in embedded mode; in cluster mode (`shared` = the Redis
    /// log and the lease time) the records come from Redis once it answers,
    /// and the local spool under `dir` is replayed at once.
    pub fn open(
        cfg: EscalationConfig,
        dir: &std::path::Path,
        tiers: Vec<Vec<Arc<dyn Hook>>>,
        metrics: Arc<Metrics>,
        shared: Option<(EscalationLog, u64)>,
    ) -> Result<Escalations, EscalationError> {
        let (backing, events, worker) = match shared {
            None => {
                let store = DurableLog::open(dir, "escalations.log")?;
                let events = store.read_all()?;
                (Backing::File(store), events, true)
            }
            Some((log, lease_ms)) => {
                let spool = DurableLog::open(dir, "escalations-spool.log")?;
                let events = spool.read_all()?;
                let backing = Backing::Redis {
                    log,
                    spool: Arc::new(spool),
                    spooled: AtomicUsize::new(events.len()),
                    lease_ms,
                };
                (backing, events, false)
            }
        };
        let svc = Escalations {
            cfg,
            backing,
            table: Mutex::new(HashMap::new()),
            cursor: Mutex::new(None),
            worker: AtomicBool::new(worker),
            tiers,
            outlet: OnceLock::new(),
            wake: Notify::new(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
        };
        {
            let mut t = svc.table.lock();
            for (n, v) in events.into_iter().enumerate() {
                let ev = event_from_record(v)
                    .map_err(|e| EscalationError::Load(format!("record {}: {e}", n + 1)))?;
                svc.fold(&mut t, ev);
            }
        }
        Ok(svc)
    }

    /// Builds the hooks the config names: tier by tier, its webhooks.
    pub fn hooks_from_config(
        cfg: &EscalationConfig,
    ) -> Result<Vec<Vec<Arc<dyn Hook>>>, webhook::WebhookError> {
        let timeout = Duration::from_millis(cfg.webhook_timeout_ms);
        let secret = cfg.webhook_secret.as_deref().unwrap_or("");
        cfg.tiers
            .iter()
            .map(|t| {
                t.webhooks
                    .iter()
                    .map(|u| {
                        webhook::Webhook::new(u, secret, timeout)
                            .map(|w| Arc::new(w) as Arc<dyn Hook>)
                    })
                    .collect()
            })
            .collect()
    }

    pub fn set_outlet(&self, outlet: Arc<dyn Outlet>) {
        let _ = self.outlet.set(outlet);
    }

    /// Whether a crisis level raises an escalation.
    pub fn raises(&self, level: &str) -> bool {
        self.cfg.levels.iter().any(|l| l == level)
    }

    fn ack_secs(&self, level: &str) -> u64 {
        match level {
            "imminent" => self.cfg.ack_imminent_secs,
            "high" => self.cfg.ack_high_secs,
            _ => self.cfg.ack_concern_secs,
        }
    }

    /// The deliveries of one round to the hooks of `tier`.
    fn round_deliveries(&self, tier: u32, round: u32, now: u64) -> Vec<Delivery> {
        let hooks = tier
            .checked_sub(1)
            .and_then(|i| self.tiers.get(i as usize))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        hooks
            .iter()
            .enumerate()
            .map(|(i, h)| Delivery {
                target: h.name().to_string(),
                tier,
                round,
                state: DeliveryState::Pending,
                attempts: 0,
                last_error: None,
                next_at: now,
                in_flight: false,
                hook: i,
            })
            .collect()
    }

    /// The highest tier that exists (at least 1, even with no hooks: the
    /// connected staff are every tier's audience).
    fn last_tier(&self) -> u32 {
        u32::try_from(self.tiers.len()).unwrap_or(u32::MAX).max(1)
    }

    /// Applies one stored event. Folding is idempotent in effect: an event
    /// for an unknown escalation (expired by retention) is skipped.
    /// Returns the escalation to show staff again, if the change is one
    /// they see.
    fn fold(&self, t: &mut HashMap<String, Entry>, ev: Event) -> Option<String> {
        let id = match &ev {
            Event::Open { esc } => esc.id.clone(),
            Event::Ack { esc_id, .. }
            | Event::Resolve { esc_id, .. }
            | Event::Round { esc_id, .. }
            | Event::Care { esc_id, .. }
            | Event::CareClosed { esc_id, .. }
            | Event::Delivered { esc_id, .. }
            | Event::Dead { esc_id, .. } => esc_id.clone(),
        };
        let before = t.get(&id).map(|e| e.esc.state);
        let visible = !matches!(ev, Event::Delivered { .. });
        self.fold_event(t, ev);
        let after = t.get(&id).map(|e| e.esc.state);
        if before != after {
            self.count_state(before, after);
        }
        (visible && after.is_some()).then_some(id)
    }

    fn fold_event(&self, t: &mut HashMap<String, Entry>, ev: Event) {
        match ev {
            // A repeat (a spooled event copied to Redis twice) changes
            // nothing.
            Event::Open { esc } if t.contains_key(&esc.id) => {}
            Event::Open { esc } => {
                let deliveries = self.round_deliveries(esc.tier, esc.round, 0);
                let touched = esc.created_ts;
                t.insert(
                    esc.id.clone(),
                    Entry {
                        esc: *esc,
                        deliveries,
                        touched,
                    },
                );
            }
            Event::Ack { esc_id, by, ts } => {
                if let Some(e) = t.get_mut(&esc_id) {
                    if e.esc.state == State::Open {
                        e.esc.state = State::Acknowledged;
                        e.esc.acknowledged = Some(Transition { by, ts, note: None });
                        e.touched = ts;
                    }
                }
            }
            Event::Resolve {
                esc_id,
                by,
                ts,
                note,
            } => {
                if let Some(e) = t
                    .get_mut(&esc_id)
                    .filter(|e| e.esc.state != State::Resolved)
                {
                    if e.esc.acknowledged.is_none() {
                        e.esc.acknowledged = Some(Transition {
                            by: by.clone(),
                            ts,
                            note: None,
                        });
                    }
                    e.esc.state = State::Resolved;
                    e.esc.resolved = Some(Transition { by, ts, note });
                    e.touched = ts;
                }
            }
            Event::Round {
                esc_id,
                tier,
                round,
                ack_deadline_ts,
                ts,
            } => {
                if let Some(e) = t.get_mut(&esc_id).filter(|e| round > e.esc.round) {
                    e.esc.tier = tier;
                    e.esc.round = round;
                    e.esc.ack_deadline_ts = ack_deadline_ts;
                    e.touched = ts;
                    let more = self.round_deliveries(tier, round, ts);
                    e.deliveries.extend(more);
                }
            }
            Event::Care {
                esc_id,
                room,
                slot,
                by,
                ts,
            } => {
                if let Some(e) = t.get_mut(&esc_id).filter(|e| {
                    e.esc
                        .care_room
                        .as_ref()
                        .is_none_or(|r| r.closed_ts.is_none())
                }) {
                    let rec = e.esc.care_room.get_or_insert_with(|| CareRecord {
                        room: room.clone(),
                        slot,
                        opened_ts: ts,
                        staff: Vec::new(),
                        closed_ts: None,
                        transcript: Vec::new(),
                    });
                    if rec.room == room && !rec.staff.iter().any(|s| s.id == by.id) {
                        rec.staff.push(by);
                    }
                }
            }
            Event::CareClosed {
                esc_id,
                ts,
                transcript,
            } => {
                if let Some(rec) = t.get_mut(&esc_id).and_then(|e| e.esc.care_room.as_mut()) {
                    if rec.closed_ts.is_none() {
                        rec.closed_ts = Some(ts);
                        rec.transcript = transcript;
                    }
                }
            }
            Event::Delivered {
                esc_id,
                target,
                round,
                attempts,
                ..
            } => {
                if let Some(d) = find_delivery(t, &esc_id, &target, round) {
                    d.state = DeliveryState::Delivered;
                    d.attempts = attempts;
                }
            }
            Event::Dead {
                esc_id,
                target,
                round,
                attempts,
                error,
                ..
            } => {
                if let Some(d) = find_delivery(t, &esc_id, &target, round) {
                    d.state = DeliveryState::Dead;
                    d.attempts = attempts;
                    d.last_error = Some(error);
                }
            }
        }
    }

    /// Writes the event, then applies it (and shows staff the result).
    /// Nothing changes unless the write was synced (embedded mode) or
    /// accepted by Redis (cluster mode).
    async fn commit(&self, ev: Event) -> Result<(), EscalationError> {
        match &self.backing {
            Backing::File(store) => {
                let v =
                    serde_json::to_value(&ev).map_err(|e| EscalationError::Load(e.to_string()))?;
                store.append(v).await?;
                let shown = {
                    let mut t = self.table.lock();
                    self.fold(&mut t, ev)
                };
                if let Some(id) = shown {
                    self.announce(&id);
                }
            }
            Backing::Redis { log, .. } => {
                let json =
                    serde_json::to_string(&ev).map_err(|e| EscalationError::Load(e.to_string()))?;
                log.append(&json)
                    .await
                    .map_err(|e| EscalationError::Shared(e.to_string()))?;
                // Every node (this one too) applies it from the log.
                if let Err(e) = self.sync().await {
                    tracing::warn!(error = %e, "escalation log read failed; will catch up");
                }
            }
        }
        Ok(())
    }

    /// Cluster mode: folds every event in the shared log after the cursor.
    async fn sync(&self) -> Result<(), EscalationError> {
        const BATCH: usize = 256;
        let Backing::Redis { log, .. } = &self.backing else {
            return Ok(());
        };
        loop {
            let after = match *self.cursor.lock() {
                Some((ms, n)) => format!("{ms}-{n}"),
                None => "0-0".to_string(),
            };
            let batch = log
                .read_after(&after, BATCH)
                .await
                .map_err(|e| EscalationError::Shared(e.to_string()))?;
            let got = batch.len();
            let mut shown = Vec::new();
            {
                let mut t = self.table.lock();
                let mut cursor = self.cursor.lock();
                for (id, json) in batch {
                    let Some(sid) = crate::durable::parse_id(&id) else {
                        continue;
                    };
                    // A concurrent sync may have folded it already.
                    if cursor.is_some_and(|c| sid <= c) {
                        continue;
                    }
                    *cursor = Some(sid);
                    match serde_json::from_str::<Event>(&json) {
                        Ok(ev) => shown.extend(self.fold(&mut t, ev)),
                        Err(e) => {
                            tracing::error!(entry = id.as_str(), error = %e, "unreadable escalation event skipped")
                        }
                    }
                }
            }
            shown.dedup();
            for id in shown {
                self.announce(&id);
            }
            if got < BATCH {
                return Ok(());
            }
        }
    }

    /// Cluster mode: copies escalations spooled while Redis was down into
    /// the shared log, then empties the spool.
    async fn flush_spool(&self) -> Result<(), EscalationError> {
        let Backing::Redis {
            log,
            spool,
            spooled,
            ..
        } = &self.backing
        else {
            return Ok(());
        };
        let before = spooled.load(Ordering::Acquire);
        if before == 0 {
            return Ok(());
        }
        let s = spool.clone();
        let records = tokio::task::spawn_blocking(move || s.read_all())
            .await
            .map_err(|e| EscalationError::Load(e.to_string()))??;
        let mut last_ms = 0;
        for mut v in records.iter().cloned() {
            let ms = v["id"]
                .as_str()
                .and_then(crate::durable::parse_id)
                .map_or(0, |(ms, _)| ms);
            if let Some(o) = v.as_object_mut() {
                o.remove("id");
            }
            log.append(&v.to_string())
                .await
                .map_err(|e| EscalationError::Shared(e.to_string()))?;
            last_ms = last_ms.max(ms);
        }
        // Records spooled meanwhile may share the last one's millisecond:
        // keep that millisecond then (copying one twice is harmless).
        let unchanged = spooled.load(Ordering::Acquire) == before;
        let cutoff = if unchanged { last_ms + 1 } else { last_ms };
        spool.retain_since(cutoff).await?;
        spooled.fetch_sub(records.len().min(before), Ordering::AcqRel);
        tracing::info!(
            records = records.len(),
            "spooled escalations copied to Redis"
        );
        Ok(())
    }

    fn count_state(&self, from: Option<State>, to: Option<State>) {
        let m = &self.metrics;
        let gauge = |s: State| match s {
            State::Open => Some(&m.escalations_open),
            State::Acknowledged => Some(&m.escalations_acknowledged),
            State::Resolved => None,
        };
        if let Some(g) = from.and_then(gauge) {
            Metrics::gauge(g, -1);
        }
        if let Some(g) = to.and_then(gauge) {
            Metrics::gauge(g, 1);
        }
    }

    /// Raises an escalation: stored first, then staff and hooks are told.
    pub async fn raise(&self, r: Raise) -> Result<Escalation, EscalationError> {
        let now = now_ms();
        let esc = Escalation {
            id: new_id(now),
            ack_deadline_ts: now + self.ack_secs(&r.level).saturating_mul(1000),
            level: r.level,
            state: State::Open,
            room: r.room,
            peer: r.peer,
            categories: r.categories,
            excerpt: r.excerpt,
            signals: r.signals,
            created_ts: now,
            tier: 1,
            round: 1,
            acknowledged: None,
            resolved: None,
            care_room: None,
        };
        let ev = Event::Open {
            esc: Box::new(esc.clone()),
        };
        // Counted first: staff may read the metrics as soon as they are told.
        self.metrics.count_escalation(&esc.level);
        if let Err(e) = self.commit(ev.clone()).await {
            self.spool(ev, e).await?;
        }
        self.audit(json!({
            "ts": now,
            "actor": {"id": "hearth", "name": "Hearth", "role": "system"},
            "action": "escalation_raised",
            "target": esc.id,
            "room": esc.room,
            "level": esc.level,
        }))
        .await;
        self.wake.notify_one();
        Ok(esc)
    }

    /// Cluster mode, Redis unreachable: keeps a new escalation in the
    /// local spool (fsync'd) so it is not lost, shows it to this node's
    /// staff at once, and copies it to Redis when Redis is back.
    async fn spool(&self, ev: Event, cause: EscalationError) -> Result<(), EscalationError> {
        let Backing::Redis { spool, spooled, .. } = &self.backing else {
            return Err(cause);
        };
        let v = serde_json::to_value(&ev).map_err(|e| EscalationError::Load(e.to_string()))?;
        spool.append(v).await?;
        spooled.fetch_add(1, Ordering::AcqRel);
        tracing::warn!(error = %cause, "Redis unreachable: escalation kept in the local spool until it is back");
        let shown = {
            let mut t = self.table.lock();
            self.fold(&mut t, ev)
        };
        if let Some(id) = shown {
            self.announce(&id);
        }
        Ok(())
    }

    /// `open` → `acknowledged`. Acknowledging twice is not an error.
    pub async fn ack(&self, id: &str, by: StaffRef) -> Result<Escalation, EscalationError> {
        match self.get(id).map(|e| e.state) {
            None => return Err(EscalationError::NotFound(id.to_string())),
            Some(State::Resolved) => return Err(EscalationError::Resolved(id.to_string())),
            Some(State::Acknowledged) => {
                return self
                    .get(id)
                    .ok_or_else(|| EscalationError::NotFound(id.into()))
            }
            Some(State::Open) => {}
        }
        let ts = now_ms();
        self.commit(Event::Ack {
            esc_id: id.to_string(),
            by: by.clone(),
            ts,
        })
        .await?;
        self.audit(json!({
            "ts": ts,
            "actor": by,
            "action": "escalation_acknowledged",
            "target": id,
        }))
        .await;
        self.get(id)
            .ok_or_else(|| EscalationError::NotFound(id.into()))
    }

    /// → `resolved` (from `open`, which counts as acknowledged too).
    pub async fn resolve(
        &self,
        id: &str,
        by: StaffRef,
        note: Option<String>,
    ) -> Result<Escalation, EscalationError> {
        match self.get(id).map(|e| e.state) {
            None => return Err(EscalationError::NotFound(id.to_string())),
            Some(State::Resolved) => return Err(EscalationError::Resolved(id.to_string())),
            Some(_) => {}
        }
        let note = note
            .map(|n| {
                crate::protocol::normalise_text(&n)
                    .trim()
                    .chars()
                    .take(MAX_NOTE_CHARS)
                    .collect::<String>()
            })
            .filter(|n| !n.is_empty());
        let ts = now_ms();
        self.commit(Event::Resolve {
            esc_id: id.to_string(),
            by: by.clone(),
            ts,
            note,
        })
        .await?;
        self.audit(json!({
            "ts": ts,
            "actor": by,
            "action": "escalation_resolved",
            "target": id,
        }))
        .await;
        self.get(id)
            .ok_or_else(|| EscalationError::NotFound(id.into()))
    }

    /// Records a care room for the escalation (or lets another clinician
    /// into it): stored before anyone is invited.
    pub async fn open_care(
        &self,
        id: &str,
        room: &str,
        slot: u32,
        by: StaffRef,
    ) -> Result<Escalation, EscalationError> {
        match self.get(id).map(|e| e.state) {
            None => return Err(EscalationError::NotFound(id.to_string())),
            Some(State::Resolved) => return Err(EscalationError::Resolved(id.to_string())),
            Some(_) => {}
        }
        self.commit(Event::Care {
            esc_id: id.to_string(),
            room: room.to_string(),
            slot,
            by,
            ts: now_ms(),
        })
        .await?;
        self.get(id)
            .ok_or_else(|| EscalationError::NotFound(id.into()))
    }

    /// Records that the escalation's care room was closed, keeping its
    /// conversation with the record (the newest lines, within a bound).
    pub async fn close_care(
        &self,
        id: &str,
        mut transcript: Vec<ExcerptLine>,
    ) -> Result<(), EscalationError> {
        const MAX_TRANSCRIPT_BYTES: usize = 256 * 1024;
        let mut total = 0;
        let mut keep = transcript.len();
        for line in transcript.iter().rev() {
            total += line.text.len() + line.from.name.len() + 96;
            if total > MAX_TRANSCRIPT_BYTES {
                break;
            }
            keep -= 1;
        }
        transcript.drain(..keep);
        self.commit(Event::CareClosed {
            esc_id: id.to_string(),
            ts: now_ms(),
            transcript,
        })
        .await
    }

    /// This node does the escalation work now (cluster mode: holds the
    /// lease; embedded mode: always).
    pub fn is_worker(&self) -> bool {
        self.worker.load(Ordering::Acquire)
    }

    /// Every escalation that has a care room, oldest first.
    pub fn with_care_rooms(&self) -> Vec<Escalation> {
        let t = self.table.lock();
        let mut v: Vec<Escalation> = t
            .values()
            .filter(|e| e.esc.care_room.is_some())
            .map(|e| e.esc.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn get(&self, id: &str) -> Option<Escalation> {
        self.table.lock().get(id).map(|e| e.esc.clone())
    }

    /// The record with its deliveries, as staff see it.
    pub fn view(&self, id: &str) -> Option<Value> {
        let t = self.table.lock();
        t.get(id).map(view)
    }

    /// Records in `states` (all when empty), optionally of one room,
    /// oldest first.
    pub fn list(&self, states: &[State], room: Option<&str>) -> Vec<Value> {
        let t = self.table.lock();
        let mut out: Vec<&Entry> = t
            .values()
            .filter(|e| states.is_empty() || states.contains(&e.esc.state))
            .filter(|e| room.is_none_or(|r| e.esc.room == r))
            .collect();
        out.sort_by(|a, b| a.esc.id.cmp(&b.esc.id));
        out.into_iter().map(view).collect()
    }

    /// The `escalation` events for staff who connect (or start watching a
    /// room): every escalation not yet resolved.
    pub fn queue_frames(&self, room: Option<&str>) -> Vec<String> {
        self.list(&[State::Open, State::Acknowledged], room)
            .into_iter()
            .map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.insert("type".into(), json!("escalation"));
                }
                wire(v)
            })
            .collect()
    }

    /// Tells connected staff the escalation's current state.
    fn announce(&self, id: &str) {
        let Some(outlet) = self.outlet.get() else {
            return;
        };
        let (room, frame, care) = {
            let t = self.table.lock();
            let Some(e) = t.get(id) else { return };
            let mut v = view(e);
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), json!("escalation"));
            }
            let care = e.esc.care_room.is_some().then(|| e.esc.clone());
            (e.esc.room.clone(), wire(v), care)
        };
        outlet.notify(&room, frame);
        if let Some(esc) = care {
            outlet.care_changed(&esc);
        }
    }

    async fn audit(&self, record: Value) {
        if let Some(o) = self.outlet.get() {
            o.audit(record).await;
        }
    }

    /// Runs deadlines, retries and retention until shutdown; in cluster
    /// mode also follows the shared log and competes for the work lease.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next_retention = tokio::time::Instant::now();
        loop {
            if let Backing::Redis { log, lease_ms, .. } = &self.backing {
                let synced = match self.flush_spool().await {
                    Ok(()) => self.sync().await,
                    Err(e) => Err(e),
                };
                // Only a node that has read the whole log may do the work,
                // or it would miss what is pending.
                let held = match synced {
                    Ok(()) => log.hold_lease(*lease_ms).await.unwrap_or(false),
                    Err(e) => {
                        tracing::debug!(error = %e, "escalation log not reachable");
                        false
                    }
                };
                if held != self.worker.swap(held, Ordering::AcqRel) {
                    tracing::info!(
                        worker = held,
                        "escalation deliveries and deadlines {} on this node",
                        if held { "now run" } else { "no longer run" }
                    );
                }
            }
            if tokio::time::Instant::now() >= next_retention {
                if let Err(e) = self.retain().await {
                    tracing::error!(error = %e, "escalation retention failed");
                }
                next_retention = tokio::time::Instant::now() + RETENTION_EVERY;
            }
            if self.worker.load(Ordering::Acquire) {
                self.deadlines().await;
                self.start_due();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Moves unacknowledged escalations past their deadline up a tier, and
    /// tells everyone again about acknowledged ones left unresolved.
    async fn deadlines(&self) {
        let now = now_ms();
        let retrigger = self.cfg.retrigger_after_secs.saturating_mul(1000);
        let due: Vec<(String, u32, u32, String)> = {
            let t = self.table.lock();
            t.values()
                .filter(|e| match e.esc.state {
                    State::Open => {
                        now >= e.esc.ack_deadline_ts && e.esc.round <= self.cfg.max_reescalations
                    }
                    State::Acknowledged => {
                        now >= e.touched.saturating_add(retrigger)
                            && e.esc.round <= self.cfg.max_reescalations
                    }
                    State::Resolved => false,
                })
                .map(|e| {
                    let tier = match e.esc.state {
                        State::Open => (e.esc.tier + 1).min(self.last_tier()),
                        _ => e.esc.tier,
                    };
                    (e.esc.id.clone(), tier, e.esc.round + 1, e.esc.level.clone())
                })
                .collect()
        };
        for (id, tier, round, level) in due {
            let deadline = now + self.ack_secs(&level).saturating_mul(1000);
            let ev = Event::Round {
                esc_id: id.clone(),
                tier,
                round,
                ack_deadline_ts: deadline,
                ts: now,
            };
            if let Err(e) = self.commit(ev).await {
                tracing::error!(error = %e, "could not record a re-escalation; will try again");
                continue;
            }
            Metrics::inc(&self.metrics.escalation_rounds);
            tracing::warn!(
                escalation = id.as_str(),
                tier,
                round,
                "escalation told again"
            );
            self.audit(json!({
                "ts": now,
                "actor": {"id": "hearth", "name": "Hearth", "role": "system"},
                "action": "escalation_reescalated",
                "target": id,
                "tier": tier,
                "round": round,
            }))
            .await;
        }
    }

    /// Starts an attempt for every delivery that is due, as far as the
    /// in-flight limit allows.
    fn start_due(self: &Arc<Self>) {
        let now = now_ms();
        loop {
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                return;
            };
            let job = {
                let mut t = self.table.lock();
                let mut found = None;
                'outer: for e in t.values_mut() {
                    for d in e.deliveries.iter_mut() {
                        if d.state == DeliveryState::Pending && !d.in_flight && d.next_at <= now {
                            d.in_flight = true;
                            d.attempts += 1;
                            found = Some(self.outgoing(&e.esc, d));
                            break 'outer;
                        }
                    }
                }
                found
            };
            let Some(job) = job else { return };
            let me = self.clone();
            // Not on the shutdown tracker: an attempt cut short by shutdown
            // is simply not recorded, and is made again after the restart.
            tokio::spawn(async move {
                me.attempt(job).await;
                drop(permit);
            });
        }
    }

    fn outgoing(&self, esc: &Escalation, d: &Delivery) -> Job {
        let mut v = serde_json::to_value(esc).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), json!("escalation"));
            let tier_name = self
                .cfg
                .tiers
                .get(d.tier.saturating_sub(1) as usize)
                .map(|t| t.name.clone());
            o.insert("tier_name".into(), json!(tier_name));
        }
        // Retries of one delivery share a key; a later round to the same
        // target is a new notification, so it gets its own.
        let key = if d.round <= 1 {
            esc.id.clone()
        } else {
            format!("{}/{}", esc.id, d.round)
        };
        Job {
            esc_id: esc.id.clone(),
            target: d.target.clone(),
            tier: d.tier,
            round: d.round,
            hook: d.hook,
            attempts: d.attempts,
            out: Outgoing {
                escalation: esc.id.clone(),
                idempotency_key: key,
                body: bytes::Bytes::from(wire(v)),
            },
        }
    }

    async fn attempt(&self, job: Job) {
        let hook = job
            .tier
            .checked_sub(1)
            .and_then(|i| self.tiers.get(i as usize))
            .and_then(|t| t.get(job.hook))
            .cloned();
        let result = match hook {
            Some(h) => h.deliver(&job.out).await,
            None => Err(HookError::Transport("no such target".into())),
        };
        let now = now_ms();
        match result {
            Ok(()) => {
                Metrics::inc(&self.metrics.escalation_deliveries);
                let ev = Event::Delivered {
                    esc_id: job.esc_id.clone(),
                    target: job.target.clone(),
                    round: job.round,
                    attempts: job.attempts,
                    ts: now,
                };
                if let Err(e) = self.commit(ev).await {
                    // Not recorded: it will be delivered again, which the
                    // idempotency key makes harmless.
                    tracing::error!(error = %e, "could not record a delivery");
                    self.retry_later(&job, "delivered, but not recorded".into(), now);
                }
            }
            Err(err) => {
                Metrics::inc(&self.metrics.escalation_delivery_failures);
                tracing::warn!(
                    escalation = job.esc_id.as_str(),
                    target = job.target.as_str(),
                    attempt = job.attempts,
                    error = %err,
                    "escalation delivery failed"
                );
                if job.attempts >= self.cfg.webhook_attempts {
                    let ev = Event::Dead {
                        esc_id: job.esc_id.clone(),
                        target: job.target.clone(),
                        round: job.round,
                        attempts: job.attempts,
                        error: err.to_string(),
                        ts: now,
                    };
                    match self.commit(ev).await {
                        Ok(()) => {
                            Metrics::inc(&self.metrics.escalation_dead_letters);
                            tracing::error!(
                                escalation = job.esc_id.as_str(),
                                target = job.target.as_str(),
                                "escalation delivery dead-lettered; staff can see it"
                            );
                            self.audit(json!({
                                "ts": now,
                                "actor": {"id": "hearth", "name": "Hearth", "role": "system"},
                                "action": "escalation_dead_letter",
                                "target": job.esc_id,
                                "hook": job.target,
                                "error": err.to_string(),
                            }))
                            .await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "could not record a dead letter");
                            self.retry_later(&job, err.to_string(), now);
                        }
                    }
                } else {
                    self.retry_later(&job, err.to_string(), now);
                }
            }
        }
        self.wake.notify_one();
    }

    fn retry_later(&self, job: &Job, error: String, now: u64) {
        let wait = hook::backoff(
            job.attempts,
            Duration::from_millis(self.cfg.retry_min_ms),
            Duration::from_millis(self.cfg.retry_max_ms),
        );
        let mut t = self.table.lock();
        if let Some(d) = find_delivery(&mut t, &job.esc_id, &job.target, job.round) {
            d.in_flight = false;
            d.last_error = Some(error);
            d.next_at = now + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        }
    }

    /// Forgets resolved escalations older than the retention period and
    /// cuts the store down to what is still kept. Open and acknowledged
    /// ones are kept whatever their age.
    async fn retain(&self) -> Result<(), EscalationError> {
        let now = now_ms();
        let keep_from = now.saturating_sub(self.cfg.retention_days.saturating_mul(86_400_000));
        let cutoff = {
            let mut t = self.table.lock();
            t.retain(|_, e| e.esc.state != State::Resolved || e.esc.created_ts >= keep_from);
            t.values()
                .map(|e| e.esc.created_ts)
                .min()
                .map_or(keep_from, |oldest| oldest.min(keep_from))
        };
        match &self.backing {
            Backing::File(store) => {
                let dropped = store.retain_since(cutoff).await?;
                if dropped > 0 {
                    tracing::info!(
                        records = dropped,
                        "escalation retention removed old records"
                    );
                }
            }
            Backing::Redis { log, .. } if self.worker.load(Ordering::Acquire) => log
                .trim_before(cutoff)
                .await
                .map_err(|e| EscalationError::Shared(e.to_string()))?,
            Backing::Redis { .. } => {}
        }
        Ok(())
    }
}

struct Job {
    esc_id: String,
    target: String,
    tier: u32,
    round: u32,
    hook: usize,
    attempts: u32,
    out: Outgoing,
}

fn find_delivery<'a>(
    t: &'a mut HashMap<String, Entry>,
    esc_id: &str,
    target: &str,
    round: u32,
) -> Option<&'a mut Delivery> {
    t.get_mut(esc_id)?
        .deliveries
        .iter_mut()
        .find(|d| d.target == target && d.round == round)
}

fn view(e: &Entry) -> Value {
    let mut v = serde_json::to_value(&e.esc).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "deliveries".into(),
            serde_json::to_value(&e.deliveries).unwrap_or(Value::Null),
        );
    }
    v
}

/// A stored record (with the store's `id`) back into an event.
fn event_from_record(mut v: Value) -> Result<Event, serde_json::Error> {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
    }
    serde_json::from_value(v)
}

/// `type` first, for people reading frames.
fn wire(v: Value) -> String {
    let Value::Object(mut o) = v else {
        return v.to_string();
    };
    let mut out = serde_json::Map::new();
    if let Some(t) = o.remove("type") {
        out.insert("type".into(), t);
    }
    out.extend(o);
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct CountingHook {
        name: String,
        calls: AtomicU32,
        fail: bool,
    }

    impl Hook for CountingHook {
        fn name(&self) -> &str {
            &self.name
        }

        fn deliver<'a>(&'a self, _out: &'a Outgoing) -> BoxFuture<'a, Result<(), HookError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.fail {
                    Err(HookError::Status(500))
                } else {
                    Ok(())
                }
            })
        }
    }

    fn cfg() -> EscalationConfig {
        let text = include_str!("../../config/default.toml");
        let full: crate::config::Config = toml::from_str(text).expect("default config");
        let mut c = full.escalation;
        c.retry_min_ms = 1;
        c.retry_max_ms = 2;
        c.webhook_attempts = 2;
        c
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hearth-esc-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn hook(name: &str, fail: bool) -> Arc<CountingHook> {
        Arc::new(CountingHook {
            name: name.into(),
            calls: AtomicU32::new(0),
            fail,
        })
    }

    fn raise_req() -> Raise {
        Raise {
            level: "imminent".into(),
            room: "anxiety".into(),
            peer: Person {
                id: "p_1".into(),
                name: "Quiet Heron".into(),
            },
            categories: vec!["suicide".into()],
            signals: vec!["en.plan.tonight".into()],
            excerpt: vec![],
        }
    }

    fn staff() -> StaffRef {
        StaffRef {
            id: "s_1".into(),
            name: "Dr Ada".into(),
            role: "clinician".into(),
        }
    }

    fn open(d: &std::path::Path, hooks: Vec<Vec<Arc<dyn Hook>>>) -> Arc<Escalations> {
        Arc::new(
            Escalations::open(cfg(), d, hooks, Arc::new(Metrics::default()), None).expect("open"),
        )
    }

    async fn settle(svc: &Arc<Escalations>) {
        for _ in 0..50 {
            svc.start_due();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn state_and_pending_deliveries_survive_a_reopen() {
        let d = dir();
        let id = {
            let svc = open(&d, vec![vec![hook("a", true) as Arc<dyn Hook>]]);
            let e = svc.raise(raise_req()).await.expect("raise");
            svc.ack(&e.id, staff()).await.expect("ack");
            e.id
        };
        // Reopened as after a crash: acknowledged, delivery still pending.
        let ok = hook("a", false);
        let svc = open(&d, vec![vec![ok.clone() as Arc<dyn Hook>]]);
        let v = svc.view(&id).expect("kept");
        assert_eq!(v["state"], "acknowledged");
        assert_eq!(v["acknowledged"]["by"]["name"], "Dr Ada");
        assert_eq!(v["deliveries"][0]["state"], "pending");
        settle(&svc).await;
        assert_eq!(ok.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            svc.view(&id).expect("kept")["deliveries"][0]["state"],
            "delivered"
        );
        drop(svc);
        // Delivered is remembered too: no repeat after another restart.
        let again = hook("a", false);
        let svc = open(&d, vec![vec![again.clone() as Arc<dyn Hook>]]);
        settle(&svc).await;
        assert_eq!(again.calls.load(Ordering::SeqCst), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_failing_hook_is_dead_lettered_after_the_configured_attempts() {
        let d = dir();
        let bad = hook("bad", true);
        let svc = open(&d, vec![vec![bad.clone() as Arc<dyn Hook>]]);
        let e = svc.raise(raise_req()).await.expect("raise");
        settle(&svc).await;
        assert_eq!(bad.calls.load(Ordering::SeqCst), 2);
        let v = svc.view(&e.id).expect("kept");
        assert_eq!(v["deliveries"][0]["state"], "dead");
        assert_eq!(
            v["deliveries"][0]["last_error"],
            "the target answered HTTP 500"
        );
        assert_eq!(v["state"], "open", "a dead letter does not close anything");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn resolve_needs_an_existing_unresolved_escalation_and_keeps_the_note() {
        let d = dir();
        let svc = open(&d, vec![]);
        let e = svc.raise(raise_req()).await.expect("raise");
        assert!(matches!(
            svc.ack("esc_missing", staff()).await,
            Err(EscalationError::NotFound(_))
        ));
        let r = svc
            .resolve(&e.id, staff(), Some("  safe at home  ".into()))
            .await
            .expect("resolve");
        assert_eq!(r.state, State::Resolved);
        assert_eq!(
            r.resolved.as_ref().and_then(|t| t.note.as_deref()),
            Some("safe at home")
        );
        assert!(r.acknowledged.is_some(), "resolving implies acknowledging");
        assert!(matches!(
            svc.ack(&e.id, staff()).await,
            Err(EscalationError::Resolved(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn deadlines_move_up_the_tiers_and_stop_at_the_limit() {
        let d = dir();
        let mut c = cfg();
        c.ack_imminent_secs = 1;
        c.max_reescalations = 2;
        let t1 = hook("t1", false);
        let t2 = hook("t2", false);
        let hooks = vec![
            vec![t1.clone() as Arc<dyn Hook>],
            vec![t2.clone() as Arc<dyn Hook>],
        ];
        let svc = Arc::new(
            Escalations::open(c, &d, hooks, Arc::new(Metrics::default()), None).expect("open"),
        );
        let e = svc.raise(raise_req()).await.expect("raise");
        // Pretend the deadline passed, three times over.
        for _ in 0..3 {
            svc.table
                .lock()
                .get_mut(&e.id)
                .expect("entry")
                .esc
                .ack_deadline_ts = 0;
            svc.deadlines().await;
        }
        let got = svc.get(&e.id).expect("kept");
        assert_eq!(
            (got.tier, got.round),
            (2, 3),
            "two re-escalations, then it stays"
        );
        settle(&svc).await;
        assert_eq!(t1.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            t2.calls.load(Ordering::SeqCst),
            2,
            "the last tier is told again"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn retention_drops_old_resolved_records_but_never_open_ones() {
        let d = dir();
        let svc = open(&d, vec![]);
        let old_open = svc.raise(raise_req()).await.expect("raise");
        let old_resolved = svc.raise(raise_req()).await.expect("raise");
        svc.resolve(&old_resolved.id, staff(), None)
            .await
            .expect("resolve");
        for e in svc.table.lock().values_mut() {
            e.esc.created_ts = 1;
        }
        svc.retain().await.expect("retain");
        assert!(svc.get(&old_open.id).is_some());
        assert!(svc.get(&old_resolved.id).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
