//! Configuration: loads `config/default.toml` (or `--config PATH`), applies
//! the `HEARTH_*` environment overrides and validates every value.
//!
//! Owns the `Config` tree and its error sentences, which always name the bad
//! key. It must not start anything or read anything but the file and the env.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default configuration, compiled in so that the binary runs even when
/// started outside the repository.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The path `hearth serve` reads when no `--config` is given.
pub const DEFAULT_PATH: &str = "config/default.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}`: {why}")]
    Invalid { key: String, why: String },
    #[error("config file is not valid TOML: {0}")]
    Syntax(String),
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub websocket: WebSocketConfig,
    pub sessions: SessionsConfig,
    pub limits: LimitsConfig,
    pub rate_limits: RateLimitsConfig,
    pub history: HistoryConfig,
    pub cluster: ClusterConfig,
    pub safety: SafetyConfig,
    pub escalation: EscalationConfig,
    pub rooms: Vec<RoomConfig>,
    /// `HEARTH_STAFF_SECRET`: only ever from the environment, never from a
    /// file in the repository.
    #[serde(skip)]
    pub staff_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub node_id: String,
    pub redis_url: String,
    pub data_dir: PathBuf,
    pub allowed_origins: Vec<String>,
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    pub max_frame_bytes: usize,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub max_write_buffer_bytes: usize,
    pub outbound_queue: usize,
    pub handshake_timeout_secs: u64,
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    pub resume_ttl_secs: u64,
    pub resume_grace_secs: u64,
    pub max_sessions: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_text_chars: usize,
    pub max_report_reason_chars: usize,
    pub max_reports_stored: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub connection_frames_per_second: u32,
    pub connection_frames_burst: u32,
    pub identity_messages_per_10s: u32,
    pub room_messages_per_second: u32,
    pub room_messages_burst: u32,
    pub address_connects_per_minute: u32,
    pub address_connects_burst: u32,
    pub typing_per_10s: u32,
    pub flood_strikes: u32,
    pub probation_connects_per_hour: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    pub on_join: usize,
    pub max: usize,
    pub ttl_secs: u64,
}

/// What happens to messages at each crisis level, and the support shown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// How long earlier signals of one person count towards a later
    /// message's level (the per-person risk memory, in memory only).
    pub risk_window_secs: u64,
    pub concern: LevelAction,
    pub high: LevelAction,
    pub imminent: LevelAction,
    pub support: Vec<SupportText>,
    pub resources: Vec<ResourceConfig>,
}

/// Escalations: which levels raise one, how fast staff must acknowledge,
/// who is told at each tier, how long records are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    /// Crisis levels that raise an escalation (`concern`, `high`, `imminent`).
    pub levels: Vec<String>,
    pub ack_imminent_secs: u64,
    pub ack_high_secs: u64,
    pub ack_concern_secs: u64,
    /// Acknowledged but not resolved after this long: told again.
    pub retrigger_after_secs: u64,
    /// How many times an unacknowledged escalation moves up a tier (or,
    /// past the last tier, is sent to it again).
    pub max_reescalations: u32,
    /// Messages before the flagged one that go into the excerpt.
    pub context_messages: usize,
    /// Resolved escalations are deleted this long after they were raised.
    pub retention_days: u64,
    /// Private care rooms that can be open at once (0 = none).
    pub care_rooms: usize,
    /// People in one care room at most (the person and staff).
    pub care_room_capacity: usize,
    pub webhook_timeout_ms: u64,
    /// Failed deliveries to one target before it is dead-lettered.
    pub webhook_attempts: u32,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Who is told, tier by tier (tier 1 first). `HEARTH_WEBHOOK_URL`
    /// adds its webhooks to tier 1.
    pub tiers: Vec<TierConfig>,
    /// `HEARTH_WEBHOOK_SECRET`: only ever from the environment.
    #[serde(skip)]
    pub webhook_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    pub webhooks: Vec<String>,
}

/// Deliver a message at that level (staff are still told) or hold it for
/// staff review first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelAction {
    Deliver,
    Hold,
}

/// The words of the private `support` event, in one language.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportText {
    pub language: String,
    /// For help-seeking with no crisis signal.
    pub help: String,
    pub concern: String,
    /// For `high` and `imminent`.
    pub crisis: String,
}

/// A crisis resource, for people whose locale names one of `countries`
/// (ISO 3166 alpha-2), else one of `languages`; both empty = everyone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    pub countries: Vec<String>,
    pub languages: Vec<String>,
    pub name: String,
    pub contact: String,
}

/// Cluster mode (only read when `server.redis_url` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub key_prefix: String,
    pub command_timeout_ms: u64,
    pub health_interval_ms: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub fanout_queue: usize,
    pub node_timeout_ms: u64,
    pub sweep_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    pub id: String,
    pub title: String,
    pub description: String,
    pub capacity: usize,
    pub guidelines: String,
    /// A care-room slot (added by the hub, never from the file).
    #[serde(skip)]
    pub care: bool,
}

/// Care rooms live in a fixed pool of slots after the configured rooms; a
/// slot's id is internal (never joinable or shown).
pub const CARE_SLOT_PREFIX: &str = "care-slot-";

impl Config {
    /// This config with the care-room slots appended to `rooms`.
    pub fn with_care_rooms(&self) -> Config {
        let mut c = self.clone();
        for i in 0..self.escalation.care_rooms {
            c.rooms.push(RoomConfig {
                id: format!("{CARE_SLOT_PREFIX}{i}"),
                title: "Care room".into(),
                description: "A private room with a clinician.".into(),
                capacity: self.escalation.care_room_capacity,
                guidelines: "This room is private: only you and the people caring for you can see it. Take your time."
                    .into(),
                care: true,
            });
        }
        c
    }

    /// Loads a config file, or the compiled-in default when `path` is `None`
    /// and `config/default.toml` is absent, then applies env overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => read(p)?,
            None if Path::new(DEFAULT_PATH).exists() => read(Path::new(DEFAULT_PATH))?,
            None => DEFAULT_TOML.to_string(),
        };
        let mut cfg = Config::parse(&text)?;
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text; unknown and mistyped keys are named by path.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let why = e.into_inner().message().to_string();
            invalid(key, why)
        })
    }

    /// The `HEARTH_*` overrides of the operator contract.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("HEARTH_LISTEN") {
            self.server.listen = v;
        }
        if let Some(v) = get("HEARTH_REDIS_URL") {
            self.server.redis_url = v;
        }
        if let Some(v) = get("HEARTH_NODE_ID") {
            self.server.node_id = v;
        }
        if let Some(v) = get("HEARTH_DATA_DIR") {
            self.server.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("HEARTH_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = get("HEARTH_STAFF_SECRET") {
            let v = v.trim().to_string();
            self.staff_secret = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("HEARTH_WEBHOOK_URL") {
            let urls: Vec<String> = v
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            if !urls.is_empty() {
                if self.escalation.tiers.is_empty() {
                    self.escalation.tiers.push(TierConfig {
                        name: "on-call".into(),
                        webhooks: Vec::new(),
                    });
                }
                self.escalation.tiers[0].webhooks.extend(urls);
            }
        }
        if let Some(v) = get("HEARTH_WEBHOOK_SECRET") {
            let v = v.trim().to_string();
            self.escalation.webhook_secret = (!v.is_empty()).then_some(v);
        }
    }

    fn validate_escalation(&self) -> Result<(), ConfigError> {
        let e = &self.escalation;
        for (i, l) in e.levels.iter().enumerate() {
            if !matches!(l.as_str(), "concern" | "high" | "imminent") {
                return Err(invalid(
                    format!("escalation.levels[{i}]"),
                    format!(
                        "`{l}` is not a crisis level; use \"concern\", \"high\" or \"imminent\""
                    ),
                ));
            }
        }
        positive("escalation.ack_imminent_secs", e.ack_imminent_secs)?;
        positive("escalation.ack_high_secs", e.ack_high_secs)?;
        positive("escalation.ack_concern_secs", e.ack_concern_secs)?;
        positive("escalation.retrigger_after_secs", e.retrigger_after_secs)?;
        positive("escalation.retention_days", e.retention_days)?;
        positive("escalation.webhook_timeout_ms", e.webhook_timeout_ms)?;
        positive("escalation.webhook_attempts", u64::from(e.webhook_attempts))?;
        positive("escalation.retry_min_ms", e.retry_min_ms)?;
        if e.retry_max_ms < e.retry_min_ms {
            return Err(invalid(
                "escalation.retry_max_ms",
                "must not be smaller than escalation.retry_min_ms",
            ));
        }
        if e.care_rooms > 256 {
            return Err(invalid("escalation.care_rooms", "must be at most 256"));
        }
        if e.care_rooms > 0 && e.care_room_capacity < 2 {
            return Err(invalid(
                "escalation.care_room_capacity",
                "must be at least 2: the person and a clinician",
            ));
        }
        if e.context_messages > 50 {
            return Err(invalid(
                "escalation.context_messages",
                "must be at most 50: an excerpt keeps only what a clinician needs",
            ));
        }
        let mut any_webhook = false;
        for (i, t) in e.tiers.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(invalid(
                    format!("escalation.tiers[{i}].name"),
                    "must not be empty",
                ));
            }
            for (j, u) in t.webhooks.iter().enumerate() {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && reqwest::Url::parse(u).is_ok_and(|p| p.host_str().is_some());
                if !ok {
                    return Err(invalid(
                        format!("escalation.tiers[{i}].webhooks[{j}]"),
                        "a webhook is an http:// or https:// URL (HEARTH_WEBHOOK_URL adds to tier 1)",
                    ));
                }
                any_webhook = true;
            }
        }
        if any_webhook && e.webhook_secret.is_none() {
            return Err(invalid(
                "HEARTH_WEBHOOK_SECRET",
                "webhooks are configured, so set HEARTH_WEBHOOK_SECRET: every delivery is signed (X-Hearth-Signature)",
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("`{}` is not an address like 127.0.0.1:8080", s.listen),
            ));
        }
        if !s.node_id.is_empty()
            && (s.node_id.len() > 64
                || !s
                    .node_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(invalid(
                "server.node_id",
                "use at most 64 letters, digits, '-' or '_'",
            ));
        }
        if !s.redis_url.is_empty() {
            let ok = match s.redis_url.strip_prefix("redis+cluster://") {
                // A Redis Cluster: seed nodes, comma-separated.
                Some(rest) => {
                    let hosts = rest.split('/').next().unwrap_or("");
                    !hosts.is_empty()
                        && hosts.split(',').all(|h| {
                            !h.is_empty() && redis::Client::open(format!("redis://{h}/")).is_ok()
                        })
                }
                None => {
                    ["redis://", "rediss://", "redis+unix://", "unix://"]
                        .iter()
                        .any(|p| s.redis_url.starts_with(p))
                        && redis::Client::open(s.redis_url.as_str()).is_ok()
                }
            };
            if !ok {
                return Err(invalid(
                    "server.redis_url",
                    "use a URL like redis://host:6379/0 (one server) or redis+cluster://host:7000,host:7001 (a Redis Cluster), or leave it empty for embedded mode",
                ));
            }
        }
        let c = &self.cluster;
        if c.key_prefix.is_empty()
            || c.key_prefix.len() > 32
            || !c
                .key_prefix
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(invalid(
                "cluster.key_prefix",
                "use 1 to 32 letters, digits, '-' or '_'",
            ));
        }
        positive("cluster.command_timeout_ms", c.command_timeout_ms)?;
        positive("cluster.health_interval_ms", c.health_interval_ms)?;
        positive("cluster.reconnect_min_ms", c.reconnect_min_ms)?;
        if c.reconnect_max_ms < c.reconnect_min_ms {
            return Err(invalid(
                "cluster.reconnect_max_ms",
                "must not be smaller than cluster.reconnect_min_ms",
            ));
        }
        positive("cluster.fanout_queue", c.fanout_queue as u64)?;
        let sf = &self.safety;
        positive("safety.risk_window_secs", sf.risk_window_secs)?;
        if !sf.support.iter().any(|t| t.language == "en") {
            return Err(invalid(
                "safety.support",
                "needs an entry with language = \"en\" (the fallback)",
            ));
        }
        for (i, t) in sf.support.iter().enumerate() {
            if t.help.trim().is_empty() || t.concern.trim().is_empty() || t.crisis.trim().is_empty()
            {
                return Err(invalid(
                    format!("safety.support[{i}]"),
                    "help, concern and crisis must not be empty",
                ));
            }
        }
        if !sf
            .resources
            .iter()
            .any(|r| r.countries.is_empty() && r.languages.is_empty())
        {
            return Err(invalid(
                "safety.resources",
                "needs at least one resource for everyone (empty countries and languages), so nobody is left without one",
            ));
        }
        for (i, r) in sf.resources.iter().enumerate() {
            if r.name.trim().is_empty() || r.contact.trim().is_empty() {
                return Err(invalid(
                    format!("safety.resources[{i}]"),
                    "name and contact must not be empty",
                ));
            }
            if r.countries
                .iter()
                .any(|c| c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()))
            {
                return Err(invalid(
                    format!("safety.resources[{i}].countries"),
                    "use two-letter upper-case country codes such as \"GB\"",
                ));
            }
        }
        self.validate_escalation()?;
        if c.node_timeout_ms < 3 * c.health_interval_ms.min(1000) {
            return Err(invalid(
                "cluster.node_timeout_ms",
                "must be at least 3 health intervals (and at least 300 ms)",
            ));
        }
        positive("cluster.sweep_interval_ms", c.sweep_interval_ms)?;
        for (i, o) in s.allowed_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(invalid(
                    format!("server.allowed_origins[{i}]"),
                    "an origin looks like https://example.org (or \"*\" for any)",
                ));
            }
        }
        positive("server.shutdown_grace_secs", s.shutdown_grace_secs)?;
        if s.shutdown_grace_secs > 8 {
            return Err(invalid(
                "server.shutdown_grace_secs",
                "must be at most 8 so the process exits within 10 s",
            ));
        }

        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return Err(invalid(
                "log.filter",
                format!(
                    "`{}` is not a log filter like \"info\" or \"info,hearth=debug\" (HEARTH_LOG overrides this key)",
                    self.log.filter
                ),
            ));
        }

        let w = &self.websocket;
        if w.max_frame_bytes < self.limits.max_text_chars * 4 + 512 {
            return Err(invalid(
                "websocket.max_frame_bytes",
                "must fit a full-length message: at least limits.max_text_chars * 4 + 512",
            ));
        }
        if w.read_buffer_bytes < 256 {
            return Err(invalid(
                "websocket.read_buffer_bytes",
                "must be at least 256",
            ));
        }
        if w.write_buffer_bytes == 0 {
            return Err(invalid("websocket.write_buffer_bytes", "must be positive"));
        }
        if w.max_write_buffer_bytes <= w.write_buffer_bytes {
            return Err(invalid(
                "websocket.max_write_buffer_bytes",
                "must be greater than websocket.write_buffer_bytes",
            ));
        }
        positive("websocket.outbound_queue", w.outbound_queue as u64)?;
        positive("websocket.handshake_timeout_secs", w.handshake_timeout_secs)?;
        positive("websocket.ping_interval_secs", w.ping_interval_secs)?;
        if w.idle_timeout_secs <= w.ping_interval_secs {
            return Err(invalid(
                "websocket.idle_timeout_secs",
                "must be longer than websocket.ping_interval_secs",
            ));
        }

        positive("sessions.resume_ttl_secs", self.sessions.resume_ttl_secs)?;
        if self.sessions.resume_grace_secs > self.sessions.resume_ttl_secs {
            return Err(invalid(
                "sessions.resume_grace_secs",
                "must not be longer than sessions.resume_ttl_secs",
            ));
        }
        positive("sessions.max_sessions", self.sessions.max_sessions as u64)?;

        let l = &self.limits;
        if !(1..=10_000).contains(&l.max_text_chars) {
            return Err(invalid("limits.max_text_chars", "must be from 1 to 10000"));
        }
        positive(
            "limits.max_report_reason_chars",
            l.max_report_reason_chars as u64,
        )?;
        positive("limits.max_reports_stored", l.max_reports_stored as u64)?;

        let r = &self.rate_limits;
        for (k, v) in [
            (
                "rate_limits.connection_frames_per_second",
                r.connection_frames_per_second,
            ),
            (
                "rate_limits.connection_frames_burst",
                r.connection_frames_burst,
            ),
            (
                "rate_limits.identity_messages_per_10s",
                r.identity_messages_per_10s,
            ),
            (
                "rate_limits.room_messages_per_second",
                r.room_messages_per_second,
            ),
            ("rate_limits.room_messages_burst", r.room_messages_burst),
            (
                "rate_limits.address_connects_per_minute",
                r.address_connects_per_minute,
            ),
            (
                "rate_limits.address_connects_burst",
                r.address_connects_burst,
            ),
            ("rate_limits.typing_per_10s", r.typing_per_10s),
            ("rate_limits.flood_strikes", r.flood_strikes),
            (
                "rate_limits.probation_connects_per_hour",
                r.probation_connects_per_hour,
            ),
        ] {
            positive(k, v as u64)?;
        }

        let h = &self.history;
        positive("history.max", h.max as u64)?;
        if h.on_join > h.max {
            return Err(invalid(
                "history.on_join",
                "must not be larger than history.max",
            ));
        }
        positive("history.ttl_secs", h.ttl_secs)?;

        if self.rooms.is_empty() {
            return Err(invalid("rooms", "configure at least one room"));
        }
        let mut seen = HashSet::new();
        for (i, room) in self.rooms.iter().enumerate() {
            if !valid_room_id(&room.id) {
                return Err(invalid(
                    format!("rooms[{i}].id"),
                    "use 1 to 32 lowercase letters, digits or '-'",
                ));
            }
            if !seen.insert(room.id.as_str()) {
                return Err(invalid(
                    format!("rooms[{i}].id"),
                    format!("`{}` is used by two rooms", room.id),
                ));
            }
            if !room.care && room.id.starts_with("care-") {
                return Err(invalid(
                    format!("rooms[{i}].id"),
                    "ids starting with \"care-\" are kept for care rooms",
                ));
            }
            if room.title.trim().is_empty() {
                return Err(invalid(format!("rooms[{i}].title"), "must not be empty"));
            }
            if room.guidelines.trim().is_empty() {
                return Err(invalid(
                    format!("rooms[{i}].guidelines"),
                    "every room needs guidelines",
                ));
            }
            positive(&format!("rooms[{i}].capacity"), room.capacity as u64)?;
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|_| invalid("server.listen", "not a socket address"))
    }
}

pub fn valid_room_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

fn read(p: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let cfg = Config::parse(DEFAULT_TOML).expect("parses");
        cfg.validate().expect("valid");
        let ids: Vec<_> = cfg.rooms.iter().map(|r| r.id.as_str()).collect();
        for want in ["bereavement", "substance-use", "anxiety"] {
            assert!(ids.contains(&want), "{want} missing");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = DEFAULT_TOML.replace("[history]", "[history]\nbogus = 1");
        let err = Config::parse(&text).expect_err("must fail").to_string();
        assert!(err.contains("history.bogus"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let text = DEFAULT_TOML.replacen("capacity = 30", "capacity = \"lots\"", 1);
        let err = Config::parse(&text).expect_err("must fail").to_string();
        assert!(err.contains("rooms[0].capacity"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let mut cfg = Config::parse(DEFAULT_TOML).expect("parses");
        cfg.rooms[1].capacity = 0;
        let err = cfg.validate().expect_err("must fail").to_string();
        assert!(err.contains("rooms[1].capacity"), "{err}");
        let mut cfg = Config::parse(DEFAULT_TOML).expect("parses");
        cfg.apply_env(|k| (k == "HEARTH_LISTEN").then(|| "nonsense".to_string()));
        let err = cfg.validate().expect_err("must fail").to_string();
        assert!(err.contains("server.listen"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let mut cfg = Config::parse(DEFAULT_TOML).expect("parses");
        cfg.apply_env(|k| match k {
            "HEARTH_LISTEN" => Some("127.0.0.1:0".into()),
            "HEARTH_NODE_ID" => Some("hub-z".into()),
            _ => None,
        });
        assert_eq!(cfg.server.listen, "127.0.0.1:0");
        assert_eq!(cfg.server.node_id, "hub-z");
        cfg.validate().expect("valid");
    }

    #[test]
    fn redis_urls_are_checked() {
        let with = |url: &str| {
            let mut cfg = Config::parse(DEFAULT_TOML).expect("parses");
            cfg.apply_env(|k| (k == "HEARTH_REDIS_URL").then(|| url.to_string()));
            cfg.validate().map_err(|e| e.to_string())
        };
        for good in [
            "",
            "redis://127.0.0.1:6390/",
            "redis://h:1/2",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/",
            "redis+cluster://h:7000",
        ] {
            assert!(with(good).is_ok(), "{good}: {:?}", with(good));
        }
        for bad in [
            "localhost:6379",
            "http://h:1/",
            "redis+cluster://",
            "redis+cluster://a:1,,b:2/",
        ] {
            let err = with(bad).expect_err(bad);
            assert!(err.contains("server.redis_url"), "{bad}: {err}");
        }
        let mut cfg = Config::parse(DEFAULT_TOML).expect("parses");
        cfg.cluster.key_prefix = "has space".into();
        let err = cfg.validate().expect_err("must fail").to_string();
        assert!(err.contains("cluster.key_prefix"), "{err}");
        let mut cfg = Config::parse(DEFAULT_TOML).expect("parses");
        cfg.cluster.reconnect_max_ms = 1;
        let err = cfg.validate().expect_err("must fail").to_string();
        assert!(err.contains("cluster.reconnect_max_ms"), "{err}");
    }
}
