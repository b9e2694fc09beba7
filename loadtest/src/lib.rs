//! `loadtest`: how far a Hearth node (or cluster) goes on this machine, and
//! how it compares with the floor cost of its WebSocket stack (`bare`) and
//! with a Socket.IO server driven by the very same scenario.
//!
//! Modules:
//! - [`cli`]: the command line (`run`, `bare`, `hub-config`, `plot`, `idle`,
//!   `smoke`).
//! - [`scenario`]: what a run does; presets `idle`, `chatty`, `townhall`,
//!   `churn`, `burst`; TOML files; overrides from flags.
//! - [`run`]: runs a scenario and measures it (latency HDR histograms,
//!   loss/duplicates/order, connect rate, errors by code, hub RSS and CPU
//!   from `/proc`, the generator's own CPU); the [`run::Report`] prints as a
//!   table or JSON.
//! - [`proto`]: Hearth's protocol and Engine.IO v4 / Socket.IO v5, reduced
//!   to hello, join, send, leave and room messages.
//! - [`bare`]: the minimal relay on the same stack.
//! - [`hubconfig`]: a Hearth config for load runs (limits raised, rooms
//!   `r0`…).
//! - `plot` (feature `plot`, on by default): latency percentiles against
//!   offered load, as a PNG.
//! - `net` (reaching loopback targets from loopback sources), `sys`
//!   (`/proc`, rlimits), `latency` (histogram summaries), and the first
//!   tools, `idle` and `smoke`.
//!
//! Only loopback targets are accepted (127.x.x.x, localhost, [::1]): this
//! tool must never be pointed at a machine other than the one it runs on.

pub mod bare;
pub mod cli;
pub mod hubconfig;
mod idle;
mod latency;
mod net;
#[cfg(feature = "plot")]
mod plot;
pub mod proto;
pub mod run;
pub mod scenario;
mod smoke;
mod sys;

pub use latency::LatencySummary;
