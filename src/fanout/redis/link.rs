//! The two shapes of Redis this node can talk to: one server (or a primary
//! behind a proxy), or a Redis Cluster with sharded pub/sub.
//!
//! Owns connection set-up and the small differences between the two: how
//! room channels are subscribed (`SUBSCRIBE` or `SSUBSCRIBE`) and published
//! (`PUBLISH` or `SPUBLISH`). Everything above it speaks to a `Link`.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, RedisResult, Value};

use crate::fanout::FanoutError;

use super::unavailable;

/// How to reach Redis, from `server.redis_url`.
#[derive(Clone)]
pub(super) enum Target {
    Single(Client),
    /// `redis+cluster://host:port,host:port/`: seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Target, FanoutError> {
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let hosts = rest.split('/').next().unwrap_or("");
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}/"))
                .collect();
            if nodes.is_empty() {
                return Err(unavailable("redis+cluster:// needs at least one host:port"));
            }
            for n in &nodes {
                Client::open(n.as_str()).map_err(unavailable)?;
            }
            return Ok(Target::Cluster(nodes));
        }
        let client = Client::open(url).map_err(unavailable)?;
        // Subscriptions on a multiplexed connection need RESP3.
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(unavailable)?;
        Ok(Target::Single(client))
    }

    /// The command used to publish on room channels.
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Target::Single(_) => "PUBLISH",
            Target::Cluster(_) => "SPUBLISH",
        }
    }

    /// A command connection that reconnects by itself. A single server's
    /// is created lazily (no I/O); a cluster's needs the topology first.
    pub(super) async fn command_link(
        &self,
        timeout: Duration,
        backoff: (Duration, Duration),
    ) -> RedisResult<Link> {
        match self {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_min_delay(backoff.0)
                    .set_max_delay(backoff.1)
                    .set_number_of_retries(2);
                Ok(Link::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    cfg,
                )?))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()?;
                Ok(Link::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A fresh subscriber connection whose pushes go to `push`.
    pub(super) async fn subscriber(
        &self,
        timeout: Duration,
        push: impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static,
    ) -> RedisResult<SubLink> {
        match self {
            Target::Single(client) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_push_sender(push);
                Ok(SubLink::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .push_sender(push)
                    .build()?;
                Ok(SubLink::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// A command connection of either shape.
#[derive(Clone)]
pub(super) enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// A subscriber connection of either shape.
#[derive(Clone)]
pub(super) enum SubLink {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl SubLink {
    /// Subscribes to a room channel (sharded on a cluster).
    pub(super) async fn subscribe_room(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            SubLink::Single(c) => c.subscribe(channel).await,
            SubLink::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub(super) async fn unsubscribe_room(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            SubLink::Single(c) => c.unsubscribe(channel).await,
            SubLink::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// Subscribes to the cluster-wide control channel (never sharded: every
    /// node must hear it).
    pub(super) async fn subscribe_control(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            SubLink::Single(c) => c.subscribe(channel).await,
            SubLink::Cluster(c) => c.subscribe(channel).await,
        }
    }

    pub(super) async fn ping(&mut self) -> RedisResult<Value> {
        let cmd = redis::cmd("PING");
        match self {
            SubLink::Single(c) => cmd.query_async(c).await,
            SubLink::Cluster(c) => cmd.query_async(c).await,
        }
    }
}
