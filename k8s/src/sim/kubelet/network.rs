//! The Pod network: one bridge on this host and, per Pod, a network namespace joined to it
//! by a veth pair, so each Pod has its own IP address and its own loopback.
//!
//! [`PodNetwork::create`] picks a /24 under 10.214.0.0/16 that no interface of this network
//! stack uses; the bridge holds `.1` (so this host reaches every Pod IP, and Pods reach this
//! host at [`PodNetwork::bridge_ip`]), Pods get `.2` to `.254`. Pods are on one link, so
//! they reach each other directly; there is no default route, so a Pod reaches nothing
//! beyond the bridge's subnet.
//!
//! Names carry the tag `mrk` and the owner pid (in base 32, to fit the 15-byte limit of
//! interface names; not base 36, whose digit `x` would be read as the separator):
//! `mrk<pid>x<n>b` for the bridge, `mrk<pid>x<n>p<octet>` for a Pod's bridge-side veth,
//! `mrk-<pid>-<n>-<octet>` for its namespace (the namespace end of the veth is `eth0`).
//! Each network first removes those of owners no longer running.
//!
//! Where namespaces cannot be made (not root, no `ip`, not Linux, or `MINIRAY_K8S_SIM_NO_NETNS`
//! set) it says why once on stderr and gives each Pod one `127.0.0.x` address instead, with
//! no namespace; [`PodNetwork::isolated`] tells which.
//!
//! Everything is removed by [`PodNetwork::shutdown`] or on drop.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use miniray_common::netns::{self, ip};

/// Prefix of every link and namespace a Pod network creates.
const TAG: &str = "mrk";
/// Set to any value to use the loopback fallback on a machine that has namespaces.
pub const NO_NETNS_ENV: &str = "MINIRAY_K8S_SIM_NO_NETNS";
/// Where `ip netns` keeps its namespaces (a process joins one by opening this file).
const NETNS_DIR: &str = "/run/netns";
/// Each network of this process takes the next number (part of its names).
static NEXT: AtomicU32 = AtomicU32::new(0);
/// Picking a free subnet and creating the bridge is one step per process, so two networks
/// made at once (parallel tests) never pick the same /24.
static SETUP: Mutex<()> = Mutex::new(());

/// Why the network could not give a Pod an address.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("no free Pod address left in {0}")]
    Exhausted(String),
    #[error("{0}")]
    Ip(String),
}

/// A Pod's place on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    /// The Pod's IP address.
    pub ip: Ipv4Addr,
    /// The Pod's network namespace (`None` in the loopback fallback).
    pub netns: Option<String>,
    /// The bridge-side end of the Pod's veth (`None` in the fallback).
    veth: Option<String>,
}

impl PodNet {
    /// The bridge-side end of the Pod's veth, in this host's network stack.
    pub fn veth(&self) -> Option<&str> {
        self.veth.as_deref()
    }

    /// The file a process opens to join the Pod's network namespace.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.netns.as_ref().map(|ns| Path::new(NETNS_DIR).join(ns))
    }
}

struct Bridge {
    name: String,
    /// `10.214.X`: the first three octets of the subnet.
    subnet: [u8; 3],
    /// Part of every name of this network.
    n: u32,
}

/// The bridge and the Pods' namespaces (or, in the fallback, loopback addresses).
pub struct PodNetwork {
    bridge: Option<Bridge>,
    /// Pods by the last octet of their address.
    pods: Mutex<BTreeMap<u8, PodNet>>,
}

impl PodNetwork {
    /// A bridge on a free /24 when this machine allows namespaces, otherwise the loopback
    /// fallback (one line on stderr says why). Never fails: the fallback always works.
    pub fn create() -> PodNetwork {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let made = match netns::unavailable(NO_NETNS_ENV) {
            Some(why) => Err(why),
            None => {
                let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
                netns::sweep_leftovers(TAG, RADIX);
                create_bridge(n)
            }
        };
        let bridge = match made {
            Ok(bridge) => Some(bridge),
            Err(why) => {
                eprintln!(
                    "miniray k8s simulator: {why}; Pods get one 127.0.0.x address each and share \
                     this host's network, /tmp and /dev/shm"
                );
                None
            }
        };
        PodNetwork {
            bridge,
            pods: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether Pods have network namespaces of their own (false in the loopback fallback).
    pub fn isolated(&self) -> bool {
        self.bridge.is_some()
    }

    /// The address of this host on the Pod network (the bridge's `.1`; `127.0.0.1` in the
    /// fallback). Servers on this host that Pods dial listen here.
    pub fn bridge_ip(&self) -> IpAddr {
        match &self.bridge {
            Some(b) => IpAddr::V4(Ipv4Addr::new(b.subnet[0], b.subnet[1], b.subnet[2], 1)),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// The bridge's name (`None` in the fallback).
    pub fn bridge_name(&self) -> Option<&str> {
        self.bridge.as_ref().map(|b| b.name.as_str())
    }

    /// Gives a new Pod the next free address and, unless in the fallback, a namespace with
    /// `lo` and `eth0` up.
    pub fn add_pod(&self) -> Result<PodNet, NetworkError> {
        let mut pods = lock(&self.pods);
        let Some(octet) = (2..=254u8).find(|o| !pods.contains_key(o)) else {
            return Err(NetworkError::Exhausted(self.subnet_text()));
        };
        let pod = match &self.bridge {
            None => PodNet {
                ip: Ipv4Addr::new(127, 0, 0, octet),
                netns: None,
                veth: None,
            },
            Some(b) => {
                let pid = std::process::id();
                let ns = format!("{TAG}-{pid}-{}-{octet}", b.n);
                let veth = format!("{TAG}{}x{}p{octet}", base32(pid), base32(b.n));
                let ip_addr = Ipv4Addr::new(b.subnet[0], b.subnet[1], b.subnet[2], octet);
                let pod = PodNet {
                    ip: ip_addr,
                    netns: Some(ns.clone()),
                    veth: Some(veth.clone()),
                };
                let made = (|| {
                    ip(&["netns", "add", &ns])?;
                    // The namespace end is made inside the namespace, so its name cannot clash.
                    ip(&[
                        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                    ])?;
                    ip(&["link", "set", &veth, "master", &b.name])?;
                    ip(&["link", "set", &veth, "up"])?;
                    let cidr = format!("{ip_addr}/24");
                    ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
                    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                    ip(&["-n", &ns, "link", "set", "lo", "up"])
                })();
                if let Err(e) = made {
                    remove_links(&pod);
                    return Err(NetworkError::Ip(e));
                }
                pod
            }
        };
        pods.insert(octet, pod.clone());
        tracing::debug!(ip = %pod.ip, netns = ?pod.netns, "Pod network namespace made");
        Ok(pod)
    }

    /// The Pods that have an address now.
    pub fn pods(&self) -> Vec<PodNet> {
        lock(&self.pods).values().cloned().collect()
    }

    /// Removes a Pod's namespace and veth and frees its address. Processes still in the
    /// namespace lose their network (the veth goes) but are not killed.
    pub fn remove_pod(&self, pod: &PodNet) {
        let mut pods = lock(&self.pods);
        let octet = pod.ip.octets()[3];
        if pods.get(&octet) == Some(pod) {
            pods.remove(&octet);
            remove_links(pod);
        }
    }

    /// Removes every Pod's namespace and the bridge. Idempotent; also runs on drop.
    pub fn shutdown(&self) {
        let pods = std::mem::take(&mut *lock(&self.pods));
        for pod in pods.values() {
            remove_links(pod);
        }
        if let Some(b) = &self.bridge {
            let _ = ip(&["link", "del", &b.name]);
        }
    }

    fn subnet_text(&self) -> String {
        match &self.bridge {
            Some(b) => format!("{}.{}.{}.0/24", b.subnet[0], b.subnet[1], b.subnet[2]),
            None => "127.0.0.0/24".into(),
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("bridge", &self.bridge_name())
            .field("subnet", &self.subnet_text())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn remove_links(pod: &PodNet) {
    // Deleting one end of a veth pair deletes both, even while a process still keeps the
    // namespace alive.
    if let Some(veth) = &pod.veth {
        let _ = ip(&["link", "del", veth]);
    }
    if let Some(ns) = &pod.netns {
        let _ = ip(&["netns", "del", ns]);
    }
}

/// Radix of the numbers in link names: its digits (`0-9a-v`) never include the separator `x`.
const RADIX: u32 = 32;

fn base32(mut v: u32) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuv"[(v % RADIX) as usize]);
        v /= RADIX;
        if v == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8_lossy(&digits).into_owned()
}

fn create_bridge(n: u32) -> Result<Bridge, String> {
    let subnet = netns::free_subnet(214, std::process::id(), n)?;
    let name = format!("{TAG}{}x{}b", base32(std::process::id()), base32(n));
    let made = (|| {
        ip(&["link", "add", &name, "type", "bridge"])?;
        let cidr = format!("{}.{}.{}.1/24", subnet[0], subnet[1], subnet[2]);
        ip(&["addr", "add", &cidr, "dev", &name])?;
        ip(&["link", "set", &name, "up"])
    })();
    match made {
        Ok(_) => Ok(Bridge { name, subnet, n }),
        Err(e) => {
            let _ = ip(&["link", "del", &name]);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn names_fit_interface_limit() {
        let pid = base32(4_194_304);
        let veth = format!("{TAG}{pid}x{}p254", base32(1023));
        assert!(veth.len() <= 15, "{veth}");
        assert_eq!(
            u32::from_str_radix(&base32(4_194_304), RADIX),
            Ok(4_194_304)
        );
        assert_eq!(base32(0), "0");
        // 23109 is `htx` in base 36: the sweep read that owner as pid `ht` and, finding it
        // gone, deleted a live bridge.
        assert!(!base32(23_109).contains('x'));
    }

    #[test]
    fn pods_get_distinct_addresses_and_namespaces_are_removed() {
        let net = PodNetwork::create();
        let a = net.add_pod().expect("first Pod");
        let b = net.add_pod().expect("second Pod");
        assert_ne!(a.ip, b.ip);
        if net.isolated() {
            let ns = a.netns.clone().expect("isolated Pods have a namespace");
            assert!(a.netns_path().is_some_and(|p| p.exists()));
            // The host reaches the Pod's address.
            let ping = Command::new("ping")
                .args(["-c1", "-W2", &a.ip.to_string()])
                .stdout(Stdio::null())
                .status();
            if let Ok(ping) = ping {
                assert!(ping.success(), "the host cannot reach {}", a.ip);
            }
            net.remove_pod(&a);
            let list = ip(&["netns", "list"]).expect("ip netns list");
            assert!(!list.contains(&ns), "{ns} still there: {list}");
            // The freed address is given again.
            let c = net.add_pod().expect("third Pod");
            assert_eq!(c.ip, a.ip);
            let bridge = net.bridge_name().expect("bridge").to_string();
            drop(net);
            let links = ip(&["-o", "link", "show"]).expect("ip link");
            assert!(!links.contains(&format!(" {bridge}:")), "{links}");
            let list = ip(&["netns", "list"]).expect("ip netns list");
            assert!(
                !list.contains(&format!("{TAG}-{}-", std::process::id())) || {
                    // Other tests of this process may hold namespaces; ours must be gone.
                    !list.contains(c.netns.as_deref().unwrap_or("?"))
                }
            );
        }
    }
}
