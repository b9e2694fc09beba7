//! Cluster-wide state beside the fan-out: room presence, sessions,
//! rate limits that follow a person across nodes, node liveness.
//!
//! Owns the Redis keys of that state and the scripts that change it. Room
//! presence lives in two hashes per room (member id → member, member id →
//! owning node instance); membership changes and their `presence` events
//! happen in one script, so the event goes out exactly when the member list
//! changes. A node's instance name is its node id plus a per-process nonce,
//! kept alive by a heartbeat key; members owned by an instance whose
//! heartbeat expired are removed by the survivors (no ghosts). It must not
//! decide policy: the hub says who joins, leaves or is limited, and when.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{text, unavailable, RedisFanout, Shared};
use crate::fanout::{EventKind, FanoutError};
use crate::protocol::{Member, MemberId, PresenceEvent, Role};

/// Adds a member (if there is room) or re-owns it; publishes `presence`
/// only when the member is new. Returns 0 when full, else 1 and the list.
pub(super) const JOIN_LUA: &str = r#"
-- KEYS: 1 room members hash, 2 room owners hash, 3 room settings hash,
--       4 room watchers hash
-- ARGV: 1 member id, 2 member json, 3 owner instance, 4 capacity,
--       5 channel, 6 presence publication, 7 publish command,
--       8 '1' when the member is a peer (a locked room refuses new peers)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if ARGV[8] == '1' and redis.call('HGET', KEYS[3], 'locked') == '1' then return {2, 0} end
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {0, 0} end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call(ARGV[7], ARGV[5], ARGV[6])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local out = {1, redis.call('HLEN', KEYS[4])}
local all = redis.call('HVALS', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
"#;

/// Removes a member (only if `owner` still owns it, when given) and
/// publishes `presence` left. Returns 1 when it was removed.
pub(super) const LEAVE_LUA: &str = r#"
-- KEYS: 1 room members hash, 2 room owners hash
-- ARGV: 1 member id, 2 owner instance ('' = any), 3 channel, 4 publication,
--       5 publish command
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call(ARGV[5], ARGV[3], ARGV[4])
  return 1
end
return 0
"#;

/// Removes the history entry whose frame holds `ARGV[1]` (the message's
/// id field). Returns 1 when one was removed.
pub(super) const DELETE_LUA: &str = r#"
-- KEYS: 1 room history stream; ARGV: 1 needle, 2 '1' to only look
local r = redis.call('XRANGE', KEYS[1], '-', '+')
for i = 1, #r do
  if string.find(r[i][2][2], ARGV[1], 1, true) then
    if ARGV[2] ~= '1' then redis.call('XDEL', KEYS[1], r[i][1]) end
    return 1
  end
end
return 0
"#;

/// GCRA: one event against `KEYS[1]`; returns 0, or the wait in ms.
pub(super) const LIMIT_LUA: &str = r#"
-- KEYS: 1 limiter key; ARGV: 1 emission interval (us), 2 burst
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - interval * tonumber(ARGV[2])
if wait > 0 then return math.ceil(wait / 1000) end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"#;

/// What a session needs to be resumed on any node. Never an address, a
/// user agent or message text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub member: Member,
    /// Room ids the identity belongs to.
    pub rooms: Vec<String>,
}

/// A join that Redis accepted, with the room's members on every node.
pub struct ClusterJoin {
    pub members: Vec<Member>,
    /// Staff watching the room, on every node.
    pub watching: usize,
}

/// Outcome of asking Redis for a place in a room.
pub enum JoinOutcome {
    Joined(ClusterJoin),
    Full,
    Locked,
}

/// Staff sanctions on a peer, as stored in Redis.
#[derive(Debug, Default)]
pub struct Sanctions {
    /// Room id → muted until (ms).
    pub mutes: Vec<(String, u64)>,
    /// Banned until (ms); 0 = not banned.
    pub banned_until: u64,
}

fn presence_frame(room: &str, joined: Option<&Member>, left: Option<&str>) -> String {
    let ev = PresenceEvent {
        ty: "presence",
        room,
        joined,
        left: left.map(|id| MemberId { id }),
    };
    serde_json::to_string(&ev).unwrap_or_default()
}

impl RedisFanout {
    /// This process's name in the cluster: node id and a per-process nonce.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// Puts `member` in the room cluster-wide (owned by this node), unless
    /// the room is full. Others learn of a new member through `presence`.
    pub async fn join_member(
        &self,
        room: u32,
        room_id: &str,
        member: &Member,
        capacity: usize,
    ) -> Result<JoinOutcome, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        // Another node's sweep removes members whose owner has no
        // heartbeat key, so the key must exist before we own anyone.
        if !sh.beating.load(std::sync::atomic::Ordering::Acquire) {
            sh.heartbeat().await?;
        }
        let json = serde_json::to_string(member).map_err(unavailable)?;
        let publication = format!(
            "e {} {}",
            member.id,
            presence_frame(room_id, Some(member), None)
        );
        let mut inv = sh.join.key(&keys.members);
        inv.key(&keys.owners)
            .key(&keys.settings)
            .key(&keys.watchers)
            .arg(&member.id)
            .arg(json)
            .arg(&sh.instance)
            .arg(capacity)
            .arg(&keys.channel)
            .arg(publication)
            .arg(sh.publish_cmd)
            .arg(if member.role == Role::Peer { "1" } else { "0" });
        let reply: Vec<Value> = sh.run(inv).await?;
        let mut it = reply.into_iter();
        let status = it.next();
        let watching = match it.next() {
            Some(Value::Int(n)) => usize::try_from(n).unwrap_or(0),
            _ => 0,
        };
        match status {
            Some(Value::Int(1)) => {}
            Some(Value::Int(0)) => return Ok(JoinOutcome::Full),
            Some(Value::Int(2)) => return Ok(JoinOutcome::Locked),
            _ => return Err(unavailable("bad join reply")),
        }
        let members = it
            .filter_map(text)
            .filter_map(|j| serde_json::from_str::<Member>(&j).ok())
            .collect();
        Ok(JoinOutcome::Joined(ClusterJoin { members, watching }))
    }

    /// Removes `member_id` from the room cluster-wide; with `owner`, only
    /// if that node instance still owns the membership (so a node never
    /// removes a member who has since resumed elsewhere).
    pub async fn leave_member(
        &self,
        room: u32,
        room_id: &str,
        member_id: &str,
        owner: Option<&str>,
    ) -> Result<bool, FanoutError> {
        self.shared
            .leave_member(room, room_id, member_id, owner)
            .await
    }

    /// Sends a room event (typing, a deletion, a report for staff) to its
    /// audience on every node, this one included.
    pub async fn publish_event(
        &self,
        room: u32,
        kind: EventKind,
        except: &str,
        frame: &str,
    ) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let tag = match kind {
            EventKind::Room => 'e',
            EventKind::Typing => 't',
            EventKind::Staff => 'w',
        };
        let cmd = redis::cmd(sh.publish_cmd)
            .arg(&keys.channel)
            .arg(format!("{tag} {except} {frame}"))
            .to_owned();
        sh.query::<Value>(cmd).await.map(|_| ())
    }

    /// Removes a message from the room's history stream (with `look_only`,
    /// only says whether it is there).
    pub async fn delete(
        &self,
        room: u32,
        message: &str,
        look_only: bool,
    ) -> Result<bool, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let mut inv = sh.delete.key(&keys.hist);
        inv.arg(crate::fanout::memory::id_needle(message))
            .arg(if look_only { "1" } else { "0" });
        let removed: i64 = sh.run(inv).await?;
        Ok(removed == 1)
    }

    /// Appends a record to the cluster's audit stream. Durable as far as
    /// Redis is (run it with AOF and `appendfsync always` for the audit log
    /// to survive a Redis crash).
    pub async fn audit_append(&self, record: &serde_json::Value) -> Result<String, FanoutError> {
        let sh = &self.shared;
        let json = serde_json::to_string(record).map_err(unavailable)?;
        let cmd = redis::cmd("XADD")
            .arg(format!("{}:audit", sh.prefix))
            .arg("*")
            .arg("r")
            .arg(json)
            .to_owned();
        sh.query::<String>(cmd).await
    }

    /// Newest-first page of the audit stream before `before` (an id).
    pub async fn audit_page(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, FanoutError> {
        let sh = &self.shared;
        let end = match before {
            Some(b) => format!("({b}"),
            None => "+".to_string(),
        };
        let cmd = redis::cmd("XREVRANGE")
            .arg(format!("{}:audit", sh.prefix))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit.clamp(1, 1000))
            .to_owned();
        let entries: Vec<(String, Vec<(String, String)>)> = sh.query(cmd).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let json = fields.into_iter().find(|(k, _)| k == "r")?.1;
                let mut v: serde_json::Value = serde_json::from_str(&json).ok()?;
                v["id"] = serde_json::Value::from(id);
                Some(v)
            })
            .collect())
    }

    /// The room's members on every node.
    pub async fn room_members(&self, room: u32) -> Result<Vec<Member>, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let all: Vec<String> = sh
            .query(redis::cmd("HVALS").arg(&keys.members).to_owned())
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// Members per room, cluster-wide, and whether it is locked, in room
    /// order.
    /// Member counts and lock state of the first `listed` rooms (the
    /// public ones; care-room slots come after them).
    pub async fn room_counts(&self, listed: usize) -> Result<Vec<(usize, bool)>, FanoutError> {
        let sh = &self.shared;
        // One small pipeline per room (its keys share a slot); rooms may be
        // on different shards, so they run as separate, concurrent requests.
        let counts = sh.keys.iter().take(listed).map(|k| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("HLEN").arg(&k.members);
            pipe.cmd("HGET").arg(&k.settings).arg("locked");
            let mut con = sh.link()?;
            match tokio::time::timeout(
                sh.timeout,
                pipe.query_async::<(usize, Option<u64>)>(&mut con),
            )
            .await
            {
                Ok(Ok((n, locked))) => Ok((n, locked == Some(1))),
                Ok(Err(e)) => Err(unavailable(e)),
                Err(_) => Err(unavailable("timed out")),
            }
        });
        futures_util::future::try_join_all(counts).await
    }

    /// One event against a cluster-wide limiter (GCRA): `per` events per
    /// `period`, bursting to `burst`. `Err(ms)` says how long to wait.
    pub async fn limit(
        &self,
        key: &str,
        per: u32,
        period: Duration,
        burst: u32,
    ) -> Result<Result<(), u64>, FanoutError> {
        let sh = &self.shared;
        let interval_us = (period.as_micros() / u128::from(per.max(1))).max(1) as u64;
        let mut inv = sh.limit.key(format!("{}:rl:{key}", sh.prefix));
        inv.arg(interval_us).arg(burst.max(1));
        let wait: u64 = sh.run(inv).await?;
        Ok(if wait == 0 { Ok(()) } else { Err(wait) })
    }

    /// Stores a session for resuming on any node, for `ttl`.
    pub async fn save_session(
        &self,
        token_hash: &[u8; 32],
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let json = serde_json::to_string(record).map_err(unavailable)?;
        let ms = ttl.as_millis().max(1) as u64;
        let set = redis::cmd("SET")
            .arg(sh.session_key(token_hash))
            .arg(json)
            .arg("PX")
            .arg(ms)
            .to_owned();
        sh.query::<Value>(set).await?;
        // The peer id stays reserved exactly as long as its session.
        let expire = redis::cmd("PEXPIRE")
            .arg(format!("{}:peer:{}", sh.prefix, record.member.id))
            .arg(ms)
            .to_owned();
        sh.query::<Value>(expire).await.map(|_| ())
    }

    /// The session behind a resume token's hash, if it is still live.
    pub async fn load_session(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<SessionRecord>, FanoutError> {
        let sh = &self.shared;
        let cmd = redis::cmd("GET").arg(sh.session_key(token_hash)).to_owned();
        let v: Option<String> = sh.query(cmd).await?;
        Ok(v.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Claims a peer id cluster-wide; false if another session has it.
    pub async fn reserve_peer_id(&self, id: &str, ttl: Duration) -> Result<bool, FanoutError> {
        let sh = &self.shared;
        let cmd = redis::cmd("SET")
            .arg(format!("{}:peer:{id}", sh.prefix))
            .arg(&sh.instance)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .to_owned();
        Ok(sh.query::<Option<String>>(cmd).await?.is_some())
    }

    /// Whether a peer id belongs to a live session anywhere.
    pub async fn peer_exists(&self, id: &str) -> Result<bool, FanoutError> {
        let sh = &self.shared;
        let cmd = redis::cmd("EXISTS")
            .arg(format!("{}:peer:{id}", sh.prefix))
            .to_owned();
        Ok(sh.query::<i64>(cmd).await? == 1)
    }

    /// Whether `member_id` is in the room, on any node.
    pub async fn is_member(&self, room: u32, member_id: &str) -> Result<bool, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let cmd = redis::cmd("HEXISTS")
            .arg(&keys.members)
            .arg(member_id)
            .to_owned();
        Ok(sh.query::<i64>(cmd).await? == 1)
    }

    /// Records a mute (until 0 lifts it) so every node, and a later resume
    /// anywhere, applies it.
    pub async fn set_mute(&self, peer: &str, room_id: &str, until: u64) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let key = format!("{}:mutes:{peer}", sh.prefix);
        if until == 0 {
            sh.query::<Value>(redis::cmd("HDEL").arg(&key).arg(room_id).to_owned())
                .await?;
        } else {
            sh.query::<Value>(
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(room_id)
                    .arg(until)
                    .to_owned(),
            )
            .await?;
            // Kept as long as the longest mute can last; entries past
            // their time are ignored when read.
            let cmd = redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(366u64 * 24 * 3600 * 1000)
                .to_owned();
            sh.query::<Value>(cmd).await?;
        }
        self.broadcast(&format!("m {} {peer} {room_id} {until}", sh.instance))
            .await
    }

    /// Records a ban (until 0 lifts it) and tells every node.
    pub async fn set_ban(&self, peer: &str, until: u64) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let key = format!("{}:ban:{peer}", sh.prefix);
        if until == 0 {
            sh.query::<Value>(redis::cmd("DEL").arg(&key).to_owned())
                .await?;
        } else {
            let now = crate::hub::now_ms();
            let cmd = redis::cmd("SET")
                .arg(&key)
                .arg(until)
                .arg("PX")
                .arg(until.saturating_sub(now).max(1))
                .to_owned();
            sh.query::<Value>(cmd).await?;
        }
        self.broadcast(&format!("b {} {peer} {until}", sh.instance))
            .await
    }

    /// Tells every node that a peer was kicked from a room.
    pub async fn announce_kick(&self, peer: &str, room_id: &str) -> Result<(), FanoutError> {
        let sh = &self.shared;
        self.broadcast(&format!("k {} {peer} {room_id}", sh.instance))
            .await
    }

    /// A peer's current mutes and ban (for a resume on this node).
    pub async fn sanctions(&self, peer: &str) -> Result<Sanctions, FanoutError> {
        let sh = &self.shared;
        let now = crate::hub::now_ms();
        let mutes: std::collections::HashMap<String, u64> = sh
            .query(
                redis::cmd("HGETALL")
                    .arg(format!("{}:mutes:{peer}", sh.prefix))
                    .to_owned(),
            )
            .await?;
        let ban: Option<u64> = sh
            .query(
                redis::cmd("GET")
                    .arg(format!("{}:ban:{peer}", sh.prefix))
                    .to_owned(),
            )
            .await?;
        Ok(Sanctions {
            mutes: mutes.into_iter().filter(|(_, u)| *u > now).collect(),
            banned_until: ban.filter(|u| *u > now).unwrap_or(0),
        })
    }

    /// Sets a room's lock or slow mode for every node.
    pub async fn set_setting(&self, room: u32, field: &str, value: u64) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let cmd = redis::cmd("HSET")
            .arg(&keys.settings)
            .arg(field)
            .arg(value)
            .to_owned();
        sh.query::<Value>(cmd).await.map(|_| ())
    }

    /// A room's `(locked, slow_mode seconds)`.
    pub async fn settings(&self, room: u32) -> Result<(bool, u64), FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let cmd = redis::cmd("HMGET")
            .arg(&keys.settings)
            .arg("locked")
            .arg("slow")
            .to_owned();
        let v: (Option<u64>, Option<u64>) = sh.query(cmd).await?;
        Ok((v.0 == Some(1), v.1.unwrap_or(0)))
    }

    /// Starts (or, with `None`, stops) listing a staff connection as a
    /// watcher of the room, cluster-wide. Returns the watcher count.
    pub async fn set_watcher(
        &self,
        room: u32,
        conn: u64,
        member: Option<&Member>,
    ) -> Result<usize, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let field = format!("{}/{conn}", sh.instance);
        match member {
            Some(m) => {
                if !sh.beating.load(std::sync::atomic::Ordering::Acquire) {
                    sh.heartbeat().await?;
                }
                let json = serde_json::to_string(m).map_err(unavailable)?;
                sh.query::<Value>(
                    redis::cmd("HSET")
                        .arg(&keys.watchers)
                        .arg(&field)
                        .arg(json)
                        .to_owned(),
                )
                .await?;
            }
            None => {
                sh.query::<Value>(
                    redis::cmd("HDEL")
                        .arg(&keys.watchers)
                        .arg(&field)
                        .to_owned(),
                )
                .await?;
            }
        }
        sh.query(redis::cmd("HLEN").arg(&keys.watchers).to_owned())
            .await
    }

    /// The staff watching a room, on every node.
    pub async fn watchers(&self, room: u32) -> Result<Vec<Member>, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let all: Vec<String> = sh
            .query(redis::cmd("HVALS").arg(&keys.watchers).to_owned())
            .await?;
        Ok(all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// Keeps a held message (JSON) for staff on any node, for `ttl`.
    pub async fn held_put(
        &self,
        room: u32,
        id: &str,
        json: &str,
        ttl: Duration,
    ) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let key = format!("{}:held", keys.tag);
        sh.query::<Value>(redis::cmd("HSET").arg(&key).arg(id).arg(json).to_owned())
            .await?;
        let cmd = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl.as_millis().max(1) as u64)
            .to_owned();
        sh.query::<Value>(cmd).await.map(|_| ())
    }

    /// Every message held in a room, as JSON, in no particular order.
    pub async fn held_all(&self, room: u32) -> Result<Vec<String>, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let key = format!("{}:held", keys.tag);
        sh.query(redis::cmd("HVALS").arg(&key).to_owned()).await
    }

    /// A held message's JSON; with `take`, removed at the same time (only
    /// one caller can take it).
    pub async fn held_get(
        &self,
        room: u32,
        id: &str,
        take: bool,
    ) -> Result<Option<String>, FanoutError> {
        let sh = &self.shared;
        let keys = sh.room_keys(room)?;
        let key = format!("{}:held", keys.tag);
        let v: Option<String> = sh
            .query(redis::cmd("HGET").arg(&key).arg(id).to_owned())
            .await?;
        if !take || v.is_none() {
            return Ok(v);
        }
        let removed: i64 = sh
            .query(redis::cmd("HDEL").arg(&key).arg(id).to_owned())
            .await?;
        Ok(if removed == 1 { v } else { None })
    }

    /// Stores a peer's report for staff on any node (capped).
    pub async fn add_report(
        &self,
        report: &serde_json::Value,
        max: usize,
    ) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let json = serde_json::to_string(report).map_err(unavailable)?;
        let cmd = redis::cmd("XADD")
            .arg(format!("{}:reports", sh.prefix))
            .arg("MAXLEN")
            .arg("~")
            .arg(max.max(1))
            .arg("*")
            .arg("r")
            .arg(json)
            .to_owned();
        sh.query::<Value>(cmd).await.map(|_| ())
    }

    /// Open reports, newest first (optionally for one room).
    pub async fn reports(
        &self,
        room: Option<&str>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, FanoutError> {
        let sh = &self.shared;
        let dismissed: Vec<String> = sh
            .query(
                redis::cmd("SMEMBERS")
                    .arg(format!("{}:reports:dismissed", sh.prefix))
                    .to_owned(),
            )
            .await?;
        let cmd = redis::cmd("XREVRANGE")
            .arg(format!("{}:reports", sh.prefix))
            .arg("+")
            .arg("-")
            .to_owned();
        let entries: Vec<(String, Vec<(String, String)>)> = sh.query(cmd).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(_, fields)| {
                let json = fields.into_iter().find(|(k, _)| k == "r")?.1;
                serde_json::from_str::<serde_json::Value>(&json).ok()
            })
            .filter(|r| {
                r["id"]
                    .as_str()
                    .is_some_and(|id| !dismissed.iter().any(|d| d == id))
            })
            .filter(|r| room.is_none_or(|want| r["room"] == want))
            .take(limit)
            .collect())
    }

    /// Marks a report dealt with.
    pub async fn dismiss_report(&self, id: &str) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let key = format!("{}:reports:dismissed", sh.prefix);
        sh.query::<Value>(redis::cmd("SADD").arg(&key).arg(id).to_owned())
            .await?;
        // Reports are capped by count; dismissals live long enough to
        // outlast them.
        sh.query::<Value>(
            redis::cmd("EXPIRE")
                .arg(&key)
                .arg(30 * 24 * 3600)
                .to_owned(),
        )
        .await
        .map(|_| ())
    }

    /// Puts an address tag on probation on every node until `until` (ms).
    pub async fn announce_probation(&self, tag: u64, until: u64) -> Result<(), FanoutError> {
        let sh = &self.shared;
        self.broadcast(&format!("p {} {tag} {until}", sh.instance))
            .await
    }

    async fn broadcast(&self, msg: &str) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let cmd = redis::cmd("PUBLISH")
            .arg(&sh.ctl_channel)
            .arg(msg)
            .to_owned();
        sh.query::<Value>(cmd).await.map(|_| ())
    }

    /// Whether a staff token id is on the cluster's revocation list.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, FanoutError> {
        let sh = &self.shared;
        let cmd = redis::cmd("EXISTS")
            .arg(format!("{}:revoked:{jti}", sh.prefix))
            .to_owned();
        Ok(sh.query::<i64>(cmd).await? == 1)
    }

    /// Puts a staff token id on the revocation list until it would have
    /// expired anyway (`exp`, seconds), and tells the other nodes.
    pub async fn revoke(&self, jti: &str, exp: u64) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let now = crate::hub::now_ms() / 1000;
        let ttl_ms = exp.saturating_sub(now).max(1) * 1000;
        let set = redis::cmd("SET")
            .arg(format!("{}:revoked:{jti}", sh.prefix))
            .arg(exp)
            .arg("PX")
            .arg(ttl_ms)
            .to_owned();
        sh.query::<Value>(set).await?;
        let tell = redis::cmd("PUBLISH")
            .arg(&sh.ctl_channel)
            .arg(format!("r {} {jti} {exp}", sh.instance))
            .to_owned();
        sh.query::<Value>(tell).await.map(|_| ())
    }

    /// Tells the other nodes that this node now serves `member_id`'s
    /// session, so they close their connection for it.
    pub async fn announce_takeover(&self, member_id: &str) -> Result<(), FanoutError> {
        let sh = &self.shared;
        let cmd = redis::cmd("PUBLISH")
            .arg(&sh.ctl_channel)
            .arg(format!("t {} {member_id}", sh.instance))
            .to_owned();
        sh.query::<Value>(cmd).await.map(|_| ())
    }
}

impl Shared {
    pub(super) async fn leave_member(
        &self,
        room: u32,
        room_id: &str,
        member_id: &str,
        owner: Option<&str>,
    ) -> Result<bool, FanoutError> {
        let keys = self.room_keys(room)?;
        let publication = format!(
            "e {member_id} {}",
            presence_frame(room_id, None, Some(member_id))
        );
        let mut inv = self.leave.key(&keys.members);
        inv.key(&keys.owners)
            .arg(member_id)
            .arg(owner.unwrap_or(""))
            .arg(&keys.channel)
            .arg(publication)
            .arg(self.publish_cmd);
        let removed: i64 = self.run(inv).await?;
        Ok(removed == 1)
    }

    fn session_key(&self, token_hash: &[u8; 32]) -> String {
        let mut hex = String::with_capacity(64);
        for b in token_hash {
            hex.push_str(&format!("{b:02x}"));
        }
        format!("{}:sess:{hex}", self.prefix)
    }

    /// Whether a node instance's heartbeat is alive (memoised per sweep).
    async fn instance_alive(&self, owner: &str, seen: &mut HashMap<String, bool>) -> bool {
        if let Some(l) = seen.get(owner) {
            return *l;
        }
        let cmd = redis::cmd("EXISTS").arg(self.node_key(owner)).to_owned();
        // Unknown: never remove on doubt.
        let l = self.query::<i64>(cmd).await.map_or(true, |n| n == 1);
        seen.insert(owner.to_string(), l);
        l
    }

    fn node_key(&self, instance: &str) -> String {
        format!("{}:node:{instance}", self.prefix)
    }

    /// Reads (creating it once, if missing) the cluster's random key for
    /// address tags and hands it to the hub.
    pub(super) async fn fetch_address_key(&self) {
        let key = format!("{}:addrkey", self.prefix);
        let fresh: [u8; 32] = rand::random();
        let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let set = redis::cmd("SET").arg(&key).arg(hex).arg("NX").to_owned();
        if self.query::<Value>(set).await.is_err() {
            return;
        }
        let Ok(Some(stored)) = self
            .query::<Option<String>>(redis::cmd("GET").arg(&key).to_owned())
            .await
        else {
            return;
        };
        let mut bytes = [0u8; 32];
        let ok = stored.len() == 64
            && bytes.iter_mut().enumerate().all(|(i, b)| {
                u8::from_str_radix(&stored[2 * i..2 * i + 2], 16)
                    .map(|v| *b = v)
                    .is_ok()
            });
        if let (true, Some(c)) = (ok, self.control.get()) {
            c.address_key(bytes);
            self.have_address_key
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes this instance's heartbeat key (alive for `node_timeout`).
    pub(super) async fn heartbeat(&self) -> Result<(), FanoutError> {
        let cmd = redis::cmd("SET")
            .arg(self.node_key(&self.instance))
            .arg("1")
            .arg("PX")
            .arg(self.node_timeout.as_millis().max(1) as u64)
            .to_owned();
        self.query::<Value>(cmd).await?;
        self.beating
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Keeps this node's heartbeat alive and removes members owned by
    /// node instances whose heartbeat expired.
    pub(super) async fn upkeep(&self, shutdown: CancellationToken) {
        let beat = (self.node_timeout / 3)
            .max(Duration::from_millis(100))
            .min(self.sweep_every);
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            // At start-up Redis may not be connected yet: retry soon rather
            // than a whole beat later, so the key exists before it matters.
            let wait = match self.heartbeat().await {
                Ok(()) => beat,
                Err(_) => beat.min(Duration::from_millis(100)),
            };
            if tokio::time::Instant::now() >= next_sweep {
                if let Err(e) = self.sweep_ghosts().await {
                    tracing::debug!(error = %e, "ghost sweep failed");
                }
                next_sweep = tokio::time::Instant::now() + self.sweep_every;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn sweep_ghosts(&self) -> Result<(), FanoutError> {
        let mut alive: HashMap<String, bool> = HashMap::new();
        alive.insert(self.instance.clone(), true);
        for (i, keys) in self.keys.iter().enumerate() {
            // Watchers are `<instance>/<connection>`.
            let cmd = redis::cmd("HKEYS").arg(&keys.watchers).to_owned();
            let watchers: Vec<String> = self.query(cmd).await?;
            for field in watchers {
                let Some((owner, _)) = field.rsplit_once('/') else {
                    continue;
                };
                if !self.instance_alive(owner, &mut alive).await {
                    let cmd = redis::cmd("HDEL")
                        .arg(&keys.watchers)
                        .arg(&field)
                        .to_owned();
                    self.query::<Value>(cmd).await?;
                }
            }
            let cmd = redis::cmd("HGETALL").arg(&keys.owners).to_owned();
            let owners: HashMap<String, String> = self.query(cmd).await?;
            for (member, owner) in owners {
                let live = self.instance_alive(&owner, &mut alive).await;
                if !live
                    && self
                        .leave_member(i as u32, &keys.room_id, &member, Some(&owner))
                        .await?
                {
                    tracing::info!(
                        room = keys.room_id.as_str(),
                        "removed a member of a node that stopped answering"
                    );
                }
            }
        }
        Ok(())
    }
}
