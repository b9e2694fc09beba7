//! Rate limits, all with `governor` and all in memory on this node.
//!
//! - per connection (any frame, typing, flood strikes): owned by the
//!   connection's task in `ConnectionLimits`, so nothing to clean up;
//! - per identity (messages) and per room (messages): keyed limiters shared
//!   by the node, swept by `housekeeping`;
//! - per source address (new connections): keyed on a hash of the address
//!   made with a per-process random key, so the address itself is never
//!   kept, logged or stored.
//!
//! It must not know about sockets or rooms beyond their keys.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitsConfig;

/// A refusal, with how long until the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// Milliseconds to wait, never 0 (a client told "retry in 0 ms" would spin).
    pub fn retry_after_ms(&self) -> u64 {
        (self.retry_after.as_millis() as u64).max(1)
    }
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// `n` per `per`, bursting up to `burst`.
fn quota(n: u32, per: Duration, burst: u32) -> Quota {
    let period = per / n.max(1);
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(nz(n)))
        .allow_burst(nz(burst))
}

/// The node-wide keyed limiters.
pub struct Limiters {
    cfg: RateLimitsConfig,
    clock: DefaultClock,
    identity: DefaultKeyedRateLimiter<u64>,
    room: DefaultKeyedRateLimiter<u32>,
    address: DefaultKeyedRateLimiter<u64>,
    /// New connections from addresses whose peer was banned: much slower.
    probation: DefaultKeyedRateLimiter<u64>,
    // parking_lot: address tags on probation and until when; looked up and
    // swept briefly, never across `.await`.
    on_probation: parking_lot::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    // The key of the address tag (HMAC-SHA256, truncated): random per
    // process, or in cluster mode one random key shared by the nodes
    // through Redis, so a ban's probation holds on every node. Either way
    // a tag cannot be turned back into an address without the key, and
    // the key never leaves the nodes and Redis.
    address_key: parking_lot::RwLock<[u8; 32]>,
}

/// Address tags on probation at most; the oldest is dropped beyond this.
const MAX_PROBATION: usize = 100_000;

impl Limiters {
    pub fn new(cfg: &RateLimitsConfig) -> Limiters {
        let ten = Duration::from_secs(10);
        Limiters {
            identity: RateLimiter::keyed(quota(
                cfg.identity_messages_per_10s,
                ten,
                cfg.identity_messages_per_10s,
            )),
            room: RateLimiter::keyed(quota(
                cfg.room_messages_per_second,
                Duration::from_secs(1),
                cfg.room_messages_burst,
            )),
            address: RateLimiter::keyed(quota(
                cfg.address_connects_per_minute,
                Duration::from_secs(60),
                cfg.address_connects_burst,
            )),
            probation: RateLimiter::keyed(quota(
                cfg.probation_connects_per_hour,
                Duration::from_secs(3600),
                1,
            )),
            on_probation: parking_lot::Mutex::new(std::collections::HashMap::new()),
            address_key: parking_lot::RwLock::new(rand::random()),
            clock: DefaultClock::default(),
            cfg: cfg.clone(),
        }
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        lim: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), Limited> {
        lim.check_key(key).map_err(|nu| Limited {
            retry_after: nu.wait_time_from(self.clock.now()),
        })
    }

    /// One message from an identity (keyed by its internal number).
    pub fn identity_message(&self, identity: u64) -> Result<(), Limited> {
        self.check(&self.identity, &identity)
    }

    /// One message into a room (keyed by its index).
    pub fn room_message(&self, room: u32) -> Result<(), Limited> {
        self.check(&self.room, &room)
    }

    /// One new connection from an address. The address is hashed at once
    /// and dropped; only the hash is a key, and it is returned as the
    /// connection's address tag. An address on probation (its peer was
    /// banned) gets the much slower probation limit.
    pub fn address_connect(&self, addr: IpAddr) -> Result<u64, Limited> {
        let key = self.address_tag(addr);
        let probation = self
            .on_probation
            .lock()
            .get(&key)
            .is_some_and(|until| *until > std::time::Instant::now());
        if probation {
            self.check(&self.probation, &key)?;
        }
        self.check(&self.address, &key)?;
        Ok(key)
    }

    /// The keyed tag of an address (never the address itself).
    fn address_tag(&self, addr: IpAddr) -> u64 {
        use hmac::{Mac, SimpleHmac};
        let key = *self.address_key.read();
        let Ok(mut mac) = SimpleHmac::<sha2::Sha256>::new_from_slice(&key) else {
            return 0;
        };
        match addr {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        let out = mac.finalize().into_bytes();
        let mut b = [0u8; 8];
        b.copy_from_slice(&out[..8]);
        u64::from_le_bytes(b)
    }

    /// Uses a key shared by every node (cluster mode) for address tags.
    pub fn set_address_key(&self, key: [u8; 32]) {
        *self.address_key.write() = key;
    }

    /// Puts an address tag on probation for `d` (a peer from it was banned).
    pub fn put_on_probation(&self, tag: u64, d: Duration) {
        let mut p = self.on_probation.lock();
        let now = std::time::Instant::now();
        if p.len() >= MAX_PROBATION {
            p.retain(|_, until| *until > now);
        }
        if p.len() < MAX_PROBATION {
            p.insert(tag, now + d);
        }
    }

    /// Per-connection limiters for a new connection.
    pub fn for_connection(&self) -> ConnectionLimits {
        let c = &self.cfg;
        ConnectionLimits {
            frames: RateLimiter::direct(quota(
                c.connection_frames_per_second,
                Duration::from_secs(1),
                c.connection_frames_burst,
            )),
            typing: RateLimiter::direct(quota(
                c.typing_per_10s,
                Duration::from_secs(10),
                c.typing_per_10s,
            )),
            strikes: RateLimiter::direct(quota(
                c.flood_strikes,
                Duration::from_secs(10),
                c.flood_strikes,
            )),
            clock: self.clock.clone(),
        }
    }

    /// Drops keys whose limits have fully recovered, so memory tracks active
    /// identities and addresses rather than everyone ever seen.
    pub fn housekeeping(&self) {
        for l in [&self.identity, &self.address] {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.room.retain_recent();
        self.probation.retain_recent();
        let now = std::time::Instant::now();
        self.on_probation.lock().retain(|_, until| *until > now);
    }

    /// Keys held, for the metrics gauge.
    pub fn keys(&self) -> usize {
        self.identity.len() + self.room.len() + self.address.len()
    }
}

/// Limits owned by one connection's task.
pub struct ConnectionLimits {
    frames: DefaultDirectRateLimiter,
    typing: DefaultDirectRateLimiter,
    strikes: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl ConnectionLimits {
    /// Any frame received.
    pub fn frame(&self) -> Result<(), Limited> {
        self.frames.check().map_err(|nu| Limited {
            retry_after: nu.wait_time_from(self.clock.now()),
        })
    }

    /// A typing indicator; refusals are silent.
    pub fn typing(&self) -> bool {
        self.typing.check().is_ok()
    }

    /// Records one frame sent before an earlier refusal's `retry_after` had
    /// passed. Returns `false` when that happened so often that the
    /// connection counts as flooding (close 4008).
    pub fn strike(&self) -> bool {
        self.strikes.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RateLimitsConfig {
        RateLimitsConfig {
            connection_frames_per_second: 2,
            connection_frames_burst: 3,
            identity_messages_per_10s: 5,
            room_messages_per_second: 1,
            room_messages_burst: 2,
            address_connects_per_minute: 60,
            address_connects_burst: 2,
            typing_per_10s: 1,
            flood_strikes: 2,
            probation_connects_per_hour: 1,
        }
    }

    #[test]
    fn identity_allows_burst_then_limits_with_retry() {
        let l = Limiters::new(&cfg());
        for _ in 0..5 {
            assert!(l.identity_message(7).is_ok());
        }
        let e = l.identity_message(7).expect_err("sixth is limited");
        assert!(
            e.retry_after_ms() > 0 && e.retry_after_ms() <= 2000,
            "{e:?}"
        );
        // Another identity is unaffected.
        assert!(l.identity_message(8).is_ok());
    }

    #[test]
    fn rooms_and_addresses_are_independent() {
        let l = Limiters::new(&cfg());
        assert!(l.room_message(0).is_ok());
        assert!(l.room_message(0).is_ok());
        assert!(l.room_message(0).is_err());
        assert!(l.room_message(1).is_ok());
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(l.address_connect(a).is_ok());
        assert!(l.address_connect(a).is_ok());
        assert!(l.address_connect(a).is_err());
        assert!(l.address_connect(b).is_ok());
    }

    #[test]
    fn probation_slows_an_address_down() {
        let l = Limiters::new(&cfg());
        let a: IpAddr = [10, 0, 0, 1].into();
        let tag = l.address_connect(a).expect("first");
        assert_eq!(l.address_connect(a).expect("second"), tag, "stable tag");
        let c: IpAddr = [10, 0, 0, 3].into();
        let tag_c = l.address_connect(c).expect("c");
        l.put_on_probation(tag_c, Duration::from_secs(60));
        // One connection per hour on probation, then refused for long.
        assert!(l.address_connect(c).is_ok());
        let e = l.address_connect(c).expect_err("probation");
        assert!(e.retry_after_ms() > 60_000, "{e:?}");
    }

    #[test]
    fn strikes_run_out() {
        let c = Limiters::new(&cfg()).for_connection();
        assert!(c.strike());
        assert!(c.strike());
        assert!(!c.strike());
        assert!(c.typing());
        assert!(!c.typing());
        assert!(c.frame().is_ok());
    }
}
