//! Staff sign-in in the hub: verifying `hello.auth`, keeping a signed-in
//! connection's token valid (expiry, revocation), and revoking tokens.
//!
//! Owns the revocation list (by token id, `jti`): in a durable file in
//! embedded mode, in Redis in cluster mode (shared by every node). The
//! token format itself is `staff::token`'s; what staff may do in rooms is
//! `moderation`'s.

use std::sync::Arc;

use serde_json::json;

use super::{now_ms, HubError, HubHandle};
use crate::protocol::Member;
use crate::staff::token::{self, TokenError};

/// What a signed-in staff connection carries about its token.
#[derive(Debug)]
pub struct StaffSession {
    pub jti: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// A verified staff sign-in.
pub struct StaffLogin {
    pub member: Member,
    pub session: Arc<StaffSession>,
}

impl HubHandle {
    /// Verifies a staff token from `hello.auth` or the staff API. The error
    /// is a sentence for the person signing in.
    pub async fn verify_staff(&self, token: &str) -> Result<StaffLogin, String> {
        let Some(secret) = &self.inner.staff_secret else {
            return Err(
                "Staff sign-in is not set up on this server (HEARTH_STAFF_SECRET is not set)."
                    .into(),
            );
        };
        let claims = token::verify(secret, token, now_ms() / 1000).map_err(|e| match e {
            TokenError::Expired => {
                "Your staff token has expired. Please ask for a new one.".to_string()
            }
            other => format!("That staff token was not accepted: {other}."),
        })?;
        if self.is_revoked(&claims.jti).await {
            return Err("That staff token has been revoked. Please ask for a new one.".into());
        }
        Ok(StaffLogin {
            member: Member {
                id: claims.sub,
                name: claims.name,
                role: claims.role.role(),
            },
            session: Arc::new(StaffSession {
                jti: claims.jti,
                exp: claims.exp,
            }),
        })
    }

    /// Whether a signed-in staff connection may still act: its token has
    /// not expired and was not revoked since.
    pub async fn staff_still_valid(&self, s: &StaffSession) -> Result<(), &'static str> {
        if now_ms() / 1000 >= s.exp {
            return Err("Your staff token has expired. Please sign in again with a new one.");
        }
        if self.inner.revoked.lock().contains_key(&s.jti) {
            return Err("Your staff token has been revoked.");
        }
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> bool {
        if self.inner.revoked.lock().contains_key(jti) {
            return true;
        }
        match self.redis() {
            // Fail closed: a Redis that cannot say is not a yes.
            Some(r) => r.is_revoked(jti).await.unwrap_or(true),
            None => false,
        }
    }

    /// Revokes a staff token before it expires (audited). Connections
    /// signed in with it lose their staff rights at their next action.
    pub async fn revoke(&self, actor: &super::Actor, jti: &str, exp: u64) -> Result<(), HubError> {
        if jti.is_empty() || jti.len() > 64 {
            return Err(HubError::BadRequest("\"jti\" must be a token id."));
        }
        let exp = if exp == 0 {
            // Unknown expiry: keep it for the longest a token can live.
            now_ms() / 1000 + 31 * 24 * 3600
        } else {
            exp
        };
        self.audit(json!({
            "ts": now_ms(),
            "actor": {"id": actor.member.id, "name": actor.member.name, "role": actor.member.role},
            "action": "revoke_token",
            "target": jti,
        }))
        .await?;
        match self.redis() {
            Some(r) => r.revoke(jti, exp).await?,
            None => {
                if let Some(log) = &self.inner.revocations {
                    log.append(json!({"jti": jti, "exp": exp}))
                        .await
                        .map_err(|e| HubError::Unavailable(e.to_string()))?;
                }
            }
        }
        self.inner.revoked.lock().insert(jti.to_string(), exp);
        self.close_invalid_staff();
        Ok(())
    }

    /// Another node revoked a token (cluster mode).
    pub(super) fn revoked_elsewhere(&self, jti: &str, exp: u64) {
        self.inner.revoked.lock().insert(jti.to_string(), exp);
        self.close_invalid_staff();
    }

    /// Closes (4003) staff connections whose token expired or was revoked,
    /// so a lost or old token stops receiving room traffic too, not only
    /// acting.
    pub(super) fn close_invalid_staff(&self) {
        let now = now_ms() / 1000;
        let revoked = self.inner.revoked.lock().clone();
        let s = self.inner.sessions.lock();
        for ident in s.by_key.values() {
            let (Some(st), Some((_, outbox))) = (&ident.staff, &ident.conn) else {
                continue;
            };
            let (why, sentence) = if now >= st.exp {
                (
                    "staff token expired",
                    "Your staff token has expired. Please sign in again with a new one.",
                )
            } else if revoked.contains_key(&st.jti) {
                ("staff token revoked", "Your staff token has been revoked.")
            } else {
                continue;
            };
            if outbox.is_closed() {
                continue;
            }
            // A sentence first (queued frames go out before the close).
            let frame = crate::protocol::ServerFrame::Error {
                rf: None,
                code: crate::protocol::ErrorCode::Unauthorized,
                message: sentence,
                retry_after_ms: None,
                until: None,
            }
            .encode();
            let _ = outbox.push(frame.into());
            outbox.close(crate::session::outbox::CloseReason {
                code: crate::protocol::close::UNAUTHORIZED,
                reason: why,
            });
        }
    }

    /// Forgets revocations of tokens that have expired anyway.
    pub(super) fn expire_revocations(&self) {
        let now = now_ms() / 1000;
        self.inner.revoked.lock().retain(|_, exp| *exp > now);
    }
}
