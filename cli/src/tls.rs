//! Mutual TLS in the CLI: `miniray tls init`, and the `--tls-*` flags of `miniray start`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use miniray_common::config::env;
use miniray_common::tls::{self, TlsFiles};

/// The TLS flags of `miniray start` (all three or none).
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate of this node (signed by `--tls-ca`, naming DNS `miniray`); turns on
    /// mutual TLS for the daemons, their calls and their workers.
    #[arg(long, env = "MINIRAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "MINIRAY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM certificate of the cluster's CA; peers must present a certificate it signed.
    #[arg(long, env = "MINIRAY_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// Checks the files (all three given, readable, valid PEM, key matching certificate) and
    /// makes them this process's setting, so the CLI's own calls use them too.
    pub fn install(&self) -> anyhow::Result<Option<TlsFiles>> {
        let files = TlsFiles::from_parts([
            ("--tls-cert (MINIRAY_TLS_CERT)", self.tls_cert.clone()),
            ("--tls-key (MINIRAY_TLS_KEY)", self.tls_key.clone()),
            ("--tls-ca (MINIRAY_TLS_CA)", self.tls_ca.clone()),
        ])?;
        let loaded = files.as_ref().map(TlsFiles::load).transpose()?;
        tls::install(loaded)?;
        Ok(files)
    }
}

#[derive(Subcommand)]
pub enum TlsCommand {
    /// Generate a CA and a node certificate signed by it into DIR.
    Init(InitArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// Folder to write `ca.pem`, `ca.key`, `node.pem` and `node.key` into.
    dir: PathBuf,
    /// An IP address the node certificate also names (repeatable).
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// A DNS name the node certificate also names (repeatable).
    #[arg(long = "dns")]
    dns_names: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let certs = tls::generate_certs(&args.ips, &args.dns_names)?;
    let files = certs
        .write(&args.dir, args.force)
        .with_context(|| format!("writing certificates into {}", args.dir.display()))?;
    let shown = |p: &Path| p.display().to_string();
    println!(
        "Wrote a CA ({}, {}) and a node certificate ({}, {}) for DNS name {:?}.",
        shown(&files.ca),
        shown(&args.dir.join(tls::CA_KEY_FILE)),
        shown(&files.cert),
        shown(&files.key),
        tls::SERVER_NAME,
    );
    println!("Keep ca.key offline: it signs certificates the cluster trusts.");
    println!();
    println!("Start nodes with mutual TLS:");
    println!(
        "  miniray start --head --tls-cert {} --tls-key {} --tls-ca {}",
        shown(&files.cert),
        shown(&files.key),
        shown(&files.ca)
    );
    print_driver_env(&files);
    Ok(())
}

/// How drivers (and `miniray status`) get the TLS files.
pub fn print_driver_env(files: &TlsFiles) {
    println!("Drivers and `miniray status` take the TLS files from the environment:");
    println!("  export {}={}", env::TLS_CERT, files.cert.display());
    println!("  export {}={}", env::TLS_KEY, files.key.display());
    println!("  export {}={}", env::TLS_CA, files.ca.display());
}
