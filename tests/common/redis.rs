//! A throw-away `redis-server` for the cluster-mode tests.
//!
//! `RedisServer::start` runs the real `redis-server` binary on a free port
//! of 127.0.0.1, in its own temporary directory, and kills it on drop. It
//! never touches the default port 6379. `kill` and `restart` let a test take
//! Redis away and bring it back on the same port and directory: with
//! `RedisOpts::aof()` the data survives a restart (every write is fsynced),
//! with `RedisOpts::ephemeral()` it is lost. `redis_cmd` speaks raw RESP, so
//! the tests need no Redis client crate. Every wait is bounded.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TempDir;

/// How long a starting server has to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one raw command (connect, write, read the reply).
const CMD_TIMEOUT: Duration = Duration::from_secs(5);
/// Fresh ports tried by `start` when the server exits right away (the
/// port was taken between picking it and the server binding it).
const START_ATTEMPTS: usize = 5;
/// The port of the machine's own Redis, which the tests must never use.
const SYSTEM_REDIS_PORT: u16 = 6379;

const NOT_FOUND: &str =
    "redis-server not found: run `bash .ci/test`, which installs it (apt-get install redis-server)";

/// How the server is run.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisOpts {
    /// `--appendonly yes --appendfsync always`: data survives `restart`.
    pub appendonly: bool,
    /// `--cluster-enabled yes`: a node for `RedisCluster`.
    pub cluster: bool,
}

impl RedisOpts {
    /// Persistent: every write is in the append-only file before the reply.
    pub fn aof() -> RedisOpts {
        RedisOpts {
            appendonly: true,
            cluster: false,
        }
    }

    /// Memory only: a restart loses everything.
    pub fn ephemeral() -> RedisOpts {
        RedisOpts {
            appendonly: false,
            cluster: false,
        }
    }
}

/// A local Redis Cluster of `n` masters (no replicas), slots split evenly.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, assigns slots, joins them and waits (up to 15 s)
    /// until every node reports `cluster_state:ok`.
    pub async fn start(n: usize) -> RedisCluster {
        assert!(n >= 1);
        let opts = RedisOpts {
            appendonly: false,
            cluster: true,
        };
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(RedisServer::start(opts).await);
        }
        const SLOTS: usize = 16384;
        for (i, node) in nodes.iter().enumerate() {
            let start = (i * SLOTS / n).to_string();
            let end = ((i + 1) * SLOTS / n - 1).to_string();
            let r = node.cmd(&["CLUSTER", "ADDSLOTSRANGE", &start, &end]).await;
            assert!(r.starts_with("+OK"), "ADDSLOTSRANGE on node {i}: {r}");
        }
        for node in nodes.iter().skip(1) {
            let port = node.port().to_string();
            let r = nodes[0].cmd(&["CLUSTER", "MEET", "127.0.0.1", &port]).await;
            assert!(r.starts_with("+OK"), "CLUSTER MEET {port}: {r}");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut ok = true;
            for node in &nodes {
                let info = node.cmd(&["CLUSTER", "INFO"]).await;
                let known = format!("cluster_known_nodes:{n}");
                ok &= info.contains("cluster_state:ok") && info.contains(&known);
            }
            if ok {
                return RedisCluster { nodes };
            }
            assert!(
                Instant::now() < deadline,
                "the local Redis Cluster did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…/`, Hearth's cluster URL.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}/", hosts.join(","))
    }

    /// The port of the node that serves `key`'s slot.
    pub async fn port_for_key(&self, key: &str) -> u16 {
        let r = self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]).await;
        let slot: usize = r
            .trim_start_matches(':')
            .trim()
            .parse()
            .expect("keyslot reply");
        let n = self.nodes.len();
        let i = (0..n)
            .find(|i| slot < (i + 1) * 16384 / n)
            .expect("slot in range");
        self.nodes[i].port()
    }
}

/// A running (or deliberately killed) `redis-server`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    opts: RedisOpts,
    log_path: PathBuf,
    // Last, so the directory is removed after the process is gone.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port; panics (with the log tail) when it
    /// does not answer `PING` within 10 s.
    pub async fn start(opts: RedisOpts) -> RedisServer {
        let dir = TempDir::new();
        let log_path = dir.path().join("redis.log");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut child = spawn(port, opts, dir.path(), &log_path);
            match wait_ready(&mut child, port, dir.path()).await {
                Ok(()) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        opts,
                        log_path,
                        dir,
                    }
                }
                Err(Failure::Retry(why)) => {
                    stop(&mut child);
                    failures.push(format!("port {port}: {why}"));
                }
                Err(Failure::Fatal(why)) => {
                    stop(&mut child);
                    panic!(
                        "redis-server on port {port}: {why}\n{}",
                        log_tail(&log_path)
                    );
                }
            }
        }
        panic!(
            "redis-server did not come up in {START_ATTEMPTS} attempts: {failures:?}\n{}",
            log_tail(&log_path)
        );
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (holds the AOF when enabled).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server logged so far (all runs, appended).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL (no chance to save or say goodbye) and wait for the exit.
    /// Does nothing when the server is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Kills the server if it runs, then starts it again on the same port,
    /// in the same directory, with the same options, and waits for `PING`.
    pub async fn restart(&mut self) {
        self.kill();
        let mut failures = Vec::new();
        // The port is ours only by convention now: if something grabbed it
        // meanwhile, wait a little and try again.
        for _ in 0..START_ATTEMPTS {
            let mut child = spawn(self.port, self.opts, self.dir.path(), &self.log_path);
            match wait_ready(&mut child, self.port, self.dir.path()).await {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(Failure::Retry(why)) => {
                    stop(&mut child);
                    failures.push(why);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Failure::Fatal(why)) => {
                    stop(&mut child);
                    panic!(
                        "redis-server restart on port {}: {why}\n{}",
                        self.port,
                        log_tail(&self.log_path)
                    );
                }
            }
        }
        panic!(
            "redis-server did not restart on port {}: {failures:?}\n{}",
            self.port,
            log_tail(&self.log_path)
        );
    }

    /// Runs one command against this server: the raw RESP reply.
    pub async fn cmd(&self, args: &[&str]) -> String {
        redis_cmd(self.port, args).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", log_tail(&self.log_path));
        }
    }
}

/// Sends one command to the Redis on 127.0.0.1:`port` and returns its raw
/// RESP reply (e.g. `"+OK\r\n"`, `"$1\r\nv\r\n"`, `"$-1\r\n"`). Panics on
/// connection errors or after 5 s.
pub async fn redis_cmd(port: u16, args: &[&str]) -> String {
    assert_ne!(
        port, SYSTEM_REDIS_PORT,
        "tests must not talk to the machine's own Redis"
    );
    try_cmd(port, args)
        .await
        .unwrap_or_else(|e| panic!("redis {args:?} on port {port}: {e}"))
}

async fn try_cmd(port: u16, args: &[&str]) -> Result<String, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(&encode(args))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(len) = reply_len(&buf) {
                buf.truncate(len);
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(CMD_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {CMD_TIMEOUT:?}")))
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of the complete RESP2 reply at the start of `buf`, or `None`
/// while it is incomplete.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line = buf.windows(2).position(|w| w == b"\r\n")?;
    let after = line + 2;
    let count = || -> Option<i64> { std::str::from_utf8(&buf[1..line]).ok()?.parse().ok() };
    match buf.first()? {
        b'+' | b'-' | b':' => Some(after),
        b'$' => match usize::try_from(count()?) {
            Err(_) => Some(after), // $-1: nil
            Ok(n) => {
                let end = after + n + 2;
                (buf.len() >= end).then_some(end)
            }
        },
        b'*' => {
            let n = usize::try_from(count()?).unwrap_or(0); // *-1: nil
            let mut at = after;
            for _ in 0..n {
                at += reply_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// A port that was free a moment ago (never 6379).
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if port != SYSTEM_REDIS_PORT {
            return port;
        }
    }
}

fn spawn(port: u16, opts: RedisOpts, dir: &Path, log_path: &Path) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open redis log");
    let log_err = log.try_clone().expect("clone redis log handle");
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--protected-mode", "no"])
        .args(["--save", ""])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    if opts.cluster {
        cmd.args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"]);
    }
    if opts.appendonly {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_FOUND}"),
        Err(e) => panic!("spawn redis-server: {e}"),
    }
}

enum Failure {
    /// Worth another try (the server exited, or the port answered for
    /// another server).
    Retry(String),
    /// Running but not answering: retrying would not help.
    Fatal(String),
}

/// Waits until the server answers `PING` with `+PONG` and is the one we
/// started (its `dir` is ours), or it exits, or 10 s pass.
async fn wait_ready(child: &mut Child, port: u16, dir: &Path) -> Result<(), Failure> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Failure::Retry(format!("exited with {status}")));
        }
        let last = match try_cmd(port, &["PING"]).await {
            Ok(r) if r.starts_with("+PONG") => {
                let reply = try_cmd(port, &["CONFIG", "GET", "dir"])
                    .await
                    .map_err(Failure::Retry)?;
                return if is_our_dir(&reply, dir) {
                    Ok(())
                } else {
                    Err(Failure::Retry(format!(
                        "another server answers on this port (dir {reply:?})"
                    )))
                };
            }
            // e.g. -LOADING while the append-only file is read back.
            Ok(r) => r,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Failure::Fatal(format!(
                "no +PONG within {START_TIMEOUT:?} (last: {last})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_our_dir(reply: &str, dir: &Path) -> bool {
    let raw = dir.to_string_lossy();
    let canonical = dir
        .canonicalize()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| raw.to_string());
    reply.contains(&format!("{raw}\r\n")) || reply.contains(&format!("{canonical}\r\n"))
}

fn stop(child: &mut Child) {
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = log.len().saturating_sub(3000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "--- redis-server log (tail) ---\n{}\n--- end ---",
        &log[start..]
    )
}
