//! Scenario of `tests/node_addresses.rs`: a driver on a node IP of its own (no raylet
//! there, so it works through a home raylet over the network) using a cluster whose nodes
//! have distinct IPs. The head has the custom resource `a`, the second node `b`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::{checksum, fnv, make_bytes, out, pattern};

/// The IPv4 addresses this process listens on, from `/proc`: the sockets among its open
/// files that are in LISTEN state in `/proc/self/net/tcp`.
fn own_listeners() -> Vec<String> {
    let inodes: BTreeSet<String> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().to_string();
                    link.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    let mut ips = BTreeSet::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st ... inode (column 9); state 0A is LISTEN.
        let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
        else {
            continue;
        };
        if *state != "0A" || !inodes.contains(*inode) {
            continue;
        }
        // The address is the kernel's 32-bit word printed in hex: network order bytes
        // read as a native (little-endian) integer.
        if let Some(ip) = local
            .split(':')
            .next()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        {
            ips.insert(Ipv4Addr::from(ip.to_le_bytes()).to_string());
        }
    }
    ips.into_iter().collect()
}

fn where_am_i() -> String {
    let node = miniray::node_id()
        .map(|n| n.to_string())
        .unwrap_or_default();
    format!("{node}|{}", own_listeners().join(","))
}

/// This worker's node and the addresses it listens on.
#[miniray::remote]
fn listeners() -> String {
    where_am_i()
}

/// Returns its argument: read from plasma here, stored in this node's plasma on return.
#[miniray::remote]
fn echo(data: Vec<u8>) -> Vec<u8> {
    data
}

#[miniray::actor]
pub struct Probe;

#[miniray::actor]
impl Probe {
    pub fn new() -> Self {
        Probe
    }

    pub fn listeners(&self) -> String {
        where_am_i()
    }

    pub fn checksum(&self, data: Vec<u8>) -> (u64, u64) {
        (data.len() as u64, fnv(&data))
    }
}

pub(crate) fn run() -> anyhow::Result<()> {
    out("driver_node", miniray::node_id()?);
    out("driver_listeners", own_listeners().join(","));
    for res in ["a", "b"] {
        let refs = (0..3)
            .map(|_| listeners::options().resource(res, 1.0).remote())
            .collect::<Result<Vec<_>, _>>()?;
        for r in miniray::get_all(&refs)? {
            out(&format!("task_{res}"), r);
        }
    }
    // Objects put by the driver (streamed to its home raylet), read by tasks on both
    // nodes, and back: made or echoed on a node, read by the driver from there.
    for (name, len) in [("small", 200usize << 10), ("big", 50 << 20)] {
        let data = pattern(len, 3);
        let expected = (len as u64, fnv(&data));
        let put = miniray::put(data)?;
        for res in ["a", "b"] {
            let r = checksum::options().resource(res, 1.0).remote(&put)?;
            out(&format!("{name}_read_{res}"), miniray::get(&r)? == expected);
            let back = echo::options().resource(res, 1.0).remote(&put)?;
            let bytes = miniray::get(&back)?;
            out(
                &format!("{name}_back_{res}"),
                (bytes.len() as u64, fnv(&bytes)) == expected,
            );
        }
        let made = make_bytes::options()
            .resource("b", 1.0)
            .remote(len as u64, 5)?;
        out(
            &format!("{name}_made_b"),
            fnv(&miniray::get(&made)?) == fnv(&pattern(len, 5)),
        );
        out(
            &format!("{name}_driver_get"),
            miniray::get(&put)?.len() == len,
        );
    }
    for res in ["a", "b"] {
        let probe = Probe::options().resource(res, 1.0).remote()?;
        out(&format!("actor_{res}"), miniray::get(&probe.listeners()?)?);
        let data = pattern(300 << 10, 8);
        let expected = (data.len() as u64, fnv(&data));
        let put = miniray::put(data)?;
        out(
            &format!("actor_{res}_checksum"),
            miniray::get(&probe.checksum(&put)?)? == expected,
        );
    }
    Ok(())
}
