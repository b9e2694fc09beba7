//! The cluster backend: numbering, history and fan-out through Redis, so
//! every node serves the same rooms in the same order.
//!
//! Owns this node's Redis connections for room traffic: one command
//! connection (the two Lua scripts below) and one subscriber connection
//! (room channels), their health, reconnects and catch-up. It hands each
//! publication to the hub's `Sink`, once, in `seq` order per room; it never
//! touches hub state, sessions or sockets.
//!
//! Publishing is one script per message: it numbers the message in the
//! room's meta hash, appends it to the room's history stream (trimmed by
//! count and age) and PUBLISHes it, atomically, so all nodes see one order
//! with no gaps. Pub/sub delivers at most once, so this node keeps a cursor
//! (epoch, last seq) per subscribed room and repairs any hole from the
//! stream. When the history itself was lost (the epoch changed, or what is
//! missing was trimmed), members are closed with 4009 so their clients
//! re-join with `since` and are told about the gap honestly.

mod cluster;
mod escalations;
mod link;

pub use cluster::{ClusterJoin, JoinOutcome, Sanctions, SessionRecord};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use redis::{PushInfo, PushKind, Script, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use escalations::EscalationLog;
use link::{Link, SubLink, Target};

use super::memory::new_epoch;
use super::{Control, Draft, EventKind, Fanout, FanoutError, HistorySlice, Sink};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{MessageEvent, Since};

/// Numbers, stores and publishes one message.
///
/// The meta hash holds `epoch`, `seq` and `ms` (the last stream id's time,
/// so ids keep growing even if the clock steps back). If it is missing the
/// room starts a new epoch and drops any stale history. Stream ids are
/// `<ms>-<seq>`: age trimming is a plain `XTRIM MINID`, and the seq of an
/// entry is in its id. The frame is assembled here so the seq inside it is
/// the one Redis assigned.
const PUBLISH_LUA: &str = r#"
-- KEYS: 1 room meta hash, 2 room history stream, 3 room rate limiter,
--       4 room settings hash, 5 the sender's slow-mode key in this room
-- ARGV: 1 fresh epoch, 2 frame before seq, 3 frame after seq,
--       4 history max, 5 history ttl ms, 6 channel,
--       7 room emission interval (us), 8 room burst,
--       9 publish command (PUBLISH, or SPUBLISH on a Redis Cluster),
--       10 '1' when the sender is a peer (limits and slow mode apply)
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[10] == '1' then
  local interval = tonumber(ARGV[7])
  local tat = tonumber(redis.call('GET', KEYS[3])) or now_us
  if tat < now_us then tat = now_us end
  local new_tat = tat + interval
  local wait = new_tat - now_us - interval * tonumber(ARGV[8])
  if wait > 0 then return {0, math.ceil(wait / 1000), 1} end
  local slow = tonumber(redis.call('HGET', KEYS[4], 'slow') or '0')
  if slow > 0 then
    if not redis.call('SET', KEYS[5], '1', 'NX', 'PX', slow * 1000) then
      return {0, math.max(1, redis.call('PTTL', KEYS[5])), 2}
    end
  end
  redis.call('SET', KEYS[3], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now_us) / 1000) + 1)
end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'ms')
local epoch, seq, ms = m[1], tonumber(m[2]), tonumber(m[3])
if not epoch or not seq then
  epoch, seq, ms = ARGV[1], 0, 0
  redis.call('DEL', KEYS[2])
end
local now = math.floor(now_us / 1000)
if not ms or now > ms then ms = now end
seq = seq + 1
local s = string.format('%d', seq)
redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', s, 'ms', string.format('%d', ms))
local frame = ARGV[2] .. s .. ARGV[3]
local ttl = tonumber(ARGV[5])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], string.format('%d-%d', ms, seq), 'f', frame)
redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', now - ttl))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call(ARGV[9], ARGV[6], 'm ' .. epoch .. ' ' .. s .. ' ' .. frame)
return {epoch, seq}
"#;

/// The room's epoch, latest seq and the history a join or a catch-up needs,
/// read atomically (oldest first, as id/frame pairs).
const HISTORY_LUA: &str = r#"
-- KEYS: 1 room meta hash, 2 room history stream
-- ARGV: 1 fresh epoch, 2 since seq (-1 = none), 3 since epoch,
--       4 on_join count, 5 history max, 6 history ttl ms
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local epoch, seq = m[1], tonumber(m[2])
if not epoch or not seq then
  epoch, seq = ARGV[1], 0
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', '0', 'ms', '0')
  redis.call('DEL', KEYS[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', now - tonumber(ARGV[6])))
local since = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
if since >= 0 and ARGV[3] == epoch and since <= seq then
  n = math.min(seq - since, tonumber(ARGV[5]))
end
local out = {epoch, seq}
if n > 0 then
  local r = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', n)
  for i = #r, 1, -1 do
    out[#out + 1] = r[i][1]
    out[#out + 1] = r[i][2][2]
  end
end
return out
"#;

/// Redis names of one room. The `{…}` hash tag keeps a room's keys and
/// channel on one shard of a Redis Cluster.
struct RoomKeys {
    room_id: String,
    /// Hash tag of the room, for per-sender keys in the same slot.
    tag: String,
    meta: String,
    hist: String,
    rate: String,
    members: String,
    owners: String,
    settings: String,
    watchers: String,
    channel: String,
    /// How long this room's history is kept (care rooms keep theirs for
    /// the escalation retention).
    ttl_ms: u64,
}

/// Whether this node is subscribed to a room's channel, and on which
/// subscriber connection (a reconnect makes older ones stale).
#[derive(Default, Clone, Copy)]
struct SubState {
    subscribed: bool,
    generation: u64,
}

/// What the dispatcher works through, in order.
enum Event {
    Push(PushInfo),
    /// Check a room against Redis and repair what was missed (after a
    /// reconnect, or when the queue overflowed).
    Resync(u32),
}

/// Where this node's delivery of a room stands.
struct Cursor {
    epoch: Arc<str>,
    seq: u64,
}

/// What the history script returned.
struct Fetched {
    epoch: Arc<str>,
    seq: u64,
    items: Vec<(u64, Utf8Bytes)>,
    gap: bool,
}

pub struct RedisFanout {
    shared: Arc<Shared>,
    // parking_lot: taken once, by `spawn`.
    events_rx: Mutex<Option<mpsc::Receiver<Event>>>,
}

struct Shared {
    prefix: String,
    /// This process in the cluster: node id plus a per-process nonce.
    instance: String,
    ctl_channel: String,
    control: OnceLock<Arc<dyn Control>>,
    target: Target,
    /// PUBLISH, or SPUBLISH on a Redis Cluster.
    publish_cmd: &'static str,
    // parking_lot: the command connection once made (it reconnects by
    // itself), cloned out, never held across `.await`.
    cmd: Mutex<Option<Link>>,
    keys: Vec<RoomKeys>,
    by_channel: HashMap<Vec<u8>, u32>,
    // tokio mutex: held across SUBSCRIBE/UNSUBSCRIBE so a join never reads
    // history before its room's subscription is confirmed.
    subs: Vec<tokio::sync::Mutex<SubState>>,
    /// Rooms this node wants (read by the dispatcher without waiting).
    wanted: Vec<AtomicBool>,
    // parking_lot: the current subscriber connection, cloned out, never
    // held across `.await`.
    sub_conn: Mutex<Option<(u64, SubLink)>>,
    sink: Arc<dyn Sink>,
    publish: Script,
    history: Script,
    join: Script,
    leave: Script,
    limit: Script,
    delete: Script,
    /// Room limit for the publish script: emission interval (us), burst.
    room_rate: (u64, u32),
    node_timeout: Duration,
    sweep_every: Duration,
    max: usize,
    timeout: Duration,
    health_every: Duration,
    backoff: (Duration, Duration),
    cmd_up: AtomicBool,
    sub_up: AtomicBool,
    /// The cluster's address-tag key has been handed to the hub.
    have_address_key: AtomicBool,
    /// This instance's heartbeat key has been written at least once.
    beating: AtomicBool,
    events: mpsc::Sender<Event>,
    overflowed: Arc<AtomicBool>,
    lost: Arc<Notify>,
    metrics: Arc<Metrics>,
}

fn unavailable(what: impl std::fmt::Display) -> FanoutError {
    FanoutError::Unavailable(format!("redis: {what}"))
}

impl RedisFanout {
    /// Sets up the backend without connecting: a node whose Redis is down
    /// at start still starts, reports not ready and keeps retrying.
    pub fn new(
        cfg: &Config,
        node: &str,
        sink: Arc<dyn Sink>,
        metrics: Arc<Metrics>,
    ) -> Result<RedisFanout, FanoutError> {
        let c = &cfg.cluster;
        let target = Target::parse(&cfg.server.redis_url)?;
        let timeout = Duration::from_millis(c.command_timeout_ms);
        let backoff = (
            Duration::from_millis(c.reconnect_min_ms),
            Duration::from_millis(c.reconnect_max_ms),
        );
        let keys: Vec<RoomKeys> = cfg
            .rooms
            .iter()
            .map(|r| {
                let tag = format!("{}:{{room:{}}}", c.key_prefix, r.id);
                RoomKeys {
                    room_id: r.id.clone(),
                    meta: format!("{tag}:meta"),
                    hist: format!("{tag}:hist"),
                    rate: format!("{tag}:rate"),
                    members: format!("{tag}:members"),
                    owners: format!("{tag}:owners"),
                    settings: format!("{tag}:settings"),
                    watchers: format!("{tag}:watchers"),
                    channel: format!("{tag}:msg"),
                    ttl_ms: if r.care {
                        cfg.escalation.retention_days.saturating_mul(86_400_000)
                    } else {
                        cfg.history.ttl_secs.saturating_mul(1000)
                    },
                    tag,
                }
            })
            .collect();
        let by_channel = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.channel.as_bytes().to_vec(), i as u32))
            .collect();
        let (events, rx) = mpsc::channel(c.fanout_queue);
        Metrics::set_flag(&metrics.cluster, true);
        let rl = &cfg.rate_limits;
        let room_interval_us = (1_000_000 / u64::from(rl.room_messages_per_second.max(1))).max(1);
        Ok(RedisFanout {
            shared: Arc::new(Shared {
                prefix: c.key_prefix.clone(),
                instance: format!("{node}#{}", new_epoch()),
                ctl_channel: format!("{}:ctl", c.key_prefix),
                control: OnceLock::new(),
                join: Script::new(cluster::JOIN_LUA),
                leave: Script::new(cluster::LEAVE_LUA),
                limit: Script::new(cluster::LIMIT_LUA),
                delete: Script::new(cluster::DELETE_LUA),
                room_rate: (room_interval_us, rl.room_messages_burst.max(1)),
                node_timeout: Duration::from_millis(c.node_timeout_ms),
                sweep_every: Duration::from_millis(c.sweep_interval_ms),
                publish_cmd: target.publish_command(),
                target,
                cmd: Mutex::new(None),
                subs: keys.iter().map(|_| Default::default()).collect(),
                wanted: keys.iter().map(|_| AtomicBool::new(false)).collect(),
                keys,
                by_channel,
                sub_conn: Mutex::new(None),
                sink,
                publish: Script::new(PUBLISH_LUA),
                history: Script::new(HISTORY_LUA),
                max: cfg.history.max,
                timeout,
                health_every: Duration::from_millis(c.health_interval_ms),
                backoff,
                cmd_up: AtomicBool::new(false),
                sub_up: AtomicBool::new(false),
                have_address_key: AtomicBool::new(false),
                beating: AtomicBool::new(false),
                events,
                overflowed: Arc::new(AtomicBool::new(false)),
                lost: Arc::new(Notify::new()),
                metrics,
            }),
            events_rx: Mutex::new(Some(rx)),
        })
    }

    /// Where control messages from other nodes go (session takeovers).
    pub fn set_control(&self, control: Arc<dyn Control>) {
        let _ = self.shared.control.set(control);
    }

    /// Starts the subscriber, dispatcher, health and heartbeat tasks.
    pub fn spawn(&self, tracker: &TaskTracker, shutdown: &CancellationToken) {
        let Some(rx) = self.events_rx.lock().take() else {
            return;
        };
        let sh = self.shared.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move { sh.dispatch(rx, stop).await });
        let sh = self.shared.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move { sh.supervise(stop).await });
        let sh = self.shared.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move { sh.health(stop).await });
        let sh = self.shared.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move { sh.upkeep(stop).await });
    }

    /// Redis answers commands and the subscriber connection is up.
    pub fn is_ready(&self) -> bool {
        self.shared.cmd_up.load(Ordering::Relaxed) && self.shared.sub_up.load(Ordering::Relaxed)
    }

    /// Subscribes this node to the room (once) before a join reads its
    /// history, so nothing published after that read can be missed.
    pub async fn prepare(&self, room: u32) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let slot = sh
            .subs
            .get(room as usize)
            .ok_or(FanoutError::NoRoom(room))?;
        let mut st = slot.lock().await;
        let current = sh.sub_conn.lock().clone();
        let Some((generation, mut conn)) = current else {
            return Err(unavailable("not connected"));
        };
        if st.subscribed && st.generation == generation {
            return Ok(());
        }
        sh.wanted[room as usize].store(true, Ordering::Relaxed);
        let channel = &sh.keys[room as usize].channel;
        match tokio::time::timeout(sh.timeout, conn.subscribe_room(channel)).await {
            Ok(Ok(())) => {
                *st = SubState {
                    subscribed: true,
                    generation,
                };
                Ok(())
            }
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("subscribe timed out")),
        }
    }

    /// Unsubscribes from rooms that have no local members any more.
    pub async fn release_idle(&self, has_members: impl Fn(u32) -> bool) {
        let sh = &self.shared;
        for (i, slot) in sh.subs.iter().enumerate() {
            let room = i as u32;
            if has_members(room) {
                continue;
            }
            let mut st = slot.lock().await;
            // Checked again under the lock: a join may have arrived meanwhile.
            if !st.subscribed || has_members(room) {
                continue;
            }
            sh.wanted[i].store(false, Ordering::Relaxed);
            *st = SubState::default();
            let current = sh.sub_conn.lock().clone();
            if let Some((_, mut conn)) = current {
                let channel = &sh.keys[i].channel;
                // A failure only leaves an extra subscription until the
                // next reconnect, which subscribes wanted rooms only.
                let _ = tokio::time::timeout(sh.timeout, conn.unsubscribe_room(channel)).await;
            }
        }
    }

    /// Trims history past its age in every room, so a quiet room forgets
    /// on time too (publishing trims the busy ones).
    pub async fn expire(&self) {
        for i in 0..self.shared.keys.len() {
            let _ = self.shared.fetch(i as u32, None, 0).await;
        }
    }
}

impl Shared {
    /// The command connection, if it has been made.
    fn link(&self) -> Result<Link, FanoutError> {
        self.cmd
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected yet"))
    }

    /// Runs one command within the command timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, FanoutError> {
        let mut con = self.link()?;
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut con)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    fn room_keys(&self, room: u32) -> Result<&RoomKeys, FanoutError> {
        self.keys
            .get(room as usize)
            .ok_or(FanoutError::NoRoom(room))
    }

    /// Runs a script within the command timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, FanoutError> {
        let mut con = self.link()?;
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut con)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    async fn fetch(
        &self,
        room: u32,
        since: Option<&Since>,
        on_join: usize,
    ) -> Result<Fetched, FanoutError> {
        let keys = self
            .keys
            .get(room as usize)
            .ok_or(FanoutError::NoRoom(room))?;
        let (since_seq, since_epoch) = match since {
            Some(s) => (i64::try_from(s.seq).unwrap_or(i64::MAX), s.epoch.as_str()),
            None => (-1, ""),
        };
        let mut inv = self.history.key(&keys.meta);
        inv.key(&keys.hist)
            .arg(new_epoch().as_ref())
            .arg(since_seq)
            .arg(since_epoch)
            .arg(on_join)
            .arg(self.max)
            .arg(keys.ttl_ms);
        let reply: Vec<Value> = self.run(inv).await?;
        let mut it = reply.into_iter();
        let epoch: Arc<str> = match it.next() {
            Some(v) => text(v).ok_or_else(|| unavailable("bad epoch in history reply"))?,
            None => return Err(unavailable("empty history reply")),
        }
        .into();
        let seq = match it.next() {
            Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            _ => return Err(unavailable("bad seq in history reply")),
        };
        let mut items = Vec::new();
        while let (Some(id), Some(frame)) = (it.next(), it.next()) {
            let (Some(id), Some(frame)) = (text(id), text(frame)) else {
                return Err(unavailable("bad entry in history reply"));
            };
            let entry_seq = id
                .rsplit_once('-')
                .and_then(|(_, s)| s.parse::<u64>().ok())
                .ok_or_else(|| unavailable("bad stream id in history"))?;
            items.push((entry_seq, Utf8Bytes::from(frame)));
        }
        let gap = match since {
            None => false,
            Some(s) if *s.epoch != *epoch || s.seq > seq => true,
            Some(s) => s.seq < seq && items.first().map(|(n, _)| *n) != Some(s.seq + 1),
        };
        Ok(Fetched {
            epoch,
            seq,
            items,
            gap,
        })
    }

    /// Keeps one subscriber connection alive: connect, re-subscribe the
    /// wanted rooms, ask the dispatcher to repair them, watch the
    /// connection, and on loss start again with backoff and jitter.
    async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut delay = self.backoff.0;
        let mut generation = 0u64;
        loop {
            if let Some(conn) = self.connect_subscriber().await {
                generation += 1;
                *self.sub_conn.lock() = Some((generation, conn.clone()));
                if self.resubscribe(generation, &conn).await {
                    delay = self.backoff.0;
                    self.sub_up.store(true, Ordering::Relaxed);
                    tracing::info!("redis subscriber connected");
                    self.watch(conn, &shutdown).await;
                    self.sub_up.store(false, Ordering::Relaxed);
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tracing::warn!("redis subscriber connection lost; reconnecting");
                }
                *self.sub_conn.lock() = None;
                Metrics::inc(&self.metrics.redis_reconnects);
            }
            // Full jitter on the upper half, so nodes spread out.
            let half = delay / 2;
            let wait = half + half.mul_f64(rand::random::<f64>());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(self.backoff.1);
        }
    }

    async fn connect_subscriber(&self) -> Option<SubLink> {
        let tx = self.events.clone();
        let overflowed = self.overflowed.clone();
        let lost = self.lost.clone();
        // Runs on the connection's reader: it must not block, so a full
        // queue drops the push and flags a resync from the history stream.
        let push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            if info.kind == PushKind::Disconnection {
                lost.notify_waiters();
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Event::Push(info)) {
                overflowed.store(true, Ordering::Release);
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, self.target.subscriber(self.timeout, push)).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis subscriber connect failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn resubscribe(&self, generation: u64, conn: &SubLink) -> bool {
        let mut c = conn.clone();
        match tokio::time::timeout(self.timeout, c.subscribe_control(&self.ctl_channel)).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
        for (i, slot) in self.subs.iter().enumerate() {
            let mut st = slot.lock().await;
            if !st.subscribed {
                continue;
            }
            if st.generation != generation {
                let mut c = conn.clone();
                let channel = &self.keys[i].channel;
                match tokio::time::timeout(self.timeout, c.subscribe_room(channel)).await {
                    Ok(Ok(())) => st.generation = generation,
                    _ => return false,
                }
            }
            drop(st);
            // Anything published while we were away is in the stream.
            if self.events.send(Event::Resync(i as u32)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Returns when the subscriber connection is gone or on shutdown.
    async fn watch(&self, conn: SubLink, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.lost.notified() => return,
                _ = tokio::time::sleep(self.health_every) => {}
            }
            let mut c = conn.clone();
            match tokio::time::timeout(self.timeout, c.ping()).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    }

    /// Pings through the command connection; drives readiness.
    async fn health(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if self.cmd.lock().is_none() {
                let made = self.target.command_link(self.timeout, self.backoff);
                match tokio::time::timeout(self.timeout, made).await {
                    Ok(Ok(link)) => *self.cmd.lock() = Some(link),
                    Ok(Err(e)) => tracing::debug!(error = %e, "redis connect failed"),
                    Err(_) => tracing::debug!("redis connect timed out"),
                }
            }
            let mut up = self.query::<Value>(redis::cmd("PING")).await.is_ok();
            if up && !self.have_address_key.load(Ordering::Relaxed) {
                self.fetch_address_key().await;
            }
            // Not ready before every node tags addresses the same way (a
            // ban's probation must hold on all of them).
            up = up && self.have_address_key.load(Ordering::Relaxed);
            let was = self.cmd_up.swap(up, Ordering::Relaxed);
            if was != up {
                if up {
                    tracing::info!("redis reachable");
                } else {
                    tracing::warn!("redis unreachable: sends get \"unavailable\" until it is back");
                }
            }
            let ready = up && self.sub_up.load(Ordering::Relaxed);
            Metrics::set_flag(&self.metrics.redis_up, ready);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.health_every) => {}
            }
        }
    }

    /// Hands publications to the sink in seq order, repairing holes.
    async fn dispatch(self: Arc<Self>, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        let mut cursors: Vec<Option<Cursor>> = self.keys.iter().map(|_| None).collect();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
            };
            match ev {
                Event::Push(info) => self.on_push(info, &mut cursors).await,
                Event::Resync(room) => {
                    if self.wanted[room as usize].load(Ordering::Relaxed) {
                        self.catch_up(room, &mut cursors).await;
                    }
                }
            }
            if self.overflowed.swap(false, Ordering::AcqRel) {
                tracing::warn!("redis fan-out queue overflowed; catching up from history");
                for room in 0..self.keys.len() as u32 {
                    if self.wanted[room as usize].load(Ordering::Relaxed) {
                        self.catch_up(room, &mut cursors).await;
                    }
                }
            }
        }
    }

    async fn on_push(&self, info: PushInfo, cursors: &mut [Option<Cursor>]) {
        let mut data = info.data.into_iter();
        let Some(Value::BulkString(ch)) = data.next() else {
            return;
        };
        let room = match self.by_channel.get(&ch) {
            Some(r) => *r,
            None => {
                if info.kind == PushKind::Message && ch == self.ctl_channel.as_bytes() {
                    if let Some(Value::BulkString(payload)) = data.next() {
                        self.on_control(&payload);
                    }
                }
                return;
            }
        };
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = data.next() else {
                    return;
                };
                match parse_payload(payload) {
                    Some(Publication::Message { epoch, seq, frame }) => {
                        self.on_message(room, &epoch, seq, frame, cursors).await
                    }
                    Some(Publication::Event {
                        except,
                        frame,
                        kind,
                    }) => self.sink.event(room, &except, &frame, kind),
                    None => tracing::warn!(room, "unreadable publication on a room channel"),
                }
            }
            // A later subscription starts afresh: its joins read history.
            PushKind::Unsubscribe | PushKind::SUnsubscribe => cursors[room as usize] = None,
            _ => {}
        }
    }

    fn on_control(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let mut parts = text.splitn(4, ' ');
        let (Some(kind), Some(by), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if by == self.instance {
            return;
        }
        let Some(c) = self.control.get() else {
            return;
        };
        let rest = parts.next().unwrap_or("");
        match kind {
            "t" => c.taken_over(what),
            "r" => c.revoked(what, rest.parse().unwrap_or(0)),
            "b" => c.banned(what, rest.parse().unwrap_or(0)),
            "p" => {
                if let Ok(tag) = what.parse() {
                    c.probation(tag, rest.parse().unwrap_or(0));
                }
            }
            "k" => c.kicked(what, rest),
            "m" => {
                let mut mr = rest.splitn(2, ' ');
                if let (Some(room), Some(until)) = (mr.next(), mr.next()) {
                    c.muted(what, room, until.parse().unwrap_or(0));
                }
            }
            _ => {}
        }
    }

    async fn on_message(
        &self,
        room: u32,
        epoch: &str,
        seq: u64,
        frame: Utf8Bytes,
        cursors: &mut [Option<Cursor>],
    ) {
        let slot = &mut cursors[room as usize];
        match slot {
            None => {
                // First publication since subscribing: joins took their
                // history after the subscription, so nothing is owed.
                self.sink.deliver(room, seq, &frame);
                *slot = Some(Cursor {
                    epoch: epoch.into(),
                    seq,
                });
                return;
            }
            Some(c) if *c.epoch == *epoch && seq == c.seq + 1 => {
                self.sink.deliver(room, seq, &frame);
                c.seq = seq;
                return;
            }
            Some(c) if *c.epoch == *epoch && seq <= c.seq => return,
            Some(_) => {}
        }
        // A hole or a new epoch: repair from the stream, which already
        // holds this message too.
        self.catch_up(room, cursors).await;
        if let Some(c) = &mut cursors[room as usize] {
            if *c.epoch == *epoch && seq == c.seq + 1 {
                self.sink.deliver(room, seq, &frame);
                c.seq = seq;
            }
        }
    }

    /// Brings a room's delivery up to Redis: delivers what this node missed
    /// after its cursor, or tells members honestly when that is gone.
    async fn catch_up(&self, room: u32, cursors: &mut [Option<Cursor>]) {
        let slot = &mut cursors[room as usize];
        let since = slot.as_ref().map(|c| Since {
            seq: c.seq,
            epoch: c.epoch.to_string(),
        });
        let fetched = match self.fetch(room, since.as_ref(), 0).await {
            Ok(f) => f,
            Err(e) => {
                // Kept as is: the next reconnect resyncs the room again.
                tracing::warn!(room, error = %e, "catch-up from history failed");
                return;
            }
        };
        Metrics::inc(&self.metrics.fanout_catchups);
        match slot {
            None => {}
            Some(c) if *c.epoch != *fetched.epoch || fetched.gap => {
                tracing::warn!(
                    room,
                    "room history was lost or trimmed past what this node missed; members must re-join"
                );
                Metrics::inc(&self.metrics.history_resets);
                self.sink.reset(room);
            }
            Some(c) => {
                for (s, f) in &fetched.items {
                    if *s > c.seq {
                        self.sink.deliver(room, *s, f);
                    }
                }
            }
        }
        let seq = match slot {
            Some(c) if *c.epoch == *fetched.epoch && !fetched.gap => c.seq.max(fetched.seq),
            _ => fetched.seq,
        };
        *slot = Some(Cursor {
            epoch: fetched.epoch,
            seq,
        });
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// What arrives on a room channel.
enum Publication {
    /// `m <epoch> <seq> <frame>`: a numbered message.
    Message {
        epoch: String,
        seq: u64,
        frame: Utf8Bytes,
    },
    /// `e <member> <frame>` (presence, deletions), `t <member> <frame>`
    /// (typing) or `w <member> <frame>` (for watching staff only): for
    /// everyone in that audience other than the member `except`.
    Event {
        except: String,
        frame: Utf8Bytes,
        kind: EventKind,
    },
}

fn parse_payload(mut payload: Vec<u8>) -> Option<Publication> {
    let kind = *payload.first()?;
    if payload.get(1) != Some(&b' ') {
        return None;
    }
    let rest = &payload[2..];
    let sp1 = 2 + rest.iter().position(|b| *b == b' ')?;
    let first = std::str::from_utf8(&payload[2..sp1]).ok()?.to_string();
    match kind {
        b'm' => {
            let sp2 = sp1 + 1 + payload[sp1 + 1..].iter().position(|b| *b == b' ')?;
            let seq = std::str::from_utf8(&payload[sp1 + 1..sp2])
                .ok()?
                .parse()
                .ok()?;
            payload.drain(..=sp2);
            let frame = String::from_utf8(payload).ok()?;
            Some(Publication::Message {
                epoch: first,
                seq,
                frame: frame.into(),
            })
        }
        b'e' | b't' | b'w' => {
            payload.drain(..=sp1);
            let frame = String::from_utf8(payload).ok()?;
            Some(Publication::Event {
                except: first,
                frame: frame.into(),
                kind: match kind {
                    b't' => EventKind::Typing,
                    b'w' => EventKind::Staff,
                    _ => EventKind::Room,
                },
            })
        }
        _ => None,
    }
}

/// Splits a `message` event encoded with seq 0 around that seq, so the
/// publish script can put the real one in without re-encoding.
fn split_at_seq(encoded: &str) -> Option<(&str, &str)> {
    // The first match is the field: type, room and id come before it and
    // never contain a quote; the text comes last.
    const MARK: &str = "\"seq\":0";
    let at = encoded.find(MARK)?;
    let (before, rest) = encoded.split_at(at + MARK.len() - 1);
    Some((before, &rest[1..]))
}

impl Fanout for RedisFanout {
    async fn publish(
        &self,
        room: u32,
        room_id: &str,
        draft: Draft<'_>,
    ) -> Result<u64, FanoutError> {
        let sh = &self.shared;
        let keys = sh
            .keys
            .get(room as usize)
            .ok_or(FanoutError::NoRoom(room))?;
        let event = MessageEvent {
            ty: "message",
            room: room_id,
            id: draft.id,
            seq: 0,
            ts: draft.ts,
            from: draft.from,
            text: draft.text,
        };
        let encoded = serde_json::to_string(&event).map_err(unavailable)?;
        let (before, after) = split_at_seq(&encoded).ok_or_else(|| unavailable("bad frame"))?;
        let mut inv = sh.publish.key(&keys.meta);
        let peer = draft.from.role == crate::protocol::Role::Peer;
        inv.key(&keys.hist)
            .key(&keys.rate)
            .key(&keys.settings)
            .key(format!("{}:slow:{}", keys.tag, draft.from.id))
            .arg(new_epoch().as_ref())
            .arg(before)
            .arg(after)
            .arg(sh.max)
            .arg(keys.ttl_ms)
            .arg(&keys.channel)
            .arg(sh.room_rate.0)
            .arg(sh.room_rate.1)
            .arg(sh.publish_cmd)
            .arg(if peer { "1" } else { "0" });
        let reply: Vec<Value> = sh.run(inv).await?;
        match reply.as_slice() {
            [Value::Int(0), Value::Int(wait), Value::Int(kind)] => {
                let retry_after_ms = u64::try_from(*wait).unwrap_or(1).max(1);
                Err(if *kind == 2 {
                    FanoutError::SlowMode { retry_after_ms }
                } else {
                    FanoutError::RoomLimited { retry_after_ms }
                })
            }
            [_, Value::Int(seq)] => Ok(u64::try_from(*seq).unwrap_or(0)),
            _ => Err(unavailable("bad publish reply")),
        }
    }

    async fn history(
        &self,
        room: u32,
        since: Option<&Since>,
        on_join: usize,
    ) -> Result<HistorySlice, FanoutError> {
        let f = self.shared.fetch(room, since, on_join).await?;
        Ok(HistorySlice {
            epoch: f.epoch,
            seq: f.seq,
            items: f.items.into_iter().map(|(_, frame)| frame).collect(),
            gap: f.gap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Member, Role};

    #[test]
    fn splits_a_frame_around_its_seq() {
        let from = Member {
            id: "p_a".into(),
            name: "Quiet Heron".into(),
            role: Role::Peer,
        };
        let event = MessageEvent {
            ty: "message",
            room: "anxiety",
            id: "m_x",
            seq: 0,
            ts: 5,
            from: &from,
            text: "\"seq\":0 in the text",
        };
        let encoded = serde_json::to_string(&event).expect("json");
        let (a, b) = split_at_seq(&encoded).expect("split");
        let whole = format!("{a}42{b}");
        let v: serde_json::Value = serde_json::from_str(&whole).expect("valid json");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["text"], "\"seq\":0 in the text");
    }

    #[test]
    fn parses_publications() {
        match parse_payload(b"m ab12 7 {\"x\":\"a b\"}".to_vec()) {
            Some(Publication::Message { epoch, seq, frame }) => {
                assert_eq!(
                    (epoch.as_str(), seq, frame.as_str()),
                    ("ab12", 7, "{\"x\":\"a b\"}")
                )
            }
            _ => panic!("not a message"),
        }
        match parse_payload(b"t p_abc {\"a\":1}".to_vec()) {
            Some(Publication::Event {
                except,
                frame,
                kind,
            }) => assert_eq!(
                (except.as_str(), frame.as_str(), kind),
                ("p_abc", "{\"a\":1}", EventKind::Typing)
            ),
            _ => panic!("not an event"),
        }
        assert!(parse_payload(b"m nospace".to_vec()).is_none());
        assert!(parse_payload(b"m e x {}".to_vec()).is_none());
        assert!(parse_payload(b"x e 1 {}".to_vec()).is_none());
        assert!(parse_payload(vec![b'm', b' ', b'e', b' ', b'1', b' ', 0xff]).is_none());
    }
}
