//! A container as a process: started in its Pod's network namespace with a private mount
//! and UTS namespace, in a process group of its own, its output appended to its log.
//!
//! In the child, before `exec` (see [`spawn`]): `setns` into the Pod's network namespace,
//! `unshare(CLONE_NEWNS | CLONE_NEWUTS)`, `/` made recursively private (so nothing mounted
//! here reaches this host), hostname = Pod name, a fresh tmpfs on `/dev/shm`, the Pod's own
//! directory bind-mounted on `/tmp`, the hosts file bind-mounted read-only on `/etc/hosts`,
//! then each volume mount, then `chdir` to the working directory. Everything the child
//! uses is prepared before `fork`, and the child calls only async-signal-safe functions
//! (raw syscalls and `write`): the parent is multi-threaded.
//!
//! The program itself must not live under `/tmp` (that is the Pod's own `/tmp` by then).
//!
//! The child gets `PR_SET_PDEATHSIG = SIGKILL`, so no container outlives the thread that
//! started it (a tokio worker, which lives as long as the runtime) if the simulator dies.
//!
//! A Pod's processes are those in its network namespace (a container's children may start
//! process groups of their own, as `miniray start` does): [`Running::kill_all`] finds them
//! by the namespace's inode, as a cgroup would.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::volumes::Mount;

/// Why a container could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("executable file not found in $PATH: {0}")]
    NotFound(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds a NUL byte")]
    Nul(String),
    #[error("starting the container: {0} (the container log says which step failed)")]
    Spawn(std::io::Error),
}

/// The private namespaces and mounts of a container (none in the loopback fallback).
#[derive(Clone, Debug)]
pub struct Isolation {
    /// The Pod's network namespace (`/run/netns/NS`).
    pub netns: PathBuf,
    /// The hostname the container sees (the Pod's name).
    pub hostname: String,
    /// The Pod's own directory, mounted on `/tmp`.
    pub tmp_dir: PathBuf,
    /// Mounted read-only on `/etc/hosts` when set.
    pub hosts_file: Option<PathBuf>,
    /// Volume mounts, parents before children.
    pub mounts: Vec<Mount>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The program (an absolute path, see [`find_program`]) and its arguments.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing of this process's own is passed on.
    pub env: Vec<(String, String)>,
    /// `workingDir`, or `/`.
    pub working_dir: Option<PathBuf>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    pub isolation: Option<Isolation>,
}

/// `command[0]` as a path on this host: `miniray` is `miniray_exe`; a name with a `/` is
/// taken as it is; any other is looked up on `PATH` (this host's, so an image's program,
/// such as `redis-server`, is the one installed here).
pub fn find_program(name: &str, miniray_exe: &Path) -> Result<PathBuf, ProcessError> {
    if name == crate::names::MINIRAY_COMMAND {
        return Ok(miniray_exe.to_path_buf());
    }
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| ProcessError::NotFound(name.to_string()))
}

fn cstring(s: impl AsRef<std::ffi::OsStr>) -> Result<CString, ProcessError> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| ProcessError::Nul(s.as_ref().to_string_lossy().into_owned()))
}

/// Everything the child needs, as C strings made before `fork`.
struct Prepared {
    netns: File,
    hostname: CString,
    tmp_dir: CString,
    hosts_file: Option<CString>,
    mounts: Vec<(CString, CString, bool)>,
    working_dir: CString,
}

/// A started container.
#[derive(Debug)]
pub struct Running {
    child: tokio::process::Child,
    group: Group,
}

/// What signals reach a container's processes by; copied out so one task can wait for
/// the container while another signals it.
#[derive(Clone, Copy, Debug)]
pub struct Group {
    /// The container's pid, which is also its process group id.
    pid: i32,
    /// `(dev, inode)` of the Pod's network namespace; `None` in the fallback.
    netns_id: Option<(u64, u64)>,
}

/// Starts `spec`.
pub fn spawn(spec: &Spec) -> Result<Running, ProcessError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|source| ProcessError::Io {
            what: "opening the log",
            path: spec.log.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| ProcessError::Io {
        what: "opening the log",
        path: spec.log.clone(),
        source,
    })?;
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let working_dir = cstring(spec.working_dir.as_deref().unwrap_or(Path::new("/")))?;
    let mut netns_id = None;
    let prepared = match &spec.isolation {
        None => None,
        Some(iso) => {
            // Opened close-on-exec: the child joins it, then `exec` closes it.
            let netns = File::open(&iso.netns).map_err(|source| ProcessError::Io {
                what: "opening the network namespace",
                path: iso.netns.clone(),
                source,
            })?;
            let meta = netns.metadata().map_err(|source| ProcessError::Io {
                what: "reading the network namespace",
                path: iso.netns.clone(),
                source,
            })?;
            netns_id = Some((meta.dev(), meta.ino()));
            Some(Prepared {
                netns,
                hostname: cstring(&iso.hostname)?,
                tmp_dir: cstring(&iso.tmp_dir)?,
                hosts_file: iso.hosts_file.as_ref().map(cstring).transpose()?,
                mounts: iso
                    .mounts
                    .iter()
                    .map(|m| Ok((cstring(&m.source)?, cstring(&m.target)?, m.read_only)))
                    .collect::<Result<_, ProcessError>>()?,
                working_dir: working_dir.clone(),
            })
        }
    };
    let netns_fd = prepared.as_ref().map(|p| p.netns.as_raw_fd());
    let constants = Constants::new();
    // SAFETY: the closure runs in the forked child of a multi-threaded process: it only
    // makes raw syscalls (setns, unshare, mount, sethostname, chdir, prctl, write) on data
    // prepared above, allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if let (Some(p), Some(fd)) = (&prepared, netns_fd) {
                enter(p, fd, &constants)?;
            } else {
                step(
                    libc::chdir(working_dir.as_ptr()),
                    b"chdir to the working directory\n",
                )?;
            }
            step(
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
                b"prctl(PR_SET_PDEATHSIG)\n",
            )?;
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(ProcessError::Spawn)?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(-1);
    Ok(Running {
        child,
        group: Group { pid, netns_id },
    })
}

/// C strings the child uses, made before `fork`.
struct Constants {
    root: CString,
    shm: CString,
    tmpfs: CString,
    shm_opts: CString,
    tmp: CString,
    etc_hosts: CString,
}

impl Constants {
    fn new() -> Constants {
        let c = |s: &str| CString::new(s).unwrap_or_default();
        Constants {
            root: c("/"),
            shm: c("/dev/shm"),
            tmpfs: c("tmpfs"),
            shm_opts: c("mode=1777"),
            tmp: c("/tmp"),
            etc_hosts: c("/etc/hosts"),
        }
    }
}

/// A syscall's result: on failure, says which step failed on stderr (the container log)
/// and returns errno. Async-signal-safe.
fn step(rc: libc::c_int, what: &[u8]) -> std::io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let prefix = b"miniray k8s simulator: container setup failed at ";
    // SAFETY: write(2) on stderr with valid buffers; async-signal-safe.
    unsafe {
        libc::write(2, prefix.as_ptr().cast(), prefix.len());
        libc::write(2, what.as_ptr().cast(), what.len());
    }
    Err(err)
}

/// The child's side of isolation (see the module doc). Async-signal-safe.
unsafe fn enter(p: &Prepared, netns_fd: i32, c: &Constants) -> std::io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY (whole function): raw syscalls on C strings that outlive the call.
    unsafe {
        step(
            libc::setns(netns_fd, libc::CLONE_NEWNET),
            b"setns(network namespace)\n",
        )?;
        step(
            libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS),
            b"unshare(mount, uts)\n",
        )?;
        step(
            libc::mount(
                null,
                c.root.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            b"making / private\n",
        )?;
        step(
            libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()),
            b"sethostname\n",
        )?;
        step(
            libc::mount(
                c.tmpfs.as_ptr(),
                c.shm.as_ptr(),
                c.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c.shm_opts.as_ptr().cast(),
            ),
            b"mounting a tmpfs on /dev/shm\n",
        )?;
        step(
            bind(p.tmp_dir.as_ptr(), c.tmp.as_ptr(), false),
            b"bind-mounting the Pod's /tmp\n",
        )?;
        if let Some(hosts) = &p.hosts_file {
            step(
                bind(hosts.as_ptr(), c.etc_hosts.as_ptr(), true),
                b"bind-mounting /etc/hosts\n",
            )?;
        }
        for (source, target, read_only) in &p.mounts {
            step(
                bind(source.as_ptr(), target.as_ptr(), *read_only),
                b"bind-mounting a volume\n",
            )?;
        }
        step(
            libc::chdir(p.working_dir.as_ptr()),
            b"chdir to the working directory\n",
        )
    }
}

/// Bind-mounts `source` on `target`, then makes it read-only if asked. A read-only
/// remount refused (a mount with locked flags) leaves it writable rather than fail.
unsafe fn bind(source: *const libc::c_char, target: *const libc::c_char, ro: bool) -> i32 {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: raw mount(2) calls on NUL-terminated strings the caller keeps alive.
    unsafe {
        let rc = libc::mount(
            source,
            target,
            null,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        );
        if rc != 0 || !ro {
            return rc;
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        libc::mount(null, target, null, flags, std::ptr::null());
    }
    0
}

impl Running {
    pub fn group(&self) -> Group {
        self.group
    }

    /// Waits for the container's main process: its exit code, `128 + signal` when killed
    /// by a signal (as a container runtime reports it).
    pub async fn wait(&mut self) -> i32 {
        match self.child.wait().await {
            Ok(status) => status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(255),
            Err(e) => {
                tracing::warn!(pid = self.group.pid, error = %e, "waiting for a container failed");
                255
            }
        }
    }
}

impl Group {
    /// The container's pid (and process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` to the container's process group.
    pub fn signal_group(&self, sig: libc::c_int) {
        if self.pid > 0 {
            // SAFETY: kill(2) on our own child's process group; a gone group only errs.
            unsafe { libc::kill(-self.pid, sig) };
        }
    }

    /// SIGKILLs the container's process group and every process in its Pod's network
    /// namespace (so the whole Pod), so nothing of the Pod is left.
    pub fn kill_all(&self) {
        self.signal_group(libc::SIGKILL);
        if let Some(id) = self.netns_id {
            for pid in pids_in_netns(id) {
                // SAFETY: kill(2) on a process of this Pod; a gone pid only errs.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Processes whose network namespace is `(dev, inode)`.
pub fn pids_in_netns(id: (u64, u64)) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == id)
        })
        .collect()
}

/// `(dev, inode)` of the network namespace at `path` (`/run/netns/NS`).
pub fn netns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::super::network::PodNetwork;
    use super::*;

    #[test]
    fn programs_are_found_on_path_and_miniray_is_the_given_exe() {
        let exe = Path::new("/opt/bin/miniray");
        assert_eq!(find_program("miniray", exe).ok().as_deref(), Some(exe));
        let sh = find_program("sh", exe).expect("sh is on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert!(matches!(
            find_program("no-such-program-here", exe),
            Err(ProcessError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_container_sees_its_own_network_tmp_shm_hosts_and_mounts() {
        let net = PodNetwork::create();
        if !net.isolated() {
            eprintln!("no network namespaces here: isolation is not tested");
            return;
        }
        let pod = net.add_pod().expect("a Pod");
        let dir = tempfile::Builder::new()
            .prefix("miniray-k8s-process-test")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let tmp_dir = dir.path().join("tmp");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&tmp_dir).expect("tmp");
        std::fs::create_dir_all(&vol).expect("vol");
        std::fs::write(vol.join("f"), "volume-data").expect("vol file");
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "10.9.9.9 svc.ns.svc.cluster.local\n").expect("hosts");
        let marker = format!("process-test-{}", std::process::id());
        let script = format!(
            "hostname; ip -4 -o addr show dev eth0 | tr -s ' ' | cut -d' ' -f4; \
             touch /tmp/{marker} /dev/shm/{marker}; ls /dev/shm | wc -l; \
             cat /etc/hosts; cat /mnt/kubelet-test-vol/f; echo; \
             (echo x > /etc/hosts) 2>/dev/null && echo hosts-writable || echo hosts-readonly; pwd"
        );
        let spec = Spec {
            program: find_program("sh", Path::new("/x")).expect("sh"),
            args: vec!["-c".into(), script],
            env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
            working_dir: Some("/tmp".into()),
            log: dir.path().join("c.log"),
            isolation: Some(Isolation {
                netns: pod.netns_path().expect("netns"),
                hostname: "pod-one".into(),
                tmp_dir: tmp_dir.clone(),
                hosts_file: Some(hosts.clone()),
                mounts: vec![Mount {
                    source: vol.clone(),
                    target: "/mnt/kubelet-test-vol".into(),
                    read_only: true,
                }],
            }),
        };
        std::fs::create_dir_all("/mnt/kubelet-test-vol").expect("mount point");
        let mut running = spawn(&spec).expect("spawned");
        let code = tokio::time::timeout(std::time::Duration::from_secs(20), running.wait())
            .await
            .expect("exits in time");
        let _ = std::fs::remove_dir("/mnt/kubelet-test-vol");
        let log = std::fs::read_to_string(&spec.log).expect("log");
        assert_eq!(code, 0, "log: {log}");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines[0], "pod-one", "log: {log}");
        assert_eq!(lines[1], format!("{}/24", pod.ip), "log: {log}");
        assert_eq!(
            lines[2], "1",
            "a fresh /dev/shm holds only our file; log: {log}"
        );
        assert_eq!(lines[3], "10.9.9.9 svc.ns.svc.cluster.local", "log: {log}");
        assert_eq!(lines[4], "volume-data", "log: {log}");
        assert_eq!(lines[5], "hosts-readonly", "log: {log}");
        assert_eq!(lines[6], "/tmp", "log: {log}");
        // The Pod's /tmp is its own directory; this host's /tmp and /dev/shm are untouched.
        assert!(tmp_dir.join(&marker).exists());
        assert!(!Path::new("/tmp").join(&marker).exists());
        assert!(!Path::new("/dev/shm").join(&marker).exists());
        assert_eq!(
            std::fs::read_to_string(&hosts).ok().as_deref(),
            Some("10.9.9.9 svc.ns.svc.cluster.local\n")
        );
        net.remove_pod(&pod);
    }

    #[tokio::test]
    async fn exit_codes_and_signals_are_reported_and_the_group_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sh = find_program("sh", Path::new("/x")).expect("sh");
        let spec = |script: &str| Spec {
            program: sh.clone(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            working_dir: None,
            log: dir.path().join("c.log"),
            isolation: None,
        };
        let mut three = spawn(&spec("exit 3")).expect("spawned");
        assert_eq!(three.wait().await, 3);
        let mut sleeper = spawn(&spec("sleep 60 & wait")).expect("spawned");
        sleeper.group().kill_all();
        let code = tokio::time::timeout(std::time::Duration::from_secs(10), sleeper.wait())
            .await
            .expect("killed in time");
        assert_eq!(code, 128 + libc::SIGKILL);
    }
}
