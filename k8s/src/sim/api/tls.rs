//! The server's certificates: a CA made at start and a server certificate it signed for
//! every listen address and the in-cluster names of the API server.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

use crate::sim::SimError;

/// The DNS names a real API server's certificate carries, so in-cluster clients that dial
/// `kubernetes.default.svc` verify it.
const DNS_NAMES: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// A CA (PEM, for clients) and the TLS config of a server presenting a certificate it signed.
pub struct ServerTls {
    pub ca_pem: String,
    pub config: Arc<ServerConfig>,
}

/// Makes the CA and the server certificate for `ips`, and a rustls config serving it with
/// HTTP/2 and HTTP/1.1. The ring provider is given to the config, so no process default is
/// needed.
pub fn make(ips: &[IpAddr]) -> Result<ServerTls, SimError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let err = |e: rcgen::Error| SimError::Certificates(e.to_string());
    let now = k8s_openapi::jiff::Timestamp::now();
    let year = now.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).year();
    // Valid from last year (clock skew) for ten years.
    let validity = |p: &mut CertificateParams| {
        p.not_before = rcgen::date_time_ymd(i32::from(year) - 1, 1, 1);
        p.not_after = rcgen::date_time_ymd(i32::from(year) + 10, 1, 1);
    };

    let mut ca = CertificateParams::default();
    validity(&mut ca);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "miniray-sim kubernetes CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(err)?;

    let mut server =
        CertificateParams::new(DNS_NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(err)?;
    server
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    validity(&mut server);
    server.distinguished_name = rcgen::DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().map_err(err)?;
    let server_cert = server.signed_by(&server_key, &ca).map_err(err)?;

    let key = PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes())
        .map_err(|e| SimError::Certificates(e.to_string()))?;
    let chain = vec![server_cert.der().clone(), ca.der().clone()];
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        ca_pem: ca.pem(),
        config: Arc::new(config),
    })
}
