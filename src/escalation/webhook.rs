//! The HTTP webhook [`Hook`]: POSTs the escalation as JSON, signed with
//! `X-Hearth-Signature: sha256=<hex HMAC-SHA256 of the raw body>` and keyed
//! with `Idempotency-Key`. Any 2xx answer is a delivery; anything else is a
//! failure the escalation service retries.
//!
//! Owns the HTTP client and the signing key; never logs a body, and strips
//! the URL from transport errors (it may carry credentials).

use std::time::Duration;

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::hook::{Hook, HookError, Outgoing};

pub struct Webhook {
    name: String,
    url: reqwest::Url,
    secret: Vec<u8>,
    client: reqwest::Client,
    timeout: Duration,
}

/// Why a webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Webhook {
    pub fn new(url: &str, secret: &str, timeout: Duration) -> Result<Webhook, WebhookError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| WebhookError::BadUrl(url.into()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WebhookError::BadUrl(url.into()));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| WebhookError::BadUrl(url.into()))?
            .to_string();
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would send a clinical record somewhere nobody
            // configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Webhook {
            name: format!("webhook {host}{port}{}", parsed.path()),
            url: parsed,
            secret: secret.as_bytes().to_vec(),
            client,
            timeout,
        })
    }
}

impl Hook for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, out: &'a Outgoing) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            let sent = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Hearth-Signature", signature(&self.secret, &out.body))
                .header("Idempotency-Key", &out.idempotency_key)
                .body(out.body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(HookError::Status(r.status().as_u16())),
                Err(e) if e.is_timeout() => Err(HookError::Timeout(
                    u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                )),
                Err(e) => Err(HookError::Transport(e.without_url().to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn names_show_the_host_and_path_never_credentials_or_query() {
        let w = Webhook::new(
            "https://user:pw@hooks.example.org:8443/esc?token=abc",
            "secret",
            Duration::from_secs(1),
        )
        .expect("webhook");
        assert_eq!(w.name(), "webhook hooks.example.org:8443/esc");
        assert!(Webhook::new("ftp://x/", "s", Duration::from_secs(1)).is_err());
        assert!(Webhook::new("not a url", "s", Duration::from_secs(1)).is_err());
    }
}
