//! The hub's side of escalations: raising one from a screened message (with
//! its excerpt from room history), the staff frames and API calls that move
//! one along, and the [`Outlet`] through which the escalation service
//! reaches connected staff and the audit log.
//!
//! The record, its store, hooks and deadlines belong to `escalation`; this
//! file only connects them to rooms and connections.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use axum::extract::ws::Utf8Bytes;
use futures_util::future::BoxFuture;
use serde_json::Value;

use super::moderation::Actor;
use super::{Conn, HubError, HubHandle, HubInner};
use crate::escalation::{
    EscalationError, Escalations, ExcerptLine, Outlet, Person, Raise, StaffRef, State,
};
use crate::protocol::{Member, Role};
use crate::safety::classifier::Assessment;
use crate::session::outbox::Outbox;

/// The most unresolved escalations sent to staff as they sign in or start
/// watching (oldest first).
const QUEUE_ON_CONNECT: usize = 50;

/// What staff asked to do with an escalation.
pub enum EscalationAction {
    Ack { id: String },
    Resolve { id: String, note: Option<String> },
}

impl HubHandle {
    pub fn escalations(&self) -> &Arc<Escalations> {
        &self.inner.escalations
    }

    /// Raises an escalation for a screened message if its level calls for
    /// one. A failure is logged loudly and counted; the person's message
    /// and the staff flag have already been handled and are not affected.
    pub(super) async fn maybe_escalate(
        &self,
        conn: &Conn,
        room_idx: u32,
        room_id: &str,
        id: &str,
        text: &str,
        a: &Assessment,
    ) {
        let h = &self.inner;
        let level = a.level.as_str();
        if !h.escalations.raises(level) {
            return;
        }
        let mut excerpt = self.excerpt_context(room_idx).await;
        excerpt.push(ExcerptLine {
            id: id.to_string(),
            from: person(&conn.member),
            text: text.to_string(),
            ts: super::now_ms(),
            flagged: true,
        });
        let raise = Raise {
            level: level.to_string(),
            room: room_id.to_string(),
            peer: person(&conn.member),
            categories: a
                .categories
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
            signals: a.signals.iter().map(|s| s.to_string()).collect(),
            excerpt,
        };
        if let Err(e) = h.escalations.raise(raise).await {
            tracing::error!(error = %e, room = room_id, "AN ESCALATION COULD NOT BE STORED");
        }
    }

    /// Urging someone to harm themselves raises an escalation about the
    /// person urged, when the message names someone in the room (by their
    /// pseudonym): they may need a clinician to check on them.
    pub(super) async fn escalate_urged(
        &self,
        conn: &Conn,
        room: &super::rooms::Room,
        room_id: &str,
        id: &str,
        text: &str,
        a: &Assessment,
    ) {
        const MAX_TARGETS: usize = 3;
        let h = &self.inner;
        if !h.escalations.raises("high") {
            return;
        }
        let lower = text.to_lowercase();
        let targets: Vec<Member> = {
            let st = room.state.lock();
            st.members
                .values()
                .map(|m| &m.member)
                .filter(|m| m.role == Role::Peer && m.id != conn.member.id)
                .filter(|m| !m.name.is_empty() && lower.contains(&m.name.to_lowercase()))
                .take(MAX_TARGETS)
                .cloned()
                .collect()
        };
        for target in targets {
            let mut excerpt = self.excerpt_context(room.idx).await;
            excerpt.push(ExcerptLine {
                id: id.to_string(),
                from: person(&conn.member),
                text: text.to_string(),
                ts: super::now_ms(),
                flagged: true,
            });
            let mut signals: Vec<String> = a.signals.iter().map(|s| s.to_string()).collect();
            signals.push("policy.urging.named_target".into());
            let raise = Raise {
                level: "high".into(),
                room: room_id.to_string(),
                peer: person(&target),
                categories: vec!["suicide".into()],
                signals,
                excerpt,
            };
            if let Err(e) = h.escalations.raise(raise).await {
                tracing::error!(error = %e, room = room_id, "AN ESCALATION COULD NOT BE STORED");
            }
        }
    }

    /// The room's last messages, for an excerpt's context.
    async fn excerpt_context(&self, room_idx: u32) -> Vec<ExcerptLine> {
        self.excerpt_of(room_idx, self.inner.cfg.escalation.context_messages)
            .await
    }

    /// The room's last `n` messages as excerpt lines.
    pub(super) async fn excerpt_of(&self, room_idx: u32, n: usize) -> Vec<ExcerptLine> {
        let h = &self.inner;
        if n == 0 {
            return Vec::new();
        }
        match h.backend.history_for_excerpt(room_idx, n).await {
            Ok(items) => items.iter().filter_map(excerpt_line).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "no context for an escalation excerpt");
                Vec::new()
            }
        }
    }

    /// `ack` / `resolve`, from a staff frame or the staff API. Returns the
    /// record as staff see it.
    pub async fn escalation_action(
        &self,
        actor: &Actor,
        action: EscalationAction,
    ) -> Result<Value, HubError> {
        let by = staff_ref(&actor.member);
        let svc = &self.inner.escalations;
        let done = match action {
            EscalationAction::Ack { id } => svc.ack(&id, by).await.map(|e| e.id),
            EscalationAction::Resolve { id, note } => {
                svc.resolve(&id, by, note).await.map(|e| e.id)
            }
        };
        match done {
            Ok(id) => svc
                .view(&id)
                .ok_or_else(|| HubError::NoSuchEscalation(id.clone())),
            Err(e) => Err(escalation_error(e)),
        }
    }

    /// The open and acknowledged escalations a staff member should see
    /// when signing in (clinicians: all of them) or watching a room
    /// (moderators: that room's).
    pub fn escalation_queue(&self, member: &Member, watching: Option<&str>) -> Vec<Utf8Bytes> {
        let room = match (member.role, watching) {
            (Role::Clinician, None) => None,
            (Role::Moderator, Some(r)) => Some(r),
            _ => return Vec::new(),
        };
        // Bounded so a long queue cannot overflow a new connection's
        // outbox; the staff API lists every one.
        self.inner
            .escalations
            .queue_frames(room)
            .into_iter()
            .take(QUEUE_ON_CONNECT)
            .map(Utf8Bytes::from)
            .collect()
    }

    /// Staff API: escalations in the given states, optionally of one room.
    pub fn escalation_list(&self, states: &[State], room: Option<&str>) -> Vec<Value> {
        self.inner.escalations.list(states, room)
    }
}

pub(super) fn escalation_error(e: EscalationError) -> HubError {
    match e {
        EscalationError::NotFound(id) => HubError::NoSuchEscalation(id),
        EscalationError::Resolved(id) => HubError::EscalationResolved(id),
        other => {
            tracing::error!(error = %other, "escalation store failure");
            HubError::Unavailable("escalation store".into())
        }
    }
}

fn person(m: &Member) -> Person {
    Person {
        id: m.id.to_string(),
        name: m.name.to_string(),
    }
}

fn staff_ref(m: &Member) -> StaffRef {
    StaffRef {
        id: m.id.to_string(),
        name: m.name.to_string(),
        role: match m.role {
            Role::Clinician => "clinician",
            Role::Moderator => "moderator",
            Role::Peer => "peer",
        }
        .to_string(),
    }
}

/// A `message` event from history, as an excerpt line.
fn excerpt_line(frame: &Utf8Bytes) -> Option<ExcerptLine> {
    let v: Value = serde_json::from_str(frame.as_str()).ok()?;
    Some(ExcerptLine {
        id: v.get("id")?.as_str()?.to_string(),
        from: Person {
            id: v.pointer("/from/id")?.as_str()?.to_string(),
            name: v.pointer("/from/name")?.as_str()?.to_string(),
        },
        text: v.get("text")?.as_str()?.to_string(),
        ts: v.get("ts").and_then(Value::as_u64).unwrap_or(0),
        flagged: false,
    })
}

/// Reaches connected staff and the audit log for the escalation service
/// without keeping the hub alive.
pub(super) struct HubOutlet(pub(super) Weak<HubInner>);

impl Outlet for HubOutlet {
    fn notify(&self, room: &str, frame: String) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let frame = Utf8Bytes::from(frame);
        // Each connection once: a clinician watching the room is reached
        // through the clinician list only.
        let mut targets: HashMap<u64, Arc<Outbox>> = HashMap::new();
        if let Some(r) = inner.rooms.get(room) {
            let st = r.state.lock();
            for (conn, w) in &st.watchers {
                if w.member.role == Role::Moderator {
                    if let Some(o) = w.attach.outbox() {
                        targets.insert(*conn, o.clone());
                    }
                }
            }
        }
        {
            let sessions = inner.sessions.lock();
            for ident in sessions.by_key.values() {
                if ident.member.role != Role::Clinician || ident.staff.is_none() {
                    continue;
                }
                if let Some((conn, outbox)) = &ident.conn {
                    targets.insert(*conn, outbox.clone());
                }
            }
        }
        for outbox in targets.values() {
            inner.rooms.push(outbox, frame.clone());
        }
    }

    fn care_changed(&self, esc: &crate::escalation::Escalation) {
        if let Some(inner) = self.0.upgrade() {
            HubHandle { inner }.reconcile_care(esc);
        }
    }

    fn audit(&self, record: Value) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(inner) = self.0.upgrade() {
                // `audit` logs its own failure; a transition is already
                // durable in the escalation store.
                let _ = HubHandle { inner }.audit(record).await;
            }
        })
    }
}
