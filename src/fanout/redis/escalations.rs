//! The cluster's shared escalation log: a Redis Stream of escalation events
//! that every node reads and folds into the same state, and the lease that
//! lets exactly one node at a time do the work (deliveries, deadlines,
//! retention).
//!
//! Owns the two keys `{<prefix>:esc}:log` and `{<prefix>:esc}:lease` (one
//! hash tag, so a Redis Cluster keeps them on one shard) and nothing else.
//! What an event means belongs to `escalation`.

use std::sync::Arc;

use redis::{Script, Value};

use super::{text, unavailable, RedisFanout, Shared};
use crate::fanout::FanoutError;

/// Takes the lease if free, or renews it if this instance holds it.
/// Returns 1 when held by `ARGV[1]` after the call.
const LEASE_LUA: &str = r#"
-- KEYS: 1 lease; ARGV: 1 instance, 2 ttl ms
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Handle on the shared escalation log (cheap to clone).
#[derive(Clone)]
pub struct EscalationLog {
    shared: Arc<Shared>,
    log: String,
    lease: String,
    lease_script: Arc<Script>,
}

impl RedisFanout {
    pub fn escalation_log(&self) -> EscalationLog {
        let tag = format!("{{{}:esc}}", self.shared.prefix);
        EscalationLog {
            shared: self.shared.clone(),
            log: format!("{tag}:log"),
            lease: format!("{tag}:lease"),
            lease_script: Arc::new(Script::new(LEASE_LUA)),
        }
    }
}

impl EscalationLog {
    /// Appends one event (JSON); returns its stream id.
    pub async fn append(&self, event: &str) -> Result<String, FanoutError> {
        let cmd = redis::cmd("XADD")
            .arg(&self.log)
            .arg("*")
            .arg("e")
            .arg(event)
            .to_owned();
        self.shared.query(cmd).await
    }

    /// Up to `count` events after the stream id `after` ("0" for all), in
    /// order: `(id, json)`.
    pub async fn read_after(
        &self,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, String)>, FanoutError> {
        let cmd = redis::cmd("XRANGE")
            .arg(&self.log)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .to_owned();
        let reply: Value = self.shared.query(cmd).await?;
        let Value::Array(entries) = reply else {
            return Err(unavailable("bad XRANGE reply"));
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let Value::Array(mut pair) = e else {
                return Err(unavailable("bad XRANGE entry"));
            };
            if pair.len() != 2 {
                return Err(unavailable("bad XRANGE entry"));
            }
            let fields = pair.pop();
            let id = pair
                .pop()
                .and_then(text)
                .ok_or_else(|| unavailable("bad id"))?;
            let json = match fields {
                Some(Value::Array(f)) => f.into_iter().nth(1).and_then(text),
                Some(Value::Map(m)) => m.into_iter().next().and_then(|(_, v)| text(v)),
                _ => None,
            }
            .ok_or_else(|| unavailable("bad XRANGE fields"))?;
            out.push((id, json));
        }
        Ok(out)
    }

    /// Takes or renews the work lease for `ttl_ms`; `true` while held.
    pub async fn hold_lease(&self, ttl_ms: u64) -> Result<bool, FanoutError> {
        let mut inv = self.lease_script.key(&self.lease);
        inv.arg(&self.shared.instance).arg(ttl_ms.max(1));
        let held: i64 = self.shared.run(inv).await?;
        Ok(held == 1)
    }

    /// Drops events older than `min_ms` (ms since the epoch).
    pub async fn trim_before(&self, min_ms: u64) -> Result<(), FanoutError> {
        let cmd = redis::cmd("XTRIM")
            .arg(&self.log)
            .arg("MINID")
            .arg(min_ms)
            .to_owned();
        self.shared.query::<Value>(cmd).await.map(|_| ())
    }
}

impl RedisFanout {
    fn care_slot_key(&self, slot: u32) -> String {
        format!("{{{}:esc}}:slot:{slot}", self.shared.prefix)
    }

    /// Reserves a care slot for `room_id` cluster-wide; `false` when
    /// another node holds it.
    pub async fn claim_care_slot(&self, slot: u32, room_id: &str) -> Result<bool, FanoutError> {
        let cmd = redis::cmd("SET")
            .arg(self.care_slot_key(slot))
            .arg(room_id)
            .arg("NX")
            .to_owned();
        let v: Value = self.shared.query(cmd).await?;
        Ok(!matches!(v, Value::Nil))
    }

    /// Frees a care slot: its reservation and everything its room kept in
    /// Redis (history, members, settings), so the next room starts empty.
    pub async fn free_care_slot(&self, slot: u32) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(slot)?;
        // The room's keys share a hash slot; the reservation key has its own.
        let cmd = redis::cmd("DEL")
            .arg(&keys.meta)
            .arg(&keys.hist)
            .arg(&keys.members)
            .arg(&keys.owners)
            .arg(&keys.settings)
            .arg(&keys.watchers)
            .arg(&keys.rate)
            .to_owned();
        sh.query::<Value>(cmd).await?;
        let cmd = redis::cmd("DEL").arg(self.care_slot_key(slot)).to_owned();
        sh.query::<Value>(cmd).await.map(|_| ())
    }
}
