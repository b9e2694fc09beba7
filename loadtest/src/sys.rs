//! What the operating system tells about processes: resident memory and
//! CPU time from `/proc`, the open-files limit, and small report helpers.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;

// ---------------------------------------------------------------------------
// Memory and limits

/// VmRSS of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// The soft limit on open files of this process, if it can be read.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub(crate) fn warn_if_too_few_files(wanted: usize) {
    if let Some(soft) = open_files_limit() {
        if wanted as u64 + 64 > soft {
            eprintln!(
                "warning: {wanted} connections need more open files than this process may have \
                 ({soft}); raise it first (ulimit -n)"
            );
        }
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Error messages grouped by text, most frequent first.
pub(crate) fn print_errors(errors: &BTreeMap<String, usize>) {
    let mut v: Vec<_> = errors.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    for (msg, n) in v.iter().take(10) {
        println!("  {n:>7} × {msg}");
    }
}

/// Linux reports process times in USER_HZ, which is 100 on every
/// architecture it currently supports (x86, arm, arm64, riscv, …).
pub(crate) const USER_HZ: f64 = 100.0;

/// `(user, sys)` clock ticks from the text of `/proc/<pid>/stat`. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its closing parenthesis: utime and stime are fields 14 and 15.
pub(crate) fn parse_proc_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let sys = fields.next()?.parse().ok()?;
    Some((user, sys))
}

/// This process's CPU time so far, `(user, sys)` in seconds, all threads.
pub(crate) fn cpu_secs() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (user, sys) = parse_proc_stat_cpu(&stat)?;
    Some((user as f64 / USER_HZ, sys as f64 / USER_HZ))
}

/// `(user, sys)` CPU seconds of process `pid`, all threads.
pub(crate) fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, sys) = parse_proc_stat_cpu(&stat)?;
    Some((user + sys) as f64 / USER_HZ)
}

/// The CPUs a process may run on (`Cpus_allowed_list`, e.g. `0` or `0-1`),
/// as set by `taskset`; `pid` None is this process.
pub(crate) fn cpus_allowed(pid: Option<u32>) -> Option<String> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// How many CPUs a `Cpus_allowed_list` names (`0-1,3` → 3).
pub(crate) fn count_cpus(list: &str) -> usize {
    list.split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                    Some(b.saturating_sub(a) + 1)
                }
                None => part.parse::<usize>().ok().map(|_| 1),
            }
        })
        .sum()
}

/// Raises this process's open-files limit as far as it may go (the soft
/// limit to the hard one; as root, the hard one too, up to
/// `fs.nr_open`), and returns the soft limit now in force.
pub(crate) fn raise_open_files_limit(wanted: u64) -> u64 {
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if soft >= wanted {
            return soft;
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = wanted.min(nr_open.max(hard));
        // Try to raise both (works with CAP_SYS_RESOURCE), else the soft
        // limit alone up to the hard one.
        if rlimit::setrlimit(rlimit::Resource::NOFILE, target, target.max(hard)).is_err() {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, target.min(hard), hard);
        }
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
}

// ---------------------------------------------------------------------------
// Sockets

/// Bytes received by the kernel but not yet read by the application
/// (`rx_queue`), for every IPv4 TCP socket of this network namespace, by
/// local address, from `/proc/net/tcp`. A client socket with a large
/// backlog here is one its reader (this generator) has fallen behind on.
pub(crate) fn tcp_unread_bytes() -> HashMap<SocketAddr, u64> {
    std::fs::read_to_string("/proc/net/tcp")
        .map(|t| parse_proc_net_tcp(&t))
        .unwrap_or_default()
}

fn parse_proc_net_tcp(text: &str) -> HashMap<SocketAddr, u64> {
    let addr = |s: &str| -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        // The address is the in-memory (network order) word printed as hex.
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port)))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = addr(f.nth(1)?)?;
            let (_tx, rx) = f.nth(2)?.split_once(':')?;
            Some((local, u64::from_str_radix(rx, 16).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpus("0"), 1);
        assert_eq!(count_cpus("0-1"), 2);
        assert_eq!(count_cpus("0-3,6,8-9"), 7);
        assert!(cpus_allowed(None).is_some_and(|l| count_cpus(&l) >= 1));
        assert!(process_cpu_secs(std::process::id()).is_some());
    }

    #[test]
    fn percentiles_of_empty_and_small_sets() {
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        let v = [1, 2, 3].map(Duration::from_millis);
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(2));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(3));
    }

    #[test]
    fn unread_bytes_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
   1: 0200007F:9C40 0100007F:4E20 01 00000010:0001F400 00:00000000 00000000     0        0 2 1\n";
        let m = parse_proc_net_tcp(text);
        assert_eq!(m.len(), 2);
        let client: SocketAddr = "127.0.0.2:40000".parse().expect("addr");
        assert_eq!(m.get(&client), Some(&0x1F400));
        let _ = tcp_unread_bytes();
    }

    #[test]
    fn cpu_ticks_from_proc_stat() {
        let stat = "4242 (load (test) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    317 42 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_proc_stat_cpu(stat), Some((317, 42)));
        assert_eq!(parse_proc_stat_cpu("4242 (x) S 1 2"), None);
        let (user, sys) = cpu_secs().expect("/proc/self/stat");
        assert!(user >= 0.0 && sys >= 0.0);
    }
}
