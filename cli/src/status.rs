//! `miniray status`: asks the GCS for the cluster's status and prints it (`render`).

mod render;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use miniray_common::auth::AuthedChannel;
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
    recorded_clusters(&config::tmp_root().join("clusters"))
}

/// The one head recorded in `dir` (see `start::record_head`).
fn recorded_clusters(dir: &std::path::Path) -> anyhow::Result<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".token") else {
                continue;
            };
            // The address as recorded beside the token; else read back from the file's name
            // (a head recorded before addresses were, with an IP address).
            let recorded = std::fs::read_to_string(dir.join(format!("{stem}.address")))
                .ok()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty());
            if let Some(address) = recorded {
                found.push(address);
            } else if let Some((host, port)) = stem.rsplit_once('_') {
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

/// Resolves the GCS address (given, else the one cluster recorded here), connects with
/// its token and the process's TLS setting, and runs `call` on a runtime of its own.
pub(crate) fn with_gcs<T>(
    given: Option<String>,
    call: impl AsyncFnOnce(GcsClient<AuthedChannel>) -> anyhow::Result<T>,
) -> anyhow::Result<(String, T)> {
    let address = resolve_address(given)?;
    miniray_common::tls::install_from_env()?;
    let token = config::find_token(&address)
        .with_context(|| format!("no token for {address}: set MINIRAY_TOKEN"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let channel = miniray_common::auth::connect(&address, &token).await?;
        let gcs = GcsClient::new(channel).max_decoding_message_size(config::MAX_MESSAGE_SIZE);
        call(gcs).await
    })?;
    Ok((address, out))
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (address, reply) = with_gcs(args.address, async |mut gcs| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_address_is_read_back_as_written() {
        let dir = std::env::temp_dir().join(format!(
            "miniray-status-test-{}-{}",
            std::process::id(),
            miniray_common::NodeId::random().hex()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        // A DNS name with `-`: its token file's name alone would read back as dots.
        let name = "demo_head_default_svc_cluster_local_6379";
        std::fs::write(dir.join(format!("{name}.token")), "t").expect("token");
        std::fs::write(
            dir.join(format!("{name}.address")),
            "demo-head.default.svc.cluster.local:6379",
        )
        .expect("address");
        let found = recorded_clusters(&dir);
        // An older record without its address file: read from the name.
        std::fs::write(dir.join("127_0_0_1_6379.token"), "t").expect("token");
        let both = recorded_clusters(&dir);
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(
            found.expect("one cluster"),
            "demo-head.default.svc.cluster.local:6379"
        );
        let e = both.expect_err("two clusters").to_string();
        assert!(
            e.contains("demo-head.default.svc.cluster.local:6379") && e.contains("127.0.0.1:6379"),
            "{e}"
        );
    }
}
