//! Mutual TLS between every miniray process (off by default, as Ray's `RAY_USE_TLS`).
//!
//! A process runs with one TLS setting for its whole life, installed once at start
//! ([`install`]): daemons from their spec, drivers and workers from `MINIRAY_TLS_CERT`,
//! `MINIRAY_TLS_KEY` and `MINIRAY_TLS_CA` ([`install_from_env`]). Files are read and checked
//! when the setting is made, so a bad file stops the process at start with its name, not at
//! the first connection.
//!
//! With TLS on, every server (built by [`crate::transport::server_builder`]) demands a
//! client certificate signed by the CA, and every client channel (built by
//! [`crate::transport::endpoint`]) checks the server against the CA and presents its own
//! certificate. Clients check the server name [`SERVER_NAME`] (`miniray`), not the address
//! they dial: node addresses change (Pods get new IPs), so node certificates carry the DNS
//! name `miniray` instead of their IPs. The cluster token is still checked on every call.
//!
//! The only rustls crypto provider compiled in is ring (tonic's `tls-ring`, rcgen's `ring`);
//! [`install`] also installs it as the process default, so rustls never has to choose.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

use crate::config::env;

/// The name clients check in a server's certificate; node certificates carry it as a DNS
/// subject alternative name.
pub const SERVER_NAME: &str = "miniray";

/// Time allowed for a TLS handshake, on either side.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a process's TLS material lives: its certificate chain and key, and the CA
/// certificate its peers must be signed by (all PEM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS needs a certificate, a key and a CA together; missing: {}", missing.join(", "))]
    Incomplete { missing: Vec<&'static str> },
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS {what} {} is not usable: {reason}", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the TLS certificate and key do not work together: {0}")]
    Config(String),
    #[error("this process already uses another TLS setting")]
    AlreadyInstalled,
    #[error("cannot generate certificates: {0}")]
    Generate(String),
    #[error("{} already exists (pass --force to overwrite)", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TlsFiles {
    /// The setting named by `MINIRAY_TLS_CERT`, `MINIRAY_TLS_KEY` and `MINIRAY_TLS_CA`:
    /// `None` when none is set, an error when only some are.
    pub fn from_env() -> Result<Option<TlsFiles>, TlsError> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self::from_parts([
            (env::TLS_CERT, var(env::TLS_CERT)),
            (env::TLS_KEY, var(env::TLS_KEY)),
            (env::TLS_CA, var(env::TLS_CA)),
        ])
    }

    /// Certificate, key and CA given as `(name, value)`, each under the name to report if
    /// it alone is missing: all three or none.
    pub fn from_parts(
        [cert, key, ca]: [(&'static str, Option<PathBuf>); 3],
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key, ca) {
            ((_, None), (_, None), (_, None)) => Ok(None),
            ((_, Some(cert)), (_, Some(key)), (_, Some(ca))) => {
                Ok(Some(TlsFiles { cert, key, ca }))
            }
            parts => {
                let (c, k, a) = parts;
                let missing = [c, k, a]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(name, _)| name)
                    .collect();
                Err(TlsError::Incomplete { missing })
            }
        }
    }

    /// The `MINIRAY_TLS_*` variables that make a child process use `files`: the value to
    /// set, or `None` for a variable to remove (plaintext).
    pub fn env(files: Option<&TlsFiles>) -> [(&'static str, Option<&Path>); 3] {
        [
            (env::TLS_CERT, files.map(|f| f.cert.as_path())),
            (env::TLS_KEY, files.map(|f| f.key.as_path())),
            (env::TLS_CA, files.map(|f| f.ca.as_path())),
        ]
    }

    /// Reads and checks the three files.
    pub fn load(&self) -> Result<Tls, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let pem = Pem {
            cert: read("certificate", &self.cert)?,
            key: read("key", &self.key)?,
            ca: read("CA certificate", &self.ca)?,
        };
        Tls::build(pem, Some(self.clone()))
    }
}

#[derive(PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

/// Checked TLS material, ready for servers and clients.
#[derive(Clone)]
pub struct Tls {
    files: Option<TlsFiles>,
    pem: Arc<Pem>,
    server: Server,
    client: ClientTlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        self.pem == other.pem
    }
}

impl Tls {
    /// Material given in memory (PEM certificate chain, key, CA certificate).
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Tls, TlsError> {
        let pem = Pem {
            cert: cert.to_vec(),
            key: key.to_vec(),
            ca: ca.to_vec(),
        };
        Tls::build(pem, None)
    }

    fn build(pem: Pem, files: Option<TlsFiles>) -> Result<Tls, TlsError> {
        install_crypto_provider();
        let path = |p: fn(&TlsFiles) -> &PathBuf, fallback: &str| {
            files
                .as_ref()
                .map_or_else(|| PathBuf::from(fallback), |f| p(f).clone())
        };
        check_certs("certificate", &pem.cert, || {
            path(|f| &f.cert, "<certificate>")
        })?;
        check_certs("CA certificate", &pem.ca, || path(|f| &f.ca, "<CA>"))?;
        let bad_key = |reason: String| TlsError::BadPem {
            what: "key",
            path: path(|f| &f.key, "<key>"),
            reason,
        };
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| bad_key(e.to_string()))?;
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad_key(e.to_string()))?;

        let identity = Identity::from_pem(&pem.cert, &pem.key);
        let ca = Certificate::from_pem(&pem.ca);
        let server_config = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(ca.clone())
            // Mandatory: a peer without a certificate from our CA gets nothing.
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT);
        let client = ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(identity)
            .domain_name(SERVER_NAME)
            .timeout(HANDSHAKE_TIMEOUT);
        // Building both configs now checks that the key matches the certificate.
        let server = Server::builder()
            .tls_config(server_config)
            .map_err(|e| TlsError::Config(crate::auth::error_chain(&e)))?;
        Endpoint::from_static("https://miniray")
            .tls_config(client.clone())
            .map_err(|e| TlsError::Config(crate::auth::error_chain(&e)))?;
        Ok(Tls {
            files,
            pem: Arc::new(pem),
            server,
            client,
        })
    }

    /// The files this material was read from (`None` when given in memory).
    pub fn files(&self) -> Option<&TlsFiles> {
        self.files.as_ref()
    }

    /// The dashboard port's TLS (HTTP/1.1 and HTTP/2 by ALPN): our certificate; a client
    /// certificate is optional, because browsers open the dashboard, but one that is
    /// presented must be from the CA. The cluster token authenticates every request.
    pub fn https_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = self.rustls_server_config(true)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn rustls_server_config(
        &self,
        client_cert_optional: bool,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let config_error = |e: rustls::Error| TlsError::Config(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(self.root_store()?);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let verifier = match client_cert_optional {
            true => verifier.allow_unauthenticated(),
            false => verifier,
        }
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain()?, self.private_key()?)
            .map_err(config_error)
    }

    /// The server side of a plain stream between miniray processes (the object data
    /// plane): as on gRPC, the client must present a certificate from the CA.
    pub fn stream_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(
            self.rustls_server_config(false)?,
        )))
    }

    /// The client side of such a stream: checks the server against the CA under
    /// [`SERVER_NAME`] (see [`server_name`]) and presents our certificate.
    pub fn stream_connector(&self) -> Result<tokio_rustls::TlsConnector, TlsError> {
        Ok(tokio_rustls::TlsConnector::from(Arc::new(
            self.https_client_config()?,
        )))
    }

    /// A client of the dashboard port: checks the server against the CA (under
    /// [`SERVER_NAME`], which the caller must ask for) and presents our certificate.
    pub fn https_client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let config_error = |e: rustls::Error| TlsError::Config(e.to_string());
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(self.root_store()?)
        .with_client_auth_cert(self.cert_chain()?, self.private_key()?)
        .map_err(config_error)
    }

    fn root_store(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.pem.ca) {
            let cert = cert.map_err(|e| TlsError::Config(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        }
        Ok(roots)
    }

    fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        CertificateDer::pem_slice_iter(&self.pem.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.pem.key).map_err(|e| TlsError::Config(e.to_string()))
    }

    /// A server builder that demands client certificates from the CA.
    pub(crate) fn server(&self) -> Server {
        self.server.clone()
    }

    /// Client side: checks servers against the CA under [`SERVER_NAME`], presents ours.
    pub(crate) fn client(&self) -> ClientTlsConfig {
        self.client.clone()
    }
}

fn check_certs(what: &'static str, pem: &[u8], path: impl Fn() -> PathBuf) -> Result<(), TlsError> {
    let bad = |reason: String| TlsError::BadPem {
        what,
        path: path(),
        reason,
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| bad(e.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("no PEM CERTIFICATE block".into()));
    }
    Ok(())
}

/// [`SERVER_NAME`], as a TLS client asks for it.
pub fn server_name() -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

/// ring as rustls's process default, so rustls never has to pick a provider (it panics
/// when it cannot). Installing again is a no-op.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

static INSTALLED: OnceLock<Option<Tls>> = OnceLock::new();

/// Sets this process's TLS setting (`None`: plaintext). The first setting made, or read by
/// [`current`], stays: installing the same one again is fine, another one is an error.
pub fn install(tls: Option<Tls>) -> Result<(), TlsError> {
    install_crypto_provider();
    if *INSTALLED.get_or_init(|| tls.clone()) == tls {
        Ok(())
    } else {
        Err(TlsError::AlreadyInstalled)
    }
}

/// [`install`] of the setting in `MINIRAY_TLS_*` (drivers, workers, the CLI's clients).
pub fn install_from_env() -> Result<(), TlsError> {
    let tls = TlsFiles::from_env()?.map(|f| f.load()).transpose()?;
    install(tls)
}

/// This process's TLS setting; plaintext (for good) if nothing was installed yet.
pub fn current() -> Option<&'static Tls> {
    INSTALLED.get_or_init(|| None).as_ref()
}

/// The `MINIRAY_TLS_*` variables a child process (a worker) needs to use this process's
/// files: the value to set, or `None` for a variable to remove (plaintext).
pub fn child_env() -> [(&'static str, Option<&'static Path>); 3] {
    TlsFiles::env(current().and_then(Tls::files))
}

/// A CA and one node certificate it signed, PEM.
pub struct GeneratedCerts {
    pub ca_cert: String,
    pub ca_key: String,
    pub node_cert: String,
    pub node_key: String,
}

/// File names [`GeneratedCerts::write`] uses, in a folder.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";

/// A fresh CA and a node certificate signed by it, valid for client and server use. The
/// node certificate names [`SERVER_NAME`] and `localhost`, plus `ips` and `dns_names`.
pub fn generate_certs(ips: &[IpAddr], dns_names: &[String]) -> Result<GeneratedCerts, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    // Valid from last year (clock skew between hosts) for ten years.
    let year = 1970 + (crate::time::now_ms() / 1000 / 31_556_952) as i32;
    let validity = |p: &mut CertificateParams| {
        p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    };

    let mut ca = CertificateParams::default();
    validity(&mut ca);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "miniray CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(err)?;

    let mut names = vec![SERVER_NAME.to_string(), "localhost".to_string()];
    names.extend(dns_names.iter().cloned());
    let mut node = CertificateParams::new(names).map_err(err)?;
    node.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    validity(&mut node);
    node.distinguished_name = rcgen::DistinguishedName::new();
    node.distinguished_name
        .push(DnType::CommonName, "miniray node");
    node.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Every process is both a server and a client of its peers.
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node.use_authority_key_identifier_extension = true;
    let node_key = KeyPair::generate().map_err(err)?;
    let node_cert = node.signed_by(&node_key, &ca).map_err(err)?;
    Ok(GeneratedCerts {
        ca_cert: ca.pem(),
        ca_key: ca_key_pem,
        node_cert: node_cert.pem(),
        node_key: node_key.serialize_pem(),
    })
}

impl GeneratedCerts {
    /// Writes `ca.pem`, `ca.key`, `node.pem` and `node.key` into `dir` (created if needed),
    /// keys with mode 0600. Without `force` nothing is written if any of them exists.
    /// Returns the files a node uses.
    pub fn write(&self, dir: &Path, force: bool) -> Result<TlsFiles, TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        let files = [
            (CA_CERT_FILE, &self.ca_cert, 0o644),
            (CA_KEY_FILE, &self.ca_key, 0o600),
            (NODE_CERT_FILE, &self.node_cert, 0o644),
            (NODE_KEY_FILE, &self.node_key, 0o600),
        ];
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        if !force {
            for (name, _, _) in &files {
                let path = dir.join(name);
                if path.symlink_metadata().is_ok() {
                    return Err(TlsError::Exists(path));
                }
            }
        }
        for (name, content, mode) in files {
            let path = dir.join(name);
            let write_err = |source| TlsError::Write {
                path: path.clone(),
                source,
            };
            if force {
                // Removed, not truncated: the new file gets its mode, and a symlink planted
                // there is not followed.
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write_err(e)),
                    _ => {}
                }
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        TlsError::Exists(path.clone())
                    } else {
                        write_err(e)
                    }
                })?;
            file.write_all(content.as_bytes()).map_err(write_err)?;
        }
        Ok(TlsFiles {
            cert: dir.join(NODE_CERT_FILE),
            key: dir.join(NODE_KEY_FILE),
            ca: dir.join(CA_CERT_FILE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written() -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_certs(&[], &[])
            .unwrap()
            .write(dir.path(), false)
            .unwrap();
        (dir, files)
    }

    #[test]
    fn generated_files_load() {
        let (_dir, files) = written();
        let tls = files.load().unwrap();
        assert_eq!(tls.files(), Some(&files));
    }

    #[test]
    fn keys_are_private_and_nothing_is_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _) = written();
        for name in [CA_KEY_FILE, NODE_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let before = std::fs::read(dir.path().join(NODE_KEY_FILE)).unwrap();
        let again = generate_certs(&[], &[]).unwrap();
        assert!(matches!(
            again.write(dir.path(), false),
            Err(TlsError::Exists(_))
        ));
        assert_eq!(
            std::fs::read(dir.path().join(NODE_KEY_FILE)).unwrap(),
            before
        );
        again.write(dir.path(), true).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join(NODE_KEY_FILE)).unwrap(),
            before
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let (dir, mut files) = written();
        files.key = dir.path().join("absent.key");
        match files.load() {
            Err(TlsError::Read {
                what: "key", path, ..
            }) => assert_eq!(path, files.key),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn bad_pem_is_named() {
        let (dir, files) = written();
        std::fs::write(&files.ca, "not a certificate").unwrap();
        let err = files.load().unwrap_err();
        assert!(
            matches!(&err, TlsError::BadPem { what: "CA certificate", path, .. } if *path == files.ca),
            "{err:?}"
        );
        assert!(err.to_string().contains(&files.ca.display().to_string()));

        let (_dir2, files) = written();
        std::fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            files.load(),
            Err(TlsError::BadPem { what: "key", .. })
        ));
        drop(dir);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (_a, a) = written();
        let (_b, b) = written();
        let mixed = TlsFiles {
            key: b.key.clone(),
            ..a
        };
        assert!(matches!(mixed.load(), Err(TlsError::Config(_))));
    }

    #[test]
    fn all_three_or_none() {
        assert!(
            TlsFiles::from_parts([("c", None), ("k", None), ("a", None)])
                .unwrap()
                .is_none()
        );
        let some = |s: &str| Some(PathBuf::from(s));
        match TlsFiles::from_parts([("cert", some("c")), ("key", some("k")), ("ca", None)]) {
            Err(TlsError::Incomplete { missing }) => assert_eq!(missing, vec!["ca"]),
            other => panic!("expected Incomplete, got {other:?}"),
        }
        match TlsFiles::from_parts([("cert", some("c")), ("key", None), ("ca", None)]) {
            Err(e @ TlsError::Incomplete { .. }) => {
                assert!(e.to_string().contains("key, ca"), "{e}")
            }
            other => panic!("expected Incomplete, got {other:?}"),
        }
    }
}
