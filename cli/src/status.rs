//! `miniray status`: asks the GCS for the cluster's status and prints it (`render`).

mod render;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use miniray_common::config;
use miniray_proto::GetClusterStatusRequest;
use miniray_proto::gcs_client::GcsClient;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args)]
pub struct StatusArgs {
    /// `HOST:PORT` of the GCS (default: `MINIRAY_ADDRESS`, else the one cluster started on
    /// this machine).
    #[arg(long, env = "MINIRAY_ADDRESS")]
    address: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// The GCS address: given, else the only cluster whose token file is on this machine.
fn resolve_address(given: Option<String>) -> anyhow::Result<String> {
    if let Some(a) = given.filter(|a| !a.is_empty()) {
        return Ok(a);
    }
    let dir = config::tmp_root().join("clusters");
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".token")
                && let Some((host, port)) = stem.rsplit_once('_')
            {
                found.push(format!("{}:{port}", host.replace('_', ".")));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no cluster found on this machine: pass --address or set MINIRAY_ADDRESS"),
        _ => bail!(
            "several clusters run on this machine ({}): pass --address",
            found.join(", ")
        ),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let address = resolve_address(args.address)?;
    miniray_common::tls::install_from_env()?;
    let token = config::find_token(&address)
        .with_context(|| format!("no token for {address}: set MINIRAY_TOKEN"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt.block_on(async {
        let channel = miniray_common::auth::connect(&address, &token).await?;
        let mut gcs = GcsClient::new(channel);
        let reply = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            gcs.get_cluster_status(GetClusterStatusRequest {}),
        )
        .await
        .context("the GCS did not answer within 10 s")??;
        anyhow::Ok(reply.into_inner())
    })?;

    let view = render::build(&reply, &address, miniray_common::time::now_ms());
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Format::Table => print!("{}", render::table(&view)),
    }
    Ok(())
}
