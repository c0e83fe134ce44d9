//! [`MotoServer`]: a real S3-compatible server (moto, from PyPI) for tests
//! and benchmarks, one process per value.
//!
//! It runs `python3 -m moto.server -H 127.0.0.1 -p PORT` on a free loopback
//! port (`STRATA_MOTO_PYTHON` names another interpreter), waits until it
//! answers HTTP, and creates a bucket. `scripts/setup.sh` installs moto; when
//! it is missing, [`MotoServer::start`] panics saying so — a test that needs
//! S3 fails rather than skipping.
//!
//! Invariants: the process is killed (and reaped) when the value is dropped;
//! nothing global is set — the credentials are in the [`RemoteStorageConfig`]
//! it hands out, so parallel tests with their own servers do not interfere.
//! Moto keeps its objects in memory: [`MotoServer::stop`] loses them,
//! [`MotoServer::pause`] (SIGSTOP) keeps them.
//!
//! Cancellation: everything here is blocking (a few seconds at most, while
//! the interpreter starts); call it from a test body, not from a runtime
//! that must stay responsive.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{RemoteLocation, RemoteStorageConfig, S3Location};

/// How long the interpreter may take to import moto and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server with one bucket; killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Option<Child>,
    port: u16,
    bucket: String,
    log: PathBuf,
    python: String,
}

impl MotoServer {
    /// The bucket every server creates.
    pub const BUCKET: &'static str = "strata-test";

    /// Starts a server on a free port and creates [`Self::BUCKET`].
    ///
    /// Panics, naming `scripts/setup.sh`, if moto is not installed or the
    /// server does not come up.
    pub fn start() -> MotoServer {
        let python = std::env::var("STRATA_MOTO_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let mut last = String::new();
        // A free port can be taken by someone else before moto binds it.
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("strata-moto-{}-{port}.log", std::process::id()));
            let mut server =
                MotoServer { child: None, port, bucket: Self::BUCKET.to_string(), log, python: python.clone() };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port (the same across [`Self::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A configuration for this server's bucket under `prefix` (may be
    /// empty), with dummy static credentials and the default tuning.
    pub fn config(&self, prefix: &str) -> RemoteStorageConfig {
        RemoteStorageConfig::new(RemoteLocation::S3(S3Location {
            bucket: self.bucket.clone(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".to_string()),
            access_key_id: Some("testing".to_string()),
            secret_access_key: Some("testing".to_string()),
        }))
    }

    /// Kills the server: connections are refused until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with an empty bucket of
    /// the same name (moto's state was in the killed process).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the
    /// kernel but never answered, so requests time out. State is kept.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Undoes [`Self::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the moto server is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal the moto server");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::create(&self.log).map_err(|e| format!("moto log file {}: {e}", self.log.display()))?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run {} -m moto.server: {e}; install moto with scripts/setup.sh \
                 (or point STRATA_MOTO_PYTHON at an interpreter that has moto[server])",
                self.python
            )
        })?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                let output = std::fs::read_to_string(&self.log).unwrap_or_default();
                let hint = if output.contains("No module named") {
                    "moto[server] is not installed: run scripts/setup.sh"
                } else {
                    "see its output"
                };
                return Err(format!(
                    "moto server ({} -m moto.server, port {}) exited with {status}: {hint}\n{output}",
                    self.python, self.port
                ));
            }
            if let Ok(status) = http(addr, "GET", "/moto-api/") {
                if status < 500 {
                    break;
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("moto server on port {} did not answer within {START_TIMEOUT:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match http(addr, "PUT", &format!("/{}", self.bucket)) {
            Ok(200) => Ok(()),
            other => {
                self.stop();
                Err(format!("moto server: creating bucket {}: {other:?}", self.bucket))
            }
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies of SIGKILL all the same.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a loopback port").port()
}

/// One HTTP/1.1 request without a body; the response's status.
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not HTTP: {text:?}")))
}
