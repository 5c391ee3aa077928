//! Node addresses: which IP a process of this machine binds and advertises.
//!
//! A node's IP is the address every process of the node listens on and tells others: the
//! raylet's `bind_host` (or, when that is unspecified, the address of the interface that
//! routes to the GCS), handed to its workers as `MINIRAY_NODE_IP`. A driver takes
//! `MINIRAY_NODE_IP` when set, else the same route-based detection. Nothing advertises a
//! hard-coded loopback address, so a cluster spans machines.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use crate::config::env;

/// An address that cannot serve as a node IP, or a route that cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("{what} {value:?} is not a usable IP address: {reason}")]
    BadIp {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("no local interface routes to {address}: {reason}")]
    NoRoute { address: String, reason: String },
}

/// Parses a node IP: a literal address of one interface, so neither unspecified
/// (`0.0.0.0`, `::`, which names no interface others could reach) nor multicast.
pub fn parse_node_ip(what: &'static str, value: &str) -> Result<IpAddr, AddrError> {
    let bad = |reason| AddrError::BadIp {
        what,
        value: value.to_string(),
        reason,
    };
    let ip: IpAddr = value.trim().parse().map_err(|_| bad("not an IP literal"))?;
    if ip.is_unspecified() {
        return Err(bad(
            "an unspecified address names no interface to advertise",
        ));
    }
    if ip.is_multicast() {
        return Err(bad("a multicast address names no interface"));
    }
    Ok(ip)
}

/// Whether `host` is an unspecified address (`0.0.0.0`, `::`): listen on every interface.
pub fn is_unspecified(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

/// Whether `host` names this machine only (`localhost`, 127/8, `::1`).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `MINIRAY_NODE_IP` when set and non-empty, validated.
pub fn node_ip_from_env() -> Result<Option<IpAddr>, AddrError> {
    match std::env::var(env::NODE_IP) {
        Ok(v) if !v.trim().is_empty() => parse_node_ip(env::NODE_IP, &v).map(Some),
        _ => Ok(None),
    }
}

/// The local address of the interface the kernel would use to reach `target`. A UDP
/// `connect` only picks the route; no packet is sent, so this works for any port and
/// needs nobody listening.
pub fn route_to(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

/// The local address of the interface that routes to `address` (`HOST:PORT`; a hostname is
/// resolved). A loopback target gives a loopback address.
pub async fn route_ip_to(address: &str) -> Result<IpAddr, AddrError> {
    let targets = tokio::net::lookup_host(address)
        .await
        .map_err(|source| AddrError::Resolve {
            address: address.to_string(),
            source,
        })?;
    route_among(address, targets)
}

/// [`route_ip_to`] for callers without a runtime (the CLI).
pub fn route_ip_to_blocking(address: &str) -> Result<IpAddr, AddrError> {
    use std::net::ToSocketAddrs;
    let targets = address
        .to_socket_addrs()
        .map_err(|source| AddrError::Resolve {
            address: address.to_string(),
            source,
        })?;
    route_among(address, targets)
}

fn route_among(
    address: &str,
    targets: impl Iterator<Item = SocketAddr>,
) -> Result<IpAddr, AddrError> {
    let mut last = String::from("the name resolved to no address");
    for target in targets {
        match route_to(target) {
            // A loopback target routes through the loopback interface, whose local address
            // is 127.0.0.1 even for 127.0.0.2; the target itself is then the right answer.
            Ok(_) if target.ip().is_loopback() => return Ok(target.ip()),
            Ok(ip) if !ip.is_unspecified() => return Ok(ip),
            Ok(ip) => last = format!("the route has no source address ({ip})"),
            Err(e) => last = e.to_string(),
        }
    }
    Err(AddrError::NoRoute {
        address: address.to_string(),
        reason: last,
    })
}

/// The address of the interface of the default route, if this machine has one. The target
/// is a documentation address (TEST-NET-1): only the route is looked up, nothing is sent.
pub fn default_route_ip() -> Option<IpAddr> {
    route_to((Ipv4Addr::new(192, 0, 2, 1), 9).into())
        .ok()
        .filter(|ip| !ip.is_unspecified())
}

/// This process's node IP: `MINIRAY_NODE_IP` when set, else the address of the interface
/// that routes to the GCS at `gcs_address`.
pub async fn node_ip(gcs_address: &str) -> Result<IpAddr, AddrError> {
    match node_ip_from_env()? {
        Some(ip) => Ok(ip),
        None => route_ip_to(gcs_address).await,
    }
}

/// The IP to bind for `host`: the literal itself, else the first address the name
/// resolves to (a raylet may be configured with a name such as `localhost`).
pub async fn bind_ip(host: &str) -> Result<IpAddr, AddrError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let resolve = |source| AddrError::Resolve {
        address: host.to_string(),
        source,
    };
    tokio::net::lookup_host((host, 0))
        .await
        .map_err(resolve)?
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| resolve(io::Error::other("the name resolved to no address")))
}

/// `HOST:PORT`, with brackets around an IPv6 host. Every address miniray dials is built here
/// (ports are `u32` on the wire, `u16` in sockets), so an IPv6 node IP never yields an
/// ambiguous `::1:80`.
pub fn host_port(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host part of `HOST:PORT` (brackets of an IPv6 host removed).
pub fn host_of(address: &str) -> Option<&str> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_ip_must_name_one_interface() {
        assert_eq!(
            parse_node_ip("--node-ip-address", "10.1.2.3").unwrap(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert!(parse_node_ip("x", "::1").is_ok());
        for bad in ["0.0.0.0", "::", "224.0.0.1", "host.example", "10.1.2", ""] {
            let e = parse_node_ip("--node-ip-address", bad).unwrap_err();
            assert!(e.to_string().contains("--node-ip-address"), "{e}");
        }
    }

    #[test]
    fn unspecified_and_loopback_hosts() {
        assert!(is_unspecified("0.0.0.0") && is_unspecified("::"));
        assert!(!is_unspecified("127.0.0.1") && !is_unspecified("localhost"));
        assert!(is_loopback("127.0.0.7") && is_loopback("localhost") && is_loopback("::1"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("0.0.0.0"));
    }

    #[tokio::test]
    async fn the_route_to_a_loopback_gcs_is_that_loopback_address() {
        assert_eq!(
            route_ip_to("127.0.0.1:6379").await.unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        // All of 127/8 is local on Linux: a GCS on 127.0.0.3 is reached from 127.0.0.3.
        assert_eq!(
            route_ip_to("127.0.0.3:1").await.unwrap(),
            "127.0.0.3".parse::<IpAddr>().unwrap()
        );
        assert!(route_ip_to("localhost:1").await.unwrap().is_loopback());
        assert!(matches!(
            route_ip_to("no-such-host.invalid:1").await,
            Err(AddrError::Resolve { .. })
        ));
        assert!(matches!(
            route_ip_to("no port").await,
            Err(AddrError::Resolve { .. })
        ));
        assert_eq!(
            route_ip_to_blocking("127.0.0.5:1").unwrap(),
            "127.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert!(route_ip_to_blocking("no-such-host.invalid:1").is_err());
    }

    #[test]
    fn the_default_route_is_never_unspecified() {
        // A machine without a default route has none; one with it names a real interface.
        if let Some(ip) = default_route_ip() {
            assert!(!ip.is_unspecified() && !ip.is_multicast());
        }
    }

    #[test]
    fn host_port_round_trips() {
        assert_eq!(host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(host_port("::1", 80), "[::1]:80");
        assert_eq!(host_port("fd00::2", 6379u32), "[fd00::2]:6379");
        assert_eq!(host_port("[::1]", 80u32), "[::1]:80");
        assert_eq!(host_of("[::1]:80"), Some("::1"));
        assert_eq!(host_of("10.0.0.1:80"), Some("10.0.0.1"));
        assert_eq!(host_of("10.0.0.1"), None);
        assert_eq!(host_of(":80"), None);
    }
}
