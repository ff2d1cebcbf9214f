//! The real `blockferry run` as a child process, fed over gRPC on a free port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::servers::{free_port, wait_for_port};

/// `GET url` over HTTP/1.0 (`http://host:port/path`): status code and body.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    write!(stream, "GET {} HTTP/1.0\r\nHost: {authority}\r\n\r\n", if path.is_empty() { "/" } else { path }).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// A running sidecar; killed when dropped.
pub struct Sidecar {
    child: Option<Child>,
    /// Port of its ingest endpoint on 127.0.0.1.
    pub port: u16,
    /// Port of its HTTP endpoints (metrics, health, status page) on 127.0.0.1.
    pub http_port: u16,
    log: PathBuf,
}

impl Sidecar {
    /// Start `blockferry run --config CONFIG` listening on a free port, its
    /// log (debug level for blockferry) in `LOG_DIR/sidecar.log`; wait until it listens.
    pub fn start(config: &Path, log_dir: &Path, extra: &[&str]) -> Sidecar {
        Self::start_with_env(config, log_dir, extra, &[])
    }

    /// [`start`](Self::start) with the environment variables `env` set too.
    pub fn start_with_env(config: &Path, log_dir: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Sidecar {
        let (port, http_port) = (free_port(), free_port());
        let log = log_dir.join("sidecar.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_blockferry"));
        command
            .args(["run", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(extra)
            .env("RUST_LOG", "blockferry=debug,warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file);
        // Dies with the test process, even when a failed test aborts instead of unwinding.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        wait_for_port(port, "blockferry run", &mut child, &log);
        wait_for_port(http_port, "blockferry run (http)", &mut child, &log);
        Sidecar { child: Some(child), port, http_port, log }
    }

    /// Its ingest endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:HTTP_PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send it a signal (`libc::SIGHUP`, …).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0, "signal {signal}");
    }

    /// Stop it with SIGTERM and wait; its exit status and output.
    pub fn stop(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        Output { status, stdout: Vec::new(), stderr: std::fs::read(&self.log).unwrap_or_default() }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
