//! The Secrets and ConfigMaps a Pod references (from env, envFrom and volumes), read
//! through the API before its containers start.
//!
//! Invariant: [`Sources`] holds an entry for every name [`Refs::of`] found, `None` when the
//! object does not exist, so resolution can tell "missing" from "not asked for".

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;

/// The keys and values of one Secret or ConfigMap (`binaryData` and `data` together).
pub type Data = BTreeMap<String, Vec<u8>>;

/// The names of the Secrets and ConfigMaps a Pod references.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refs {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
}

impl Refs {
    /// Every Secret and ConfigMap the Pod's containers and volumes name.
    pub fn of(pod: &Pod) -> Refs {
        let mut refs = Refs::default();
        let Some(spec) = &pod.spec else {
            return refs;
        };
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for var in c.env.iter().flatten() {
                let Some(from) = &var.value_from else {
                    continue;
                };
                if let Some(s) = &from.secret_key_ref {
                    refs.secrets.insert(s.name.clone());
                }
                if let Some(m) = &from.config_map_key_ref {
                    refs.config_maps.insert(m.name.clone());
                }
            }
            for from in c.env_from.iter().flatten() {
                if let Some(s) = &from.secret_ref {
                    refs.secrets.insert(s.name.clone());
                }
                if let Some(m) = &from.config_map_ref {
                    refs.config_maps.insert(m.name.clone());
                }
            }
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
                refs.secrets.insert(s);
            }
            if let Some(m) = &v.config_map {
                refs.config_maps.insert(m.name.clone());
            }
        }
        refs
    }
}

/// The data of the referenced objects; `None` for one that does not exist.
#[derive(Debug, Default)]
pub struct Sources {
    pub secrets: BTreeMap<String, Option<Data>>,
    pub config_maps: BTreeMap<String, Option<Data>>,
}

impl Sources {
    /// Reads every object of `refs` in `namespace`.
    pub async fn fetch(
        client: &kube::Client,
        namespace: &str,
        refs: &Refs,
    ) -> Result<Sources, kube::Error> {
        let mut sources = Sources::default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in &refs.secrets {
            let data = secrets.get_opt(name).await?.map(secret_data);
            sources.secrets.insert(name.clone(), data);
        }
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in &refs.config_maps {
            let data = maps.get_opt(name).await?.map(config_map_data);
            sources.config_maps.insert(name.clone(), data);
        }
        Ok(sources)
    }

    pub fn secret(&self, name: &str) -> Option<&Data> {
        self.secrets.get(name).and_then(Option::as_ref)
    }

    pub fn config_map(&self, name: &str) -> Option<&Data> {
        self.config_maps.get(name).and_then(Option::as_ref)
    }
}

/// A Secret's keys: `data` (already base64-decoded by k8s-openapi) and `stringData`
/// (which a real server folds into `data`; a simulated one may keep it).
pub fn secret_data(s: Secret) -> Data {
    let mut data: Data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

/// A ConfigMap's keys: `data` and `binaryData`.
pub fn config_map_data(m: ConfigMap) -> Data {
    let mut data: Data = m
        .binary_data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in m.data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_come_from_env_env_from_and_volumes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{
                    "name": "c",
                    "env": [
                        {"name": "A", "value": "x"},
                        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
                        {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "cm1", "key": "k"}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "cm2"}}]
                }],
                "volumes": [
                    {"name": "v1", "configMap": {"name": "cm3"}},
                    {"name": "v2", "secret": {"secretName": "tls"}},
                    {"name": "v3", "emptyDir": {}}
                ]
            }
        }))
        .expect("a Pod");
        let refs = Refs::of(&pod);
        assert_eq!(
            refs.secrets,
            ["tls", "tok"].map(String::from).into_iter().collect()
        );
        assert_eq!(
            refs.config_maps,
            ["cm1", "cm2", "cm3"]
                .map(String::from)
                .into_iter()
                .collect()
        );
    }
}
