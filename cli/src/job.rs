//! `miniray job`: submit a driver to a cluster's head and follow it, over the head's HTTP
//! API (`miniray-dashboard`). The driver executable is uploaded once per content (its
//! blake3 hash names it on the head) and runs there as a driver of the cluster.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use miniray_common::tls;
use serde_json::{Value, json};

/// The dashboard of a head started on this machine with the defaults.
const DEFAULT_AUTHORITY: &str = "127.0.0.1:8265";

#[derive(Args)]
pub struct ApiArgs {
    /// The head's dashboard, `http://HOST:PORT`, or `https://HOST:PORT` when the cluster
    /// uses TLS (then `MINIRAY_TLS_CERT`, `_KEY` and `_CA` name this machine's files).
    /// Default: the port 8265 of this machine, https when `MINIRAY_TLS_*` are set.
    #[arg(long, env = "MINIRAY_DASHBOARD_ADDRESS")]
    address: Option<String>,
    /// Cluster token (default: `MINIRAY_TOKEN`, else the one `start --head` recorded on
    /// this machine for that address).
    #[arg(long, env = "MINIRAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Upload a driver executable, run it on the head, and stream its output until it ends
    /// (exiting with its status).
    Submit {
        #[command(flatten)]
        api: ApiArgs,
        /// The job's id (default: generated). Must be new.
        #[arg(long)]
        submission_id: Option<String>,
        /// Print the job's id and return instead of following it.
        #[arg(long)]
        no_wait: bool,
        /// The driver executable and its arguments, after `--`.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// List the cluster's jobs.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one job's status.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Print a job's output (`--follow`: until it ends).
    Logs {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a running job (SIGTERM to its driver, SIGKILL after a grace period).
    Stop {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Delete a finished job's record and output.
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
}

pub fn run(command: JobCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let code = runtime.block_on(run_async(command))?;
    if code != 0 {
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

async fn run_async(command: JobCommand) -> anyhow::Result<i32> {
    match command {
        JobCommand::Submit {
            api,
            submission_id,
            no_wait,
            command,
        } => {
            let api = Api::new(&api)?;
            let id = submit(&api, submission_id, &command).await?;
            if no_wait {
                println!("{id}");
                return Ok(0);
            }
            eprintln!("Job {id:?} submitted; its output follows.");
            follow(&api, &id).await?;
            let record = api.call("GET", &format!("/api/jobs/{id}"), None).await?;
            eprintln!(
                "Job {id:?} {}: {}",
                record["status"].as_str().unwrap_or("?"),
                record["message"].as_str().unwrap_or_default()
            );
            Ok(exit_code(&record))
        }
        JobCommand::List { api } => {
            let api = Api::new(&api)?;
            let jobs = api.call("GET", "/api/jobs/", None).await?;
            println!(
                "{:<24} {:<10} {:<16} ENTRYPOINT",
                "SUBMISSION ID", "STATUS", "STARTED (ms)"
            );
            for job in jobs.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<10} {:<16} {}",
                    job["submission_id"].as_str().unwrap_or_default(),
                    job["status"].as_str().unwrap_or_default(),
                    job["start_time"].as_u64().unwrap_or(0),
                    job["entrypoint"].as_str().unwrap_or_default()
                );
            }
            Ok(0)
        }
        JobCommand::Status { api, id } => {
            let api = Api::new(&api)?;
            let job = api.call("GET", &format!("/api/jobs/{id}"), None).await?;
            println!(
                "{}: {}",
                job["status"].as_str().unwrap_or_default(),
                job["message"].as_str().unwrap_or_default()
            );
            Ok(0)
        }
        JobCommand::Logs { api, id, follow: f } => {
            let api = Api::new(&api)?;
            if f {
                follow(&api, &id).await?;
            } else {
                let logs = api
                    .call("GET", &format!("/api/jobs/{id}/logs"), None)
                    .await?;
                print!("{}", logs["logs"].as_str().unwrap_or_default());
            }
            Ok(0)
        }
        JobCommand::Stop { api, id } => {
            let api = Api::new(&api)?;
            let reply = api
                .call("POST", &format!("/api/jobs/{id}/stop"), Some(json!({})))
                .await?;
            if reply["stopped"].as_bool() == Some(true) {
                println!("Stopping job {id:?}.");
            } else {
                println!("Job {id:?} had already ended.");
            }
            Ok(0)
        }
        JobCommand::Delete { api, id } => {
            let api = Api::new(&api)?;
            let reply = api.call("DELETE", &format!("/api/jobs/{id}"), None).await?;
            if reply["deleted"].as_bool() == Some(true) {
                println!("Deleted job {id:?}.");
                Ok(0)
            } else {
                bail!("no job {id:?}")
            }
        }
    }
}

/// The command's exit status for a finished job: its driver's, else 1 unless it succeeded.
fn exit_code(record: &Value) -> i32 {
    match (
        record["status"].as_str(),
        record["driver_exit_code"].as_i64(),
    ) {
        (Some("SUCCEEDED"), _) => 0,
        (_, Some(code)) if code != 0 => i32::try_from(code).unwrap_or(1),
        _ => 1,
    }
}

/// Checks, uploads (unless the head has it) and submits; returns the job's id.
async fn submit(api: &Api, id: Option<String>, command: &[String]) -> anyhow::Result<String> {
    let (program, args) = command
        .split_first()
        .context("give the driver executable after `--`")?;
    let path = PathBuf::from(program);
    let bytes = read_executable(&path)?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let (status, _) = api
        .request("GET", &format!("/api/executables/{hash}"), None, None)
        .await?;
    if status == 404 {
        eprintln!("Uploading {} ({} bytes)…", path.display(), bytes.len());
        let (status, body) = api
            .request(
                "PUT",
                &format!("/api/executables/{hash}"),
                Some(bytes),
                Some("application/octet-stream"),
            )
            .await?;
        check(status, &body)?;
    } else if !(200..300).contains(&status) {
        let (status, body) = api
            .request("GET", &format!("/api/executables/{hash}"), None, None)
            .await?;
        check(status, &body)?;
    }
    let entrypoint = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.clone());
    let reply = api
        .call(
            "POST",
            "/api/jobs/",
            Some(json!({
                "submission_id": id,
                "executable": hash,
                "args": args,
                "entrypoint": entrypoint,
            })),
        )
        .await?;
    reply["submission_id"]
        .as_str()
        .map(String::from)
        .context("the head did not say the job's id")
}

/// The bytes of `path`, which must be an executable file.
fn read_executable(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Streams the job's output to stdout until the job has ended.
async fn follow(api: &Api, id: &str) -> anyhow::Result<()> {
    let response = api
        .send("GET", &format!("/api/jobs/{id}/logs/tail"), None, None)
        .await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if !(200..300).contains(&status) {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        check(status, &bytes)?;
        return Ok(());
    }
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the job's output")?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// An error reply as an error, with the head's words.
fn check(status: u16, body: &[u8]) -> anyhow::Result<()> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    bail!("the head refused ({status}): {message}")
}

/// The head's HTTP API.
struct Api {
    base: String,
    token: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Api {
    fn new(args: &ApiArgs) -> anyhow::Result<Api> {
        tls::install_from_env().context("MINIRAY_TLS_*")?;
        let address = args.address.clone().unwrap_or_else(|| {
            let scheme = if tls::current().is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{DEFAULT_AUTHORITY}")
        });
        let base = address.trim_end_matches('/').to_string();
        let usage = || format!("--address {address:?}: give http://HOST:PORT or https://HOST:PORT");
        let (https, authority) = match (base.strip_prefix("https://"), base.strip_prefix("http://"))
        {
            (Some(authority), _) => (true, authority),
            (None, Some(authority)) => (false, authority),
            (None, None) => bail!(usage()),
        };
        if authority.is_empty() || authority.contains('/') {
            bail!(usage());
        }
        let token = args
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| {
                std::fs::read_to_string(miniray_common::config::dashboard_token_file(authority))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            })
            .with_context(|| {
                format!("no token for {authority}: pass --token or set MINIRAY_TOKEN")
            })?;
        let tls_config = match tls::current() {
            Some(material) => material.https_client_config().context("MINIRAY_TLS_*")?,
            None if https => bail!(
                "{address} uses TLS: set MINIRAY_TLS_CERT, MINIRAY_TLS_KEY and MINIRAY_TLS_CA \
                 to the cluster's certificate files"
            ),
            // Never used: plain http.
            None => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .context("TLS defaults")?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Node certificates name `miniray`, not the address dialed (see `common::tls`).
        let server_name = tls::server_name();
        let connector = HttpsConnector::new(
            http,
            tls_config,
            https,
            std::sync::Arc::new(FixedServerNameResolver::new(server_name)),
        );
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Api {
            base,
            token,
            client,
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        if let Some(ct) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, ct);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        self.client.request(request).await.with_context(|| {
            if self.base.starts_with("http://") && tls::current().is_some() {
                format!(
                    "reaching the head at {} (a cluster that uses TLS serves https://)",
                    self.base
                )
            } else {
                format!("reaching the head at {}", self.base)
            }
        })
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let response = self.send(method, path, body, content_type).await?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the head's reply")?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A JSON request; the JSON reply, or the head's error as an error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string().into_bytes());
        let content_type = body.as_ref().map(|_| "application/json");
        let (status, bytes) = self.request(method, path, body, content_type).await?;
        check(status, &bytes)?;
        serde_json::from_slice(&bytes).context("the head's reply is not JSON")
    }
}
