//! Hearth: a real-time, anonymous peer-support chat server.
//!
//! Data flows one way: `http` → `session` → `hub` → `fanout` → back out to
//! sessions' outboxes.
//!
//! - `config`: loads and validates `config/*.toml` and `HEARTH_*` overrides.
//! - `protocol`: the JSON wire types, error codes and close codes; nothing else.
//! - `http`: the axum router (`/ws`, health, metrics, public API), Origin and
//!   per-address checks before a socket exists.
//! - `session`: one task per connection: handshake, decode, per-connection
//!   limits, pings, the bounded outbound queue.
//! - `hub`: identities, rooms, membership, presence, the send pipeline; the
//!   only place room state changes.
//! - `fanout`: numbering, history and delivery (`memory` backend today).
//! - `safety`: rate limits, text checks and the verdict; pure.
//! - `metrics`: counters, gauges and a histogram in Prometheus text.
//!
//! `run` serves until the shutdown token is cancelled, then tells every
//! client 1012 and returns within the configured grace.

pub mod config;
pub mod durable;
pub mod escalation;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod safety;
pub mod session;
pub mod staff;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// How long the router may take to finish in-flight requests after the signal.
const HTTP_DRAIN: Duration = Duration::from_secs(1);

/// Serves on `listener` until `shutdown` is cancelled. On shutdown it stops
/// accepting, sends every client close 1012 and waits up to
/// `server.shutdown_grace_secs` for them.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(metrics::Metrics::default());
    let hub = hub::HubHandle::new(config.clone(), metrics, shutdown.clone())
        .map_err(std::io::Error::other)?;
    let tracker = TaskTracker::new();
    hub.spawn_background(&tracker);
    tracing::info!(
        node = hub.node(),
        rooms = hub.room_count(),
        mode = if hub.is_cluster() {
            "cluster"
        } else {
            "embedded"
        },
        "hub started"
    );

    let app = http::router(http::AppState {
        hub,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    });
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    // Chat frames are small and each batch is flushed once: without
    // TCP_NODELAY, Nagle's algorithm holds a frame back until the previous
    // one is acknowledged, which with delayed ACKs adds ~40 ms to the tail.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // HTTP requests are short and sockets have been handed to sessions, so
    // the router gets one second after the signal; sessions then get the
    // grace period. Both together stay within the contract's 10 s.
    let http_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(HTTP_DRAIN).await;
    };
    tokio::select! {
        r = serve => r?,
        _ = http_deadline => tracing::warn!("HTTP connections still open at the deadline"),
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not close within the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}
