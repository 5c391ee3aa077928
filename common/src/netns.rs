//! Network namespaces made with `ip` (iproute2): the pieces the simulator's Pod network and
//! the tests' multi-host sandbox share. Each of them names its links and namespaces with a
//! tag and its owner's pid (`<tag>-<pid>-…` namespaces, `<tag><pid>x…` links), so what a
//! crashed owner left can be found and removed ([`sweep_leftovers`]).

use std::path::Path;
use std::process::{Command, Stdio};

/// Why this process cannot create network namespaces, if it cannot: `disable_env` is set,
/// not Linux, not root, or no `ip` command.
pub fn unavailable(disable_env: &str) -> Option<String> {
    if std::env::var_os(disable_env).is_some() {
        return Some(format!("{disable_env} is set"));
    }
    if !cfg!(target_os = "linux") {
        return Some("network namespaces are Linux only".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root, so no network namespaces".into());
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => None,
        Err(e) => Some(format!("no `ip` command ({e}); install iproute2")),
    }
}

/// Runs `ip args`; its stdout, or why it failed.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A /24 under `10.<second>.0.0/16` that no interface of this network stack uses, as its
/// first three octets. Where the search starts depends on `pid` and `n`, so owners running
/// at once start apart.
pub fn free_subnet(second: u8, pid: u32, n: u32) -> Result<[u8; 3], String> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    let start = (pid.wrapping_mul(7).wrapping_add(n)) % 250;
    (0..250)
        .map(|k| ((start + k) % 250 + 1) as u8)
        .find(|x| !used.contains(&format!(" 10.{second}.{x}.")))
        .map(|x| [10, second, x])
        .ok_or_else(|| format!("no free /24 under 10.{second}.0.0/16"))
}

/// Removes the namespaces (`<tag>-<pid>-…`, pid in decimal) and links (`<tag><pid>x…`, pid
/// in `link_pid_radix`) whose owner process is gone. The radix must be at most 33, so that
/// `x` is never a digit of the pid it ends.
pub fn sweep_leftovers(tag: &str, link_pid_radix: u32) {
    debug_assert!(
        link_pid_radix <= 33,
        "`x` would be a digit in radix {link_pid_radix}"
    );
    let gone = |pid: Option<u32>| pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix(&format!("{tag}-")) else {
                continue;
            };
            if gone(rest.split('-').next().and_then(|p| p.parse().ok())) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // `7: mrk2n9cx0p3@if2: <…` — the name, without the peer suffix.
            let Some(name) = line.split(": ").nth(1).and_then(|s| s.split('@').next()) else {
                continue;
            };
            let Some(rest) = name.strip_prefix(tag) else {
                continue;
            };
            let pid = rest
                .split('x')
                .next()
                .and_then(|p| u32::from_str_radix(p, link_pid_radix).ok());
            if rest.contains('x') && gone(pid) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}
