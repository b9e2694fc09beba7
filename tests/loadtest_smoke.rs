//! The load generator against a real hub, for a few seconds: steady rooms
//! with paced senders, clients churning through them, then a burst where
//! every member sends at once. Asserts delivery only — every message to
//! every member, once, in `seq` order, and no refused sends — never
//! timing, so it holds on a busy CI machine. The full load runs, with
//! numbers, live in BENCHMARKS.md.

mod common;

use common::{TestHub, TEST_CONFIG};
use loadtest::proto::Protocol;
use loadtest::run::{run, Report, RunOptions};
use loadtest::scenario::{Preset, Scenario};

async fn check(hub: &TestHub, scenario: Scenario) -> Report {
    let name = scenario.name.clone();
    let report = run(RunOptions {
        scenario,
        urls: vec![hub.ws_url()],
        sources: Vec::new(),
        protocol: Protocol::Hearth,
        hub_pids: vec![hub.pid()],
        progress: false,
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: the run failed: {e:#}\n{}", hub.stderr_log()));
    let m = &report.messages;
    assert!(report.pass, "{name}:\n{}", report.table());
    assert!(
        m.expected > 0,
        "{name}: nothing was sent\n{}",
        report.table()
    );
    assert_eq!(m.received, m.expected, "{name}:\n{}", report.table());
    assert_eq!(
        (m.lost, m.duplicated, m.reordered, m.gaps),
        (0, 0, 0, 0),
        "{name}:\n{}",
        report.table()
    );
    assert_eq!(m.sent, m.acked, "{name}: refused sends\n{}", report.table());
    assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_scenarios_see_no_loss_duplicates_or_reordering() {
    // The test config with its limits raised and eight rooms r0…r7.
    let hub = TestHub::start_with(|toml| {
        *toml =
            loadtest::hubconfig::bench_config(TEST_CONFIG, 8, 200, 10_000).expect("bench config");
    })
    .await;

    let steady = Scenario {
        name: "steady+churn".into(),
        connections: 80,
        rooms: 8,
        senders_per_room: 2,
        rate: 25.0,
        window: 8,
        duration_secs: 2.0,
        churn_per_sec: 10.0,
        churn_hold_ms: 300,
        drain_secs: 5.0,
        ..Preset::Churn.scenario()
    };
    let r = check(&hub, steady).await;
    let churn = r.churn.expect("churn report");
    assert!(churn.completed > 0, "{churn:?}");
    assert_eq!(
        (churn.duplicated, churn.reordered, churn.gaps),
        (0, 0, 0),
        "{churn:?}"
    );
    assert_eq!(r.hubs.len(), 1);
    assert!(r.hubs[0].rss_connected_kib > 0);

    let burst = Scenario {
        connections: 40,
        rooms: 4,
        messages_per_sender: 5,
        window: 5,
        drain_secs: 5.0,
        ..Preset::Burst.scenario()
    };
    let r = check(&hub, burst).await;
    // 40 members each send 5 messages to the 10 members of their room.
    assert_eq!(r.messages.expected, 40 * 5 * 10);
}
