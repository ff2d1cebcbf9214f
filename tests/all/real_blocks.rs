//! Real consensus-node blocks (`tests/fixtures/real-blocks`, written by Hiero
//! consensus nodes), byte for byte through everything blockferry does:
//! streamed over gRPC with each item exactly as in the file, stored, uploaded
//! through every provider (fs, s3 on moto, minio on s3s-fs, gcs on
//! fake-gcs-server), published on to a block node, restored, verified and
//! imported — and the same blocks with items at field numbers a newer schema
//! may add. Every result is compared with the decompressed fixture file, read
//! here with `flate2` (not with blockferry's code); bucket objects are read
//! with independent clients (boto3, plain HTTP, the file system).
//!
//! The gRPC peers are also independent: a consensus node and a block node
//! written with grpc-python (`tests/peers/grpc_peer.py`), whose server sends
//! its response headers only with its first response.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::servers::{ACCESS_KEY, FakeGcs, Moto, S3sFs, SECRET_KEY, boto, free_port, wait_for_port};
use crate::common::sidecar::Sidecar;
use crate::common::*;
use blockferry_proto::framing::{encode_block, split_block};
use blockferry_sim::block_node::BlockNode;
use blockferry_sim::files::FUTURE_ITEM_FIELDS;
use blockferry_sim::{read_block_dir, with_future_items};
use bytes::Bytes;
use md5::{Digest, Md5};

/// The buckets of every config here: fs, s3 on moto, minio on s3s-fs, s3 on s3s-fs, gcs.
const BUCKETS: [&str; 5] = ["fs", "s3", "minio", "s3-on-s3s", "gcs"];

/// The fixture sets: (directory, blocks).
const SETS: [(&str, u64); 2] = [("CN_11_12_TSS_SCHNORR", 6), ("WRB_SOLO_4N", 5)];

fn fixtures(set: &str) -> PathBuf {
    workspace().join("tests/fixtures/real-blocks").join(set)
}

/// Block `n` of `set`: the fixture file, gunzipped.
fn fixture(set: &str, n: u64) -> Vec<u8> {
    gunzip(&fs::read(fixtures(set).join(format!("{n}.blk.gz"))).unwrap())
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// The field number of each top-level item of a serialized block, read by hand.
fn item_fields(block: &[u8]) -> Vec<u64> {
    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*i];
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                return v;
            }
        }
    }
    let (mut i, mut out) = (0, Vec::new());
    while i < block.len() {
        assert_eq!(varint(block, &mut i), 1 << 3 | 2, "Block.items");
        let len = varint(block, &mut i) as usize;
        let mut j = i;
        out.push(varint(&block[..i + len], &mut j) >> 3);
        i += len;
    }
    out
}

/// `dir/credentials.toml` with the S3 keys for buckets `s3` and `minio`.
fn credentials(dir: &Path) {
    let keys = format!("access_key_id = {ACCESS_KEY:?}\nsecret_access_key = {SECRET_KEY:?}\n");
    let path = dir.join("credentials.toml");
    fs::write(&path, format!("[buckets.s3]\n{keys}[buckets.minio]\n{keys}[buckets.s3-on-s3s]\n{keys}")).unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Every server a bucket of the config needs, started for one test.
struct Buckets {
    moto: Moto,
    s3s: S3sFs,
    gcs: FakeGcs,
}

impl Buckets {
    fn start() -> Buckets {
        let moto = Moto::start();
        moto.create_bucket("blocks");
        let gcs = FakeGcs::start();
        gcs.create_bucket("blocks");
        Buckets { moto, s3s: S3sFs::start("blocks"), gcs }
    }

    /// The `[[buckets]]` tables of [`BUCKETS`]: fs into `dir/fs`, s3 on moto, minio and s3 on s3s-fs, gcs.
    fn tables(&self, dir: &Path) -> String {
        fs::create_dir_all(dir.join("fs")).unwrap();
        let table = |name: &str, plugin: &str, extra: &str| {
            format!(
                "[[buckets]]\nname = {name:?}\nplugin = {:?}\ncall_timeout_ms = 60000\n{extra}",
                plugin_path(plugin).display().to_string()
            )
        };
        [
            table("fs", "blockferry_fs", "directory = \"fs\"\n"),
            table(
                "s3",
                "blockferry_s3",
                &format!(
                    "[buckets.settings]\nendpoint = {:?}\nbucket = \"blocks\"\nregion = \"us-east-1\"\naddressing = \"path\"\n",
                    self.moto.endpoint()
                ),
            ),
            table(
                "minio",
                "blockferry_minio",
                &format!("[buckets.settings]\nendpoint = {:?}\nbucket = \"blocks\"\n", self.s3s.endpoint()),
            ),
            // The s3 provider on s3s-fs too (it checks signatures), under its own prefix.
            table(
                "s3-on-s3s",
                "blockferry_s3",
                &format!(
                    "key_template = \"s3/{{number}}{{ext}}\"\n[buckets.settings]\nendpoint = {:?}\nbucket = \"blocks\"\n\
                     region = \"us-east-1\"\naddressing = \"path\"\n",
                    self.s3s.endpoint()
                ),
            ),
            table(
                "gcs",
                "blockferry_gcs",
                &format!("[buckets.settings]\nendpoint = {:?}\nbucket = \"blocks\"\n", self.gcs.endpoint()),
            ),
        ]
        .concat()
    }

    /// Requires every bucket to hold `want(n)` for blocks `0..count` under
    /// key `{n:036}{ext}` (gunzipped when `ext` is `.blk.gz`), read with
    /// independent clients.
    fn hold(&self, dir: &Path, count: u64, ext: &str, want: impl Fn(u64) -> Vec<u8>) {
        let plain = |bytes: Vec<u8>| if ext == ".blk.gz" { gunzip(&bytes) } else { bytes };
        let keys: Vec<String> = (0..count).map(|n| format!("{n:036}{ext}")).collect();
        // boto3 prints the MD5 of each object's body.
        let script = format!(
            "for k in {keys:?}:\n    print(hashlib.md5(s3.get_object(Bucket='blocks', Key=k)['Body'].read()).hexdigest())"
        );
        let moto_md5s: Vec<String> = boto(&self.moto.endpoint(), &script).lines().map(str::to_string).collect();
        for (n, key) in (0..count).zip(&keys) {
            let want = want(n);
            let fs_object = fs::read(dir.join("fs").join(key)).unwrap_or_else(|e| panic!("fs {key}: {e}"));
            assert_eq!(plain(fs_object), want, "fs bucket, block {n}");
            let s3s_object = fs::read(self.s3s.root.join("blocks").join(key)).unwrap();
            assert_eq!(plain(s3s_object.clone()), want, "minio bucket (s3s-fs), block {n}");
            let s3_on_s3s = fs::read(self.s3s.root.join("blocks/s3").join(key)).unwrap();
            assert_eq!(s3_on_s3s, s3s_object, "s3 bucket (s3s-fs), block {n}");
            // moto holds what s3s-fs holds: the store's file, whatever its compression.
            assert_eq!(moto_md5s[n as usize], hex::encode(Md5::digest(&s3s_object)), "s3 bucket (moto), block {n}");
            let gcs_object = self.gcs.download("blocks", key).unwrap_or_else(|| panic!("gcs {key} missing"));
            assert_eq!(plain(gcs_object), want, "gcs bucket, block {n}");
        }
    }
}

/// `dir/blockferry.toml`: `mode`, a store with `compression`, the buckets,
/// a block node on `node_port`.
fn config(dir: &Path, mode: &str, compression: &str, buckets: &str, node_port: Option<u16>) -> PathBuf {
    let path = dir.join("blockferry.toml");
    let mut text = String::new();
    if !buckets.is_empty() {
        credentials(dir);
        text += "credentials = \"credentials.toml\"\n";
    }
    text += &format!(
        "mode = {mode:?}\n[store]\ndir = \"blocks\"\ncompression = {compression:?}\n\
         [plugins]\ncache_dir = {:?}\n[publish]\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n{buckets}",
        workspace().join("target/test-plugin-cache").display().to_string()
    );
    if let Some(port) = node_port {
        text += &format!("[[block_nodes]]\naddress = \"127.0.0.1\"\nport = {port}\n");
    }
    fs::write(&path, text).unwrap();
    path
}

/// `blockferry ARGS --config CONFIG`, off the async runtime.
async fn run(config: &Path, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--config".into(), config.display().to_string()]);
    tokio::task::spawn_blocking(move || blockferry(&all.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

fn ok(out: Output) -> String {
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

/// Block `n`'s file in the store `dir`, as stored.
fn stored(dir: &Path, n: u64, ext: &str) -> Vec<u8> {
    fs::read(dir.join(format!("{n:036}{ext}"))).unwrap_or_else(|e| panic!("stored block {n}: {e}"))
}

/// The items of block `n` of the block node, joined into a serialized block.
fn published(node: &BlockNode, n: u64) -> Vec<u8> {
    encode_block(node.blocks().get(&n).unwrap_or_else(|| panic!("the block node has no block {n}")))
}

/// Streams `set` into a sidecar storing with `compression`, uploading to
/// every provider and publishing to a block node whose gRPC server sends its
/// headers late; then restores and deep-verifies. Everything byte for byte.
async fn through_everything(set: &str, count: u64, compression: &str, ext: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let buckets = Buckets::start();
    let node = BlockNode::builder().late_headers(true).start().await.unwrap();
    let config = config(dir, "file-and-bucket-and-grpc", compression, &buckets.tables(dir), Some(node.addr().port()));
    let replay = fixtures(set).display().to_string();
    let t = ok(run(&config, &["run", "--replay", &replay, "--exit-when-drained"]).await);
    for bucket in BUCKETS {
        assert!(t.contains(&format!("bucket {bucket}: {count} uploaded")), "{set}: {t}");
    }
    let store = dir.join("blocks");
    for n in 0..count {
        let want = fixture(set, n);
        let file = stored(&store, n, ext);
        assert_eq!(if ext == ".blk.gz" { gunzip(&file) } else { file }, want, "{set}: stored block {n}");
        assert_eq!(published(&node, n), want, "{set}: block {n} at the block node");
    }
    // Footer at field 12 right before the proof (field 9), as the node wrote it.
    let fields = item_fields(&fixture(set, 0));
    assert_eq!(&fields[fields.len() - 2..], [12, 9], "{set}");
    buckets.hold(dir, count, ext, |n| fixture(set, n));

    // Restore from each bucket and verify --deep: identical, clean.
    for bucket in BUCKETS {
        let into = dir.join(format!("restored-{bucket}"));
        let range = format!("0..{count}");
        let t = ok(run(&config, &["restore", "--from", bucket, "--range", &range, into.to_str().unwrap()]).await);
        assert!(t.contains(&format!("{count} restored")), "{set} from {bucket}: {t}");
        for n in 0..count {
            assert_eq!(stored(&into, n, ext), stored(&store, n, ext), "{set}: block {n} restored from {bucket}");
        }
    }
    let t = ok(run(&config, &["verify", "--deep"]).await);
    for bucket in BUCKETS {
        assert!(t.contains(&format!("bucket {bucket}: {count} matching, 0 missing, 0 mismatched")), "{set}: {t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consensus_node_blocks_through_everything_byte_for_byte() {
    let (set, count) = SETS[0];
    through_everything(set, count, "none", ".blk").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrapped_record_blocks_through_everything_gzipped_byte_for_byte() {
    let (set, count) = SETS[1];
    through_everything(set, count, "gzip", ".blk.gz").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn items_a_newer_schema_adds_pass_through_untouched() {
    // The real blocks with items at unknown field numbers (≥ 20, and tags of two bytes).
    let (set, count) = SETS[0];
    let blocks: Vec<Vec<Bytes>> =
        read_block_dir(&fixtures(set)).unwrap().iter().map(|b| with_future_items(b)).collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let future = dir.join("future");
    fs::create_dir_all(&future).unwrap();
    for (n, items) in blocks.iter().enumerate() {
        fs::write(future.join(format!("{n}.blk")), encode_block(items)).unwrap();
    }
    let want = |n: u64| fs::read(future.join(format!("{n}.blk"))).unwrap();
    let fields = item_fields(&want(0));
    for field in FUTURE_ITEM_FIELDS.iter().chain(&[21]) {
        assert!(fields.contains(&u64::from(*field)), "block 0 carries an item at field {field}");
    }
    let buckets = Buckets::start();
    let node = BlockNode::builder().start().await.unwrap();
    let config = config(dir, "file-and-bucket-and-grpc", "none", &buckets.tables(dir), Some(node.addr().port()));
    let t = ok(run(&config, &["run", "--replay", future.to_str().unwrap(), "--exit-when-drained"]).await);
    assert!(t.contains(&format!("bucket gcs: {count} uploaded")), "{t}");
    for n in 0..count {
        assert_eq!(stored(&dir.join("blocks"), n, ".blk"), want(n), "stored block {n}");
        assert_eq!(published(&node, n), want(n), "block {n} at the block node");
    }
    buckets.hold(dir, count, ".blk", want);
}

#[test]
fn import_takes_a_consensus_nodes_block_files_byte_for_byte() {
    for (set, count) in SETS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // As a consensus node's writer names them: 36 digits, under block-<shard.realm.num>.
        let files = dir.join("node/block-0.0.3");
        fs::create_dir_all(&files).unwrap();
        for n in 0..count {
            fs::copy(fixtures(set).join(format!("{n}.blk.gz")), files.join(format!("{n:036}.blk.gz"))).unwrap();
            fs::write(files.join(format!("{n:036}.mf")), b"").unwrap();
        }
        let config = dir.join("blockferry.toml");
        fs::write(&config, "mode = \"file\"\n[store]\ndir = \"blocks\"\n").unwrap();
        let out = blockferry(&["import", dir.join("node").to_str().unwrap(), "--config", config.to_str().unwrap()]);
        let t = text(&out);
        assert!(out.status.success(), "{set}: {t}");
        for n in 0..count {
            assert_eq!(stored(&dir.join("blocks"), n, ".blk"), fixture(set, n), "{set}: imported block {n}");
        }
    }
}

/// `python3 tests/peers/grpc_peer.py ARGS` (grpc-python), fails the test if
/// grpc-python is missing.
fn peer(args: &[&str]) -> Command {
    let script = workspace().join("tests/peers/grpc_peer.py");
    let check = Command::new("python3").args(["-c", "import grpc"]).output().expect("python3");
    assert!(check.status.success(), "grpc-python is missing: install it with scripts/install-test-servers.sh");
    let mut command = Command::new("python3");
    command.arg(script).args(args);
    command
}

/// The python block node on a free port, writing blocks to `out`.
struct PythonBlockNode {
    port: u16,
    child: Child,
}

impl PythonBlockNode {
    fn start(out: &Path, log: &Path) -> PythonBlockNode {
        let port = free_port();
        let mut child = peer(&["serve", &port.to_string(), out.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, "the grpc-python block node", &mut child, log);
        PythonBlockNode { port, child }
    }
}

impl Drop for PythonBlockNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn independent_grpc_peers_a_python_consensus_node_and_a_python_block_node() {
    let (set, count) = SETS[0];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let received = dir.join("received");
    let node = PythonBlockNode::start(&received, &dir.join("node.log"));
    let config = config(dir, "grpc", "none", "", Some(node.port));
    let sidecar = Sidecar::start(&config, dir, &[]);

    // A fresh store knows no block: its EndOfStream says -1 (u64::MAX), so a
    // publisher following the protocol starts at block 0; and garbage that
    // is not oversized gets no hint about the size limit.
    let endpoint = format!("127.0.0.1:{}", sidecar.port);
    let out = peer(&["garbage", &endpoint]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("end_of_stream 2 {}", u64::MAX));
    let log = sidecar.log();
    assert!(log.contains("unreadable request"), "{log}");
    assert!(!log.contains("hard_limit_bytes"), "no size hint for a request that is not too large: {log}");

    // The python consensus node streams the real blocks, item for item.
    let out = peer(&["publish", &endpoint, fixtures(set).to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), sidecar.log());
    let acks: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(acks, (0..count).map(|n| format!("ack {n}")).collect::<Vec<_>>());
    for n in 0..count {
        assert_eq!(stored(&dir.join("blocks"), n, ".blk"), fixture(set, n), "stored block {n}");
    }

    // blockferry publishes them on to the python block node, whose server
    // sends its response headers only with its first acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..count).any(|n| !received.join(format!("{n}.blk")).exists()) {
        assert!(Instant::now() < deadline, "the python block node did not get every block: {}", sidecar.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in 0..count {
        assert_eq!(fs::read(received.join(format!("{n}.blk"))).unwrap(), fixture(set, n), "block {n} at the node");
    }
    let out = sidecar.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_block_files_split_and_join_to_themselves() {
    for (set, count) in SETS {
        for n in 0..count {
            let bytes = Bytes::from(fixture(set, n));
            let items = split_block(&bytes).unwrap();
            assert_eq!(encode_block(&items), bytes, "{set} block {n}");
        }
    }
}

#[test]
fn a_port_in_use_ends_the_start_up_cleanly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("blockferry.toml");
    // A streaming mode with a bucket: plugin instances and the publisher are
    // what a start-up error must not leave half-started.
    fs::create_dir_all(tmp.path().join("fs")).unwrap();
    let bucket = format!(
        "[[buckets]]\nname = \"fs\"\nplugin = {:?}\ndirectory = \"fs\"\n",
        plugin_path("blockferry_fs").display().to_string()
    );
    fs::write(
        &config,
        format!(
            "mode = \"file-and-bucket-and-grpc\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n{bucket}\
             [[block_nodes]]\naddress = \"127.0.0.1\"\nport = 9\n",
            workspace().join("target/test-plugin-cache").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blockferry"))
        .args(["run", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("cannot listen for the consensus node on") && t.contains("(ingest.listen)"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
