//! The safety step of the send pipeline: asks `safety` for its judgement
//! on a message and carries out what follows from it for the people
//! involved: the private `support` event for the sender, and the `flag` for
//! watching staff, and (for the levels configured) an escalation.
//!
//! It decides nothing itself (the classifier and the `[safety]` config do)
//! and never punishes a disclosure: distress alone never blocks a message.

use axum::extract::ws::Utf8Bytes;
use serde_json::json;

use super::rooms::Room;
use super::{Conn, HubHandle};
use crate::config::LevelAction;
use crate::fanout::EventKind;
use crate::metrics::Metrics;
use crate::safety::classifier::{Assessment, Level, Policy};
use crate::safety::{support, Verdict};

impl HubHandle {
    /// Judges a message about to be sent, tells the sender and staff what
    /// they need to know, and returns what happens to the message with the
    /// `flag` sent to watching staff, if any (a held message keeps it, so
    /// staff who start watching later get it too).
    pub(super) async fn assess(
        &self,
        conn: &Conn,
        room: &Room,
        room_id: &str,
        id: &str,
        text: &str,
    ) -> (Verdict, Option<Utf8Bytes>) {
        let h = &self.inner;
        let mut a = h.classifier.assess(text, room_id);
        if conn.staff.is_none() {
            // Earlier signals from the same person can raise this level.
            let ctx = h
                .risk
                .lock()
                .observe(&conn.key.to_string(), super::now_ms(), &a);
            if let Some(rule) = ctx.raised_by {
                a.level = ctx.level;
                a.categories = ctx.categories;
                a.signals.push(rule);
            }
        }
        let verdict = self.verdict_for(room, &a);
        let crisis = a.level > Level::None;
        if crisis || a.help_seeking {
            let cfg = &h.cfg.safety;
            let locale = conn.locale.as_deref();
            let frame = json!({
                "type": "support",
                "level": a.level.as_str(),
                "text": support::support_text(cfg, a.level, locale),
                "resources": support::resources_for(cfg, locale),
            })
            .to_string();
            h.rooms.push(&conn.outbox, frame.into());
            Metrics::inc(&h.metrics.support_sent);
        }
        let mut flagged = None;
        if crisis || matches!(a.policy, Some(Policy::Method | Policy::Urging)) {
            let held = verdict == Verdict::Hold;
            let mut flag = json!({
                "type": "flag",
                "room": room_id,
                "message": id,
                "level": a.level.as_str(),
                "categories": a.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "policy": a.policy.map(|p| p.as_str()),
                "held": held,
                "blocked": matches!(verdict, Verdict::Block(_)),
                "from": {"id": conn.member.id, "name": conn.member.name},
                "signals": a.signals,
            });
            // A held message is published to nobody until staff decide,
            // so its reviewers need its words; a delivered one reaches
            // them as a `message`, a blocked one is never kept.
            if held {
                flag["text"] = json!(text);
                flag["ts"] = json!(super::now_ms());
            }
            let frame: Utf8Bytes = flag.to_string().into();
            self.room_event(room.idx, "", &frame, EventKind::Staff)
                .await;
            Metrics::inc(&h.metrics.flags);
            flagged = Some(frame);
        }
        if a.policy == Some(Policy::Urging) && !room.cfg.care {
            self.escalate_urged(conn, room, room_id, id, text, &a).await;
        }
        // In a care room a clinician is already with the person.
        if crisis && !room.cfg.care {
            // Stored (and synced) before the send is answered, so the
            // person's message and its escalation cannot be separated by a
            // crash.
            self.maybe_escalate(conn, room.idx, room_id, id, text, &a)
                .await;
        }
        (verdict, flagged)
    }

    /// Policy first (contact, links and sourcing are blocked; method and
    /// urging held), then what the config says for the crisis level.
    fn verdict_for(&self, room: &Room, a: &Assessment) -> Verdict {
        // A care room is the person and their clinicians: sharing a phone
        // number or a place may be exactly what keeps someone safe, and
        // nobody else reads along.
        if room.cfg.care {
            return Verdict::Deliver;
        }
        match a.policy {
            Some(Policy::Contact | Policy::Link | Policy::Sourcing) => a.verdict(),
            Some(Policy::Method | Policy::Urging) => Verdict::Hold,
            None => {
                let cfg = &self.inner.cfg.safety;
                let action = match a.level {
                    Level::None => LevelAction::Deliver,
                    Level::Concern => cfg.concern,
                    Level::High => cfg.high,
                    Level::Imminent => cfg.imminent,
                };
                match action {
                    LevelAction::Deliver => Verdict::Deliver,
                    LevelAction::Hold => Verdict::Hold,
                }
            }
        }
    }
}
