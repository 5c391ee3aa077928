//! The `provider` section of a Kubernetes cluster's autoscaling config:
//!
//! ```yaml
//! provider:
//!   type: kubernetes
//!   namespace: rl                  # default: default
//!   image: registry.example/miniray:0.1
//!   image_pull_policy: IfNotPresent   # optional
//!   gcs_port: 6379                 # optional
//!   redis: { address: redis://redis.infra:6379 }   # GCS fault tolerance, or:
//!   # redis: { deploy: true, image: redis:7 }      # `up` deploys one beside the head
//! ```
//!
//! Per node type, `node_config` is a Pod template merged over the default (see
//! [`crate::template`]).

use miniray_autoscaler::config::{AutoscalingConfig, ProviderConfig};
use serde::Deserialize;

use crate::names;

/// A checked provider section: the namespace and cluster name are DNS labels, the image is
/// set, and a Redis is either external (with an address) or deployed, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub namespace: String,
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub gcs_port: u16,
    pub redis: RedisConfig,
}

/// Where the GCS writes its tables through (KubeRay's GCS fault tolerance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisConfig {
    /// GCS tables in the head's memory: a new head Pod starts empty.
    None,
    /// A Redis outside the head Pod, as `redis://HOST:PORT`.
    External { address: String },
    /// `up` deploys Redis as its own Deployment and Service with this image.
    Deploy { image: String },
}

pub const DEFAULT_REDIS_IMAGE: &str = "redis:7";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubernetesConfigError {
    #[error("the provider type is not kubernetes")]
    NotKubernetes,
    #[error("`{field}`: {message}")]
    Invalid { field: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    image_pull_policy: Option<String>,
    #[serde(default)]
    gcs_port: Option<u16>,
    #[serde(default)]
    redis: Option<RedisSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    deploy: bool,
    #[serde(default)]
    image: Option<String>,
}

fn invalid(field: &str, message: impl Into<String>) -> KubernetesConfigError {
    KubernetesConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl KubernetesConfig {
    /// The Kubernetes settings of an autoscaling config, checked. The cluster name is
    /// checked too: it prefixes every object name and is a label value.
    pub fn from_autoscaling(config: &AutoscalingConfig) -> Result<Self, KubernetesConfigError> {
        let ProviderConfig::Kubernetes(section) = &config.provider else {
            return Err(KubernetesConfigError::NotKubernetes);
        };
        // Object names are `<cluster>-<type>-<5 random>` at most: keep them within 63.
        if let Some(why) = names::dns_label_error(&config.cluster_name, 40) {
            return Err(invalid("cluster_name", why));
        }
        for name in config.node_types.keys() {
            if let Some(why) = names::dns_label_error(name, 15) {
                return Err(invalid(&format!("available_node_types.{name}"), why));
            }
        }
        Self::parse(section)
    }

    /// The provider section alone.
    pub fn parse(section: &serde_json::Value) -> Result<Self, KubernetesConfigError> {
        let s: Section = serde_json::from_value(section.clone())
            .map_err(|e| invalid("provider", e.to_string()))?;
        let namespace = s.namespace.unwrap_or_else(|| "default".into());
        if let Some(why) = names::dns_label_error(&namespace, 63) {
            return Err(invalid("provider.namespace", why));
        }
        let image = s
            .image
            .filter(|i| !i.trim().is_empty())
            .ok_or_else(|| invalid("provider.image", "is required (the miniray image)"))?;
        if let Some(policy) = &s.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            return Err(invalid(
                "provider.image_pull_policy",
                format!("{policy:?} is not Always, IfNotPresent or Never"),
            ));
        }
        let gcs_port = s.gcs_port.unwrap_or(names::DEFAULT_GCS_PORT);
        if gcs_port == 0 {
            return Err(invalid("provider.gcs_port", "must not be 0"));
        }
        let redis = match s.redis {
            None => RedisConfig::None,
            Some(RedisSection {
                address: Some(_),
                deploy: true,
                ..
            }) => {
                return Err(invalid(
                    "provider.redis",
                    "give either `address` (an existing Redis) or `deploy: true`, not both",
                ));
            }
            Some(RedisSection {
                address: Some(address),
                image: None,
                ..
            }) => {
                if !address.starts_with("redis://") {
                    return Err(invalid(
                        "provider.redis.address",
                        format!("{address:?} is not redis://HOST:PORT"),
                    ));
                }
                RedisConfig::External { address }
            }
            Some(RedisSection {
                address: Some(_), ..
            }) => {
                return Err(invalid("provider.redis.image", "only for `deploy: true`"));
            }
            Some(RedisSection {
                deploy: true,
                image,
                ..
            }) => RedisConfig::Deploy {
                image: image.unwrap_or_else(|| DEFAULT_REDIS_IMAGE.into()),
            },
            Some(_) => {
                return Err(invalid(
                    "provider.redis",
                    "needs `address: redis://HOST:PORT` or `deploy: true`",
                ));
            }
        };
        Ok(KubernetesConfig {
            namespace,
            image,
            image_pull_policy: s.image_pull_policy,
            gcs_port,
            redis,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults() {
        let c = KubernetesConfig::parse(&json!({"type": "kubernetes", "image": "m:1"})).unwrap();
        assert_eq!(c.namespace, "default");
        assert_eq!(c.gcs_port, 6379);
        assert_eq!(c.redis, RedisConfig::None);
    }

    #[test]
    fn redis_external_or_deployed() {
        let c = KubernetesConfig::parse(&json!({
            "type": "kubernetes", "image": "m:1",
            "redis": {"address": "redis://r.infra:6379"},
        }))
        .unwrap();
        assert_eq!(
            c.redis,
            RedisConfig::External {
                address: "redis://r.infra:6379".into()
            }
        );
        let c = KubernetesConfig::parse(&json!({
            "type": "kubernetes", "image": "m:1", "redis": {"deploy": true},
        }))
        .unwrap();
        assert_eq!(
            c.redis,
            RedisConfig::Deploy {
                image: DEFAULT_REDIS_IMAGE.into()
            }
        );
    }

    #[test]
    fn bad_sections_name_the_field() {
        let field = |v: serde_json::Value| match KubernetesConfig::parse(&v) {
            Err(KubernetesConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(json!({"type": "kubernetes"})), "provider.image");
        assert_eq!(
            field(json!({"type": "kubernetes", "image": "m", "namespace": "Bad_NS"})),
            "provider.namespace"
        );
        assert_eq!(
            field(json!({"type": "kubernetes", "image": "m", "region": "x"})),
            "provider"
        );
        assert_eq!(
            field(json!({"type": "kubernetes", "image": "m",
                         "redis": {"address": "redis://a:1", "deploy": true}})),
            "provider.redis"
        );
        assert_eq!(
            field(json!({"type": "kubernetes", "image": "m", "redis": {"address": "a:1"}})),
            "provider.redis.address"
        );
        assert_eq!(
            field(json!({"type": "kubernetes", "image": "m", "image_pull_policy": "Sometimes"})),
            "provider.image_pull_policy"
        );
    }
}
