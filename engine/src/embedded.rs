//! A private `redis-server` process on a free port with its own directory: for `steward demo`,
//! the benchmark and tests, which can stop, kill and restart it without touching anyone else's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the server persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk.
    None,
    /// AOF, fsync once a second (the default for Steward).
    AofEverySec,
}

/// A server failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `redis-server` binary.
    #[error(
        "redis-server is not installed: install it (`apt-get install -y redis-server`) or pass --redis URL to use a running Redis"
    )]
    NotInstalled,
    /// It did not come up.
    #[error("redis-server did not start on port {port}: {detail} (log: {log})")]
    NoStart {
        /// The port.
        port: u16,
        /// What went wrong.
        detail: String,
        /// Its log file.
        log: String,
    },
    /// An I/O error.
    #[error("redis-server: {0}")]
    Io(#[from] std::io::Error),
}

/// A running private Redis. Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    _temp: tempfile::TempDir,
    persistence: Persistence,
    binary: PathBuf,
}

fn find_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| {
        [
            "/usr/bin/redis-server",
            "/usr/local/bin/redis-server",
            "/usr/sbin/redis-server",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server in a new temporary directory.
    pub fn start(persistence: Persistence) -> Result<Self, Error> {
        let temp = tempfile::Builder::new()
            .prefix("steward-redis-")
            .tempdir()?;
        let dir = temp.path().to_path_buf();
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            _temp: temp,
            persistence,
            binary: find_binary().ok_or(Error::NotInstalled)?,
        };
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt was made"))
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--protected-mode")
            .arg("yes")
            // As deploy/redis.conf: small stream nodes (a format-1 run's own history stream),
            // and run hashes kept compact while their parts are at most 1 KiB.
            .arg("--stream-node-max-bytes")
            .arg("1024")
            .arg("--hash-max-listpack-value")
            .arg("1024");
        match self.persistence {
            Persistence::None => {
                cmd.arg("--appendonly").arg("no");
            }
            Persistence::AofEverySec => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("everysec");
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(Error::NoStart {
                    port: self.port,
                    detail: format!("it exited ({status})"),
                    log: log.display().to_string(),
                });
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Error::NoStart {
                    port: self.port,
                    detail: "it did not answer PING within 10 s".to_owned(),
                    log: log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers PING (and has finished loading its data).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Shuts it down cleanly (`SHUTDOWN`: the AOF is flushed and fsynced) and waits.
    pub fn shutdown(&mut self) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.write_all(b"SHUTDOWN\r\n");
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (after `shutdown` or `kill`).
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            self.shutdown();
        }
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
