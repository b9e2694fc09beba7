//! The scenario runner against the in-process `bare` relay: every preset
//! shape, shrunk to a second or two, must deliver everything once, in
//! order. Correctness only, never timing (this runs on busy CI machines).

use loadtest::proto::Protocol;
use loadtest::run::{run, RunOptions};
use loadtest::scenario::{Preset, Scenario};

async fn relay() -> (String, tokio::task::JoinHandle<()>) {
    let listener = loadtest::bare::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    (
        format!("ws://{addr}/ws"),
        tokio::spawn(loadtest::bare::serve_on(listener)),
    )
}

async fn check(url: &str, scenario: Scenario) -> loadtest::run::Report {
    let name = scenario.name.clone();
    let report = run(RunOptions {
        scenario,
        urls: vec![url.to_string()],
        sources: Vec::new(),
        protocol: Protocol::Hearth,
        hub_pids: vec![std::process::id()],
        progress: false,
    })
    .await
    .expect("the run completes");
    assert!(report.pass, "{name}:\n{}", report.table());
    let m = &report.messages;
    assert_eq!(m.received, m.expected, "{name}:\n{}", report.table());
    assert_eq!((m.lost, m.duplicated, m.reordered, m.gaps), (0, 0, 0, 0));
    assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_shape_delivers_everything_in_order() {
    let (url, server) = relay().await;

    let chatty = Scenario {
        connections: 60,
        rooms: 12,
        rate: 40.0,
        duration_secs: 1.0,
        drain_secs: 5.0,
        ..Preset::Chatty.scenario()
    };
    let r = check(&url, chatty).await;
    assert!(r.messages.expected >= 1000, "{}", r.table());
    assert_eq!(r.connections.connected, 60);
    assert_eq!(r.hubs.len(), 1);

    let townhall = Scenario {
        connections: 100,
        rooms: 2,
        rate: 20.0,
        duration_secs: 1.0,
        ..Preset::Townhall.scenario()
    };
    check(&url, townhall).await;

    let churn = Scenario {
        connections: 30,
        rooms: 3,
        rate: 20.0,
        churn_per_sec: 30.0,
        churn_hold_ms: 200,
        duration_secs: 1.0,
        ..Preset::Churn.scenario()
    };
    let r = check(&url, churn).await;
    let c = r.churn.expect("churn report");
    assert!(c.completed > 0 && c.completed == c.started, "{c:?}");

    let burst = Scenario {
        connections: 40,
        rooms: 4,
        messages_per_sender: 5,
        window: 5,
        ..Preset::Burst.scenario()
    };
    let r = check(&url, burst).await;
    // 40 senders × 5 messages, each to the 10 members of its room.
    assert_eq!(r.messages.expected, 40 * 5 * 10);

    let idle = Scenario {
        connections: 50,
        duration_secs: 0.2,
        ..Preset::Idle.scenario()
    };
    let r = check(&url, idle).await;
    assert_eq!(r.connections.connected, 50);

    server.abort();
}
