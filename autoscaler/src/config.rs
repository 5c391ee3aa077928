//! The autoscaling config: one YAML file. Ray's spellings are accepted
//! (`available_node_types`, `idle_timeout_minutes`, `node_config`, `head_node_type`), so a
//! Ray user's file needs only its provider section changed.

mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use miniray_common::Resources;

use yaml::{Located, Value};

/// A validated config: every invariant below holds once `parse` returns it.
///
/// Invariants: `head_node_type` names an entry of `node_types`; every type's
/// `min_workers <= max_workers`; each type's `max_workers` and the sum of all `min_workers`
/// are at most the global `max_workers`; `upscaling_speed > 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalingConfig {
    pub cluster_name: String,
    /// Worker nodes of all types together; the head is not counted.
    pub max_workers: u32,
    pub upscaling_speed: f64,
    /// `idle_timeout_s`, or `idle_timeout_minutes` × 60; a type may override it.
    pub idle_timeout: Duration,
    /// A launched node that has not joined after this long is terminated and replaced
    /// (`node_launch_timeout_s`, default 300 s).
    pub node_launch_timeout: Duration,
    pub provider: ProviderConfig,
    pub head_node_type: String,
    pub node_types: BTreeMap<String, NodeTypeConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeTypeConfig {
    pub resources: Resources,
    pub min_workers: u32,
    pub max_workers: u32,
    /// This type's own idle timeout, if it overrides the global one.
    pub idle_timeout: Option<Duration>,
    /// Provider-specific settings (a Pod template for Kubernetes), kept as given.
    pub node_config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    /// Each worker node a raylet process on this machine.
    Local,
    /// Worker nodes as Pods; the settings are the provider section as given.
    Kubernetes(serde_json::Value),
}

impl AutoscalingConfig {
    /// The idle timeout of nodes of `node_type`: its own, else the global one.
    pub fn idle_timeout_of(&self, node_type: &str) -> Duration {
        self.node_types
            .get(node_type)
            .and_then(|t| t.idle_timeout)
            .unwrap_or(self.idle_timeout)
    }
}

/// Why a config was refused. Every message names the field and the line it is on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read autoscaling config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The same refusal as from `parse`, with the file it came from.
    #[error("autoscaling config {path}: {source}")]
    File {
        path: PathBuf,
        source: Box<ConfigError>,
    },
    /// `text` is the offending line as written, which shows the field.
    #[error("line {line}: not valid YAML: {message} (in `{text}`)")]
    Parse {
        line: u64,
        message: String,
        text: String,
    },
    #[error("line {line}: unknown field `{field}`")]
    UnknownField { field: String, line: u64 },
    #[error("line {line}: `{field}` is required")]
    Missing { field: String, line: u64 },
    #[error(
        "line {line}: `{field}`: unknown provider type {kind:?} (expected local or kubernetes)"
    )]
    UnknownProvider {
        field: String,
        kind: String,
        line: u64,
    },
    #[error("line {line}: `{field}`: {reason}")]
    Invalid {
        field: String,
        line: u64,
        reason: String,
    },
}

impl ConfigError {
    /// The line the refusal points at (0 when the parser could not tell).
    pub fn line(&self) -> u64 {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::File { source, .. } => source.line(),
            ConfigError::Parse { line, .. }
            | ConfigError::UnknownField { line, .. }
            | ConfigError::Missing { line, .. }
            | ConfigError::UnknownProvider { line, .. }
            | ConfigError::Invalid { line, .. } => *line,
        }
    }
}

/// Ray's default global `max_workers`.
const DEFAULT_MAX_WORKERS: u32 = 2;
const DEFAULT_UPSCALING_SPEED: f64 = 1.0;
/// Ray's default `idle_timeout_minutes` (5).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_NODE_LAUNCH_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_CLUSTER_NAME: &str = "default";

/// Ray cluster-launcher keys that mean nothing to miniray (it runs no setup commands, no
/// containers, no file syncing): accepted with a warning, so a Ray file works as it is.
const IGNORED_TOP_LEVEL: &[&str] = &[
    "auth",
    "docker",
    "file_mounts",
    "cluster_synced_files",
    "file_mounts_sync_continuously",
    "rsync_exclude",
    "rsync_filter",
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
    "head_node",
    "worker_nodes",
    "target_utilization_fraction",
    "autoscaling_mode",
    "initial_workers",
    "min_workers",
    "no_restart",
];
/// The same within a node type.
const IGNORED_NODE_TYPE: &[&str] = &["docker", "worker_setup_commands", "labels"];
/// Ray's local-provider keys (a fixed list of machines): miniray starts processes instead.
const IGNORED_LOCAL_PROVIDER: &[&str] = &[
    "head_ip",
    "worker_ips",
    "external_head_ip",
    "coordinator_address",
    "use_internal_ips",
];

/// Reads and parses the config file at `path`; refusals name the file.
pub fn load(path: impl AsRef<Path>) -> Result<(AutoscalingConfig, Vec<String>), ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Parses and validates a config. Returns it with warnings (Ray keys that were ignored).
pub fn parse(input: &str) -> Result<(AutoscalingConfig, Vec<String>), ConfigError> {
    let doc = yaml::parse(input).map_err(|e| ConfigError::Parse {
        line: e.line,
        text: source_line(input, e.line),
        message: e.message,
    })?;
    let mut warnings = Vec::new();
    let top = Fields::of(&doc, "the config")?;

    let mut cluster_name = DEFAULT_CLUSTER_NAME.to_string();
    let mut max_workers = None;
    let mut upscaling_speed = None;
    let mut idle_s = None;
    let mut idle_min = None;
    let mut launch_timeout = None;
    let mut provider = None;
    let mut head_node_type = None;
    let mut node_types = None;

    for (key, value) in top.entries {
        let name = key.value.as_str();
        match name {
            "cluster_name" => {
                cluster_name = string(name, value)?;
                if cluster_name.is_empty() {
                    return Err(invalid(name, value.line, "must not be empty"));
                }
            }
            "max_workers" => max_workers = Some(count(name, value)?),
            "upscaling_speed" => {
                let speed = number(name, value)?;
                if speed <= 0.0 {
                    return Err(invalid(
                        name,
                        value.line,
                        format!("must be above 0, got {speed}"),
                    ));
                }
                upscaling_speed = Some(speed);
            }
            "idle_timeout_s" => idle_s = Some((seconds(name, value, 1.0)?, key.line)),
            "idle_timeout_minutes" => idle_min = Some((seconds(name, value, 60.0)?, key.line)),
            "node_launch_timeout_s" => {
                let timeout = seconds(name, value, 1.0)?;
                if timeout.is_zero() {
                    return Err(invalid(name, value.line, "must be above 0"));
                }
                launch_timeout = Some(timeout);
            }
            "provider" => provider = Some(parse_provider(value, &mut warnings)?),
            "head_node_type" => head_node_type = Some((string(name, value)?, value.line)),
            "available_node_types" => node_types = Some((value, key.line)),
            _ if IGNORED_TOP_LEVEL.contains(&name) => warnings.push(ignored(name, key.line)),
            _ => return Err(unknown(name, key.line)),
        }
    }

    let max_workers = max_workers.unwrap_or(DEFAULT_MAX_WORKERS);
    let idle_timeout = one_timeout("", idle_s, idle_min)?.unwrap_or(DEFAULT_IDLE_TIMEOUT);
    let provider = provider.ok_or_else(|| missing("provider", top.line))?;
    let (head_node_type, head_line) =
        head_node_type.ok_or_else(|| missing("head_node_type", top.line))?;
    let (types_value, types_line) =
        node_types.ok_or_else(|| missing("available_node_types", top.line))?;
    // Checked first: which type is the head decides what the others must have.
    if Fields::of(types_value, "available_node_types")?
        .get(&head_node_type)
        .is_none()
    {
        return Err(invalid(
            "head_node_type",
            head_line,
            format!("{head_node_type:?} is not declared in available_node_types"),
        ));
    }
    let node_types = parse_node_types(types_value, &head_node_type, max_workers, &mut warnings)?;
    let min_sum: u64 = node_types.values().map(|t| u64::from(t.min_workers)).sum();
    if min_sum > u64::from(max_workers) {
        return Err(invalid(
            "available_node_types",
            types_line,
            format!(
                "the min_workers of all types add up to {min_sum}, above max_workers {max_workers}"
            ),
        ));
    }

    let config = AutoscalingConfig {
        cluster_name,
        max_workers,
        upscaling_speed: upscaling_speed.unwrap_or(DEFAULT_UPSCALING_SPEED),
        idle_timeout,
        node_launch_timeout: launch_timeout.unwrap_or(DEFAULT_NODE_LAUNCH_TIMEOUT),
        provider,
        head_node_type,
        node_types,
    };
    Ok((config, warnings))
}

fn parse_provider(
    value: &Located<Value>,
    warnings: &mut Vec<String>,
) -> Result<ProviderConfig, ConfigError> {
    let fields = Fields::of(value, "provider")?;
    let kind = fields
        .get("type")
        .ok_or_else(|| missing("provider.type", value.line))?;
    let kind_name = string("provider.type", kind)?;
    match kind_name.as_str() {
        "local" => {
            for (key, _) in fields.entries {
                let name = key.value.as_str();
                if name == "type" {
                    continue;
                }
                if IGNORED_LOCAL_PROVIDER.contains(&name) {
                    warnings.push(ignored(&format!("provider.{name}"), key.line));
                } else {
                    return Err(unknown(&format!("provider.{name}"), key.line));
                }
            }
            Ok(ProviderConfig::Local)
        }
        // The Kubernetes provider checks its own section when it is built.
        "kubernetes" => Ok(ProviderConfig::Kubernetes(value.value.to_json())),
        _ => Err(ConfigError::UnknownProvider {
            field: "provider.type".into(),
            kind: kind_name,
            line: kind.line,
        }),
    }
}

fn parse_node_types(
    value: &Located<Value>,
    head_node_type: &str,
    global_max: u32,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, NodeTypeConfig>, ConfigError> {
    let fields = Fields::of(value, "available_node_types")?;
    let mut types = BTreeMap::new();
    for (name, body) in fields.entries {
        let path = format!("available_node_types.{}", name.value);
        if name.value.is_empty() {
            return Err(invalid(&path, name.line, "a node type needs a name"));
        }
        let is_head = name.value == head_node_type;
        let t = parse_node_type(&path, name.line, body, is_head, global_max, warnings)?;
        types.insert(name.value.clone(), t);
    }
    Ok(types)
}

fn parse_node_type(
    path: &str,
    name_line: u64,
    body: &Located<Value>,
    is_head: bool,
    global_max: u32,
    warnings: &mut Vec<String>,
) -> Result<NodeTypeConfig, ConfigError> {
    let fields = Fields::of(body, path)?;
    let mut resources = None;
    let mut min_workers = None;
    let mut max_workers = None;
    let mut node_config = serde_json::Value::Object(serde_json::Map::new());
    let mut idle_s = None;
    let mut idle_min = None;
    for (key, value) in fields.entries {
        let field = format!("{path}.{}", key.value);
        match key.value.as_str() {
            "resources" => resources = Some(parse_resources(&field, value)?),
            "min_workers" => min_workers = Some((count(&field, value)?, value.line)),
            "max_workers" => max_workers = Some((count(&field, value)?, value.line)),
            "node_config" => node_config = value.value.to_json(),
            "idle_timeout_s" => idle_s = Some((seconds(&field, value, 1.0)?, key.line)),
            "idle_timeout_minutes" => idle_min = Some((seconds(&field, value, 60.0)?, key.line)),
            other if IGNORED_NODE_TYPE.contains(&other) => warnings.push(ignored(&field, key.line)),
            _ => return Err(unknown(&field, key.line)),
        }
    }
    let resources = resources.unwrap_or_default();
    if !is_head && resources.is_empty() {
        return Err(invalid(
            &format!("{path}.resources"),
            name_line,
            "a worker node type needs resources (at least one amount above 0)",
        ));
    }
    // The head type launches no workers unless it says so (Ray's default since 1.3).
    let default_max = if is_head { 0 } else { global_max };
    let (max, max_line) = max_workers.unwrap_or((default_max, name_line));
    let (min, min_line) = min_workers.unwrap_or((0, name_line));
    if max > global_max {
        return Err(invalid(
            &format!("{path}.max_workers"),
            max_line,
            format!("{max} is above the global max_workers {global_max}"),
        ));
    }
    if min > max {
        return Err(invalid(
            &format!("{path}.min_workers"),
            min_line,
            format!("{min} is above this type's max_workers {max}"),
        ));
    }
    Ok(NodeTypeConfig {
        resources,
        min_workers: min,
        max_workers: max,
        idle_timeout: one_timeout(&format!("{path}."), idle_s, idle_min)?,
        node_config,
    })
}

fn parse_resources(field: &str, value: &Located<Value>) -> Result<Resources, ConfigError> {
    let mut resources = Resources::new();
    if matches!(value.value, Value::Null) {
        return Ok(resources);
    }
    let fields = Fields::of(value, field)?;
    for (name, amount) in fields.entries {
        let path = format!("{field}.{}", name.value);
        let a = number(&path, amount)?;
        resources
            .set(name.value.clone(), a)
            .map_err(|e| invalid(&path, name.line, e.to_string()))?;
    }
    Ok(resources)
}

/// At most one of `idle_timeout_s` and `idle_timeout_minutes`.
fn one_timeout(
    prefix: &str,
    seconds: Option<(Duration, u64)>,
    minutes: Option<(Duration, u64)>,
) -> Result<Option<Duration>, ConfigError> {
    match (seconds, minutes) {
        (Some(_), Some((_, line))) => Err(invalid(
            &format!("{prefix}idle_timeout_minutes"),
            line,
            format!("give {prefix}idle_timeout_s or {prefix}idle_timeout_minutes, not both"),
        )),
        (Some((d, _)), None) | (None, Some((d, _))) => Ok(Some(d)),
        (None, None) => Ok(None),
    }
}

/// A mapping's entries with the line the mapping is on.
struct Fields<'a> {
    entries: &'a [(Located<String>, Located<Value>)],
    line: u64,
}

impl<'a> Fields<'a> {
    fn of(value: &'a Located<Value>, what: &str) -> Result<Self, ConfigError> {
        match &value.value {
            Value::Map(entries) => Ok(Fields {
                entries,
                line: value.line,
            }),
            other => Err(invalid(
                what,
                value.line,
                format!("expected a mapping, found {}", other.kind()),
            )),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Located<Value>> {
        self.entries
            .iter()
            .find(|(k, _)| k.value == key)
            .map(|(_, v)| v)
    }
}

fn string(field: &str, value: &Located<Value>) -> Result<String, ConfigError> {
    match &value.value {
        Value::Str(s) => Ok(s.clone()),
        other => Err(invalid(
            field,
            value.line,
            format!("expected a string, found {}", other.kind()),
        )),
    }
}

fn number(field: &str, value: &Located<Value>) -> Result<f64, ConfigError> {
    match value.value {
        Value::Int(i) => Ok(i as f64),
        Value::Float(f) if f.is_finite() => Ok(f),
        Value::Float(f) => Err(invalid(
            field,
            value.line,
            format!("{f} is not a finite number"),
        )),
        ref other => Err(invalid(
            field,
            value.line,
            format!("expected a number, found {}", other.kind()),
        )),
    }
}

/// A number of nodes: a whole number from 0 up.
fn count(field: &str, value: &Located<Value>) -> Result<u32, ConfigError> {
    match value.value {
        Value::Int(i) => u32::try_from(i).map_err(|_| {
            invalid(
                field,
                value.line,
                format!("expected a count of nodes (0 or more), got {i}"),
            )
        }),
        ref other => Err(invalid(
            field,
            value.line,
            format!("expected a whole number, found {}", other.kind()),
        )),
    }
}

/// A non-negative duration given in units of `unit` seconds.
fn seconds(field: &str, value: &Located<Value>, unit: f64) -> Result<Duration, ConfigError> {
    let n = number(field, value)?;
    Duration::try_from_secs_f64(n * unit).map_err(|_| {
        invalid(
            field,
            value.line,
            format!("expected a duration of 0 or more, got {n}"),
        )
    })
}

/// Line `line` (1-based) of `input`, trimmed; empty when out of range.
fn source_line(input: &str, line: u64) -> String {
    usize::try_from(line)
        .ok()
        .and_then(|l| l.checked_sub(1))
        .and_then(|i| input.lines().nth(i))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn invalid(field: &str, line: u64, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        line,
        reason: reason.into(),
    }
}

fn unknown(field: &str, line: u64) -> ConfigError {
    ConfigError::UnknownField {
        field: field.to_string(),
        line,
    }
}

fn missing(field: &str, line: u64) -> ConfigError {
    ConfigError::Missing {
        field: field.to_string(),
        line,
    }
}

fn ignored(field: &str, line: u64) -> String {
    format!("ignored: `{field}` (line {line}) means nothing to miniray")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's example, as a user writes it.
    const EXAMPLE: &str = "\
cluster_name: demo
max_workers: 8              # worker nodes of all types together; the head is not counted
upscaling_speed: 1.0
idle_timeout_s: 60          # or idle_timeout_minutes; a type may override it
provider: { type: local }   # or kubernetes (its own issue)
head_node_type: head
available_node_types:
  head: { resources: { CPU: 0 } }
  cpu:  { resources: { CPU: 2 }, min_workers: 0, max_workers: 6 }
  gpu:  { resources: { CPU: 4, GPU: 1 }, min_workers: 0, max_workers: 2, idle_timeout_s: 300 }
";

    fn refused(yaml: &str) -> ConfigError {
        match parse(yaml) {
            Ok((config, _)) => panic!("accepted: {config:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the refusal's message names `field` and `line N`.
    fn assert_names(err: &ConfigError, field: &str, line: u64) {
        let msg = err.to_string();
        assert!(msg.contains(field), "{msg:?} does not name {field:?}");
        assert!(
            msg.contains(&format!("line {line}:")),
            "{msg:?} does not name line {line}"
        );
        assert_eq!(err.line(), line, "{msg}");
    }

    fn example_with(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "{from:?} not in the example");
        EXAMPLE.replacen(from, to, 1)
    }

    #[test]
    fn the_issue_example_parses() {
        let (c, warnings) = parse(EXAMPLE).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.cluster_name, "demo");
        assert_eq!(c.max_workers, 8);
        assert_eq!(c.upscaling_speed, 1.0);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.node_launch_timeout, Duration::from_secs(300));
        assert_eq!(c.provider, ProviderConfig::Local);
        assert_eq!(c.head_node_type, "head");
        assert_eq!(c.node_types.len(), 3);
        let head = &c.node_types["head"];
        assert!(head.resources.is_empty());
        assert_eq!((head.min_workers, head.max_workers), (0, 0));
        let cpu = &c.node_types["cpu"];
        assert_eq!(
            cpu.resources,
            Resources::from_pairs([("CPU", 2.0)]).unwrap()
        );
        assert_eq!((cpu.min_workers, cpu.max_workers), (0, 6));
        assert_eq!(cpu.idle_timeout, None);
        assert_eq!(c.idle_timeout_of("cpu"), Duration::from_secs(60));
        let gpu = &c.node_types["gpu"];
        assert_eq!(gpu.resources.get("GPU"), 1.0);
        assert_eq!(gpu.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.idle_timeout_of("gpu"), Duration::from_secs(300));
    }

    #[test]
    fn a_ray_cluster_file_needs_only_its_provider_changed() {
        let yaml = "\
cluster_name: ray-user
max_workers: 4
upscaling_speed: 2
idle_timeout_minutes: 2
provider:
    type: local
    head_ip: 10.0.0.1
auth:
    ssh_user: ubuntu
docker:
    image: rayproject/ray:latest
    container_name: ray_container
file_mounts: {}
cluster_synced_files: []
file_mounts_sync_continuously: false
rsync_exclude: []
rsync_filter: []
initialization_commands: []
setup_commands:
    - pip install numpy
head_setup_commands: []
worker_setup_commands: []
head_start_ray_commands:
    - ray stop
worker_start_ray_commands:
    - ray stop
head_node_type: ray.head.default
available_node_types:
    ray.head.default:
        resources: {}
        node_config:
            InstanceType: m5.large
    ray.worker.default:
        min_workers: 1
        resources: {\"CPU\": 2, \"memory\": 4000000000}
        node_config:
            InstanceType: m5.large
        docker:
            worker_image: rayproject/ray-ml:latest
";
        let (c, warnings) = parse(yaml).unwrap();
        assert_eq!(c.max_workers, 4);
        assert_eq!(c.upscaling_speed, 2.0);
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        let worker = &c.node_types["ray.worker.default"];
        assert_eq!((worker.min_workers, worker.max_workers), (1, 4));
        assert_eq!(worker.resources.get("memory"), 4e9);
        assert_eq!(worker.node_config["InstanceType"], "m5.large");
        assert_eq!(c.node_types["ray.head.default"].max_workers, 0);
        for key in [
            "provider.head_ip",
            "auth",
            "docker",
            "setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
            "rsync_filter",
            "available_node_types.ray.worker.default.docker",
        ] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("ignored: `{key}`"))),
                "no warning for {key}: {warnings:?}"
            );
        }
        assert!(
            warnings.iter().any(|w| w.contains("`auth` (line 8)")),
            "{warnings:?}"
        );
    }

    #[test]
    fn defaults_are_rays() {
        let (c, _) = parse(
            "provider: {type: local}\nhead_node_type: h\navailable_node_types:\n  h: {}\n  w: {resources: {CPU: 1}}\n",
        )
        .unwrap();
        assert_eq!(c.cluster_name, "default");
        assert_eq!(c.max_workers, 2);
        assert_eq!(c.upscaling_speed, 1.0);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.node_launch_timeout, Duration::from_secs(300));
        assert_eq!(
            (c.node_types["w"].min_workers, c.node_types["w"].max_workers),
            (0, 2)
        );
    }

    #[test]
    fn kubernetes_provider_section_is_kept_as_given() {
        let (c, _) = parse(&example_with(
            "provider: { type: local }",
            "provider: { type: kubernetes, namespace: rl }",
        ))
        .unwrap();
        let ProviderConfig::Kubernetes(section) = c.provider else {
            panic!("not kubernetes: {:?}", c.provider)
        };
        assert_eq!(section["namespace"], "rl");
    }

    #[test]
    fn refuses_yaml_that_does_not_parse() {
        let err = refused(&example_with("max_workers: 8", "max_workers: [8"));
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.line() >= 2, "{err}");
    }

    #[test]
    fn refuses_an_unknown_provider_type() {
        let err = refused(&example_with("type: local", "type: aws"));
        assert!(matches!(err, ConfigError::UnknownProvider { .. }), "{err}");
        assert_names(&err, "provider.type", 5);
        assert!(err.to_string().contains("\"aws\""), "{err}");
    }

    #[test]
    fn refuses_an_unknown_field() {
        let err = refused(&example_with("upscaling_speed: 1.0", "upscaling_sped: 1.0"));
        assert!(matches!(err, ConfigError::UnknownField { .. }), "{err}");
        assert_names(&err, "upscaling_sped", 3);
        let err = refused(&example_with(
            "min_workers: 0, max_workers: 6",
            "min_worker: 0, max_workers: 6",
        ));
        assert_names(&err, "available_node_types.cpu.min_worker", 9);
        let err = refused(&example_with("type: local", "type: local, region: x"));
        assert_names(&err, "provider.region", 5);
    }

    #[test]
    fn refuses_min_workers_above_max_workers() {
        let err = refused(&example_with(
            "min_workers: 0, max_workers: 6",
            "min_workers: 3, max_workers: 2",
        ));
        assert_names(&err, "available_node_types.cpu.min_workers", 9);
    }

    #[test]
    fn refuses_a_type_max_above_the_global_max() {
        let err = refused(&example_with("max_workers: 6", "max_workers: 9"));
        assert_names(&err, "available_node_types.cpu.max_workers", 9);
        assert!(err.to_string().contains("global max_workers 8"), "{err}");
    }

    #[test]
    fn refuses_min_workers_adding_up_above_the_global_max() {
        let yaml = example_with(
            "min_workers: 0, max_workers: 6",
            "min_workers: 6, max_workers: 6",
        )
        .replacen(
            "min_workers: 0, max_workers: 2",
            "min_workers: 2, max_workers: 2",
            1,
        )
        .replacen("max_workers: 8 ", "max_workers: 7 ", 1);
        let err = refused(&yaml);
        assert_names(&err, "available_node_types", 7);
        assert!(err.to_string().contains("add up to 8"), "{err}");
    }

    #[test]
    fn refuses_a_head_node_type_not_declared() {
        let err = refused(&example_with(
            "head_node_type: head",
            "head_node_type: boss",
        ));
        assert_names(&err, "head_node_type", 6);
        assert!(err.to_string().contains("\"boss\""), "{err}");
        let err = refused(&example_with("head_node_type: head\n", ""));
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("head_node_type"), "{err}");
    }

    #[test]
    fn refuses_bad_resource_amounts() {
        let err = refused(&example_with("{ CPU: 2 }", "{ CPU: -2 }"));
        assert_names(&err, "available_node_types.cpu.resources.CPU", 9);
        // The parser itself refuses a NaN; the message shows the line as written.
        let err = refused(&example_with("{ CPU: 2 }", "{ CPU: .nan }"));
        assert_names(&err, "CPU: .nan", 9);
        let err = refused(&example_with("{ CPU: 2 }", "{ CPU: 2, \"\": 1 }"));
        assert_names(&err, "available_node_types.cpu.resources", 9);
        assert!(err.to_string().contains("empty"), "{err}");
        let err = refused(&example_with("{ CPU: 2 }", "{ CPU: two }"));
        assert_names(&err, "available_node_types.cpu.resources.CPU", 9);
    }

    #[test]
    fn refuses_upscaling_speed_of_zero_or_less() {
        for speed in ["0", "-1", "0.0"] {
            let err = refused(&example_with(
                "upscaling_speed: 1.0",
                &format!("upscaling_speed: {speed}"),
            ));
            assert_names(&err, "upscaling_speed", 3);
        }
    }

    #[test]
    fn refuses_a_worker_type_with_no_resources() {
        let err = refused(&example_with("{ resources: { CPU: 2 }, ", "{ "));
        assert_names(&err, "available_node_types.cpu.resources", 9);
        let err = refused(&example_with("{ CPU: 2 }", "{ CPU: 0 }"));
        assert_names(&err, "available_node_types.cpu.resources", 9);
    }

    #[test]
    fn refuses_both_idle_timeout_spellings() {
        let err = refused(&example_with(
            "idle_timeout_s: 60 ",
            "idle_timeout_s: 60\nidle_timeout_minutes: 1",
        ));
        assert_names(&err, "idle_timeout_minutes", 5);
        let err = refused(&example_with(
            "idle_timeout_s: 300",
            "idle_timeout_s: 300, idle_timeout_minutes: 5",
        ));
        assert_names(&err, "available_node_types.gpu.idle_timeout_minutes", 10);
    }

    #[test]
    fn refuses_negative_counts_and_wrong_types() {
        let err = refused(&example_with("max_workers: 8", "max_workers: -1"));
        assert_names(&err, "max_workers", 2);
        let err = refused(&example_with("max_workers: 8", "max_workers: 2.5"));
        assert_names(&err, "max_workers", 2);
        let err = refused(&example_with("cluster_name: demo", "cluster_name: [a]"));
        assert_names(&err, "cluster_name", 1);
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("miniray-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.yaml");
        std::fs::write(&path, example_with("type: local", "type: gce")).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("cluster.yaml"), "{err}");
        assert_eq!(err.line(), 5);
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap().0.cluster_name, "demo");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = load(dir.join("absent.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
