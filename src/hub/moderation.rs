//! Staff in the hub: watching rooms, and the moderation actions (mute,
//! kick, ban, delete, slow mode, lock, release, announce, dismissing a
//! report).
//!
//! Every action is checked (the room, the target), then written to the
//! audit log durably, then applied; the caller hears `ok` only after both.
//! Authorisation (is this a staff member, is the token still good) is the
//! caller's, before it gets here. It changes room state only through the
//! hub's own structures, never touches a socket, and keeps no message text
//! in the audit log.

use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use serde_json::{json, Value};

use super::rooms::{Attach, RoomMember};
use super::{now_ms, pseudonym, Conn, HubError, HubHandle};
use crate::fanout::{Draft, EventKind, Fanout, FanoutError};
use crate::metrics::Metrics;
use crate::protocol::{self, Member, Ref, ServerFrame, Since, StaffFrame};
use crate::safety::{self, TextError};
use crate::session::outbox::CloseReason;

/// The longest mute or ban staff can give in one action.
const MAX_SANCTION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest slow-mode interval.
const MAX_SLOW_MODE_SECS: u64 = 3600;
/// Queued reports a watcher receives when it starts watching a room.
const REPORTS_ON_WATCH: usize = 100;
/// Held messages (their `flag` events, newest kept) sent after a `watch`
/// reply at most, so a long queue cannot overflow the watcher's outbox.
const HELD_ON_WATCH: usize = 100;

/// Who acts: a staff member, from a connection or the staff API.
#[derive(Debug, Clone)]
pub struct Actor {
    pub member: Member,
}

/// A moderation action, as a staff frame or the staff API gives it.
#[derive(Debug, Clone)]
pub enum Action {
    Mute {
        room: String,
        peer: String,
        seconds: u64,
    },
    Kick {
        room: String,
        peer: String,
    },
    Ban {
        peer: String,
        seconds: u64,
        reason: Option<String>,
    },
    Delete {
        room: String,
        message: String,
    },
    SlowMode {
        room: String,
        seconds: u64,
    },
    Lock {
        room: String,
        locked: bool,
    },
    Release {
        room: String,
        message: String,
    },
    Announce {
        room: String,
        text: String,
    },
    DismissReport {
        report: String,
    },
}

impl Action {
    /// The moderation action a staff frame asks for; `watch`, `unwatch`
    /// and the escalation frames are not moderation actions and come back
    /// unchanged.
    pub fn from_frame(frame: StaffFrame) -> Result<Action, StaffFrame> {
        Ok(match frame {
            StaffFrame::Mute(m) => Action::Mute {
                room: m.room,
                peer: m.peer,
                seconds: m.seconds,
            },
            StaffFrame::Kick(k) => Action::Kick {
                room: k.room,
                peer: k.peer,
            },
            StaffFrame::Ban(b) => Action::Ban {
                peer: b.peer,
                seconds: b.seconds,
                reason: b.reason,
            },
            StaffFrame::Delete(d) => Action::Delete {
                room: d.room,
                message: d.message,
            },
            StaffFrame::SlowMode(m) => Action::SlowMode {
                room: m.room,
                seconds: m.seconds,
            },
            StaffFrame::Lock(l) => Action::Lock {
                room: l.room,
                locked: l.locked,
            },
            StaffFrame::Release(r) => Action::Release {
                room: r.room,
                message: r.message,
            },
            StaffFrame::Announce(a) => Action::Announce {
                room: a.room,
                text: a.text,
            },
            StaffFrame::DismissReport(d) => Action::DismissReport { report: d.report },
            other @ (StaffFrame::Watch(_)
            | StaffFrame::Unwatch(_)
            | StaffFrame::Ack(_)
            | StaffFrame::Resolve(_)
            | StaffFrame::Care(_)) => return Err(other),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Action::Mute { .. } => "mute",
            Action::Kick { .. } => "kick",
            Action::Ban { .. } => "ban",
            Action::Delete { .. } => "delete",
            Action::SlowMode { .. } => "slow_mode",
            Action::Lock { .. } => "lock",
            Action::Release { .. } => "release",
            Action::Announce { .. } => "announce",
            Action::DismissReport { .. } => "dismiss_report",
        }
    }

    fn room(&self) -> Option<&str> {
        match self {
            Action::Mute { room, .. }
            | Action::Kick { room, .. }
            | Action::Delete { room, .. }
            | Action::SlowMode { room, .. }
            | Action::Lock { room, .. }
            | Action::Release { room, .. }
            | Action::Announce { room, .. } => Some(room),
            Action::Ban { .. } | Action::DismissReport { .. } => None,
        }
    }
}

/// What an action produced (an announcement's id and seq).
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub id: Option<String>,
    pub seq: Option<u64>,
}

fn bad(why: &'static str) -> HubError {
    HubError::BadRequest(why)
}

impl HubHandle {
    /// Starts watching a room: the reply (an `ok` with the room's members,
    /// settings and history) is queued here, then every message and event
    /// follows with no gap and no repeat, as for `join`. Queued reports for
    /// the room follow the reply, then the `flag` of each message still held
    /// there (one held meanwhile may also come live: the same flag twice).
    pub async fn watch(
        &self,
        conn: &Conn,
        rf: Option<&Ref>,
        room_id: &str,
    ) -> Result<(), HubError> {
        let h = &self.inner;
        let room = h.rooms.get(room_id).ok_or(HubError::NoSuchRoom)?;
        // Care rooms are joined by the people invited, never watched.
        if room.cfg.care {
            return Err(HubError::NoSuchRoom);
        }
        {
            let mut st = room.state.lock();
            st.watchers.insert(
                conn.id,
                RoomMember {
                    member: conn.member.clone(),
                    attach: Attach::Pending {
                        conn: conn.id,
                        outbox: conn.outbox.clone(),
                        held: Vec::new(),
                    },
                },
            );
        }
        let cluster = match self.redis() {
            Some(r) => {
                let view = async {
                    let watching = r.set_watcher(room.idx, conn.id, Some(&conn.member)).await?;
                    let members = r.room_members(room.idx).await?;
                    let settings = r.settings(room.idx).await?;
                    let reports = r.reports(Some(room_id), REPORTS_ON_WATCH).await?;
                    let held = r.held_all(room.idx).await?;
                    Ok::<_, FanoutError>((watching, members, settings, reports, held))
                }
                .await;
                match view {
                    Ok(v) => Some(v),
                    Err(e) => {
                        room.state.lock().watchers.remove(&conn.id);
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        let slice = match async {
            h.backend.prepare(room.idx).await?;
            h.backend
                .history(room.idx, None::<&Since>, h.cfg.history.on_join)
                .await
        }
        .await
        {
            Ok(s) => s,
            Err(e) => {
                room.state.lock().watchers.remove(&conn.id);
                return Err(e.into());
            }
        };
        let reports: Vec<Utf8Bytes> = match &cluster {
            // Newest first from Redis; oldest first to the watcher.
            Some((_, _, _, reports, _)) => {
                reports.iter().rev().map(|r| r.to_string().into()).collect()
            }
            None => {
                let q = h.reports.lock();
                let mine: Vec<_> = q.iter().filter(|r| r.room == room_id).collect();
                let skip = mine.len().saturating_sub(REPORTS_ON_WATCH);
                mine.into_iter()
                    .skip(skip)
                    .map(|r| report_frame(r).into())
                    .collect()
            }
        };
        let held_flags = {
            let mut waiting: Vec<HeldMessage> = match &cluster {
                Some((.., held)) => held
                    .iter()
                    .filter_map(|j| serde_json::from_str(j).ok())
                    .collect(),
                None => h
                    .held
                    .lock()
                    .values()
                    .filter(|m| m.room == room.idx)
                    .cloned()
                    .collect(),
            };
            waiting.sort_by_key(|m| m.ts);
            let skip = waiting.len().saturating_sub(HELD_ON_WATCH);
            waiting
                .into_iter()
                .skip(skip)
                .filter_map(|m| m.flag.map(Utf8Bytes::from))
                .collect::<Vec<_>>()
        };
        let mut st = room.state.lock();
        let (members, watching, locked, slow_mode) = match cluster {
            Some((watching, members, (locked, slow), ..)) => (members, watching, locked, slow),
            None => (
                st.members.values().map(|m| m.member.clone()).collect(),
                st.watchers.len(),
                st.locked,
                st.slow_mode,
            ),
        };
        let Some(me) = st.watchers.get_mut(&conn.id) else {
            return Err(HubError::NotJoined);
        };
        let held = me.go_live(conn.id, &conn.outbox, slice.seq);
        let history: Vec<&serde_json::value::RawValue> = slice
            .items
            .iter()
            .filter_map(|f| serde_json::from_str(f.as_str()).ok())
            .collect();
        let reply = ServerFrame::Watching {
            rf,
            room: room_id,
            epoch: &slice.epoch,
            seq: slice.seq,
            members,
            staff_watching: watching,
            locked,
            slow_mode,
            history,
            gap: slice.gap,
        }
        .encode();
        h.rooms.push(&conn.outbox, reply.into());
        for frame in reports.into_iter().chain(held_flags) {
            h.rooms.push(&conn.outbox, frame);
        }
        for frame in self.escalation_queue(&conn.member, Some(room_id)) {
            h.rooms.push(&conn.outbox, frame);
        }
        for (seq, frame) in held {
            if seq > slice.seq {
                h.rooms.push(&conn.outbox, frame);
            }
        }
        Ok(())
    }

    /// Stops watching a room (idempotent).
    pub async fn unwatch(&self, conn: &Conn, room_id: &str) -> Result<(), HubError> {
        let room = self.inner.rooms.get(room_id).ok_or(HubError::NoSuchRoom)?;
        let was = room.state.lock().watchers.remove(&conn.id).is_some();
        if let (true, Some(r)) = (was, self.redis()) {
            r.set_watcher(room.idx, conn.id, None).await?;
        }
        Ok(())
    }

    /// A connection ended: it watches nothing any more.
    pub(super) fn drop_watches(&self, conn_id: u64) {
        let mut watched = Vec::new();
        for room in &self.inner.rooms.rooms {
            if room.state.lock().watchers.remove(&conn_id).is_some() {
                watched.push(room.idx);
            }
        }
        if watched.is_empty() || self.redis().is_none() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            if let Some(r) = hub.redis() {
                for idx in watched {
                    // If this fails, the dead-node sweep never clears it
                    // (the node lives on); the count heals on restart.
                    let _ = r.set_watcher(idx, conn_id, None).await;
                }
            }
        });
    }

    /// Every room as staff see it: members, watchers and settings.
    pub async fn staff_rooms(&self) -> Result<Vec<Value>, HubError> {
        let h = &self.inner;
        let mut out = Vec::with_capacity(h.rooms.rooms.len());
        for r in h.rooms.listed() {
            let cluster = match self.redis() {
                Some(redis) => Some((
                    redis.room_members(r.idx).await?,
                    redis.watchers(r.idx).await?,
                    redis.settings(r.idx).await?,
                )),
                None => None,
            };
            let st = r.state.lock();
            let (members, watchers, (locked, slow_mode)) = match cluster {
                Some(c) => c,
                None => (
                    st.members.values().map(|m| m.member.clone()).collect(),
                    st.watchers.values().map(|m| m.member.clone()).collect(),
                    (st.locked, st.slow_mode),
                ),
            };
            out.push(json!({
                "id": r.cfg.id,
                "title": r.cfg.title,
                "capacity": r.cfg.capacity,
                "locked": locked,
                "slow_mode": slow_mode,
                "members": members,
                "watchers": watchers,
            }));
        }
        Ok(out)
    }

    /// Open reports, newest first, optionally for one room.
    pub async fn open_reports(
        &self,
        room: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, HubError> {
        if let Some(r) = self.redis() {
            return Ok(r.reports(room, limit).await?);
        }
        Ok(self
            .inner
            .reports
            .lock()
            .iter()
            .rev()
            .filter(|r| room.is_none_or(|want| r.room == want))
            .take(limit)
            .map(|r| serde_json::from_str(&report_frame(r)).unwrap_or(Value::Null))
            .collect())
    }

    /// Checks, audits, then applies a moderation action.
    pub async fn moderate(&self, actor: &Actor, action: Action) -> Result<Outcome, HubError> {
        let h = &self.inner;
        if let Some(room) = action.room() {
            h.rooms.get(room).ok_or(HubError::NoSuchRoom)?;
        }
        let mut record = json!({
            "ts": now_ms(),
            "actor": {"id": actor.member.id, "name": actor.member.name, "role": actor.member.role},
            "action": action.name(),
        });
        if let Some(room) = action.room() {
            record["room"] = json!(room);
        }
        // Validate first, so the audit log holds only what was done.
        let prepared = self.prepare_action(&action).await?;
        match &action {
            Action::Mute { peer, seconds, .. } | Action::Ban { peer, seconds, .. } => {
                record["target"] = json!(peer);
                record["seconds"] = json!(seconds);
            }
            Action::Kick { peer, .. } => record["target"] = json!(peer),
            Action::Delete { message, .. } | Action::Release { message, .. } => {
                record["target"] = json!(message)
            }
            Action::SlowMode { seconds, .. } => record["seconds"] = json!(seconds),
            Action::Lock { locked, .. } => record["locked"] = json!(locked),
            Action::Announce { .. } => {}
            Action::DismissReport { report } => record["target"] = json!(report),
        }
        if let Action::Ban {
            reason: Some(r), ..
        } = &action
        {
            let r: String = protocol::normalise_text(r).chars().take(200).collect();
            record["reason"] = json!(r);
        }
        self.audit(record).await?;
        self.apply(actor, action, prepared).await
    }

    /// Appends to the audit log; an action whose record cannot be made
    /// durable is not carried out.
    pub(super) async fn audit(&self, record: Value) -> Result<String, HubError> {
        let written = match (self.redis(), &self.inner.audit) {
            (Some(r), _) => r.audit_append(&record).await.map_err(|e| e.to_string()),
            (None, Some(log)) => log.append(record).await.map_err(|e| e.to_string()),
            (None, None) => Err("no audit log".to_string()),
        };
        written.map_err(|e| {
            tracing::error!(error = %e, "audit log write failed; the action was not carried out");
            HubError::Unavailable("audit log".into())
        })
    }

    /// A newest-first page of the audit log (staff API).
    pub async fn audit_page(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, HubError> {
        match (self.redis(), &self.inner.audit) {
            (Some(r), _) => Ok(r.audit_page(before, limit).await?),
            (None, Some(log)) => log
                .page(before, limit)
                .await
                .map_err(|e| HubError::Unavailable(e.to_string())),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The checks an action needs before it is audited; returns the
    /// target identity's key where there is one.
    async fn prepare_action(&self, action: &Action) -> Result<Option<u64>, HubError> {
        let h = &self.inner;
        match action {
            Action::Mute { peer, seconds, .. } | Action::Ban { peer, seconds, .. } => {
                if Duration::from_secs(*seconds) > MAX_SANCTION {
                    return Err(bad("\"seconds\" may be at most one year (31536000)."));
                }
                let key = h.sessions.lock().ids.get(peer.as_str()).copied();
                let known = match (key, self.redis()) {
                    (Some(_), _) => true,
                    (None, Some(r)) => r.peer_exists(peer).await?,
                    (None, None) => false,
                };
                if !known || !peer.starts_with("p_") {
                    return Err(bad("There is no peer with that id."));
                }
                Ok(key)
            }
            Action::Kick { room, peer } => {
                let key = h.sessions.lock().ids.get(peer.as_str()).copied();
                let r = h.rooms.get(room).ok_or(HubError::NoSuchRoom)?;
                let in_room = match self.redis() {
                    Some(redis) => redis.is_member(r.idx, peer).await?,
                    None => key.is_some_and(|k| r.state.lock().members.contains_key(&k)),
                };
                if in_room && peer.starts_with("p_") {
                    Ok(key)
                } else {
                    Err(bad("That peer is not in this room."))
                }
            }
            Action::SlowMode { seconds, .. } if *seconds > MAX_SLOW_MODE_SECS => Err(bad(
                "\"seconds\" for slow mode may be at most 3600 (one hour).",
            )),
            Action::Delete { message, .. } | Action::Release { message, .. }
                if message.is_empty() || message.len() > 64 =>
            {
                Err(bad("\"message\" must be a message id."))
            }
            Action::Delete { room, message } => {
                let r = h.rooms.get(room).ok_or(HubError::NoSuchRoom)?;
                let held = self.is_held(r.idx, message).await?;
                if held || h.backend.contains(r.idx, message).await? {
                    Ok(None)
                } else {
                    Err(bad(
                        "That message is not in the room's history (it may have expired).",
                    ))
                }
            }
            Action::Release { room, message } => {
                let r = h.rooms.get(room).ok_or(HubError::NoSuchRoom)?;
                if self.is_held(r.idx, message).await? {
                    Ok(None)
                } else {
                    Err(bad("There is no held message with that id in this room."))
                }
            }
            Action::Announce { text, .. } => {
                safety::prepare_text(text, h.cfg.limits.max_text_chars).map_err(|e| match e {
                    TextError::Empty => HubError::Empty,
                    TextError::TooLarge { chars, max } => HubError::TooLarge { chars, max },
                })?;
                Ok(None)
            }
            Action::DismissReport { report } => {
                let open = match self.redis() {
                    Some(r) => r
                        .reports(None, usize::MAX)
                        .await?
                        .iter()
                        .any(|x| x["id"] == report.as_str()),
                    None => h.reports.lock().iter().any(|r| r.id == *report),
                };
                if open {
                    Ok(None)
                } else {
                    Err(bad("There is no open report with that id."))
                }
            }
            _ => Ok(None),
        }
    }

    async fn apply(
        &self,
        actor: &Actor,
        action: Action,
        key: Option<u64>,
    ) -> Result<Outcome, HubError> {
        let h = &self.inner;
        match action {
            Action::Mute {
                room,
                peer,
                seconds,
            } => {
                let until = if seconds == 0 {
                    0
                } else {
                    now_ms() + seconds * 1000
                };
                if let Some(r) = self.redis() {
                    r.set_mute(&peer, &room, until).await?;
                }
                self.local_mute(&peer, &room, until);
                Ok(Outcome::default())
            }
            Action::Kick { room, peer } => {
                let r = h.rooms.get(&room).ok_or(HubError::NoSuchRoom)?;
                match self.redis() {
                    Some(redis) => {
                        // Presence goes out from Redis to every node; the
                        // node holding the peer's connection tells it.
                        redis.leave_member(r.idx, &room, &peer, None).await?;
                        redis.announce_kick(&peer, &room).await?;
                        self.local_kick(&peer, &room);
                    }
                    None => {
                        let Some(key) = key else {
                            return Err(bad("That peer is not in this room."));
                        };
                        self.remove_member(key, &peer, r.idx, true, true);
                    }
                }
                Ok(Outcome::default())
            }
            Action::Ban { peer, seconds, .. } => {
                let until = if seconds == 0 {
                    0
                } else {
                    now_ms() + seconds * 1000
                };
                if let Some(r) = self.redis() {
                    r.set_ban(&peer, until).await?;
                }
                self.local_ban(&peer, until).await;
                Ok(Outcome::default())
            }
            Action::Delete { room, message } => {
                let r = h.rooms.get(&room).ok_or(HubError::NoSuchRoom)?;
                let was_held = self.take_held(r.idx, &message).await?.is_some();
                let removed = h.backend.delete(r.idx, &message).await?;
                if !removed && !was_held {
                    // Gone between the check and now (trimmed, or deleted
                    // by someone else at the same moment).
                    return Err(bad(
                        "That message is not in the room's history (it may have expired).",
                    ));
                }
                if removed {
                    let frame: Utf8Bytes = ServerFrame::Deleted {
                        room: &room,
                        message: &message,
                    }
                    .encode()
                    .into();
                    self.room_event(r.idx, "", &frame, EventKind::Room).await;
                }
                Ok(Outcome::default())
            }
            Action::SlowMode { room, seconds } => {
                let r = h.rooms.get(&room).ok_or(HubError::NoSuchRoom)?;
                if let Some(redis) = self.redis() {
                    redis.set_setting(r.idx, "slow", seconds).await?;
                }
                let mut st = r.state.lock();
                st.slow_mode = seconds;
                if seconds == 0 {
                    st.last_send.clear();
                }
                Ok(Outcome::default())
            }
            Action::Lock { room, locked } => {
                let r = h.rooms.get(&room).ok_or(HubError::NoSuchRoom)?;
                if let Some(redis) = self.redis() {
                    redis
                        .set_setting(r.idx, "locked", u64::from(locked))
                        .await?;
                }
                r.state.lock().locked = locked;
                Ok(Outcome::default())
            }
            Action::Release { room, message } => {
                let r = h.rooms.get(&room).ok_or(HubError::NoSuchRoom)?;
                let Some(held) = self.take_held(r.idx, &message).await? else {
                    return Err(bad("There is no held message with that id."));
                };
                let draft = Draft {
                    id: &message,
                    ts: held.ts,
                    from: &held.from,
                    text: &held.text,
                };
                let seq = self.publish(r.idx, &room, draft).await?;
                Ok(Outcome {
                    id: Some(message),
                    seq: Some(seq),
                })
            }
            Action::Announce { room, text } => {
                let r = h.rooms.get(&room).ok_or(HubError::NoSuchRoom)?;
                let text = safety::prepare_text(&text, h.cfg.limits.max_text_chars)
                    .map_err(|_| HubError::Empty)?;
                let id = pseudonym::random_id("m_", 12);
                let draft = Draft {
                    id: &id,
                    ts: now_ms(),
                    from: &actor.member,
                    text: &text,
                };
                let seq = self.publish(r.idx, &room, draft).await?;
                Ok(Outcome {
                    id: Some(id),
                    seq: Some(seq),
                })
            }
            Action::DismissReport { report } => {
                if let Some(r) = self.redis() {
                    r.dismiss_report(&report).await?;
                }
                h.reports.lock().retain(|r| r.id != report);
                Ok(Outcome::default())
            }
        }
    }

    /// Publishes a message that bypasses peer limits (staff announcements,
    /// released messages).
    async fn publish(&self, room: u32, room_id: &str, draft: Draft<'_>) -> Result<u64, HubError> {
        match self.inner.backend.publish(room, room_id, draft).await {
            Ok(seq) => {
                Metrics::inc(&self.inner.metrics.messages_in);
                Ok(seq)
            }
            // Staff skip peer limits, but in cluster mode the publish
            // script still counts every message against the room's limit.
            Err(FanoutError::RoomLimited { retry_after_ms }) => Err(HubError::RateLimited {
                scope: "room",
                retry_after_ms,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Mutes (until 0: unmutes) a peer in a room, if its identity is on
    /// this node.
    pub(super) fn local_mute(&self, peer: &str, room_id: &str, until: u64) {
        let h = &self.inner;
        let Some(room) = h.rooms.get(room_id) else {
            return;
        };
        let mut s = h.sessions.lock();
        let Some(key) = s.ids.get(peer).copied() else {
            return;
        };
        if let Some(ident) = s.by_key.get_mut(&key) {
            if until == 0 {
                ident.mutes.remove(&room.idx);
            } else {
                ident.mutes.insert(room.idx, until);
            }
        }
    }

    /// Takes a kicked peer out of a room on this node and tells its
    /// connection (cluster mode: presence already went out from Redis).
    pub(super) fn local_kick(&self, peer: &str, room_id: &str) {
        let h = &self.inner;
        let Some(room) = h.rooms.get(room_id) else {
            return;
        };
        let key = h.sessions.lock().ids.get(peer).copied();
        if let Some(key) = key {
            self.remove_member(key, peer, room.idx, true, false);
            let hub = self.clone();
            tokio::spawn(async move { hub.save_session(key).await });
        }
    }

    /// Bans (until 0: lifts the ban on) a peer whose identity is on this
    /// node: it leaves every room, its connection closes with 1008 and its
    /// address goes on probation for the ban's length.
    pub(super) async fn local_ban(&self, peer: &str, until: u64) {
        let h = &self.inner;
        let Some(key) = h.sessions.lock().ids.get(peer).copied() else {
            return;
        };
        let (rooms, conn, tag) = {
            let mut s = h.sessions.lock();
            match s.by_key.get_mut(&key) {
                Some(ident) => {
                    ident.banned_until = until;
                    if until > 0 {
                        (
                            std::mem::take(&mut ident.rooms),
                            ident.conn.clone(),
                            ident.addr_tag,
                        )
                    } else {
                        (Vec::new(), None, 0)
                    }
                }
                None => (Vec::new(), None, 0),
            }
        };
        if until == 0 {
            return;
        }
        let cluster = self.redis();
        for idx in rooms {
            self.remove_member(key, peer, idx, false, cluster.is_none());
            if let (Some(r), Some(room)) = (cluster, h.rooms.by_idx(idx)) {
                if let Err(e) = r.leave_member(idx, &room.id(), peer, None).await {
                    tracing::warn!(error = %e, "could not remove a banned peer from a room in redis");
                }
            }
        }
        if let Some((_, outbox)) = conn {
            outbox.close(CloseReason {
                code: protocol::close::POLICY,
                reason: "banned by a moderator",
            });
        }
        if tag != 0 {
            let left = Duration::from_millis(until.saturating_sub(now_ms()));
            h.limiters.put_on_probation(tag, left);
            if let Some(r) = cluster {
                if let Err(e) = r.announce_probation(tag, until).await {
                    tracing::warn!(error = %e, "could not share a ban's probation with other nodes");
                }
            }
        }
        self.save_session(key).await;
    }

    /// Removes an identity from a room on this node; with `tell`, its
    /// connection gets `kicked`; with `presence`, this node announces it
    /// (embedded mode; Redis does in cluster mode).
    fn remove_member(&self, key: u64, member_id: &str, room: u32, tell: bool, presence: bool) {
        let h = &self.inner;
        let Some(r) = h.rooms.by_idx(room) else {
            return;
        };
        {
            let mut s = h.sessions.lock();
            if let Some(ident) = s.by_key.get_mut(&key) {
                ident.rooms.retain(|i| *i != room);
            }
        }
        let mut st = r.state.lock();
        let Some(m) = st.members.remove(&key) else {
            return;
        };
        Metrics::gauge(&h.metrics.members, -1);
        if tell {
            if let Attach::Live { outbox, .. } | Attach::Pending { outbox, .. } = &m.attach {
                let frame = ServerFrame::Kicked { room: &r.id() }.encode();
                h.rooms.push(outbox, frame.into());
            }
        }
        if presence {
            h.rooms
                .presence(&mut st, &r.id(), None, Some(member_id), key);
        }
    }

    /// Sends a room event to this node's audience (embedded mode), or to
    /// every node's (cluster mode).
    pub(super) async fn room_event(
        &self,
        room: u32,
        except: &str,
        frame: &Utf8Bytes,
        kind: EventKind,
    ) {
        let h = &self.inner;
        if let Some(r) = self.redis() {
            if let Err(e) = r.publish_event(room, kind, except, frame.as_str()).await {
                tracing::warn!(error = %e, "could not publish a room event");
            }
            return;
        }
        if let Some(r) = h.rooms.by_idx(room) {
            let mut st = r.state.lock();
            h.rooms.fan_event(&mut st, except, frame, kind);
        }
    }

    /// Checks a send against the room's slow mode and the sender's mutes
    /// (peers only). Slow mode is checked first, as the contract orders.
    pub(super) fn check_sanctions(&self, conn: &Conn, room: u32) -> Result<(), HubError> {
        let h = &self.inner;
        if conn.member.role != protocol::Role::Peer {
            return Ok(());
        }
        // Cluster mode checks slow mode in the publish script, cluster-wide.
        if let Some(r) = h.rooms.by_idx(room).filter(|_| self.redis().is_none()) {
            let mut st = r.state.lock();
            if st.slow_mode > 0 {
                let every = Duration::from_secs(st.slow_mode);
                let now = Instant::now();
                if let Some(last) = st.last_send.get(&conn.key) {
                    let since = now.duration_since(*last);
                    if since < every {
                        let wait = (every - since).as_millis() as u64;
                        return Err(HubError::SlowMode {
                            retry_after_ms: wait.max(1),
                        });
                    }
                }
                st.last_send.insert(conn.key, now);
            }
        }
        let s = h.sessions.lock();
        if let Some(until) = s.by_key.get(&conn.key).and_then(|i| i.mutes.get(&room)) {
            if *until > now_ms() {
                return Err(HubError::Muted { until: *until });
            }
        }
        Ok(())
    }

    /// A peer's ban, if it is banned now (the ms it ends).
    pub(super) fn banned_until(&self, key: u64) -> Option<u64> {
        let s = self.inner.sessions.lock();
        let until = s.by_key.get(&key).map_or(0, |i| i.banned_until);
        (until > now_ms()).then_some(until)
    }

    /// Pushes a new report to the room's watching staff.
    pub(super) async fn report_to_staff(&self, report: &super::StoredReport) {
        if let Some(r) = self.inner.rooms.get(&report.room) {
            let frame: Utf8Bytes = report_frame(report).into();
            self.room_event(r.idx, "", &frame, EventKind::Staff).await;
        }
    }
}

/// The `report` event staff receive.
pub(super) fn report_frame(r: &super::StoredReport) -> String {
    json!({
        "type": "report",
        "id": r.id,
        "room": r.room,
        "message": r.message,
        "reason": r.reason,
        "reporter": r.reporter,
        "ts": r.ts,
    })
    .to_string()
}

/// A message held for review, waiting for `release` or `delete`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct HeldMessage {
    pub(crate) room: u32,
    pub(crate) from: Member,
    pub(crate) text: String,
    pub(crate) ts: u64,
    /// The `flag` event staff got when it was held (with its text), sent
    /// again to staff who start watching the room while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) flag: Option<String>,
}

impl HubHandle {
    /// Keeps a message for staff review (in Redis in cluster mode, so staff
    /// on any node can release it). Kept at most as long as history.
    pub(super) async fn hold(&self, id: &str, held: HeldMessage) -> Result<(), HubError> {
        let h = &self.inner;
        match self.redis() {
            Some(r) => {
                let json = serde_json::to_string(&held)
                    .map_err(|e| HubError::Unavailable(e.to_string()))?;
                let ttl = Duration::from_secs(h.cfg.history.ttl_secs);
                r.held_put(held.room, id, &json, ttl).await?;
            }
            None => {
                let mut m = h.held.lock();
                // Bounded like history: the oldest held message goes first.
                if m.len() >= MAX_HELD {
                    if let Some(oldest) = m.iter().min_by_key(|(_, v)| v.ts).map(|(k, _)| k.clone())
                    {
                        m.remove(&oldest);
                    }
                }
                m.insert(id.to_string(), held);
            }
        }
        Ok(())
    }

    async fn is_held(&self, room: u32, id: &str) -> Result<bool, HubError> {
        Ok(match self.redis() {
            Some(r) => r.held_get(room, id, false).await?.is_some(),
            None => self
                .inner
                .held
                .lock()
                .get(id)
                .is_some_and(|m| m.room == room),
        })
    }

    /// Removes a held message and returns it (`None` if another release or
    /// delete got it first).
    async fn take_held(&self, room: u32, id: &str) -> Result<Option<HeldMessage>, HubError> {
        match self.redis() {
            Some(r) => Ok(r
                .held_get(room, id, true)
                .await?
                .and_then(|j| serde_json::from_str(&j).ok())),
            None => {
                let mut m = self.inner.held.lock();
                if m.get(id).is_some_and(|x| x.room == room) {
                    Ok(m.remove(id))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

/// Held messages kept at most in embedded mode.
const MAX_HELD: usize = 10_000;

pub(crate) type HeldStore = parking_lot::Mutex<std::collections::HashMap<String, HeldMessage>>;

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::*;
    use crate::protocol::Role;
    use crate::session::outbox::Outbox;

    use super::super::tests::hub;

    fn frames(o: &Outbox) -> Vec<Value> {
        let mut buf = VecDeque::new();
        o.drain_into(&mut buf);
        buf.iter()
            .filter_map(|f| serde_json::from_str(f.as_str()).ok())
            .collect()
    }

    fn moderator() -> Actor {
        Actor {
            member: Member {
                id: "s_mod".into(),
                name: "Mod".into(),
                role: Role::Moderator,
            },
        }
    }

    #[tokio::test]
    async fn a_held_message_is_published_on_release_and_only_once() {
        let hub = hub();
        let a = hub
            .hello(Arc::new(Outbox::new(64)), None, 0)
            .await
            .expect("hello")
            .conn;
        hub.join(&a, None, "anxiety", None).await.expect("join");
        frames(&a.outbox);
        let idx = hub.inner.rooms.get("anxiety").expect("room").idx;
        hub.hold(
            "m_held0000001",
            HeldMessage {
                room: idx,
                from: a.member.clone(),
                text: "held words".into(),
                ts: 5,
                flag: None,
            },
        )
        .await
        .expect("hold");
        // Not published while held.
        assert!(frames(&a.outbox).is_empty());
        // Another room cannot release it.
        let wrong = Action::Release {
            room: "bereavement".into(),
            message: "m_held0000001".into(),
        };
        assert!(hub.moderate(&moderator(), wrong).await.is_err());
        let release = Action::Release {
            room: "anxiety".into(),
            message: "m_held0000001".into(),
        };
        let out = hub
            .moderate(&moderator(), release.clone())
            .await
            .expect("release");
        assert_eq!(out.id.as_deref(), Some("m_held0000001"));
        assert_eq!(out.seq, Some(1));
        let got = frames(&a.outbox);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "message");
        assert_eq!(got[0]["text"], "held words");
        assert_eq!(got[0]["from"]["id"], a.member.id.as_str());
        assert_eq!(got[0]["ts"], 5);
        // A second release finds nothing.
        assert!(hub.moderate(&moderator(), release).await.is_err());
        let audit = hub.audit_page(None, 10).await.expect("audit");
        let actions: Vec<_> = audit.iter().map(|e| e["action"].clone()).collect();
        assert_eq!(actions, ["release"]);
        assert!(!serde_json::to_string(&audit)
            .expect("json")
            .contains("held words"));
    }

    #[tokio::test]
    async fn a_held_message_can_be_deleted_instead() {
        let hub = hub();
        let idx = hub.inner.rooms.get("anxiety").expect("room").idx;
        let from = Member {
            id: "p_x".into(),
            name: "X".into(),
            role: Role::Peer,
        };
        hub.hold(
            "m_held0000002",
            HeldMessage {
                room: idx,
                from,
                text: "t".into(),
                ts: 1,
                flag: None,
            },
        )
        .await
        .expect("hold");
        let delete = Action::Delete {
            room: "anxiety".into(),
            message: "m_held0000002".into(),
        };
        hub.moderate(&moderator(), delete).await.expect("delete");
        let release = Action::Release {
            room: "anxiety".into(),
            message: "m_held0000002".into(),
        };
        assert!(hub.moderate(&moderator(), release).await.is_err());
    }
}
