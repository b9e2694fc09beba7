//! Cluster mode on a Redis Cluster (`redis+cluster://…`): each room's keys
//! and channel live on one shard (hash tags), fan-out uses sharded pub/sub,
//! and hubs on different seed nodes still share one order per room.
//!
//! Each test starts its own 3-master Redis Cluster on free ports.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::redis::RedisCluster;
use common::{TestClient, TestHub};
use serde_json::Value;

const ROOMS: [&str; 3] = ["bereavement", "substance-use", "anxiety"];

async fn hub_on(cluster: &RedisCluster, node: &str) -> TestHub {
    let url = cluster.url();
    let hub = TestHub::start_full(
        |_| {},
        &[("HEARTH_REDIS_URL", &url), ("HEARTH_NODE_ID", node)],
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hub.http_get("/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node} not ready on the Redis Cluster:\n{}",
            hub.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub
}

/// Reads until `n` message events arrived; returns their `(seq, text)`.
async fn messages(c: &mut TestClient, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let v: Value = c.recv_type("message").await;
        got.push((
            v["seq"].as_u64().expect("seq"),
            v["text"].as_str().expect("text").to_string(),
        ));
    }
    got
}

#[tokio::test]
async fn rooms_on_different_shards_keep_one_order_across_nodes() {
    let cluster = RedisCluster::start(3).await;
    // The rooms' hash tags put them on more than one shard, so this really
    // exercises sharded pub/sub across masters.
    let mut shards = HashSet::new();
    for room in ROOMS {
        shards.insert(
            cluster
                .port_for_key(&format!("hearth:{{room:{room}}}:meta"))
                .await,
        );
    }
    assert!(shards.len() >= 2, "the three rooms all hash to one shard");

    let a = hub_on(&cluster, "hub-a").await;
    let b = hub_on(&cluster, "hub-b").await;
    for room in ROOMS {
        let mut x = TestClient::connect(&a).await;
        x.hello().await;
        let jx = x.join(room).await;
        let mut y = TestClient::connect(&b).await;
        y.hello().await;
        let jy = y.join(room).await;
        assert_eq!(jx["epoch"], jy["epoch"], "one epoch per room: {room}");
        let ids: Vec<&str> = jy["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert_eq!(ids.len(), 2, "members span both nodes in {room}: {jy}");

        for i in 0..5 {
            x.send_text(room, &format!("{room} from a {i}")).await;
            y.send_text(room, &format!("{room} from b {i}")).await;
        }
        let got_x = messages(&mut x, 10).await;
        let got_y = messages(&mut y, 10).await;
        assert_eq!(got_x, got_y, "same order on both nodes in {room}");
        let seqs: Vec<u64> = got_x.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>(), "{room}");

        // The room's state is on the shard its hash tag names, and its
        // channel is a shard channel there.
        let port = cluster
            .port_for_key(&format!("hearth:{{room:{room}}}:meta"))
            .await;
        let owner = cluster
            .nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("owning node");
        let exists = owner
            .cmd(&["EXISTS", &format!("hearth:{{room:{room}}}:meta")])
            .await;
        assert!(
            exists.starts_with(":1"),
            "{room} meta on its shard: {exists}"
        );
        let channels = owner.cmd(&["PUBSUB", "SHARDCHANNELS"]).await;
        assert!(
            channels.contains(&format!("hearth:{{room:{room}}}:msg")),
            "{room} uses a shard channel on its shard: {channels}"
        );
    }
}
