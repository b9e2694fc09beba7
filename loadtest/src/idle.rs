//! `loadtest idle`: open N connections (hello only), hold them and report
//! the connect rate, errors and (with `--hub-pid`) the hub's RSS per
//! connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{Dialer, Target};
use crate::sys::{percentile, print_errors, rss_kib, warn_if_too_few_files};

#[derive(Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The hub's process id: its VmRSS is read before and after connecting.
    #[arg(long)]
    hub_pid: Option<u32>,
    /// Seconds to hold the connections open once all are connected.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
}

// ---------------------------------------------------------------------------
// idle

pub(crate) enum IdleEvent {
    Connected(Duration),
    Failed(String),
    /// A held connection ended before it was released.
    Dropped(String),
}

pub(crate) async fn idle(a: IdleArgs) -> anyhow::Result<bool> {
    let dialer = Arc::new(Dialer::new(&a.target)?);
    let n = a.connections;
    warn_if_too_few_files(n);
    println!(
        "idle: {n} connections to {} URL(s) {} (sources: {}), hold {} s",
        dialer.targets.len(),
        dialer.urls(),
        if a.target.sources.is_empty() {
            "kernel's choice".to_string()
        } else {
            a.target
                .sources
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        a.hold_secs
    );
    let rss_before = match a.hub_pid {
        Some(pid) => Some(rss_kib(pid)?),
        None => None,
    };

    let permits = Arc::new(Semaphore::new(a.target.concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let dialer = dialer.clone();
        let permits = permits.clone();
        let tx = tx.clone();
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let (conn, took) = {
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                let t0 = Instant::now();
                (dialer.connect_hello(i, i).await, t0.elapsed())
            };
            let mut ws = match conn {
                Ok((ws, _welcome)) => {
                    let _ = tx.send(IdleEvent::Connected(took));
                    ws
                }
                Err(e) => {
                    let _ = tx.send(IdleEvent::Failed(format!("{e:#}")));
                    return;
                }
            };
            // Hold: keep reading so pings are answered, until released.
            loop {
                tokio::select! {
                    r = release.changed() => {
                        if r.is_err() || *release.borrow() {
                            break;
                        }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Close(c))) => {
                            let why = c.map(|c| u16::from(c.code).to_string()).unwrap_or_default();
                            let _ = tx.send(IdleEvent::Dropped(format!("closed by server {why}")));
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            let _ = tx.send(IdleEvent::Dropped(format!("read: {e}")));
                            return;
                        }
                        None => {
                            let _ = tx.send(IdleEvent::Dropped("connection ended".into()));
                            return;
                        }
                    }
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(tx);

    let mut ok = 0usize;
    let mut latencies = Vec::with_capacity(n);
    let mut errors = BTreeMap::new();
    while ok + errors.values().sum::<usize>() < n {
        match rx.recv().await {
            Some(IdleEvent::Connected(d)) => {
                ok += 1;
                latencies.push(d);
            }
            Some(IdleEvent::Failed(e)) | Some(IdleEvent::Dropped(e)) => {
                *errors.entry(e).or_insert(0) += 1
            }
            None => break,
        }
    }
    let connect_time = started.elapsed();
    latencies.sort();
    let failed: usize = errors.values().sum();
    println!(
        "connected {ok}/{n} in {:.2} s ({:.0} connections/s), errors {failed}",
        connect_time.as_secs_f64(),
        ok as f64 / connect_time.as_secs_f64().max(1e-9)
    );
    println!(
        "connect+hello latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
    );
    print_errors(&errors);

    // Let the hub settle (allocator, queued writes) before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report_rss = |label: &str| -> anyhow::Result<()> {
        if let (Some(pid), Some(before)) = (a.hub_pid, rss_before) {
            let now = rss_kib(pid)?;
            let delta = now.saturating_sub(before);
            println!(
                "hub RSS {label}: {now} KiB (before connecting {before} KiB; +{delta} KiB, \
                 {:.1} KiB per connection)",
                delta as f64 / ok.max(1) as f64
            );
        }
        Ok(())
    };
    report_rss("with all connected")?;

    let hold_until = tokio::time::Instant::now() + Duration::from_secs(a.hold_secs);
    let mut dropped = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(hold_until) => break,
            ev = rx.recv() => match ev {
                Some(IdleEvent::Dropped(e)) | Some(IdleEvent::Failed(e)) => {
                    dropped += 1;
                    *errors.entry(e).or_insert(0) += 1;
                }
                Some(IdleEvent::Connected(_)) => {}
                None => break,
            }
        }
    }
    if a.hold_secs > 0 {
        report_rss(&format!("after holding {} s", a.hold_secs))?;
    }
    println!("dropped while held: {dropped}");
    if dropped > 0 {
        print_errors(&errors);
    }
    let _ = release_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(failed == 0 && dropped == 0)
}
