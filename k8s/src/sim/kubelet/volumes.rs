//! A Pod's volumes as directories on this host, and the bind mounts that put them where
//! its containers' `volumeMounts` say.
//!
//! Layout under the Pod's directory: `volumes/<volume>/` for `configMap`, `secret` (every
//! key, or the `items`, with `defaultMode`/`mode`) and `emptyDir`; `serviceaccount/` with
//! `token`, `ca.crt` and `namespace`, mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` unless `automountServiceAccountToken` is
//! false. `hostPath` volumes are this host's path itself. Files are written once, when the
//! Pod starts: later changes to a ConfigMap or Secret do not reach a running Pod.
//!
//! Mount points must exist on this host (a private mount namespace still shares the
//! filesystem): [`MountPoints`] creates missing ones and remembers them, to remove them
//! (when empty) at shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod};

use super::sources::{Data, Sources};

/// Where a Pod finds its ServiceAccount token, as on a real cluster.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Why a Pod's volumes cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapMissing(String),
    #[error("secret \"{0}\" not found")]
    SecretMissing(String),
    #[error("volume {volume}: key {key} not found")]
    KeyMissing { volume: String, key: String },
    #[error("volume {0}: only configMap, secret, emptyDir and hostPath volumes are supported")]
    Unsupported(String),
    #[error("volumeMount {mount}: no volume named {volume}")]
    NoSuchVolume { mount: String, volume: String },
    #[error("volumeMount {0}: subPath and non-absolute paths are not supported")]
    BadMount(String),
    #[error("volume {volume}: bad path {path}")]
    BadPath { volume: String, path: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bind mount of `source` (on this host) at `target` (in the container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// What goes into the ServiceAccount directory.
#[derive(Clone, Debug)]
pub struct ServiceAccountFiles {
    pub token: String,
    pub ca_pem: String,
}

/// The Pod's volumes, made under `pod_dir`: host directory by volume name.
pub fn materialize(
    pod: &Pod,
    pod_dir: &Path,
    sources: &Sources,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let mut dirs = BTreeMap::new();
    let Some(spec) = &pod.spec else {
        return Ok(dirs);
    };
    for v in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&v.name);
        if let Some(host) = &v.host_path {
            dirs.insert(v.name.clone(), PathBuf::from(&host.path));
            continue;
        }
        let (data, items, default_mode) = if v.empty_dir.is_some() {
            (None, None, None)
        } else if let Some(m) = &v.config_map {
            let data = match sources.config_map(&m.name) {
                Some(d) => Some(d),
                None if m.optional == Some(true) => Some(&EMPTY),
                None => return Err(VolumeError::ConfigMapMissing(m.name.clone())),
            };
            (data, m.items.as_ref(), m.default_mode)
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = match sources.secret(&name) {
                Some(d) => Some(d),
                None if s.optional == Some(true) => Some(&EMPTY),
                None => return Err(VolumeError::SecretMissing(name)),
            };
            (data, s.items.as_ref(), s.default_mode)
        } else {
            return Err(VolumeError::Unsupported(v.name.clone()));
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if v.empty_dir.is_some() {
            // Any user of the Pod may write there, as in a container.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
                .map_err(io(&dir))?;
        }
        if let Some(data) = data {
            write_keys(&v.name, &dir, data, items, default_mode)?;
        }
        dirs.insert(v.name.clone(), dir);
    }
    Ok(dirs)
}

static EMPTY: Data = BTreeMap::new();

/// Writes `data` (or its `items`) as files in `dir`.
fn write_keys(
    volume: &str,
    dir: &Path,
    data: &Data,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Result<(), VolumeError> {
    let mode = |m: Option<i32>| m.or(default_mode).unwrap_or(0o644) as u32 & 0o7777;
    let files: Vec<(String, &Vec<u8>, u32)> = match items {
        None => data
            .iter()
            .map(|(k, v)| (k.clone(), v, mode(None)))
            .collect(),
        Some(items) => items
            .iter()
            .map(|i| match data.get(&i.key) {
                Some(v) => Ok((i.path.clone(), v, mode(i.mode))),
                None => Err(VolumeError::KeyMissing {
                    volume: volume.into(),
                    key: i.key.clone(),
                }),
            })
            .collect::<Result<_, _>>()?,
    };
    for (rel, bytes, mode) in files {
        let relative = Path::new(&rel);
        let safe = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(VolumeError::BadPath {
                volume: volume.into(),
                path: rel,
            });
        }
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        write_file(&path, bytes, mode)?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VolumeError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    // `mode` at creation is filtered by the umask; the file's mode must be the asked one.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Writes the ServiceAccount directory of a Pod in `namespace` (under `pod_dir`) and
/// returns it, or `None` when the Pod opted out.
pub fn service_account(
    pod: &Pod,
    pod_dir: &Path,
    files: &ServiceAccountFiles,
) -> Result<Option<PathBuf>, VolumeError> {
    let opted_out = pod
        .spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
        == Some(false);
    if opted_out {
        return Ok(None);
    }
    let dir = pod_dir.join("serviceaccount");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    write_file(&dir.join("token"), files.token.as_bytes(), 0o644)?;
    write_file(&dir.join("ca.crt"), files.ca_pem.as_bytes(), 0o644)?;
    write_file(&dir.join("namespace"), namespace.as_bytes(), 0o644)?;
    Ok(Some(dir))
}

/// The bind mounts of `container`: its `volumeMounts`, then the ServiceAccount directory
/// (unless a volumeMount already covers its path). Parents come before their children.
pub fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    service_account: Option<&Path>,
) -> Result<Vec<Mount>, VolumeError> {
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let target = PathBuf::from(&m.mount_path);
        let sub_path = m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
            || m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty());
        if sub_path || !target.is_absolute() {
            return Err(VolumeError::BadMount(m.mount_path.clone()));
        }
        let Some(source) = volumes.get(&m.name) else {
            return Err(VolumeError::NoSuchVolume {
                mount: m.mount_path.clone(),
                volume: m.name.clone(),
            });
        };
        mounts.push(Mount {
            source: source.clone(),
            target,
            read_only: m.read_only == Some(true),
        });
    }
    if let Some(sa) = service_account {
        let target = PathBuf::from(SERVICE_ACCOUNT_DIR);
        if !mounts.iter().any(|m| m.target == target) {
            mounts.push(Mount {
                source: sa.to_path_buf(),
                target,
                read_only: true,
            });
        }
    }
    mounts.sort_by_key(|m| m.target.components().count());
    Ok(mounts)
}

/// Mount points this process created on the host, removed (when empty) when the last
/// kubelet of the process that uses them shuts down: kubelets of one process (parallel
/// tests) share mount points such as the ServiceAccount directory's.
#[derive(Debug)]
pub struct MountPoints {
    released: std::sync::atomic::AtomicBool,
}

struct Registry {
    users: usize,
    created: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    users: 0,
    created: BTreeSet::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl MountPoints {
    /// A user of the process's mount points (one per kubelet).
    pub fn acquire() -> MountPoints {
        registry().users += 1;
        MountPoints {
            released: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes sure the directory `target` exists, creating it and its missing parents.
    /// `redirect` maps a target that lies in a directory the container gets from elsewhere
    /// (its own `/tmp`) to where it must be made instead.
    pub fn ensure(&self, target: &Path, redirect: &[(&Path, &Path)]) -> Result<(), VolumeError> {
        for (from, to) in redirect {
            if let Ok(rest) = target.strip_prefix(from) {
                let dir = to.join(rest);
                return std::fs::create_dir_all(&dir).map_err(io(&dir));
            }
        }
        // Held while creating, so a last user's removal cannot interleave.
        let mut reg = registry();
        // Which ancestors are missing, outermost first, so each can be removed later.
        let mut missing: Vec<PathBuf> = target
            .ancestors()
            .take_while(|p| !p.exists())
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        for dir in missing {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    reg.created.insert(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&dir)(e)),
            }
        }
        Ok(())
    }

    /// Ends this use; the last one removes the created mount points that are empty,
    /// deepest first. Idempotent.
    pub fn remove_created(&self) {
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let mut reg = registry();
        reg.users = reg.users.saturating_sub(1);
        if reg.users > 0 {
            return;
        }
        let mut dirs: Vec<PathBuf> = std::mem::take(&mut reg.created).into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            // Fails, as wanted, when something else put a file there.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a Pod")
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "cfg".into(),
            Some(
                [
                    ("cluster.yaml".to_string(), b"a: 1\n".to_vec()),
                    ("other".to_string(), b"o".to_vec()),
                ]
                .into(),
            ),
        );
        s.secrets.insert(
            "tls".into(),
            Some([("tls.key".to_string(), b"KEY".to_vec())].into()),
        );
        s
    }

    #[test]
    fn config_map_secret_and_empty_dir_volumes_become_directories() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "ns1"},
            "spec": {
                "containers": [{"name": "c", "volumeMounts": [
                    {"name": "conf", "mountPath": "/etc/miniray"},
                    {"name": "tls", "mountPath": "/etc/miniray-tls", "readOnly": true},
                    {"name": "scratch", "mountPath": "/scratch"}
                ]}],
                "volumes": [
                    {"name": "conf", "configMap": {"name": "cfg", "items": [{"key": "cluster.yaml", "path": "sub/c.yaml"}]}},
                    {"name": "tls", "secret": {"secretName": "tls", "defaultMode": 0o600}},
                    {"name": "scratch", "emptyDir": {}}
                ]
            }
        }));
        let dirs = materialize(&p, tmp.path(), &sources()).expect("volumes");
        let conf = &dirs["conf"];
        assert_eq!(
            std::fs::read_to_string(conf.join("sub/c.yaml")).expect("item"),
            "a: 1\n"
        );
        assert!(!conf.join("other").exists(), "items select keys");
        let key = dirs["tls"].join("tls.key");
        assert_eq!(std::fs::read(&key).expect("secret key"), b"KEY");
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(dirs["scratch"].is_dir());

        let sa = service_account(
            &p,
            tmp.path(),
            &ServiceAccountFiles {
                token: "T".into(),
                ca_pem: "CA".into(),
            },
        )
        .expect("sa")
        .expect("automounted");
        assert_eq!(
            std::fs::read_to_string(sa.join("namespace"))
                .ok()
                .as_deref(),
            Some("ns1")
        );
        assert_eq!(
            std::fs::read_to_string(sa.join("token")).ok().as_deref(),
            Some("T")
        );
        assert_eq!(
            std::fs::read_to_string(sa.join("ca.crt")).ok().as_deref(),
            Some("CA")
        );

        let c = &p.spec.as_ref().expect("spec").containers[0];
        let m = mounts(c, &dirs, Some(&sa)).expect("mounts");
        assert_eq!(m.len(), 4);
        assert!(
            m.iter()
                .any(|m| m.target == Path::new(SERVICE_ACCOUNT_DIR) && m.read_only)
        );
        assert!(
            m.iter()
                .any(|m| m.target == Path::new("/etc/miniray-tls") && m.read_only)
        );
        assert!(
            m.iter()
                .any(|m| m.target == Path::new("/etc/miniray") && !m.read_only)
        );
    }

    #[test]
    fn missing_sources_and_bad_volumes_are_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "volumes": [{"name": "v", "configMap": {"name": "absent"}}]}}));
        let mut s = sources();
        s.config_maps.insert("absent".into(), None);
        assert!(matches!(
            materialize(&missing, tmp.path(), &s),
            Err(VolumeError::ConfigMapMissing(_))
        ));
        let optional = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "volumes": [{"name": "v", "configMap": {"name": "absent", "optional": true}}]}}));
        assert!(materialize(&optional, tmp.path(), &s).is_ok());
        let escape = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "volumes": [{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "other", "path": "../x"}]}}]}}));
        assert!(matches!(
            materialize(&escape, tmp.path(), &s),
            Err(VolumeError::BadPath { .. })
        ));
        let unsupported = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}]}}));
        assert!(matches!(
            materialize(&unsupported, tmp.path(), &s),
            Err(VolumeError::Unsupported(_))
        ));
    }

    #[test]
    fn opting_out_skips_the_service_account_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = pod(json!({"metadata": {"name": "p"},
            "spec": {"automountServiceAccountToken": false, "containers": []}}));
        let files = ServiceAccountFiles {
            token: "T".into(),
            ca_pem: "CA".into(),
        };
        assert!(
            service_account(&p, tmp.path(), &files)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn mount_points_made_are_removed_when_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let points = MountPoints::acquire();
        let deep = tmp.path().join("a/b/c");
        points.ensure(&deep, &[]).expect("made");
        assert!(deep.is_dir());
        let kept = tmp.path().join("a/keep");
        std::fs::write(&kept, b"x").expect("write");
        let pod_tmp = tmp.path().join("podtmp");
        points
            .ensure(Path::new("/tmp/inside/x"), &[(Path::new("/tmp"), &pod_tmp)])
            .expect("redirected");
        assert!(pod_tmp.join("inside/x").is_dir());
        points.remove_created();
        assert!(!tmp.path().join("a/b").exists());
        assert!(tmp.path().join("a").exists(), "a holds a file, so it stays");
    }
}
