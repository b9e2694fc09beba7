//! Room membership: who is in each room and how to reach their connection.
//!
//! Owns each room's member table behind its own lock, and is the `Sink` the
//! fan-out backend delivers into. It must not number messages or keep
//! history (that is the backend's) and never awaits: pushing into a
//! connection's `Outbox` is synchronous and bounded.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;

use crate::config::RoomConfig;
use crate::fanout::Sink;
use crate::metrics::Metrics;
use crate::protocol::{Member, MemberId, PresenceEvent};
use crate::session::outbox::{Outbox, Pushed};

/// How a member's connection currently receives the room's messages.
pub(crate) enum Attach {
    /// Receives every message as it is published.
    Live { conn: u64, outbox: Arc<Outbox> },
    /// Joining: messages published meanwhile wait here (bounded) until the
    /// `joined` reply, with its history, has been queued.
    Pending {
        conn: u64,
        outbox: Arc<Outbox>,
        held: Vec<(u64, Utf8Bytes)>,
    },
    /// Resumed on a new connection but not re-joined yet: still a member (no
    /// presence flap), receives nothing until it sends `join` with `since`.
    Paused { conn: u64 },
    /// The connection dropped; the member stays for the resume grace period.
    Detached { conn: u64 },
}

impl Attach {
    pub(crate) fn conn(&self) -> u64 {
        match self {
            Attach::Live { conn, .. }
            | Attach::Pending { conn, .. }
            | Attach::Paused { conn }
            | Attach::Detached { conn } => *conn,
        }
    }
}

pub(crate) struct RoomMember {
    pub(crate) member: Member,
    pub(crate) attach: Attach,
}

#[derive(Default)]
pub(crate) struct RoomState {
    /// Keyed by the identity's internal number.
    pub(crate) members: HashMap<u64, RoomMember>,
}

pub(crate) struct Room {
    pub(crate) idx: u32,
    pub(crate) cfg: RoomConfig,
    // parking_lot: held to change or walk the member table, never across
    // `.await`. Lock order: a backend's room log, then this.
    pub(crate) state: Mutex<RoomState>,
}

/// Every room on this node, addressed by index (the backend's key) or id.
pub(crate) struct RoomTable {
    pub(crate) rooms: Vec<Room>,
    by_id: HashMap<String, u32>,
    metrics: Arc<Metrics>,
    /// Frames a joining member may hold before it counts as too slow.
    pending_limit: usize,
}

impl RoomTable {
    pub(crate) fn new(
        cfgs: &[RoomConfig],
        metrics: Arc<Metrics>,
        pending_limit: usize,
    ) -> RoomTable {
        let rooms: Vec<Room> = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| Room {
                idx: i as u32,
                cfg: c.clone(),
                state: Mutex::new(RoomState::default()),
            })
            .collect();
        let by_id = rooms.iter().map(|r| (r.cfg.id.clone(), r.idx)).collect();
        RoomTable {
            rooms,
            by_id,
            metrics,
            pending_limit,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Room> {
        self.by_id.get(id).and_then(|i| self.rooms.get(*i as usize))
    }

    pub(crate) fn by_idx(&self, idx: u32) -> Option<&Room> {
        self.rooms.get(idx as usize)
    }

    /// Queues a frame for a live member, counting a 4009 when it overflows.
    pub(crate) fn push(&self, outbox: &Outbox, frame: Utf8Bytes) {
        if outbox.push(frame) == Pushed::Overflowed {
            Metrics::inc(&self.metrics.slow_consumer_disconnects);
        }
    }

    /// Sends a presence event to every live member except `except`.
    pub(crate) fn presence(
        &self,
        st: &RoomState,
        room: &str,
        joined: Option<&Member>,
        left: Option<&str>,
        except: u64,
    ) {
        let ev = PresenceEvent {
            ty: "presence",
            room,
            joined,
            left: left.map(|id| MemberId { id }),
        };
        let Ok(text) = serde_json::to_string(&ev) else {
            return;
        };
        let frame: Utf8Bytes = text.into();
        for (key, m) in &st.members {
            if *key == except {
                continue;
            }
            if let Attach::Live { outbox, .. } = &m.attach {
                self.push(outbox, frame.clone());
            }
        }
    }
}

impl Sink for RoomTable {
    fn deliver(&self, room: u32, seq: u64, frame: &Utf8Bytes) {
        let Some(room) = self.by_idx(room) else {
            return;
        };
        let mut st = room.state.lock();
        let mut out = 0u64;
        for m in st.members.values_mut() {
            match &mut m.attach {
                Attach::Live { outbox, .. } => {
                    if outbox.push(frame.clone()) == Pushed::Overflowed {
                        Metrics::inc(&self.metrics.slow_consumer_disconnects);
                    }
                    out += 1;
                }
                Attach::Pending { outbox, held, .. } => {
                    if held.len() >= self.pending_limit {
                        if !outbox.is_closed() {
                            outbox.close(crate::session::outbox::CloseReason {
                                code: crate::protocol::close::TOO_SLOW,
                                reason: "too slow to keep up; reconnect with resume and since",
                            });
                            Metrics::inc(&self.metrics.slow_consumer_disconnects);
                        }
                    } else {
                        held.push((seq, frame.clone()));
                    }
                }
                Attach::Paused { .. } | Attach::Detached { .. } => {}
            }
        }
        drop(st);
        Metrics::add(&self.metrics.messages_out, out);
    }
}
