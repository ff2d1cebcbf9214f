//! Start-up to ready of the real binary with 3 plugins (`fs`, `s3` and
//! `minio`, the last two against a local `s3s-fs`): the time from spawning
//! `blockferry run` until `GET /readyz` answers 200, with the compiled-artifact
//! cache cold (an empty cache dir each run) and warm (filled by a previous
//! run); each with a fresh, empty store. Medians of `STARTUP_RUNS` (5) runs.
//! `STARTUP_RUNS=5 cargo bench -p blockferry --bench startup` (after
//! scripts/build-plugins.sh and scripts/install-test-servers.sh).

mod report;
#[allow(dead_code, unused_imports)]
#[path = "../../tests/all/common/servers.rs"]
mod servers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use report::{Goal, row};
use servers::{ACCESS_KEY, S3sFs, SECRET_KEY, free_port};

fn main() {
    let runs: usize = std::env::var("STARTUP_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
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
    let runs_ms = |v: &[f64]| v.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(", ");
    println!("start-up to ready, 3 plugins, artifact cache cold: {} ms", runs_ms(&cold));
    println!("start-up to ready, 3 plugins, artifact cache warm: {} ms", runs_ms(&warm));
    let (cold_ms, warm_ms) = (report::median(&mut cold), report::median(&mut warm));
    println!("medians of {runs}: cold {cold_ms:.0} ms, warm {warm_ms:.0} ms");
    row("start-up to ready, 3 plugins, artifact cache warm", warm_ms, "ms", Some(cold_ms), Goal::AtMost(200.0));
}

/// Writes run `i`'s config (fresh store, bucket dir and credentials under
/// `root/run-i`, plugin cache `cache`), starts `blockferry run` on it, and
/// returns the milliseconds until `/readyz` answers 200; then stops it.
fn start_to_ready(root: &Path, i: usize, cache: &Path, endpoint: &str) -> f64 {
    let run = root.join(format!("run-{i}"));
    std::fs::create_dir_all(run.join("bucket")).unwrap();
    let plugins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin");
    let plugin = |name: &str| {
        let path = plugins.join(format!("{name}.wasm"));
        assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh first", path.display());
        format!("{:?}", path.display().to_string())
    };
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
    let creds = run.join("credentials.toml");
    let secrets = format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n");
    std::fs::write(&creds, format!("[buckets.s3]\n{secrets}[buckets.minio]\n{secrets}")).unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

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
    let mut child = command.spawn().unwrap();
    let failed =
        |why: String| -> ! { panic!("{why}; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()) };
    while readyz(http_port) != Some(200) {
        if let Ok(Some(status)) = child.try_wait() {
            failed(format!("blockferry run exited ({status}) before it was ready"));
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            failed(format!("blockferry run not ready within 60 s: /readyz answers {:?}", readyz(http_port)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ready = started.elapsed();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    if !status.success() {
        failed(format!("blockferry run exited {status} after SIGTERM"));
    }
    ready.as_secs_f64() * 1000.0
}

/// The status of `GET /readyz` over HTTP/1.0, `None` while nothing answers.
fn readyz(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET /readyz HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
