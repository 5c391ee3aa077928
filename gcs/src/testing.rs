//! Test harness shared by this crate's tests and the workspace integration tests: a real,
//! throw-away `redis-server` on a free loopback port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `redis-server` may take to answer its first PING on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts with a fresh port when another process grabbed the one we picked.
const START_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("cannot pick a free port: {0}")]
    Port(std::io::Error),
    #[error("cannot start redis-server (is it installed?): {0}")]
    Spawn(std::io::Error),
    #[error("redis-server exited early with {0}")]
    Exited(std::process::ExitStatus),
    #[error("redis-server did not answer PING within {0:?}")]
    Timeout(Duration),
}

/// A `redis-server` child process with no persistence, killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers PING.
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_also_on(None)
    }

    /// Like `start`, also listening on `also` (an address other network namespaces reach,
    /// such as a test bridge's); see `url_at`.
    pub fn start_also_on(also: Option<Ipv4Addr>) -> Result<Self, RedisServerError> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(also) {
                Ok(server) => return Ok(server),
                // The port was taken between picking and binding: try another one.
                Err(e @ RedisServerError::Exited(_)) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(RedisServerError::Timeout(START_DEADLINE)))
    }

    fn try_start(also: Option<Ipv4Addr>) -> Result<Self, RedisServerError> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(RedisServerError::Port)?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .arg("--bind")
            .arg("127.0.0.1")
            .args(also.map(|ip| ip.to_string()))
            // Clients from another namespace come from a non-loopback address, which
            // protected mode refuses without a password; `also` is a private test address.
            .args([
                "--protected-mode",
                if also.is_some() { "no" } else { "yes" },
            ])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisServerError::Spawn)?;
        // From here on `server` owns the child, so every early return kills it.
        let mut server = RedisServer { child, port };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(RedisServerError::Exited(status));
            }
            if ping(port) {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                return Err(RedisServerError::Timeout(START_DEADLINE));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis://IP:PORT`, for an address given to `start_also_on`.
    pub fn url_at(&self, ip: Ipv4Addr) -> String {
        format!("redis://{ip}:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Freezes the server (`SIGSTOP`): connections stay open, nothing is answered, as with
    /// a Redis stalled by a fork, a swap storm or a slow disk.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused server go on (`SIGCONT`); it then answers what queued up meanwhile.
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| std::io::Error::other("pid out of range"))?;
        // SAFETY: kill(2) on our own child, which is not reaped before `Drop`.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// How many times each command ran on the server (`INFO commandstats`), by lowercase
    /// name: `hset`, `hget`, ….
    pub fn command_calls(&self) -> std::io::Result<BTreeMap<String, u64>> {
        let info = info(self.port, "commandstats")?;
        // Lines look like `cmdstat_hset:calls=12,usec=40,...`.
        Ok(info
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The server may have died already; either way reap it so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a Redis server on `port` answers an inline PING.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
        || stream.write_all(b"PING\r\n").is_err()
    {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The text of `INFO section` from the server on `port` (RESP: one bulk string).
fn info(port: u16, section: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("INFO {section}\r\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let len: usize = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected INFO reply {header:?}")))?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    String::from_utf8(body).map_err(std::io::Error::other)
}
