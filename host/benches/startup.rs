//! Start-up to ready of the real binary.
//!
//! 1. With 3 plugins (`fs`, `s3` and `minio`, the last two against a local
//!    `s3s-fs`): the time from spawning `blockferry run` until `GET /readyz`
//!    answers 200, with the compiled-artifact cache cold (an empty cache dir
//!    each run) and warm (filled by a previous run); each with a fresh, empty
//!    store. Medians of `STARTUP_RUNS` (5) runs.
//! 2. With a large store: `STARTUP_STORE_BLOCKS` (100,000) blocks of 1 KiB,
//!    all uploaded to bucket `a` (an `fs` bucket), started with a new `fs`
//!    bucket `b` added: the time to ready and to the first object stored in
//!    `b`; the baseline is the same store started with bucket `a` alone (no
//!    change of buckets), the two alternating, medians of `STARTUP_RUNS`.
//!
//! `STARTUP_RUNS=5 cargo bench -p blockferry --bench startup` (after
//! scripts/build-plugins.sh and scripts/install-test-servers.sh).

mod report;
#[allow(dead_code, unused_imports)]
#[path = "../../tests/all/common/servers.rs"]
mod servers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blockferry::store::{BlockMeta, BucketStatus, Confirmed};
use md5::{Digest, Md5};
use report::{Goal, row};
use servers::{S3sFs, free_port};

fn main() {
    let runs: usize = std::env::var("STARTUP_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    three_plugins(runs);
    large_store(runs);
}

/// Row 1: start-up to ready with 3 plugins, artifact cache cold and warm.
fn three_plugins(runs: usize) {
    let s3s = S3sFs::start("blocks");
    let dir = tempfile::tempdir().unwrap();
    let warm_cache = dir.path().join("warm-cache");
    // Fills the warm cache (and the page cache with the binary and plugins).
    start_to_ready(dir.path(), 0, &warm_cache, &s3s.endpoint());
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let cold_cache = dir.path().join(format!("cold-cache-{i}"));
        cold.push(start_to_ready(dir.path(), 2 * i, &cold_cache, &s3s.endpoint()));
        warm.push(start_to_ready(dir.path(), 2 * i + 1, &warm_cache, &s3s.endpoint()));
    }
    println!("start-up to ready, 3 plugins, artifact cache cold: {} ms", list(&cold));
    println!("start-up to ready, 3 plugins, artifact cache warm: {} ms", list(&warm));
    let (cold_ms, warm_ms) = (report::median(&mut cold), report::median(&mut warm));
    println!("medians of {runs}: cold {cold_ms:.0} ms, warm {warm_ms:.0} ms");
    row("start-up to ready, 3 plugins, artifact cache warm", warm_ms, "ms", Some(cold_ms), Goal::AtMost(200.0));
}

/// Row 2: start-up of a large store with a bucket added, beside the same
/// store started with its buckets unchanged.
fn large_store(runs: usize) {
    let blocks: u64 = std::env::var("STARTUP_STORE_BLOCKS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let prepared = Instant::now();
    fill_store(&dir.path().join("store"), blocks);
    println!("a store of {blocks} blocks of 1 KiB, uploaded to bucket a, written in {:.1?}", prepared.elapsed());
    let cache = dir.path().join("cache");
    // Fills the artifact cache and the page cache.
    start_store(dir.path(), &cache, 0, false);
    let (mut same, mut added, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        same.push(start_store(dir.path(), &cache, i, false).0);
        let (ready, upload) = start_store(dir.path(), &cache, i, true);
        added.push(ready);
        first.push(upload.expect("the first upload to b"));
    }
    println!("{blocks} blocks, buckets unchanged: ready after {} ms", list(&same));
    println!("{blocks} blocks, bucket b added: ready after {} ms", list(&added));
    println!("{blocks} blocks, bucket b added: first object in b after {} ms", list(&first));
    let same = report::median(&mut same);
    let (added, first) = (report::median(&mut added), report::median(&mut first));
    println!(
        "medians of {runs}: unchanged {same:.0} ms; bucket added: ready {added:.0} ms, first upload {first:.0} ms"
    );
    let figure = format!("start-up to ready, {blocks} blocks, a bucket added (baseline: buckets unchanged)");
    row(&figure, added, "ms", Some(same), Goal::AtMost(1000.0));
    let figure = format!("start-up to the first upload to the added bucket, {blocks} blocks");
    row(&figure, first, "ms", Some(same), Goal::AtMost(1000.0));
}

/// Write a store of `blocks` blocks of 1 KiB in `dir` as the store writes
/// them (block file and `.meta`), each uploaded to bucket `a` and confirmed
/// by the service's digest; without fsyncs, to be quick to prepare.
fn fill_store(dir: &Path, blocks: u64) {
    std::fs::create_dir_all(dir.join(".tmp")).unwrap();
    for n in 0..blocks {
        let mut bytes = vec![0u8; 1024];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        let file = format!("{n:036}.blk");
        let mut meta = BlockMeta::new(n, file.clone(), bytes.len() as u64, &Md5::digest(&bytes), &[]);
        let uploaded = BucketStatus::Uploaded {
            at_ms: meta.created_at_ms,
            version: None,
            confirmed: Some(Confirmed::ServerDigest),
        };
        meta.buckets.insert("a".into(), uploaded);
        std::fs::write(dir.join(&file), &bytes).unwrap();
        std::fs::write(dir.join(format!("{n:036}.meta")), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    }
}

/// Start `blockferry run` on the store in `root/store` with bucket `a`, and
/// with a new bucket `b` (an empty directory) when `add_b`: the milliseconds
/// to ready and, with `b`, to the first object stored in `b`; then stop it.
fn start_store(root: &Path, cache: &Path, i: usize, add_b: bool) -> (f64, Option<f64>) {
    let run = root.join(format!("run-{i}-{}", if add_b { "ab" } else { "a" }));
    let bucket = |name: &str| {
        let dir = run.join(format!("bucket-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        format!(
            "[[buckets]]\nname = \"{name}\"\nplugin = {}\ndirectory = {:?}\n",
            plugin("blockferry_fs"),
            dir.display().to_string()
        )
    };
    let config = format!(
        "[store]\ndir = {:?}\n[plugins]\ncache_dir = {:?}\n{}{}",
        root.join("store").display().to_string(),
        cache.display().to_string(),
        bucket("a"),
        if add_b { bucket("b") } else { String::new() },
    );
    std::fs::write(run.join("blockferry.toml"), config).unwrap();
    let mut sidecar = spawn(&run);
    let ready = sidecar.wait_ready();
    let first = add_b.then(|| {
        let b = run.join("bucket-b");
        let stored =
            || std::fs::read_dir(&b).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".blk"));
        while !stored() {
            sidecar.check_alive("storing a first object in bucket b");
            std::thread::sleep(Duration::from_millis(2));
        }
        sidecar.started.elapsed().as_secs_f64() * 1000.0
    });
    sidecar.stop();
    (ready, first)
}

/// Writes run `i`'s config (fresh store, bucket dir and credentials under
/// `root/run-i`, plugin cache `cache`), starts `blockferry run` on it, and
/// returns the milliseconds until `/readyz` answers 200; then stops it.
fn start_to_ready(root: &Path, i: usize, cache: &Path, endpoint: &str) -> f64 {
    let run = root.join(format!("run-{i}"));
    std::fs::create_dir_all(run.join("bucket")).unwrap();
    let remote = |name: &str, file: &str| {
        format!(
            "[[buckets]]\nname = \"{name}\"\nplugin = {}\n[buckets.settings]\nendpoint = \"{endpoint}\"\n\
             bucket = \"blocks\"\nregion = \"us-east-1\"\naddressing = \"path\"\n",
            plugin(file)
        )
    };
    let config = format!(
        "credentials = \"credentials.toml\"\n[store]\ndir = \"store\"\n[plugins]\ncache_dir = {:?}\n\
         [[buckets]]\nname = \"fs\"\nplugin = {}\ndirectory = \"bucket\"\n{}{}",
        cache.display().to_string(),
        plugin("blockferry_fs"),
        remote("s3", "blockferry_s3"),
        remote("minio", "blockferry_minio"),
    );
    std::fs::write(run.join("blockferry.toml"), config).unwrap();
    servers::write_s3_credentials(&run, &["s3", "minio"]);
    let mut sidecar = spawn(&run);
    let ready = sidecar.wait_ready();
    sidecar.stop();
    ready
}

/// The path of a built plugin, quoted for TOML.
fn plugin(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/wasm32-wasip2/plugin/{name}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh first", path.display());
    format!("{:?}", path.display().to_string())
}

/// Milliseconds, comma-separated.
fn list(ms: &[f64]) -> String {
    ms.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(", ")
}

/// A running `blockferry run`.
struct Sidecar {
    child: Child,
    http_port: u16,
    started: Instant,
    log: PathBuf,
}

/// Start `blockferry run` on `run/blockferry.toml`, its log in `run/blockferry.log`.
fn spawn(run: &Path) -> Sidecar {
    let (port, http_port) = (free_port(), free_port());
    let log = run.join("blockferry.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_blockferry"));
    command
        .args(["run", "--config", run.join("blockferry.toml").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // Dies with this process, even when it panics.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let child = command.spawn().unwrap();
    Sidecar { child, http_port, started, log }
}

impl Sidecar {
    fn failed(&self, why: String) -> ! {
        panic!("{why}; its log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Panics when it exited, or when `doing` takes more than 60 s.
    fn check_alive(&mut self, doing: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.failed(format!("blockferry run exited ({status}) before {doing}"));
        }
        if self.started.elapsed() > Duration::from_secs(60) {
            let _ = self.child.kill();
            self.failed(format!(
                "blockferry run not done {doing} within 60 s: /readyz answers {:?}",
                readyz(self.http_port)
            ));
        }
    }

    /// The milliseconds from the spawn until `/readyz` answers 200.
    fn wait_ready(&mut self) -> f64 {
        while readyz(self.http_port) != Some(200) {
            self.check_alive("being ready");
            std::thread::sleep(Duration::from_millis(2));
        }
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let status = self.child.wait().unwrap();
        if !status.success() {
            self.failed(format!("blockferry run exited {status} after SIGTERM"));
        }
    }
}

/// The status of `GET /readyz` over HTTP/1.0, `None` while nothing answers.
fn readyz(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET /readyz HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
