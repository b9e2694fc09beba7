//! Reaching a hub: loopback-only targets, source addresses, the WebSocket
//! client settings (small buffers, as the hub uses) and JSON frames.
//!
//! Only loopback targets are accepted (127.x.x.x, localhost, [::1]): this
//! tool must never be pointed at a machine other than the one it runs on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long one connection may take to connect, upgrade and be welcomed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args, Clone)]
pub(crate) struct Target {
    /// WebSocket URL(s) of the hub, comma-separated for several nodes of a
    /// cluster; every host must be a loopback address. `idle` uses them
    /// round-robin by connection; `smoke` puts member j of room r on URL
    /// (r + j) mod N, so each room's members are spread over the nodes and
    /// the room's sender (member 0) is on URL r mod N.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub(crate) url: Vec<String>,
    /// Local addresses to bind client sockets to, used round-robin
    /// (e.g. 127.0.0.1,127.0.0.2). Default: let the kernel choose.
    #[arg(long, value_delimiter = ',')]
    pub(crate) sources: Vec<IpAddr>,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
}

// ---------------------------------------------------------------------------
// Target checks and connecting

/// The socket address behind a `ws://` URL, refusing anything but loopback.
pub(crate) fn loopback_target(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("only ws:// URLs are supported (got `{url}`)");
    }
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let refuse = || {
        anyhow!(
            "refusing `{host}`: only loopback targets (127.x.x.x, localhost, [::1]) are allowed"
        )
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| refuse())?
    };
    if !ip.is_loopback() {
        return Err(refuse());
    }
    Ok(SocketAddr::new(ip, port))
}

pub(crate) fn check_sources(target: SocketAddr, sources: &[IpAddr]) -> anyhow::Result<()> {
    for s in sources {
        if !s.is_loopback() {
            bail!("source address {s} is not a loopback address");
        }
        if s.is_ipv4() != target.is_ipv4() {
            bail!("source address {s} is not of the same family as the target {target}");
        }
    }
    Ok(())
}

/// Small buffers, as the hub uses: thousands of connections stay cheap.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_write_buffer_size(65536)
}

/// One hub URL and the loopback address behind it.
pub(crate) struct Endpoint {
    pub(crate) url: Arc<str>,
    pub(crate) addr: SocketAddr,
}

pub(crate) struct Dialer {
    pub(crate) targets: Vec<Endpoint>,
    pub(crate) sources: Vec<IpAddr>,
}

impl Dialer {
    pub(crate) fn new(t: &Target) -> anyhow::Result<Dialer> {
        if t.url.is_empty() {
            bail!("--url needs at least one URL");
        }
        let mut targets = Vec::with_capacity(t.url.len());
        for url in &t.url {
            let url = url.trim();
            let addr = loopback_target(url)?;
            check_sources(addr, &t.sources)?;
            targets.push(Endpoint {
                url: url.into(),
                addr,
            });
        }
        Ok(Dialer {
            targets,
            sources: t.sources.clone(),
        })
    }

    /// The URLs, comma-separated, for reports.
    pub(crate) fn urls(&self) -> String {
        self.targets
            .iter()
            .map(|t| &*t.url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects the `n`th client (its source address is chosen round-robin)
    /// to the `target`th URL.
    pub(crate) async fn connect(&self, n: usize, target: usize) -> anyhow::Result<Ws> {
        let t = &self.targets[target % self.targets.len()];
        let sock = if t.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if !self.sources.is_empty() {
            let src = self.sources[n % self.sources.len()];
            sock.bind(SocketAddr::new(src, 0))
                .with_context(|| format!("bind {src}"))?;
        }
        let stream = sock.connect(t.addr).await.context("connect")?;
        stream.set_nodelay(true).context("nodelay")?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(&*t.url, stream, Some(ws_config()))
                .await
                .context("websocket upgrade")?;
        Ok(ws)
    }

    /// Connects and says `hello`; returns the socket and the `welcome` frame.
    pub(crate) async fn connect_hello(
        &self,
        n: usize,
        target: usize,
    ) -> anyhow::Result<(Ws, Value)> {
        let fut = async {
            let mut ws = self.connect(n, target).await?;
            send_json(&mut ws, &json!({"type": "hello", "ref": "hello"})).await?;
            loop {
                let v = next_json(&mut ws).await?;
                match v["type"].as_str() {
                    Some("welcome") => return Ok((ws, v)),
                    Some("error") => bail!("hello refused: {}", v["code"]),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("no welcome within {CONNECT_TIMEOUT:?}"))?
    }
}

pub(crate) async fn send_json(ws: &mut Ws, v: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string())).await.context("send")
}

/// The next JSON text frame; pings are answered by tungstenite while reading.
pub(crate) async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            None => bail!("connection ended"),
            Some(Err(e)) => bail!("read: {e}"),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).context("server sent invalid JSON")
            }
            Some(Ok(Message::Close(c))) => bail!(
                "closed by server: {}",
                c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                    .unwrap_or_else(|| "no code".into())
            ),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "ws://127.0.0.1:8080/ws",
            "ws://127.9.8.7/ws",
            "ws://localhost:18080/ws",
            "ws://LOCALHOST:1/ws",
            "ws://[::1]:8080/ws",
        ] {
            assert!(loopback_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.2/ws",
            "ws://example.org/ws",
            "ws://[::2]:8080/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
            "ws://localhost.example.org/ws",
            "not a url",
        ] {
            assert!(loopback_target(bad).is_err(), "{bad}");
        }
        assert_eq!(
            loopback_target("ws://localhost:9/ws").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
    }

    #[test]
    fn sources_must_be_loopback_and_same_family() {
        let t = SocketAddr::from(([127, 0, 0, 1], 8080));
        assert!(check_sources(t, &["127.0.0.2".parse().expect("ip")]).is_ok());
        assert!(check_sources(t, &["10.0.0.2".parse().expect("ip")]).is_err());
        assert!(check_sources(t, &["::1".parse().expect("ip")]).is_err());
    }

    #[test]
    fn every_url_must_be_loopback() {
        let target = |urls: &[&str]| Target {
            url: urls.iter().map(|u| u.to_string()).collect(),
            sources: Vec::new(),
            concurrency: 1,
        };
        let d = Dialer::new(&target(&["ws://127.0.0.1:1/ws", "ws://[::1]:2/ws"])).expect("dialer");
        assert_eq!(d.targets.len(), 2);
        assert_eq!(d.urls(), "ws://127.0.0.1:1/ws,ws://[::1]:2/ws");
        assert!(Dialer::new(&target(&["ws://127.0.0.1:1/ws", "ws://10.0.0.1:2/ws"])).is_err());
        assert!(Dialer::new(&target(&[])).is_err());
    }
}
