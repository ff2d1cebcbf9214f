//! The bucket read path inside the host: old blocks served to a block node
//! from a bucket once local retention deleted them, each bucket's health at
//! start-up (a bad one marks the host not ready while the others upload), the
//! cleanup of abandoned multipart uploads, the version id in `.meta`, and
//! providers built before the reader existed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::servers::{ACCESS_KEY, Moto, S3sFs, SECRET_KEY, boto};
use crate::common::sidecar::{Sidecar, http_get as get};
use crate::common::*;
use blockferry::buffer::{Block, BlockBuffer};
use blockferry::config::{BlockNodeConfig, BufferConfig, Compression, PublishConfig, UploadConfig};
use blockferry::plugin::CallError;
use blockferry::publish::Publisher;
use blockferry::store::BlockStore;
use blockferry::upload::{BucketArchive, Target, UploadManager};
use blockferry_proto::EndStreamCode;
use blockferry_proto::PublishStreamResponse;
use blockferry_proto::api::publish_stream_response::{BehindPublisher, Response};
use blockferry_sim::block_node::{Action, BlockNode, Trigger};
use blockferry_sim::{PublisherOptions, generate_block, publish};

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn behind(block_number: u64) -> PublishStreamResponse {
    PublishStreamResponse { response: Some(Response::NodeBehindPublisher(BehindPublisher { block_number })) }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_node_behind_local_retention_gets_old_blocks_from_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlockStore::open(dir.path().join("store"), Compression::Gzip).unwrap());
    std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
    let runtime = runtime();
    let mut s = spec("archive");
    s.directory = Some(dir.path().join("bucket"));
    let client = blockferry::plugin::BucketClient::open(load(&runtime, "blockferry_fs"), s).await.unwrap();
    let target = Target {
        name: "archive".into(),
        client: Arc::new(client),
        key: Arc::new(|n, ext| format!("history/{n:036}{ext}")),
        concurrency: 4,
        prefix: "history/".into(),
    };
    let uploads = Arc::new(UploadManager::start(store.clone(), vec![target], UploadConfig::default()).unwrap());

    // Blocks 0-9 are stored and uploaded; local retention then deletes 0-5.
    let blocks: Vec<Arc<Block>> = (0..10).map(|n| Arc::new(Block::new(n, generate_block(n, 8192)))).collect();
    for b in &blocks {
        store.write_block(b.number, &b.encode(), &["archive".to_string()]).unwrap();
        uploads.block_stored(b.number);
    }
    wait_for("every block is safe in the bucket", || {
        (0..10).all(|n| store.read_meta(n).is_ok_and(|m| m.status("archive").is_safe()))
    })
    .await;
    for n in 0..6 {
        store.delete_block(&store.read_meta(n).unwrap()).unwrap();
    }

    let node = BlockNode::start().await;
    // Once the node has block 9 it says it is behind at block 1: blocks 2-5
    // come from the bucket (gzip objects, served as received).
    node.script(Trigger::OnBlockEnd(9).then(Action::Respond(behind(1))));
    let config = PublishConfig { archive_max_blocks_behind: 7, retry_delay_ms: 60_000, ..PublishConfig::default() };
    let buffer = Arc::new(BlockBuffer::new(BufferConfig::default(), true));
    let archive = Arc::new(BucketArchive::new(uploads.clone(), store.ext(), 1 << 20));
    let nodes = vec![BlockNodeConfig {
        address: "127.0.0.1".into(),
        port: node.addr().port(),
        priority: 0,
        soft_limit_bytes: 2_097_152,
        hard_limit_bytes: 6_292_480,
    }];
    let publisher = Publisher::start(config, nodes, buffer.clone(), Some(store.clone()), Some(archive));
    for b in &blocks[6..] {
        buffer.insert(b.clone());
    }
    wait_for("blocks 2-5 arrive from the bucket", || (2..6).all(|n| node.blocks().contains_key(&n))).await;
    for n in 2..6 {
        assert_eq!(node.blocks()[&n], blocks[n as usize].items, "block {n} as the consensus node sent it");
    }
    let order = node.block_order();
    assert_eq!(&order[..4], &[6, 7, 8, 9], "{order:?}");
    let from = order.iter().position(|n| *n == 2).unwrap();
    assert_eq!(&order[from..from + 8], &[2, 3, 4, 5, 6, 7, 8, 9], "streamed on from block 2: {order:?}");
    let reads = publisher.counters().get("archive_reads_total", &format!("127.0.0.1:{}", node.addr().port()));
    assert_eq!(reads, 4, "one bucket read per old block");

    // Block 1 is 8 blocks behind the newest, beyond the bound of 7: TOO_FAR_BEHIND.
    node.respond_now(behind(0));
    wait_for("EndStream arrives", || !node.end_streams().is_empty()).await;
    assert_eq!(node.end_streams()[0].code, EndStreamCode::TooFarBehind);
    assert!(!node.blocks().contains_key(&1));
    publisher.shutdown().await;
    uploads.shutdown().await;
}

/// A config with `buckets` (TOML `[[buckets]]` tables) and `extra` top-level tables.
fn config(dir: &Path, buckets: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("blockferry.toml");
    std::fs::write(
        &path,
        format!(
            "credentials = \"credentials.toml\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
             [http]\nhistory_sample_secs = 1\n{extra}\n{buckets}",
            workspace().join("target/test-plugin-cache").display().to_string(),
        ),
    )
    .unwrap();
    path
}

fn credentials(dir: &Path, text: &str) {
    let creds = dir.join("credentials.toml");
    std::fs::write(&creds, text).unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// An `s3` bucket named `name` (`extra`: more keys of its table).
fn s3_bucket(name: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
    format!(
        "[[buckets]]\nname = \"{name}\"\nplugin = {:?}\ncall_timeout_ms = 900\n{extra}\
         [buckets.settings]\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\naddressing = \"path\"\n",
        plugin_path("blockferry_s3").display().to_string()
    )
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_with_refused_credentials_is_unhealthy_at_start_up_while_another_keeps_uploading() {
    let s3 = S3sFs::start("blocks");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
    credentials(
        dir.path(),
        &format!("[buckets.cloud]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"not-the-secret\"\n"),
    );
    let buckets = format!(
        "[[buckets]]\nname = \"local\"\nplugin = {:?}\ndirectory = \"bucket\"\n{}",
        plugin_path("blockferry_fs").display().to_string(),
        s3_bucket("cloud", &s3.endpoint(), "blocks", ""),
    );
    let sidecar = Sidecar::start(&config(dir.path(), &buckets, ""), dir.path(), &[]);
    wait_for("the bad bucket is reported", || get(&sidecar.url("/readyz")).1.contains("bucket cloud is unhealthy"))
        .await;
    let (status, body) = get(&sidecar.url("/readyz"));
    assert_eq!(status, 503);
    assert!(!body.contains("bucket local"), "the good bucket is healthy: {body}");
    let log = sidecar.log();
    assert!(log.contains("bucket unhealthy") && log.contains("cloud"), "{log}");
    assert!(!log.contains("not-the-secret"), "the secret is never logged");

    assert!(publish(&PublisherOptions::new(sidecar.endpoint(), 0, 5, 4096)).await.unwrap().complete());
    wait_for("the good bucket has every block", || {
        (0..5).all(|n| dir.path().join(format!("bucket/{n:036}.blk")).exists())
    })
    .await;
    let scraped = get(&sidecar.url("/metrics")).1;
    assert_eq!(metric(&scraped, "blockferry_bucket_healthy{bucket=\"local\",provider=\"fs\"}"), Some(1.0), "{scraped}");
    assert_eq!(metric(&scraped, "blockferry_bucket_healthy{bucket=\"cloud\",provider=\"s3\"}"), Some(0.0), "{scraped}");
    let api: serde_json::Value = serde_json::from_str(&get(&sidecar.url("/api/status")).1).unwrap();
    let cloud = api["buckets"].as_array().unwrap().iter().find(|b| b["name"] == "cloud").unwrap();
    assert_eq!(cloud["health"], "unhealthy");
    assert!(cloud["health_error"].as_str().unwrap().contains("permanent"), "{cloud}");

    // The fixed credentials are picked up by a reload, which checks the bucket
    // again at once (not at the next 60 s pass): ready, and the held blocks go up.
    credentials(
        dir.path(),
        &format!("[buckets.cloud]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
    );
    wait_for("ready once the bucket is fixed", || get(&sidecar.url("/readyz")).0 == 200).await;
    wait_for("the fixed bucket has every block", || {
        (0..5).all(|n| s3.root.join(format!("blocks/{n:036}.blk")).exists())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_multipart_upload_is_aborted_at_the_next_start_and_versions_are_recorded() {
    let moto = Moto::start();
    moto.create_bucket("blocks");
    boto(
        &moto.endpoint(),
        "s3.put_bucket_versioning(Bucket='blocks', VersioningConfiguration={'Status': 'Enabled'})\n\
         s3.create_multipart_upload(Bucket='blocks', Key='net/000000000000000000000000000000000007.blk')\n\
         s3.create_multipart_upload(Bucket='blocks', Key='elsewhere/not-ours')",
    );
    // What a process killed mid-upload leaves, older than the bound (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    credentials(
        dir.path(),
        &format!("[buckets.cloud]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
    );
    let buckets = s3_bucket("cloud", &moto.endpoint(), "blocks", "key_template = \"net/{number}{ext}\"\n");
    let sidecar =
        Sidecar::start(&config(dir.path(), &buckets, "[upload]\nabandoned_upload_age_secs = 1\n"), dir.path(), &[]);
    let open_uploads = || {
        boto(
            &moto.endpoint(),
            "print(json.dumps([u['Key'] for u in s3.list_multipart_uploads(Bucket='blocks').get('Uploads', [])]))",
        )
    };
    wait_for("the abandoned upload is aborted", || !open_uploads().contains("net/")).await;
    assert!(open_uploads().contains("elsewhere/not-ours"), "an upload outside the key prefix is left alone");
    assert!(sidecar.log().contains("aborted an abandoned upload"), "{}", sidecar.log());
    let scraped = get(&sidecar.url("/metrics")).1;
    assert_eq!(
        metric(&scraped, "blockferry_abandoned_uploads_aborted_total{bucket=\"cloud\",provider=\"s3\"}"),
        Some(1.0),
        "{scraped}"
    );

    // Each upload's version id (versioning is on) is kept in the block's `.meta`.
    assert!(publish(&PublisherOptions::new(sidecar.endpoint(), 0, 3, 4096)).await.unwrap().complete());
    let meta = |n: u64| std::fs::read_to_string(dir.path().join(format!("blocks/{n:036}.meta"))).unwrap_or_default();
    wait_for("3 uploads recorded", || (0..3).all(|n| meta(n).contains("\"uploaded\""))).await;
    for n in 0..3 {
        let recorded: serde_json::Value = serde_json::from_str(&meta(n)).unwrap();
        let version = recorded["buckets"]["cloud"]["version"].as_str().expect("a version id").to_string();
        let key = format!("net/{n:036}.blk");
        let head = boto(&moto.endpoint(), &format!("print(s3.head_object(Bucket='blocks', Key={key:?})['VersionId'])"));
        assert_eq!(version, head.trim(), "block {n}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_built_before_the_reader_keeps_uploading_and_says_what_it_cannot_do() {
    let out = blockferry(&["plugin", "check", plugin_path("blockferry_old_contract").to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("blockferry:uploader/provider@0.1.0"), "{t}");
    assert!(t.contains("reads:    no") && t.contains("restore"), "{t}");
    let out = blockferry(&["plugin", "check", plugin_path("blockferry_s3").to_str().unwrap()]);
    assert!(text(&out).contains("reading-provider@0.1.3") && text(&out).contains("reads:    yes"), "{}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let mut s = spec("old");
    s.directory = Some(dir.path().to_path_buf());
    let client = blockferry::plugin::BucketClient::open(load(&runtime, "blockferry_old_contract"), s).await.unwrap();
    assert!(!client.can_read());
    let body = bytes(1000, 7);
    put(&client, 1, "blocks/1.blk", &body).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("blocks/1.blk")).unwrap(), body, "uploads work as before");
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, CallError::NoReader { .. }), "{err:?}");
    assert!(err.to_string().contains("reading-provider"), "says the fix: {err}");
}
