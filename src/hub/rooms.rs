//! Room membership: who is in each room and how to reach their connection.
//!
//! Owns each room's member table behind its own lock, and is the `Sink` the
//! fan-out backend delivers into. It must not number messages or keep
//! history (that is the backend's) and never awaits: pushing into a
//! connection's `Outbox` is synchronous and bounded.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Mutex, RwLock};

use crate::config::RoomConfig;
use crate::fanout::{EventKind, Sink};
use crate::metrics::Metrics;
use crate::protocol::{Member, MemberId, PresenceEvent};
use crate::session::outbox::{Outbox, Pushed};

/// Held events that are not messages sort after every seq.
const EVENT_SEQ: u64 = u64::MAX;

/// How a member's connection currently receives the room's messages.
pub(crate) enum Attach {
    /// Receives every message published after `after` (the seq its
    /// `joined` covered), so a late repair never repeats what it has.
    Live {
        conn: u64,
        outbox: Arc<Outbox>,
        after: u64,
    },
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

    /// The connection's outbox, while it has one attached.
    pub(crate) fn outbox(&self) -> Option<&Arc<Outbox>> {
        match self {
            Attach::Live { outbox, .. } | Attach::Pending { outbox, .. } => Some(outbox),
            Attach::Paused { .. } | Attach::Detached { .. } => None,
        }
    }
}

pub(crate) struct RoomMember {
    pub(crate) member: Member,
    pub(crate) attach: Attach,
}

impl RoomMember {
    /// Ends a join or watch: from now on the connection receives every
    /// message after `after` (the seq its reply covered). Returns what was
    /// held meanwhile, for the caller to queue after the reply.
    pub(crate) fn go_live(
        &mut self,
        conn: u64,
        outbox: &Arc<Outbox>,
        after: u64,
    ) -> Vec<(u64, Utf8Bytes)> {
        let live = Attach::Live {
            conn,
            outbox: outbox.clone(),
            after,
        };
        match std::mem::replace(&mut self.attach, live) {
            Attach::Pending { held, .. } => held,
            _ => Vec::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct RoomState {
    /// Keyed by the identity's internal number.
    pub(crate) members: HashMap<u64, RoomMember>,
    /// Staff watching the room from this node, keyed by connection id: they
    /// receive its traffic and safety events but are not members.
    pub(crate) watchers: HashMap<u64, RoomMember>,
    /// No new peers may join (embedded mode; Redis holds it in cluster mode).
    pub(crate) locked: bool,
    /// Seconds between a peer's messages; 0 = off (embedded mode).
    pub(crate) slow_mode: u64,
    /// When each peer last sent, while slow mode is on (embedded mode).
    pub(crate) last_send: HashMap<u64, std::time::Instant>,
}

/// Who may be in a care room while it is assigned.
#[derive(Debug, Clone)]
pub(crate) struct CareRoom {
    pub(crate) escalation: String,
    /// The person's pseudonymous id.
    pub(crate) peer: String,
    /// Staff the clinicians added (their ids), the opener first.
    pub(crate) staff: Vec<String>,
    /// Who opened it, for `invited.by`.
    pub(crate) by: Member,
    /// Recorded in the escalation and enterable (`false` while a node has
    /// only reserved the slot).
    pub(crate) live: bool,
}

pub(crate) struct Room {
    pub(crate) idx: u32,
    pub(crate) cfg: RoomConfig,
    /// The id clients see: the configured id, or a care room's current one.
    public: RwLock<Arc<str>>,
    /// A care slot's current assignment (`None` = free, or not a slot).
    pub(crate) care: Mutex<Option<CareRoom>>,
    // parking_lot: held to change or walk the member table, never across
    // `.await`. Lock order: a backend's room log, then this.
    pub(crate) state: Mutex<RoomState>,
}

impl Room {
    /// The id clients know this room by.
    pub(crate) fn id(&self) -> Arc<str> {
        self.public.read().clone()
    }
}

/// Every room on this node, addressed by index (the backend's key) or id.
pub(crate) struct RoomTable {
    pub(crate) rooms: Vec<Room>,
    by_id: HashMap<String, u32>,
    /// Assigned care rooms: public id → slot index.
    care_ids: RwLock<HashMap<String, u32>>,
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
                public: RwLock::new(Arc::from(c.id.as_str())),
                care: Mutex::new(None),
                state: Mutex::new(RoomState::default()),
            })
            .collect();
        // Care slots are reached only through their assigned id.
        let by_id = rooms
            .iter()
            .filter(|r| !r.cfg.care)
            .map(|r| (r.cfg.id.clone(), r.idx))
            .collect();
        RoomTable {
            rooms,
            by_id,
            care_ids: RwLock::new(HashMap::new()),
            metrics,
            pending_limit,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Room> {
        let idx = match self.by_id.get(id) {
            Some(i) => Some(*i),
            None if id.starts_with("care-") => self.care_ids.read().get(id).copied(),
            None => None,
        };
        idx.and_then(|i| self.rooms.get(i as usize))
    }

    /// Points a care room id at a slot (the slot's `care` is set by the
    /// caller first).
    pub(crate) fn assign_care(&self, id: &str, slot: u32) {
        if let Some(r) = self.rooms.get(slot as usize) {
            *r.public.write() = Arc::from(id);
            self.care_ids.write().insert(id.to_string(), slot);
        }
    }

    /// Frees a care slot: its id no longer leads anywhere.
    pub(crate) fn release_care(&self, slot: u32) {
        if let Some(r) = self.rooms.get(slot as usize) {
            let id = r.id();
            self.care_ids.write().remove(&*id);
            *r.care.lock() = None;
        }
    }

    /// The configured (public, listed) rooms.
    pub(crate) fn listed(&self) -> impl Iterator<Item = &Room> {
        self.rooms.iter().filter(|r| !r.cfg.care)
    }

    /// The care-room slots.
    pub(crate) fn care_slots(&self) -> impl Iterator<Item = &Room> {
        self.rooms.iter().filter(|r| r.cfg.care)
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

    /// Sends a presence event to every live member and watcher except the
    /// member `except`.
    pub(crate) fn presence(
        &self,
        st: &mut RoomState,
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
        let except_id = st.members.get(&except).map(|m| m.member.id.clone());
        self.fan_event(
            st,
            except_id.as_deref().unwrap_or(""),
            &frame,
            EventKind::Room,
        );
    }

    /// Hands a non-message event to the right audience of a room.
    pub(crate) fn fan_event(
        &self,
        st: &mut RoomState,
        except: &str,
        frame: &Utf8Bytes,
        kind: EventKind,
    ) {
        let pending_limit = self.pending_limit;
        let one = |m: &mut RoomMember| {
            if m.member.id == except {
                return;
            }
            match &mut m.attach {
                Attach::Live { outbox, .. } => {
                    if kind == EventKind::Typing {
                        outbox.push_lossy(frame.clone());
                    } else {
                        self.push(outbox, frame.clone());
                    }
                }
                // Events that arrive while joining follow the `joined`
                // reply, so the member list stays right.
                Attach::Pending { held, .. }
                    if kind != EventKind::Typing && held.len() < pending_limit =>
                {
                    held.push((EVENT_SEQ, frame.clone()));
                }
                _ => {}
            }
        };
        if kind != EventKind::Staff {
            st.members.values_mut().for_each(one);
        }
        let members = &st.members;
        for (conn, w) in st.watchers.iter_mut() {
            // Staff who both joined and watch get each event once (staff
            // events go to watchers only, so they are never doubled).
            let member_too =
                kind != EventKind::Staff && members.values().any(|m| m.attach.conn() == *conn);
            if !member_too {
                one(w);
            }
        }
    }

    /// Queues `frame` to a member or watcher `m` if it is receiving `seq`.
    /// Returns whether it was queued now.
    fn feed(&self, m: &mut RoomMember, seq: u64, frame: &Utf8Bytes) -> bool {
        match &mut m.attach {
            Attach::Live { outbox, after, .. } => {
                if seq <= *after {
                    return false;
                }
                if outbox.push(frame.clone()) == Pushed::Overflowed {
                    Metrics::inc(&self.metrics.slow_consumer_disconnects);
                }
                true
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
                false
            }
            Attach::Paused { .. } | Attach::Detached { .. } => false,
        }
    }
}

impl Sink for RoomTable {
    fn deliver(&self, room: u32, seq: u64, frame: &Utf8Bytes) {
        let Some(room) = self.by_idx(room) else {
            return;
        };
        let mut st = room.state.lock();
        let st = &mut *st;
        let mut out = 0u64;
        for m in st.members.values_mut() {
            if self.feed(m, seq, frame) {
                out += 1;
            }
        }
        for (conn, w) in st.watchers.iter_mut() {
            // Staff who both joined and watch get each message once.
            if !st.members.values().any(|m| m.attach.conn() == *conn) && self.feed(w, seq, frame) {
                out += 1;
            }
        }
        Metrics::add(&self.metrics.messages_out, out);
    }

    fn event(&self, room: u32, except: &str, frame: &Utf8Bytes, kind: EventKind) {
        let Some(room) = self.by_idx(room) else {
            return;
        };
        let mut st = room.state.lock();
        self.fan_event(&mut st, except, frame, kind);
    }

    fn reset(&self, room: u32) {
        let Some(room) = self.by_idx(room) else {
            return;
        };
        let mut st = room.state.lock();
        let st = &mut *st;
        for m in st.members.values_mut().chain(st.watchers.values_mut()) {
            let conn = m.attach.conn();
            let outbox = match &m.attach {
                Attach::Live { outbox, .. } | Attach::Pending { outbox, .. } => outbox.clone(),
                Attach::Paused { .. } | Attach::Detached { .. } => continue,
            };
            outbox.close(crate::session::outbox::CloseReason {
                code: crate::protocol::close::TOO_SLOW,
                reason: "room history was lost; reconnect with resume and join with since",
            });
            // Still a member; it receives nothing until it joins again.
            m.attach = Attach::Paused { conn };
        }
    }
}
