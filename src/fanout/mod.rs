//! Fan-out: how a published message gets its `seq`, lands in room history
//! and reaches every node's local members.
//!
//! Owns the `Fanout` trait, the history slice type and the backends:
//! `memory` (embedded mode) and `redis` (cluster mode). Backends hand
//! deliveries to a `Sink` that the hub gives them, in `seq` order per room;
//! they never reach into hub state, sockets or sessions.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use crate::protocol::{Member, Since};

/// Receives each published message, once, in `seq` order per room.
pub trait Sink: Send + Sync + 'static {
    /// `frame` is the encoded `message` event; recipients share its bytes.
    fn deliver(&self, room: u32, seq: u64, frame: &Utf8Bytes);

    /// The room's history was lost (new epoch) or what this node missed is
    /// no longer retained: members receiving the room must re-join with
    /// `since` to learn about the gap.
    fn reset(&self, room: u32);

    /// A room event that is not a message, from another node or this one,
    /// for the audience `kind` names, except the member `except` (an id).
    fn event(&self, room: u32, except: &str, frame: &Utf8Bytes, kind: EventKind);
}

/// Who receives a room event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Presence, deletions: members and watchers; held while joining.
    Room,
    /// Typing: members and watchers, best effort, never held.
    Typing,
    /// Reports and safety flags: watching staff only.
    Staff,
}

/// Cluster control messages for the hub.
pub trait Control: Send + Sync + 'static {
    /// Another node now serves this peer's session: close ours.
    fn taken_over(&self, member_id: &str);

    /// Another node revoked a staff token (its id and expiry, in seconds).
    fn revoked(&self, jti: &str, exp: u64);

    /// Staff on another node muted a peer in a room (until 0 = lifted).
    fn muted(&self, peer: &str, room: &str, until: u64);

    /// Staff on another node kicked a peer from a room.
    fn kicked(&self, peer: &str, room: &str);

    /// Staff on another node banned a peer (until 0 = lifted).
    fn banned(&self, peer: &str, until: u64);

    /// New connections from an address tag are on probation until `until`
    /// (ms), after a ban on another node.
    fn probation(&self, tag: u64, until: u64);

    /// The key every node uses for address tags (from Redis).
    fn address_key(&self, key: [u8; 32]);
}

/// A message ready to be numbered and published.
pub struct Draft<'a> {
    pub id: &'a str,
    pub ts: u64,
    pub from: &'a Member,
    pub text: &'a str,
}

/// What a join sees of a room's history.
#[derive(Debug, Clone)]
pub struct HistorySlice {
    pub epoch: Arc<str>,
    /// The room's latest `seq` when the slice was taken.
    pub seq: u64,
    /// Encoded `message` events, oldest first, all with `seq` ≤ `self.seq`.
    pub items: Vec<Utf8Bytes>,
    /// Some messages the client asked for are gone (expired, trimmed, or
    /// the epoch changed).
    pub gap: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("room index {0} is not known to the fan-out backend")]
    NoRoom(u32),
    #[error("the fan-out backend is unavailable: {0}")]
    Unavailable(String),
    #[error("room message rate exceeded")]
    RoomLimited { retry_after_ms: u64 },
    #[error("slow mode")]
    SlowMode { retry_after_ms: u64 },
}

/// A fan-out backend. Rooms are addressed by the index the hub gave them.
pub trait Fanout: Send + Sync {
    /// Numbers the message, stores it in history and hands it to the sink.
    /// Returns the assigned `seq`.
    fn publish(
        &self,
        room: u32,
        room_id: &str,
        draft: Draft<'_>,
    ) -> impl Future<Output = Result<u64, FanoutError>> + Send;

    /// History for a join: after `since` when given, else the last `on_join`.
    fn history(
        &self,
        room: u32,
        since: Option<&Since>,
        on_join: usize,
    ) -> impl Future<Output = Result<HistorySlice, FanoutError>> + Send;
}

/// The configured backend. An enum rather than `dyn Fanout` so the hot path
/// has no boxing and the trait can use `async` methods.
pub enum Backend {
    Memory(memory::MemoryFanout),
    Redis(redis::RedisFanout),
}

impl Backend {
    /// Forgets the room's history (a care slot given to a new room).
    /// Embedded mode only: cluster mode has no care rooms yet.
    pub fn clear_history(&self, room: u32) {
        if let Backend::Memory(m) = self {
            m.clear(room);
        }
    }

    /// The room's last `n` messages (encoded `message` events, oldest
    /// first), for an escalation's excerpt.
    pub async fn history_for_excerpt(
        &self,
        room: u32,
        n: usize,
    ) -> Result<Vec<Utf8Bytes>, FanoutError> {
        Ok(self.history(room, None, n).await?.items)
    }

    /// Readies the room for a join on this node (cluster mode: subscribes
    /// to its channel before history is read).
    pub async fn prepare(&self, room: u32) -> Result<(), FanoutError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.prepare(room).await,
        }
    }

    /// Removes a message from the room's history. Returns whether it was
    /// there.
    pub async fn delete(&self, room: u32, message: &str) -> Result<bool, FanoutError> {
        match self {
            Backend::Memory(m) => m.delete(room, message, false),
            Backend::Redis(r) => r.delete(room, message, false).await,
        }
    }

    /// Whether a message is in the room's history.
    pub async fn contains(&self, room: u32, message: &str) -> Result<bool, FanoutError> {
        match self {
            Backend::Memory(m) => m.delete(room, message, true),
            Backend::Redis(r) => r.delete(room, message, true).await,
        }
    }

    /// Whether sends can be accepted (`/readyz`).
    pub fn is_ready(&self) -> bool {
        match self {
            Backend::Memory(_) => true,
            Backend::Redis(r) => r.is_ready(),
        }
    }

    /// Periodic upkeep: history expiry, and in cluster mode dropping the
    /// subscriptions of rooms without local members.
    pub async fn maintain(&self, has_members: impl Fn(u32) -> bool) {
        match self {
            Backend::Memory(m) => m.expire(),
            Backend::Redis(r) => {
                r.release_idle(has_members).await;
                r.expire().await;
            }
        }
    }
}

impl Fanout for Backend {
    async fn publish(
        &self,
        room: u32,
        room_id: &str,
        draft: Draft<'_>,
    ) -> Result<u64, FanoutError> {
        match self {
            Backend::Memory(m) => m.publish(room, room_id, draft).await,
            Backend::Redis(r) => r.publish(room, room_id, draft).await,
        }
    }

    async fn history(
        &self,
        room: u32,
        since: Option<&Since>,
        on_join: usize,
    ) -> Result<HistorySlice, FanoutError> {
        match self {
            Backend::Memory(m) => m.history(room, since, on_join).await,
            Backend::Redis(r) => r.history(room, since, on_join).await,
        }
    }
}
