//! Readiness probes. Only `tcpSocket` is run: dialed at the Pod IP (or the probe's `host`)
//! every `periodSeconds` (default 10) after `initialDelaySeconds`, each dial bounded by
//! `timeoutSeconds` (default 1); `successThreshold` (default 1) successes in a row make the
//! container ready, `failureThreshold` (default 3) failures in a row unready again.
//! `exec`, `httpGet` and `grpc` probes are not run: such a container never becomes ready
//! (the kubelet logs a warning), so nothing is routed to it by mistake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::watch;

/// A container's readiness probe, as the kubelet runs it.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    /// No probe: ready once running.
    None,
    Tcp(TcpProbe),
    /// A probe the simulator cannot run; the container stays unready. Says why.
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TcpProbe {
    pub port: u16,
    /// Dialed instead of the Pod IP when set.
    pub host: Option<String>,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// The readiness probe of `container`.
pub fn readiness(container: &Container) -> Readiness {
    let Some(p) = &container.readiness_probe else {
        return Readiness::None;
    };
    let Some(tcp) = &p.tcp_socket else {
        let kind = if p.exec.is_some() {
            "exec"
        } else if p.http_get.is_some() {
            "httpGet"
        } else if p.grpc.is_some() {
            "grpc"
        } else {
            "(no handler)"
        };
        return Readiness::Unsupported(format!(
            "container {}: {kind} readiness probes are not supported by the simulator; \
             the container stays unready",
            container.name
        ));
    };
    let port = match &tcp.port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    };
    let Some(port) = port.filter(|p| *p > 0) else {
        return Readiness::Unsupported(format!(
            "container {}: readiness probe port {:?} is not a port of the container",
            container.name, tcp.port
        ));
    };
    let secs = |v: Option<i32>, default: u64| {
        Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
    };
    let count = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    Readiness::Tcp(TcpProbe {
        port,
        host: tcp.host.clone().filter(|h| !h.is_empty()),
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: count(p.success_threshold, 1),
        failure_threshold: count(p.failure_threshold, 3),
    })
}

/// Whether a TCP connection to `addr` opens within `timeout`.
pub async fn tcp_open(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Runs `probe` against `pod_ip` until `ready`'s receivers are gone, publishing each change
/// of readiness. Starts unready.
pub async fn run(probe: TcpProbe, pod_ip: IpAddr, ready: watch::Sender<bool>) {
    let ip = match &probe.host {
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => match tokio::net::lookup_host((h.as_str(), probe.port)).await {
                Ok(mut addrs) => addrs.next().map(|a| a.ip()).unwrap_or(pod_ip),
                Err(_) => pod_ip,
            },
        },
        None => pod_ip,
    };
    let addr = SocketAddr::new(ip, probe.port);
    tokio::time::sleep(probe.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        if tcp_open(addr, probe.timeout).await {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let now = *ready.borrow();
        if !now && successes >= probe.success_threshold {
            let _ = ready.send(true);
        } else if now && failures >= probe.failure_threshold {
            let _ = ready.send(false);
        }
        if ready.is_closed() {
            return;
        }
        tokio::time::sleep(probe.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).expect("container")
    }

    #[test]
    fn probes_are_read_with_defaults_and_named_ports() {
        assert_eq!(readiness(&container(json!({"name": "c"}))), Readiness::None);
        let c = container(
            json!({"name": "c", "ports": [{"name": "gcs", "containerPort": 6380}],
            "readinessProbe": {"tcpSocket": {"port": "gcs"}, "periodSeconds": 2}}),
        );
        let Readiness::Tcp(p) = readiness(&c) else {
            panic!("a tcp probe");
        };
        assert_eq!(p.port, 6380);
        assert_eq!(p.period, Duration::from_secs(2));
        assert_eq!(p.failure_threshold, 3);
        assert_eq!(p.timeout, Duration::from_secs(1));
        let http = container(json!({"name": "c",
            "readinessProbe": {"httpGet": {"port": 80, "path": "/"}}}));
        assert!(matches!(readiness(&http), Readiness::Unsupported(_)));
        let bad =
            container(json!({"name": "c", "readinessProbe": {"tcpSocket": {"port": "nope"}}}));
        assert!(matches!(readiness(&bad), Readiness::Unsupported(_)));
    }

    #[tokio::test]
    async fn readiness_follows_the_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let probe = TcpProbe {
            port,
            host: None,
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 2,
        };
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(run(probe, IpAddr::from([127, 0, 0, 1]), tx));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!*rx.borrow(), "nothing listens yet");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind again");
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r))
            .await
            .expect("ready in time")
            .expect("probe alive");
        drop(listener);
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| !*r))
            .await
            .expect("unready in time")
            .expect("probe alive");
        task.abort();
    }
}
