//! `loadtest hub-config`: a Hearth config for load runs, made from a base
//! config (normally `config/default.toml`): every rate limit raised out of
//! the way (the load generator measures the hub, not its limits), and the
//! rooms replaced by `r0` … `rN-1` of the given capacity.

use anyhow::{bail, Context};

/// The `[rate_limits]` keys raised to `LIMIT`.
const RAISED: [&str; 7] = [
    "connection_frames_per_second",
    "connection_frames_burst",
    "identity_messages_per_10s",
    "room_messages_per_second",
    "room_messages_burst",
    "address_connects_per_minute",
    "address_connects_burst",
];
const LIMIT: i64 = 1_000_000_000;

/// The base config's text with limits raised and `rooms` rooms of
/// `capacity`; `max_sessions` is raised to at least `sessions`.
pub fn bench_config(
    base: &str,
    rooms: usize,
    capacity: usize,
    sessions: usize,
) -> anyhow::Result<String> {
    if rooms == 0 {
        bail!("Hearth needs at least one room");
    }
    let mut t: toml::Table = base.parse().context("the base config is not TOML")?;
    let limits = t
        .get_mut("rate_limits")
        .and_then(|v| v.as_table_mut())
        .context("the base config has no [rate_limits]")?;
    for k in RAISED {
        limits.insert(k.to_string(), toml::Value::Integer(LIMIT));
    }
    if let Some(s) = t.get_mut("sessions").and_then(|v| v.as_table_mut()) {
        let cur = s
            .get("max_sessions")
            .and_then(|v| v.as_integer())
            .unwrap_or(0);
        s.insert(
            "max_sessions".into(),
            toml::Value::Integer(cur.max(sessions as i64)),
        );
    }
    let list: Vec<toml::Value> = (0..rooms)
        .map(|n| {
            let mut r = toml::Table::new();
            r.insert("id".into(), format!("r{n}").into());
            r.insert("title".into(), format!("Room {n}").into());
            r.insert("description".into(), "load test room".into());
            r.insert("capacity".into(), toml::Value::Integer(capacity as i64));
            r.insert("guidelines".into(), "Be kind.".into());
            toml::Value::Table(r)
        })
        .collect();
    t.insert("rooms".into(), toml::Value::Array(list));
    let mut out =
        String::from("# Made by `loadtest hub-config`: rate limits raised, load test rooms.\n");
    out.push_str(&toml::to_string(&t).context("write TOML")?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_limits_and_replaces_rooms() {
        let base = include_str!("../../config/default.toml");
        let out = bench_config(base, 5, 40, 300_000).expect("config");
        let t: toml::Table = out.parse().expect("toml");
        let rooms = t["rooms"].as_array().expect("rooms");
        assert_eq!(rooms.len(), 5);
        assert_eq!(rooms[4]["id"].as_str(), Some("r4"));
        assert_eq!(rooms[0]["capacity"].as_integer(), Some(40));
        assert_eq!(
            t["rate_limits"]["identity_messages_per_10s"].as_integer(),
            Some(LIMIT)
        );
        assert_eq!(t["sessions"]["max_sessions"].as_integer(), Some(300_000));
        assert!(t["safety"]["support"]
            .as_array()
            .is_some_and(|s| !s.is_empty()));
        assert!(bench_config(base, 0, 40, 0).is_err());
    }
}
