//! Hosts with separate network stacks, for tests of a cluster spread over machines.
//!
//! On Linux as root, [`Hosts::new`] builds one bridge and, per host, a network namespace
//! joined to it by a veth pair: the namespace end carries the host's own address in a
//! private /24 under 10.213.0.0/16 (the bridge holds `.1`, so this process reaches every
//! host), and each namespace has its own loopback. A host's processes run through
//! [`Hosts::wrapper`] (`ip netns exec NS`, which execs its command, so the pid is the
//! program's own). Since loopback inside one namespace is not that of another, an address
//! that leaks as `127.0.0.1` makes the test fail. The filesystem (and so `/dev/shm` and
//! `/tmp`) is shared by all hosts.
//!
//! Where namespaces cannot be made (not root, no `ip`, EPERM, or `MINIRAY_TEST_NO_NETNS`
//! set) it prints one line saying why and falls back to one `127.0.0.x` address per host
//! and no wrapper.
//!
//! Failure injection: [`Hosts::cut_link`] sets the host's bridge-side veth down, so nothing
//! (no FIN, no RST) reaches its peers; in the fallback it SIGSTOPs the host's adopted
//! processes and their descendants instead, which is as silent.
//!
//! Everything is removed on drop, also when a test panics. Names carry a tag and the owner
//! pid (`mrn<pid>x<n>…` links, `mrn-<pid>-<n>-<host>` namespaces); each sandbox first
//! removes those of owners no longer running, left by a crashed run.
//!
//! The `cli` crate's tests include this file as well (it needs only `std`, `libc` and
//! `miniray-common`).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use miniray_common::netns::{self, ip};

/// Prefix of every link and namespace a sandbox creates.
const TAG: &str = "mrn";
/// Set to any value to test the loopback fallback on a machine that has namespaces.
const NO_NETNS_ENV: &str = "MINIRAY_TEST_NO_NETNS";
/// Each sandbox of this process takes the next number (part of its names and subnet).
static NEXT: AtomicU32 = AtomicU32::new(0);
/// Picking a free subnet and creating it is one step per process, so two sandboxes of
/// parallel tests never pick the same /24.
static SETUP: Mutex<()> = Mutex::new(());

struct Host {
    ip: String,
    /// Namespace and bridge-side veth; `None` in the loopback fallback.
    netns: Option<(String, String)>,
}

/// A set of hosts, each with its own IP address (and, where possible, network stack).
pub struct Hosts {
    hosts: Vec<Host>,
    bridge: Option<String>,
    /// Processes of each host, for the fallback's `cut_link` (SIGSTOP).
    adopted: Mutex<Vec<Vec<u32>>>,
    /// Processes SIGSTOPped by `cut_link`, per host, to SIGCONT on restore or drop.
    stopped: Mutex<Vec<Vec<u32>>>,
}

impl Hosts {
    /// `count` hosts: separate network namespaces when this machine allows it, otherwise
    /// distinct loopback addresses (one line on stderr says why).
    pub fn new(count: usize) -> Hosts {
        assert!((1..=200).contains(&count), "1 to 200 hosts");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let made = match netns::unavailable(NO_NETNS_ENV) {
            Some(why) => Err(why),
            None => {
                let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
                netns::sweep_leftovers(TAG, 10);
                create_namespaces(count, n)
            }
        };
        let (hosts, bridge) = match made {
            Ok(made) => made,
            Err(why) => {
                eprintln!("netns sandbox: {why}; falling back to one 127.0.0.x address per host");
                let hosts = (0..count)
                    .map(|i| Host {
                        ip: format!("127.0.0.{}", i + 2),
                        netns: None,
                    })
                    .collect();
                (hosts, None)
            }
        };
        Hosts {
            adopted: Mutex::new(vec![Vec::new(); count]),
            stopped: Mutex::new(vec![Vec::new(); count]),
            hosts,
            bridge,
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether hosts have network stacks of their own (false in the loopback fallback).
    pub fn isolated(&self) -> bool {
        self.bridge.is_some()
    }

    /// The IP address of `host`.
    pub fn ip(&self, host: usize) -> &str {
        &self.hosts[host].ip
    }

    /// The address at which every host reaches this process's network stack: the bridge's
    /// (`.1` of the hosts' /24), or loopback in the fallback.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        let loopback = std::net::Ipv4Addr::LOCALHOST;
        if !self.isolated() {
            return loopback;
        }
        match self.hosts[0].ip.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => {
                let [a, b, c, _] = ip.octets();
                std::net::Ipv4Addr::new(a, b, c, 1)
            }
            Err(_) => loopback,
        }
    }

    /// The network namespace of `host` (`None` in the fallback).
    pub fn namespace(&self, host: usize) -> Option<&str> {
        self.hosts[host].netns.as_ref().map(|(ns, _)| ns.as_str())
    }

    /// The links of this sandbox in the test's own network stack: the bridge and the
    /// bridge-side veths (none in the fallback).
    pub fn links(&self) -> Vec<String> {
        let veths = self.hosts.iter().filter_map(|h| h.netns.as_ref());
        veths
            .map(|(_, veth)| veth.clone())
            .chain(self.bridge.clone())
            .collect()
    }

    /// The command that runs the rest of a command line on `host` (empty in the fallback).
    pub fn wrapper(&self, host: usize) -> Vec<String> {
        match &self.hosts[host].netns {
            Some((ns, _)) => ["ip", "netns", "exec", ns.as_str()]
                .map(String::from)
                .to_vec(),
            None => Vec::new(),
        }
    }

    /// A command running `program` on `host`.
    pub fn command(&self, host: usize, program: impl AsRef<Path>) -> Command {
        match self.wrapper(host).split_first() {
            Some((ip, args)) => {
                let mut cmd = Command::new(ip);
                cmd.args(args).arg(program.as_ref());
                cmd
            }
            None => Command::new(program.as_ref()),
        }
    }

    /// Records `pid` as a process of `host`, for [`Hosts::cut_link`] in the fallback.
    pub fn adopt(&self, host: usize, pid: u32) {
        lock(&self.adopted)[host].push(pid);
    }

    /// Failure injection: `host` goes silent. Its bridge-side veth goes down (or, in the
    /// fallback, its adopted processes and their descendants are SIGSTOPped).
    pub fn cut_link(&self, host: usize) {
        match self.set_link(host, "down") {
            Some(Err(e)) => panic!("cannot cut the link of host {host}: {e}"),
            Some(Ok(())) => {}
            None => {
                let mut pids = BTreeSet::new();
                for &pid in &lock(&self.adopted)[host] {
                    pids.insert(pid);
                    pids.extend(descendants(pid));
                }
                for &pid in &pids {
                    signal(pid, libc::SIGSTOP);
                }
                lock(&self.stopped)[host].extend(pids);
            }
        }
    }

    /// Undoes [`Hosts::cut_link`]. Also runs on cleanup, so a failure is only reported.
    pub fn restore_link(&self, host: usize) {
        match self.set_link(host, "up") {
            Some(Err(e)) => eprintln!("netns sandbox: cannot restore the link of host {host}: {e}"),
            Some(Ok(())) => {}
            None => {
                for pid in std::mem::take(&mut lock(&self.stopped)[host]) {
                    signal(pid, libc::SIGCONT);
                }
            }
        }
    }

    /// Sets the bridge-side veth of `host` `up` or `down`; `None` in the fallback.
    fn set_link(&self, host: usize, state: &str) -> Option<Result<(), String>> {
        let (_, veth) = self.hosts[host].netns.as_ref()?;
        Some(ip(&["link", "set", veth, state]).map(drop))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Stopped processes must run again to exit on the signals their owners send.
        for host in 0..self.hosts.len() {
            if self.hosts[host].netns.is_none() {
                self.restore_link(host);
            }
        }
        for host in &self.hosts {
            if let Some((ns, veth)) = &host.netns {
                // Deleting one end of a veth pair deletes both, even while a process
                // still keeps the namespace alive.
                let _ = ip(&["link", "del", veth]);
                let _ = ip(&["netns", "del", ns]);
            }
        }
        if let Some(bridge) = &self.bridge {
            let _ = ip(&["link", "del", bridge]);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds the bridge and the namespaces; on failure removes what it made.
fn create_namespaces(count: usize, n: u32) -> Result<(Vec<Host>, Option<String>), String> {
    let pid = std::process::id();
    let [a, b, c] = netns::free_subnet(213, pid, n)?;
    let subnet = format!("{a}.{b}.{c}");
    // Names stay within the 15-byte limit of interface names for pids up to 7 digits and
    // 100 sandboxes per process.
    let n = n % 100;
    let bridge = format!("{TAG}{pid}x{n}b");
    let mut hosts = Vec::new();
    let made = (|| {
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..count {
            let ns = format!("{TAG}-{pid}-{n}-{i}");
            let veth = format!("{TAG}{pid}x{n}h{i}");
            let host_ip = format!("{subnet}.{}", i + 2);
            ip(&["netns", "add", &ns])?;
            hosts.push(Host {
                ip: host_ip.clone(),
                netns: Some((ns.clone(), veth.clone())),
            });
            // The namespace end is made inside the namespace, so its name cannot clash.
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    })();
    match made {
        Ok(()) => Ok((hosts, Some(bridge))),
        Err(e) => {
            // Dropping a `Hosts` of what was made removes it.
            drop(Hosts {
                adopted: Mutex::new(Vec::new()),
                stopped: Mutex::new(Vec::new()),
                hosts,
                bridge: Some(bridge),
            });
            Err(e)
        }
    }
}

/// Every process descended from `pid`, from `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.split_off(1)
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on a pid of this test's processes; a stale pid only errs.
        unsafe { libc::kill(pid, sig) };
    }
}
