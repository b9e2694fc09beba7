//! What a run does: a [`Scenario`] (connections, rooms, senders, rate,
//! message size, duration, ramp-up, churn, nodes), built from a named
//! preset, then a TOML file, then command-line flags, each overriding the
//! one before.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// A load scenario. Every field has a default (the `chatty` preset's), so a
/// TOML file names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports (the preset's, unless set).
    pub name: String,
    /// Connections that stay for the whole run (the room members).
    pub connections: usize,
    /// Rooms the connections are spread over (connection i joins room
    /// i mod rooms). 0: nobody joins (idle connections).
    pub rooms: usize,
    /// Members of each room that send (the room's first ones).
    pub senders_per_room: usize,
    /// Every member sends (overrides `senders_per_room`; the `burst` preset).
    pub every_member_sends: bool,
    /// Messages per second per sender, paced. 0: as fast as `window` allows
    /// (a closed loop: latency is then not corrected for coordinated
    /// omission).
    pub rate: f64,
    /// Sends each sender keeps awaiting their reply at most.
    pub window: usize,
    /// Bytes of each message's text (at least the marker, ~40 bytes).
    pub message_bytes: usize,
    /// Seconds of the measured phase: senders send, churners churn, idle
    /// connections are held.
    pub duration_secs: f64,
    /// Messages per sender at most; 0: no limit (the duration decides).
    pub messages_per_sender: usize,
    /// New connections per second while ramping up; 0: as fast as
    /// `concurrency` allows.
    pub ramp_per_sec: f64,
    /// Connections being set up at the same time at most.
    pub concurrency: usize,
    /// Churn cycles started per second during the measured phase: connect,
    /// hello, join, stay `churn_hold_ms`, leave, disconnect.
    pub churn_per_sec: f64,
    /// How long a churning client stays in its room.
    pub churn_hold_ms: u64,
    /// Spread connections over the first N target URLs (hub nodes); 0: all.
    pub nodes: usize,
    /// Seconds to wait after the last send for every delivery.
    pub drain_secs: f64,
    /// Send `leave` before closing at the end, so the hub frees the seats at
    /// once instead of after its resume grace period.
    pub leave_at_end: bool,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Preset::Chatty.scenario()
    }
}

/// The named presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Many connections that only say hello: connect rate and memory per
    /// connection.
    Idle,
    /// Many small rooms (10 members), two senders each.
    Chatty,
    /// Few huge rooms (1 000 members), one sender each.
    Townhall,
    /// Steady rooms with traffic, plus clients that connect, join, leave
    /// and disconnect at a rate.
    Churn,
    /// Every member sends its messages at the same instant.
    Burst,
}

impl Preset {
    pub fn scenario(self) -> Scenario {
        let base = Scenario {
            name: String::new(),
            connections: 1000,
            rooms: 100,
            senders_per_room: 2,
            every_member_sends: false,
            rate: 5.0,
            window: 16,
            message_bytes: 100,
            duration_secs: 10.0,
            messages_per_sender: 0,
            ramp_per_sec: 0.0,
            concurrency: 200,
            churn_per_sec: 0.0,
            churn_hold_ms: 500,
            nodes: 0,
            drain_secs: 10.0,
            leave_at_end: true,
        };
        match self {
            Preset::Idle => Scenario {
                name: "idle".into(),
                connections: 10_000,
                rooms: 0,
                senders_per_room: 0,
                rate: 0.0,
                duration_secs: 5.0,
                ..base
            },
            Preset::Chatty => Scenario {
                name: "chatty".into(),
                ..base
            },
            Preset::Townhall => Scenario {
                name: "townhall".into(),
                connections: 2000,
                rooms: 2,
                senders_per_room: 1,
                rate: 10.0,
                message_bytes: 200,
                ..base
            },
            Preset::Churn => Scenario {
                name: "churn".into(),
                connections: 200,
                rooms: 10,
                senders_per_room: 1,
                rate: 5.0,
                churn_per_sec: 50.0,
                churn_hold_ms: 500,
                ..base
            },
            Preset::Burst => Scenario {
                name: "burst".into(),
                connections: 500,
                rooms: 10,
                senders_per_room: 0,
                every_member_sends: true,
                rate: 0.0,
                window: 10,
                messages_per_sender: 10,
                duration_secs: 30.0,
                ..base
            },
        }
    }
}

impl Scenario {
    /// A preset, with the fields of a TOML file over it. The file may name
    /// its own base with `preset = "townhall"` (a `preset` given here wins).
    pub fn from_toml(preset: Option<Preset>, toml_text: &str) -> anyhow::Result<Scenario> {
        let mut file: toml::Table = toml_text.parse().context("the scenario file is not TOML")?;
        let named = match file.remove("preset") {
            Some(v) => Some(
                v.try_into::<Preset>()
                    .context("`preset` must be one of idle, chatty, townhall, churn, burst")?,
            ),
            None => None,
        };
        let base = preset.or(named).unwrap_or(Preset::Chatty).scenario();
        let mut table = toml::Table::try_from(&base).context("preset to TOML")?;
        for (k, v) in file {
            table.insert(k, v);
        }
        let s: Scenario = table
            .try_into()
            .context("the scenario file has a bad or unknown key")?;
        Ok(s)
    }

    /// Members of room `room` (0-based) when connections are dealt
    /// round-robin.
    pub fn members_of(&self, room: usize) -> usize {
        if self.rooms == 0 {
            return 0;
        }
        self.connections / self.rooms + usize::from(room < self.connections % self.rooms)
    }

    /// Whether the member at position `j` of its room sends.
    pub fn sends(&self, j: usize) -> bool {
        self.rooms > 0 && (self.every_member_sends || j < self.senders_per_room)
    }

    /// Senders over all rooms.
    pub fn senders(&self) -> usize {
        (0..self.rooms)
            .map(|r| {
                let m = self.members_of(r);
                if self.every_member_sends {
                    m
                } else {
                    self.senders_per_room.min(m)
                }
            })
            .sum()
    }

    /// Messages per second offered to the hub (paced scenarios), and the
    /// deliveries per second that makes (every member, sender included,
    /// receives each message of its room).
    pub fn offered(&self) -> Option<(f64, f64)> {
        if self.rate <= 0.0 || self.rooms == 0 {
            return None;
        }
        let mut msgs = 0.0;
        let mut deliveries = 0.0;
        for r in 0..self.rooms {
            let m = self.members_of(r);
            let s = if self.every_member_sends {
                m
            } else {
                self.senders_per_room.min(m)
            };
            msgs += s as f64 * self.rate;
            deliveries += s as f64 * self.rate * m as f64;
        }
        Some((msgs, deliveries))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 && self.churn_per_sec <= 0.0 {
            bail!("a scenario needs connections or churn");
        }
        if self.rooms > 0 && self.connections < self.rooms {
            bail!(
                "{} connections cannot fill {} rooms",
                self.connections,
                self.rooms
            );
        }
        if self.churn_per_sec > 0.0 && self.rooms == 0 {
            bail!("churn needs rooms to join");
        }
        for (name, v) in [
            ("rate", self.rate),
            ("duration_secs", self.duration_secs),
            ("ramp_per_sec", self.ramp_per_sec),
            ("churn_per_sec", self.churn_per_sec),
            ("drain_secs", self.drain_secs),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a number ≥ 0 (got {v})");
            }
        }
        if self.window == 0 || self.concurrency == 0 {
            bail!("window and concurrency must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_layers_over_presets() {
        let s = Scenario::from_toml(None, "preset = \"townhall\"\nrate = 2.5\n").expect("toml");
        assert_eq!(s.name, "townhall");
        assert_eq!(s.rooms, 2);
        assert_eq!(s.rate, 2.5);
        let s = Scenario::from_toml(Some(Preset::Burst), "preset = \"idle\"\n").expect("toml");
        assert!(
            s.every_member_sends,
            "the preset given on the command line wins"
        );
        assert!(Scenario::from_toml(None, "rooms = 3\nbogus = 1\n").is_err());
        assert!(Scenario::from_toml(None, "preset = \"nope\"\n").is_err());
        assert_eq!(
            Scenario::from_toml(None, "").expect("empty"),
            Scenario::default()
        );
    }

    #[test]
    fn shipped_scenario_files_parse() {
        let s = Scenario::from_toml(None, include_str!("../scenarios/chatty-20x50.toml"))
            .expect("chatty-20x50.toml");
        s.validate().expect("valid");
        assert_eq!((s.connections, s.rooms, s.senders()), (1000, 20, 20));
    }

    #[test]
    fn rooms_senders_and_offered_load() {
        let s = Scenario {
            connections: 25,
            rooms: 4,
            senders_per_room: 2,
            rate: 10.0,
            ..Scenario::default()
        };
        assert_eq!(
            (0..4).map(|r| s.members_of(r)).collect::<Vec<_>>(),
            [7, 6, 6, 6]
        );
        assert_eq!(s.senders(), 8);
        assert_eq!(
            s.offered(),
            Some((80.0, 10.0 * (2.0 * 7.0 + 3.0 * 2.0 * 6.0)))
        );
        assert!(s.sends(1) && !s.sends(2));
        for p in [
            Preset::Idle,
            Preset::Chatty,
            Preset::Townhall,
            Preset::Churn,
            Preset::Burst,
        ] {
            p.scenario().validate().expect("presets are valid");
        }
        let burst = Preset::Burst.scenario();
        assert_eq!(burst.senders(), 500);
        assert!(Scenario {
            rooms: 5,
            connections: 4,
            ..Scenario::default()
        }
        .validate()
        .is_err());
    }
}
