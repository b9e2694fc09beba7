//! Fan-out: how a published message gets its `seq`, lands in room history
//! and reaches every node's local members.
//!
//! Owns the `Fanout` trait, the history slice type and the backends (today
//! `memory`; `redis` arrives with cluster mode). Backends hand deliveries to
//! a `Sink` that the hub gives them, in `seq` order per room; they never
//! reach into hub state, sockets or sessions.

pub mod memory;

use std::future::Future;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use crate::protocol::{Member, Since};

/// Receives each published message, once, in `seq` order per room.
pub trait Sink: Send + Sync + 'static {
    /// `frame` is the encoded `message` event; recipients share its bytes.
    fn deliver(&self, room: u32, seq: u64, frame: &Utf8Bytes);
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
        }
    }
}
