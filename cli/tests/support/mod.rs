//! Helpers shared by the CLI's integration tests.

use std::sync::atomic::{AtomicU16, Ordering};

/// First port handed out, and how many there are: below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768 and up by default).
const FIRST_PORT: u16 = 20_000;
const PORTS: u16 = 12_000;

/// A loopback port nothing listens on, below the ephemeral range: a GCS restarted on it
/// must find it still free, and a port from that range may meanwhile be taken by any
/// process that binds port 0 or dials out.
pub fn free_port() -> u16 {
    // Spread by pid so test processes running at once start apart; step on a collision.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 1000) as u16 * 12;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST_PORT + (offset + n % PORTS) % PORTS;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
pub mod harness;
pub mod head;
pub mod http;
pub mod k8s;
pub mod run;
