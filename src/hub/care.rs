//! Care rooms: a private room a clinician opens with the person from an
//! escalation (`care`). The person gets `invited` and joins it like any
//! room; nobody else can find, join or watch it, except staff the
//! clinicians let in (a second clinician sending `care` for the same
//! escalation).
//!
//! Owns the assignment of care ids to the fixed pool of care slots in the
//! room table. The escalation record is the truth (who may enter, which
//! slot, whether it is closed): a node reserves a slot (in Redis in cluster
//! mode, so two nodes never take the same one), records the room in the
//! escalation, and every node then brings its own room table in line when
//! the escalation service reports the change (`reconcile_care`), inviting
//! the people connected to it. A slot is freed, and its history wiped, once
//! its escalation is resolved and the room is empty.

use axum::extract::ws::Utf8Bytes;
use serde_json::json;

use super::escalate::escalation_error;
use super::moderation::Actor;
use super::rooms::{CareRoom, Room};
use super::{now_ms, pseudonym, HubError, HubHandle};
use crate::escalation::{Escalation, StaffRef, State};
use crate::protocol::{Member, Role};

impl HubHandle {
    /// `care {escalation}`: opens the escalation's care room (or lets this
    /// clinician into the one already open); the people are invited as the
    /// record reaches each node. Returns the room id.
    pub async fn open_care(&self, actor: &Actor, esc_id: &str) -> Result<String, HubError> {
        let h = &self.inner;
        if actor.member.role != Role::Clinician {
            return Err(HubError::Forbidden);
        }
        let esc = h
            .escalations
            .get(esc_id)
            .ok_or_else(|| HubError::NoSuchEscalation(esc_id.to_string()))?;
        if esc.state == State::Resolved {
            return Err(HubError::EscalationResolved(esc_id.to_string()));
        }
        let by = StaffRef {
            id: actor.member.id.clone(),
            name: actor.member.name.clone(),
            role: "clinician".into(),
        };
        if let Some(rec) = esc.care_room.as_ref().filter(|r| r.closed_ts.is_none()) {
            h.escalations
                .open_care(esc_id, &rec.room, rec.slot, by)
                .await
                .map_err(escalation_error)?;
            return Ok(rec.room.clone());
        }
        let room_id = pseudonym::random_id("care-", 10);
        let Some(slot) = self.claim_slot(&esc, &room_id, &actor.member).await? else {
            return Err(HubError::BadRequest(
                "All care rooms are in use right now. Please reach the person through the room, or resolve a finished escalation first.",
            ));
        };
        // Recorded before anyone is invited, so a restart (or another
        // node) knows the room and who may enter it.
        if let Err(e) = h.escalations.open_care(esc_id, &room_id, slot, by).await {
            self.unclaim_slot(slot).await;
            return Err(escalation_error(e));
        }
        self.audit(json!({
            "ts": now_ms(),
            "actor": {"id": actor.member.id, "name": actor.member.name, "role": actor.member.role},
            "action": "care_opened",
            "target": esc_id,
            "room": room_id,
        }))
        .await?;
        Ok(room_id)
    }

    /// Whether `member` may enter the care room `room`.
    pub(super) fn care_allowed(&self, room: &Room, member: &Member) -> bool {
        let c = room.care.lock();
        c.as_ref()
            .is_some_and(|c| c.live && (c.peer == member.id || c.staff.contains(&member.id)))
    }

    /// `invited` frames for the care rooms `member` may enter but is not in
    /// (sent after `welcome`, so an invitation outlives a dropped phone).
    pub fn care_invites(&self, member: &Member, key: u64) -> Vec<Utf8Bytes> {
        let mut out = Vec::new();
        for r in self.inner.rooms.care_slots() {
            let by = match r.care.lock().as_ref() {
                Some(c) if c.live && (c.peer == member.id || c.staff.contains(&member.id)) => {
                    c.by.clone()
                }
                _ => continue,
            };
            if r.state.lock().members.contains_key(&key) {
                continue;
            }
            out.push(invited_frame(&r.id(), &by));
        }
        out
    }

    /// Brings this node's room table in line with an escalation's care
    /// room, and invites whoever is newly let in and connected here.
    pub(super) fn reconcile_care(&self, esc: &Escalation) {
        let h = &self.inner;
        let Some(rec) = esc.care_room.as_ref() else {
            return;
        };
        let Some(room) = h.rooms.by_idx(rec.slot).filter(|r| r.cfg.care) else {
            tracing::warn!(
                escalation = esc.id.as_str(),
                "a care room's slot does not exist here (fewer care_rooms configured?)"
            );
            return;
        };
        let assigned = *room.id() == *rec.room;
        if rec.closed_ts.is_some() {
            if assigned {
                self.forget_slot(room.idx);
                h.rooms.release_care(room.idx);
                h.backend.clear_history(room.idx);
            }
            return;
        }
        let staff: Vec<String> = rec.staff.iter().map(|s| s.id.clone()).collect();
        let by = rec.staff.first().map_or_else(
            || Member {
                id: String::new(),
                name: "Hearth".into(),
                role: Role::Clinician,
            },
            |s| Member {
                id: s.id.clone(),
                name: s.name.clone(),
                role: Role::Clinician,
            },
        );
        let newly: Vec<String> = if assigned {
            let mut c = room.care.lock();
            let known = c.as_ref().map(|c| c.staff.clone()).unwrap_or_default();
            let newly = staff
                .iter()
                .filter(|s| !known.contains(s))
                .cloned()
                .collect();
            if let Some(c) = c.as_mut() {
                c.staff = staff;
            }
            newly
        } else {
            // First sight of this room here: whatever the slot held is gone.
            h.backend.clear_history(room.idx);
            *room.care.lock() = Some(CareRoom {
                escalation: esc.id.clone(),
                peer: esc.peer.id.clone(),
                staff: staff.clone(),
                by: by.clone(),
                live: true,
            });
            h.rooms.assign_care(&rec.room, room.idx);
            let mut all = staff;
            all.push(esc.peer.id.clone());
            all
        };
        for id in newly {
            self.invite(&id, &rec.room, &by);
        }
    }

    /// Tells `member_id`'s live connection on this node, if any, about the
    /// room.
    fn invite(&self, member_id: &str, room_id: &str, by: &Member) {
        let h = &self.inner;
        let outbox = {
            let s = h.sessions.lock();
            s.ids
                .get(member_id)
                .and_then(|k| s.by_key.get(k))
                .and_then(|i| i.conn.as_ref().map(|(_, o)| o.clone()))
        };
        if let Some(o) = outbox {
            h.rooms.push(&o, invited_frame(room_id, by));
        }
    }

    /// Reserves a free, empty care slot (cluster-wide in cluster mode).
    async fn claim_slot(
        &self,
        esc: &Escalation,
        room_id: &str,
        by: &Member,
    ) -> Result<Option<u32>, HubError> {
        let h = &self.inner;
        for r in h.rooms.care_slots() {
            let free = r.care.lock().is_none() && {
                let st = r.state.lock();
                st.members.is_empty() && st.watchers.is_empty()
            };
            if !free {
                continue;
            }
            if let Some(redis) = self.redis() {
                if !redis.claim_care_slot(r.idx, room_id).await? {
                    continue;
                }
            }
            let mut c = r.care.lock();
            if c.is_some() {
                continue;
            }
            // Reserved, not yet enterable: the record makes it live.
            *c = Some(CareRoom {
                escalation: esc.id.clone(),
                peer: esc.peer.id.clone(),
                staff: Vec::new(),
                by: by.clone(),
                live: false,
            });
            return Ok(Some(r.idx));
        }
        Ok(None)
    }

    async fn unclaim_slot(&self, slot: u32) {
        let h = &self.inner;
        if let Some(r) = h.rooms.by_idx(slot) {
            let mut c = r.care.lock();
            if c.as_ref().is_some_and(|c| !c.live) {
                *c = None;
            }
        }
        if let Some(redis) = self.redis() {
            if let Err(e) = redis.free_care_slot(slot).await {
                tracing::warn!(error = %e, "could not free a care slot in redis");
            }
        }
    }

    /// At start in embedded mode: the care rooms of unresolved escalations
    /// go back in their slots (cluster mode rebuilds from the shared log).
    pub(super) fn restore_care_rooms(&self) {
        for esc in self.inner.escalations.with_care_rooms() {
            self.reconcile_care(&esc);
        }
    }

    /// Closes care rooms whose escalation is resolved once nobody is in
    /// them (the node doing the escalation work decides, cluster-wide), and
    /// frees slots whose escalation is gone altogether.
    pub(super) async fn sweep_care_rooms(&self) {
        let h = &self.inner;
        let mut due: Vec<(u32, Option<String>)> = Vec::new();
        for r in h.rooms.care_slots() {
            let esc_id = match r.care.lock().as_ref() {
                Some(c) if c.live => c.escalation.clone(),
                _ => continue,
            };
            match h.escalations.get(&esc_id) {
                None => due.push((r.idx, None)),
                Some(e) if e.state == State::Resolved => due.push((r.idx, Some(esc_id))),
                Some(_) => {}
            }
        }
        for (slot, esc_id) in due {
            let Some(room) = h.rooms.by_idx(slot) else {
                continue;
            };
            let empty = match self.redis() {
                Some(redis) => redis.room_members(slot).await.is_ok_and(|m| m.is_empty()),
                None => {
                    let st = room.state.lock();
                    st.members.is_empty() && st.watchers.is_empty()
                }
            };
            if !empty {
                continue;
            }
            match esc_id {
                // Gone by retention on every node: each frees its own.
                None => {
                    self.forget_slot(slot);
                    h.rooms.release_care(slot);
                    h.backend.clear_history(slot);
                }
                Some(id) if h.escalations.is_worker() => {
                    if let Some(redis) = self.redis() {
                        if let Err(e) = redis.free_care_slot(slot).await {
                            tracing::warn!(error = %e, "could not free a care slot in redis");
                            continue;
                        }
                    }
                    let transcript = self.excerpt_of(slot, h.cfg.history.max).await;
                    if let Err(e) = h.escalations.close_care(&id, transcript).await {
                        tracing::warn!(error = %e, "could not record a closed care room");
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// No identity keeps a freed slot among the rooms it resumes into.
    fn forget_slot(&self, slot: u32) {
        let mut s = self.inner.sessions.lock();
        for ident in s.by_key.values_mut() {
            ident.rooms.retain(|i| *i != slot);
        }
    }
}

fn invited_frame(room_id: &str, by: &Member) -> Utf8Bytes {
    json!({"type": "invited", "room": room_id, "by": by})
        .to_string()
        .into()
}
