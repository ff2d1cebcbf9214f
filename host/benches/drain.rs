//! The product path, side by side: a store of blocks drained by the real
//! `blockferry run --exit-when-drained` (store → S3 plugin → s3s-fs), beside
//! the same block files uploaded to the same server by
//! - a native `object_store` uploader reading them from disk (same
//!   concurrency, unsigned payload and conditional create, as the plugin), and
//! - `rclone copy` (`--transfers` = the concurrency), the tool an operator
//!   would otherwise script.
//!
//! Rounds alternate the three uploaders; each figure is the median of its
//! rounds. Time is the whole command's (start-up included for blockferry and
//! rclone). CPU is the uploader's own: the `blockferry` or `rclone` process's,
//! this process's for `object_store`; never the server's.
//!
//! `DRAIN_ROUNDS=3 DRAIN_SMALL_BLOCKS=2000 DRAIN_LARGE_BLOCKS=40 cargo bench -p blockferry --bench drain`
//! (after `scripts/build-plugins.sh` and `scripts/install-test-servers.sh`;
//! `rclone` is Debian's package, which `scripts/bench.sh` installs).

mod report;
#[allow(dead_code, unused_imports)]
#[path = "../../tests/all/common/servers.rs"]
mod servers;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use blockferry::store::BlockMeta;
use md5::{Digest, Md5};
use report::{Goal, row};
use servers::{ACCESS_KEY, S3sFs, SECRET_KEY, free_port};

/// The bucket every uploader writes to (under its own prefix).
const BUCKET: &str = "drain";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One uploader's figures over the rounds.
#[derive(Default)]
struct Runs {
    seconds: Vec<f64>,
    cpu: Vec<f64>,
}

impl Runs {
    fn push(&mut self, (seconds, cpu): (f64, f64)) {
        self.seconds.push(seconds);
        self.cpu.push(cpu);
    }

    /// Median seconds and median CPU seconds.
    fn medians(&mut self) -> (f64, f64) {
        (report::median(&mut self.seconds), report::median(&mut self.cpu))
    }
}

fn main() {
    let rounds = env("DRAIN_ROUNDS", 3);
    let server = S3sFs::start(BUCKET);
    let dir = tempfile::tempdir_in(workspace().join("target")).unwrap();
    let cache = dir.path().join("plugin-cache");
    for (label, size, count, in_flight) in [
        ("64 KiB", 64 << 10, env("DRAIN_SMALL_BLOCKS", 2000), 8),
        ("16 MiB", 16 << 20, env("DRAIN_LARGE_BLOCKS", 40), 4),
    ] {
        // The files the native uploader and rclone read: a store as blockferry writes it.
        let source = dir.path().join(format!("source-{}", size));
        fill_store(&source, size, count);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&source)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "blk"))
            .collect();
        files.sort();
        let (mut blockferry, mut native, mut rclone) = (Runs::default(), Runs::default(), Runs::default());
        for round in 0..rounds {
            let run = dir.path().join(format!("run-{size}-{round}"));
            fill_store(&run.join("store"), size, count);
            let prefix = format!("blockferry/{size}/{round}/");
            blockferry.push(drain_with_blockferry(&run, &cache, &server, &prefix, in_flight));
            assert_eq!(stored(&server, &prefix), count, "blockferry stored every block");

            let prefix = format!("native/{size}/{round}/");
            native.push(upload_natively(&files, &server, &prefix, in_flight));
            assert_eq!(stored(&server, &prefix), count, "object_store stored every block");

            let prefix = format!("rclone/{size}/{round}/");
            rclone.push(copy_with_rclone(&source, &server, &prefix, in_flight));
            assert_eq!(stored(&server, &prefix), count, "rclone stored every block");
        }
        let mib = (size * count) as f64 / (1 << 20) as f64;
        let (bf, bf_cpu) = blockferry.medians();
        let (os, os_cpu) = native.medians();
        let (rc, rc_cpu) = rclone.medians();
        for (who, s, cpu, runs) in [
            ("blockferry run", bf, bf_cpu, &blockferry),
            ("object_store", os, os_cpu, &native),
            ("rclone copy", rc, rc_cpu, &rclone),
        ] {
            println!(
                "{label} x {count}, {in_flight} in flight, {who}: {:.0} blocks/s, {:.1} MiB/s, CPU {cpu:.2} s \
                 (medians of {rounds}; seconds {})",
                count as f64 / s,
                mib / s,
                runs.seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ")
            );
        }
        let per_s = |s: f64| count as f64 / s;
        let drain = format!("product-path drain, {count} × {label}, {in_flight} in flight: blockferry run");
        let target = if size < (1 << 20) { 0.9 } else { 1.0 };
        row(
            &format!("{drain} vs object_store reading the same files"),
            per_s(bf),
            "blocks/s",
            Some(per_s(os)),
            Goal::RatioAtLeast(target),
        );
        row(&format!("{drain} vs rclone copy"), per_s(bf), "blocks/s", Some(per_s(rc)), Goal::RatioAtLeast(1.0));
        if size < (1 << 20) {
            row(
                &format!("host CPU of that drain, blockferry run vs object_store ({label})"),
                bf_cpu,
                "s",
                Some(os_cpu),
                Goal::RatioAtMost(1.5),
            );
        }
    }
}

/// The workspace root.
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A store in `dir` of `count` blocks of `size` bytes as blockferry writes
/// them (block file and `.meta`), pending in bucket `cloud`; without fsyncs,
/// to be quick to prepare.
fn fill_store(dir: &Path, size: usize, count: usize) {
    std::fs::create_dir_all(dir.join(".tmp")).unwrap();
    let buckets = ["cloud".to_string()];
    for n in 0..count as u64 {
        let mut bytes = vec![0u8; size];
        let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let file = format!("{n:036}.blk");
        let meta = BlockMeta::new(n, file.clone(), size as u64, &Md5::digest(&bytes), &buckets);
        std::fs::write(dir.join(&file), &bytes).unwrap();
        std::fs::write(dir.join(format!("{n:036}.meta")), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    }
}

/// How many objects the server holds under `prefix`.
fn stored(server: &S3sFs, prefix: &str) -> usize {
    let dir = server.root.join(BUCKET).join(prefix);
    std::fs::read_dir(&dir).map(|d| d.flatten().filter(|e| e.path().is_file()).count()).unwrap_or(0)
}

/// CPU seconds (user + system) of the children this process has waited for.
fn children_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Runs `command` to completion: its seconds and CPU seconds. Panics,
/// with its output, when it fails.
fn timed(mut command: Command, what: &str) -> (f64, f64) {
    let cpu = children_cpu();
    let started = Instant::now();
    let out = command.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (seconds, children_cpu() - cpu)
}

/// `blockferry run --exit-when-drained` on the store in `run/store`, one S3
/// bucket writing under `prefix` with `in_flight` uploads at once.
fn drain_with_blockferry(run: &Path, cache: &Path, server: &S3sFs, prefix: &str, in_flight: usize) -> (f64, f64) {
    let plugin = workspace().join("target/wasm32-wasip2/plugin/blockferry_s3.wasm");
    assert!(plugin.exists(), "{} is missing: run scripts/build-plugins.sh first", plugin.display());
    let config = format!(
        "credentials = \"credentials.toml\"\n[store]\ndir = \"store\"\n[plugins]\ncache_dir = {:?}\n\
         [[buckets]]\nname = \"cloud\"\nplugin = {:?}\nconcurrency = {in_flight}\n\
         [buckets.settings]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nregion = \"us-east-1\"\n\
         addressing = \"path\"\nprefix = \"{prefix}\"\n",
        cache.display().to_string(),
        plugin.display().to_string(),
        server.endpoint(),
    );
    std::fs::write(run.join("blockferry.toml"), config).unwrap();
    servers::write_s3_credentials(run, &["cloud"]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_blockferry"));
    command
        .args(["run", "--config", run.join("blockferry.toml").to_str().unwrap(), "--exit-when-drained"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "warn");
    timed(command, "blockferry run")
}

/// `files` uploaded with `object_store` under `prefix`, `in_flight` at once,
/// each read from disk when its upload starts.
fn upload_natively(files: &[PathBuf], server: &S3sFs, prefix: &str, in_flight: usize) -> (f64, f64) {
    use futures::StreamExt;
    use object_store::aws::AmazonS3Builder;
    use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let store = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_unsigned_payload(true)
            .build()
            .unwrap(),
    );
    let cpu = report::cpu_seconds();
    let started = Instant::now();
    runtime.block_on(async {
        let results: Vec<_> = futures::stream::iter(files)
            .map(|file| {
                let store = store.clone();
                async move {
                    let bytes = tokio::fs::read(file).await.unwrap();
                    let name = file.file_name().unwrap().to_string_lossy();
                    let path = object_store::path::Path::from(format!("{prefix}{name}"));
                    let options = PutOptions { mode: PutMode::Create, ..Default::default() };
                    store.put_opts(&path, PutPayload::from(bytes), options).await
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        assert!(results.iter().all(|r| r.is_ok()), "object_store: {:?}", results.iter().find(|r| r.is_err()));
    });
    (started.elapsed().as_secs_f64(), report::cpu_seconds() - cpu)
}

/// `rclone copy` of the block files in `source` under `prefix`, `--transfers in_flight`.
fn copy_with_rclone(source: &Path, server: &S3sFs, prefix: &str, in_flight: usize) -> (f64, f64) {
    let mut command = Command::new("rclone");
    command
        .args(["copy", source.to_str().unwrap(), &format!(":s3:{BUCKET}/{}", prefix.trim_end_matches('/'))])
        .args(["--include", "*.blk", "--transfers", &in_flight.to_string(), "--config", "/dev/null"])
        .args(["--s3-provider", "Other", "--s3-endpoint", &server.endpoint(), "--s3-region", "us-east-1"])
        .args(["--s3-access-key-id", ACCESS_KEY, "--s3-secret-access-key", SECRET_KEY, "--s3-force-path-style"])
        // rclone's AWS SDK refuses a CA bundle from the environment on a plain-HTTP endpoint.
        .env_remove("AWS_CA_BUNDLE");
    timed(command, "rclone copy (Debian's package `rclone`; scripts/bench.sh installs it)")
}
