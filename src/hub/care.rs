//! Care rooms: a private room a clinician opens with the person from an
//! escalation (`care`). The person gets `invited` and joins it like any
//! room; nobody else can find, join or watch it, except staff the
//! clinicians let in (a second clinician sending `care` for the same
//! escalation).
//!
//! Owns the assignment of care ids to the fixed pool of care slots in the
//! room table: claiming a slot (with fresh history), restoring assignments
//! from the escalation records at start, and freeing a slot once its
//! escalation is resolved and the room is empty. The record of who may be
//! in it lives in the escalation (durable); membership itself is ordinary
//! room state.

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
    /// clinician into the one already open) and invites the person.
    /// Returns the room id.
    pub async fn open_care(&self, actor: &Actor, esc_id: &str) -> Result<String, HubError> {
        let h = &self.inner;
        if actor.member.role != Role::Clinician {
            return Err(HubError::Forbidden);
        }
        if self.is_cluster() {
            return Err(HubError::BadRequest(
                "Care rooms are not available in cluster mode yet; reach the person through the room for now.",
            ));
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
        // Already open: let this clinician in too.
        if let Some(rec) = &esc.care_room {
            if let Some(room) = h.rooms.get(&rec.room) {
                h.escalations
                    .open_care(esc_id, &rec.room, rec.slot, by)
                    .await
                    .map_err(escalation_error)?;
                if let Some(c) = room.care.lock().as_mut() {
                    if !c.staff.contains(&actor.member.id) {
                        c.staff.push(actor.member.id.clone());
                    }
                }
                self.invite(&actor.member.id, &rec.room, &actor.member);
                return Ok(rec.room.clone());
            }
        }
        let care = CareRoom {
            escalation: esc.id.clone(),
            peer: esc.peer.id.clone(),
            staff: vec![actor.member.id.clone()],
            by: actor.member.clone(),
        };
        let Some(slot) = self.claim_slot(care) else {
            return Err(HubError::BadRequest(
                "All care rooms are in use right now. Please reach the person through the room, or resolve a finished escalation first.",
            ));
        };
        let room_id = pseudonym::random_id("care-", 10);
        // Stored first, so a restart finds the room and who may enter it.
        if let Err(e) = h
            .escalations
            .open_care(esc_id, &room_id, slot, by.clone())
            .await
        {
            h.rooms.release_care(slot);
            return Err(escalation_error(e));
        }
        if let Some(r) = h.rooms.by_idx(slot) {
            // A slot's earlier room leaves nothing behind.
            h.backend.clear_history(r.idx);
        }
        h.rooms.assign_care(&room_id, slot);
        self.audit(json!({
            "ts": now_ms(),
            "actor": {"id": actor.member.id, "name": actor.member.name, "role": actor.member.role},
            "action": "care_opened",
            "target": esc_id,
            "room": room_id,
        }))
        .await?;
        self.invite(&esc.peer.id, &room_id, &actor.member);
        self.invite(&actor.member.id, &room_id, &actor.member);
        Ok(room_id)
    }

    /// Whether `member` may enter the care room `room`.
    pub(super) fn care_allowed(&self, room: &Room, member: &Member) -> bool {
        room.care
            .lock()
            .as_ref()
            .is_some_and(|c| c.peer == member.id || c.staff.contains(&member.id))
    }

    /// `invited` frames for the care rooms `member` may enter but is not in
    /// (sent after `welcome`, so an invitation outlives a dropped phone).
    pub fn care_invites(&self, member: &Member, key: u64) -> Vec<Utf8Bytes> {
        let mut out = Vec::new();
        for r in self.inner.rooms.care_slots() {
            let by = match r.care.lock().as_ref() {
                Some(c) if c.peer == member.id || c.staff.contains(&member.id) => c.by.clone(),
                _ => continue,
            };
            if r.state.lock().members.contains_key(&key) {
                continue;
            }
            out.push(invited_frame(&r.id(), &by));
        }
        out
    }

    /// Tells `member_id`'s live connection, if any, about the room.
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

    /// Takes a free, empty care slot for `care`.
    fn claim_slot(&self, care: CareRoom) -> Option<u32> {
        for r in self.inner.rooms.care_slots() {
            let mut c = r.care.lock();
            if c.is_some() {
                continue;
            }
            let empty = {
                let st = r.state.lock();
                st.members.is_empty() && st.watchers.is_empty()
            };
            if empty {
                *c = Some(care);
                return Some(r.idx);
            }
        }
        None
    }

    /// At start: puts the care rooms of unresolved escalations back in
    /// their slots (embedded mode keeps no membership across a restart, so
    /// the people are invited again when they sign in).
    pub(super) fn restore_care_rooms(&self) {
        let h = &self.inner;
        for esc in h.escalations.with_care_rooms() {
            if esc.state == State::Resolved {
                continue;
            }
            let Some(rec) = esc.care_room.as_ref() else {
                continue;
            };
            let Some(room) = h.rooms.by_idx(rec.slot).filter(|r| r.cfg.care) else {
                tracing::warn!(
                    escalation = esc.id.as_str(),
                    "a care room's slot no longer exists (fewer care_rooms configured)"
                );
                continue;
            };
            let mut c = room.care.lock();
            if c.is_some() {
                continue;
            }
            *c = Some(care_from_record(&esc));
            drop(c);
            h.rooms.assign_care(&rec.room, rec.slot);
        }
    }

    /// Frees the slots of care rooms whose escalation is resolved (or gone)
    /// once nobody is in them.
    pub(super) fn sweep_care_rooms(&self) {
        let h = &self.inner;
        for r in h.rooms.care_slots() {
            let esc = match r.care.lock().as_ref() {
                Some(c) => c.escalation.clone(),
                None => continue,
            };
            let open = h
                .escalations
                .get(&esc)
                .is_some_and(|e| e.state != State::Resolved);
            if open {
                continue;
            }
            let empty = {
                let st = r.state.lock();
                st.members.is_empty() && st.watchers.is_empty()
            };
            if empty {
                self.forget_slot(r.idx);
                h.rooms.release_care(r.idx);
                h.backend.clear_history(r.idx);
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

fn care_from_record(esc: &Escalation) -> CareRoom {
    let staff = esc
        .care_room
        .as_ref()
        .map(|r| r.staff.clone())
        .unwrap_or_default();
    let by = staff.first().map_or_else(
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
    CareRoom {
        escalation: esc.id.clone(),
        peer: esc.peer.id.clone(),
        staff: staff.into_iter().map(|s| s.id).collect(),
        by,
    }
}

fn invited_frame(room_id: &str, by: &Member) -> Utf8Bytes {
    json!({"type": "invited", "room": room_id, "by": by})
        .to_string()
        .into()
}
