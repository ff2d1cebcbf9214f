//! HTTPS for buckets: every emulator (s3s-fs, moto, fake-gcs-server) behind
//! a TLS terminator whose certificates come from a private CA made at test
//! time. Uploads and reads over HTTPS with the CA in `tls_ca_file`; mutual
//! TLS; refused certificates (unknown CA, expired, wrong name, no client
//! certificate) as permanent errors that name the fix, while network errors
//! during a handshake stay transient; the egress policy over HTTPS; kept-alive
//! connections counted at the terminator; the `tls_*` config keys; the system
//! trust store (`tls_system_roots`, the real binary with `SSL_CERT_FILE`); and the
//! real `blockferry run` reloading a fixed CA file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::servers::{FakeGcs, Moto, S3sFs, serve_on_loopback, write_s3_credentials};
use crate::common::sidecar::Sidecar;
use crate::common::tls::{FrontOptions, TestCa, TlsFront, bucket_tls};
use crate::common::*;
use blockferry::config::{Config, ConfigError};
use blockferry::conformance::SuiteOptions;
use blockferry::plugin::tls::BucketTls;
use blockferry::plugin::{BlockSink, BucketClient, Outcome, PluginRuntime, SinkTarget};
use blockferry_sim::{PublisherOptions, publish};
use futures::StreamExt;

/// Settings of an S3-style bucket at `endpoint` (path-style, test keys, fast retries).
fn s3_settings(endpoint: &str, bucket: &str) -> Vec<(String, String)> {
    let retries = [("retry_max_attempts", "3"), ("retry_base_delay_ms", "20"), ("retry_max_delay_ms", "100")];
    crate::s3_provider::settings(endpoint, bucket, &retries)
}

/// Opens bucket `name` with `plugin`, `settings` and the TLS client `tls`.
async fn open(
    runtime: &PluginRuntime,
    plugin: &str,
    name: &str,
    settings: Vec<(String, String)>,
    tls: BucketTls,
) -> BucketClient {
    let mut spec = spec(name);
    spec.settings = settings;
    spec.call_timeout = Duration::from_secs(60);
    spec.tls = tls;
    BucketClient::open(load(runtime, plugin), spec).await.unwrap_or_else(|e| panic!("open {plugin}: {e}"))
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// The bytes of the object under `key`, read through the plugin's reader.
async fn read_back(client: &BucketClient, key: &str) -> Vec<u8> {
    let sink = BlockSink::new(SinkTarget::Memory(Vec::new()), 64 << 20);
    let (_, received) = client.get(key, sink).await.unwrap().unwrap_or_else(|| panic!("{key} is in the bucket"));
    let SinkTarget::Memory(bytes) = received.target else { unreachable!() };
    bytes
}

/// Uploads three blocks through `client`, checks them with `stored` (what the
/// server holds) and reads them back over HTTPS.
async fn upload_and_read_back(client: &BucketClient, stored: impl Fn(&str) -> Option<Vec<u8>>) {
    for n in 0..3u64 {
        let bytes = crate::common::bytes(64 * 1024 + n as usize, n);
        let key = format!("tls/{n:036}.blk");
        assert_eq!(put(client, n, &key, &bytes).await.unwrap(), Outcome::Uploaded, "{}", client.label());
        assert_eq!(stored(&key).as_deref(), Some(&bytes[..]), "{}: block {n} as uploaded", client.label());
        assert_eq!(read_back(client, &key).await, bytes, "{}: block {n} read back", client.label());
        let remote = client.stat(&key).await.unwrap().expect("stat finds the object");
        assert_eq!(remote.size, bytes.len() as u64);
        // Uploading it again is `already-present`: the object was read over HTTPS too.
        assert_eq!(put(client, n, &key, &bytes).await.unwrap(), Outcome::AlreadyPresent);
    }
}

/// The whole conformance suite (the uploader's and the reader's checks) over
/// HTTPS with the TLS client `tls`; `credential_keys`: the settings the
/// wrong-credentials check garbles; `gaps`: checks the emulator itself cannot
/// pass (s3s-fs creates conditionally but not atomically; moto accepts any key).
async fn conforms_over_https(
    runtime: &PluginRuntime,
    plugin: &str,
    settings: Vec<(String, String)>,
    tls: BucketTls,
    credential_keys: &[&str],
    gaps: &[&str],
) {
    let mut spec = spec("conformance");
    spec.settings = settings;
    spec.call_timeout = Duration::from_secs(60);
    spec.tls = tls;
    let credential_keys = credential_keys.iter().map(|k| k.to_string()).collect();
    let opts = SuiteOptions { spec, credential_keys, prefix: format!("https/{plugin}/"), large_block_bytes: 6 << 20 };
    let report = blockferry::conformance::run(load(runtime, plugin), opts).await;
    assert!(report.failed().iter().all(|f| gaps.contains(f)), "{plugin} over HTTPS:\n{}", report.render());
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_and_minio_upload_and_read_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry test CA");
    let runtime = runtime();

    // s3s-fs (it verifies every SigV4 signature, made for the name `localhost`).
    let s3 = S3sFs::start("blocks");
    std::fs::create_dir_all(s3.root.join("reading")).unwrap();
    let front = TlsFront::start(loopback(s3.port), &ca.server(&["localhost"]), FrontOptions::default());
    let tls = bucket_tls(dir.path(), Some(&ca), None);
    for plugin in ["blockferry_s3", "blockferry_minio"] {
        let settings = s3_settings(&front.endpoint(), "blocks");
        let client = open(&runtime, plugin, plugin, settings.clone(), tls.clone()).await;
        let root = s3.root.join("blocks");
        std::fs::remove_dir_all(root.join("tls")).ok();
        upload_and_read_back(&client, |key| std::fs::read(root.join(key)).ok()).await;
    }
    conforms_over_https(
        &runtime,
        "blockferry_s3",
        s3_settings(&front.endpoint(), "reading"),
        tls.clone(),
        &["access_key_id", "secret_access_key"],
        &["concurrent-create"],
    )
    .await;
    assert_eq!(front.handshakes(), front.accepted(), "every connection was HTTPS");

    // moto.
    let moto = Moto::start();
    moto.create_bucket("blocks");
    moto.create_bucket("reading");
    let front = TlsFront::start(moto.addr(), &ca.server(&["localhost"]), FrontOptions::default());
    let client = open(&runtime, "blockferry_s3", "moto", s3_settings(&front.endpoint(), "blocks"), tls.clone()).await;
    let endpoint = moto.endpoint();
    upload_and_read_back(&client, |key| {
        let script =
            format!("print(base64.b64encode(s3.get_object(Bucket='blocks', Key={key:?})['Body'].read()).decode())");
        use base64::Engine;
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(crate::common::servers::boto(&endpoint, &script).trim())
                .unwrap(),
        )
    })
    .await;
    conforms_over_https(
        &runtime,
        "blockferry_s3",
        s3_settings(&front.endpoint(), "reading"),
        tls,
        &["access_key_id", "secret_access_key"],
        &["wrong-credentials"],
    )
    .await;
    assert!(front.handshakes() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_uploads_and_reads_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry test CA");
    let gcs = FakeGcs::start();
    gcs.create_bucket("blocks");
    gcs.create_bucket("reading");
    let front = TlsFront::start(loopback(gcs.port), &ca.server(&["localhost"]), FrontOptions::default());
    let runtime = runtime();
    let tls = bucket_tls(dir.path(), Some(&ca), None);
    let settings = |bucket: &str| {
        settings_with(&[("endpoint", &front.endpoint()), ("bucket", bucket), ("retry_base_delay_ms", "20")], &[])
    };
    let client = open(&runtime, "blockferry_gcs", "gcs", settings("blocks"), tls.clone()).await;
    upload_and_read_back(&client, |key| gcs.download("blocks", key)).await;
    conforms_over_https(&runtime, "blockferry_gcs", settings("reading"), tls, &[], &[]).await;
    assert_eq!(front.handshakes(), front.accepted(), "every connection was HTTPS");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_uploads_share_a_few_kept_alive_tls_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry test CA");
    let s3 = S3sFs::start("many");
    let front = TlsFront::start(loopback(s3.port), &ca.server(&["localhost"]), FrontOptions::default());
    let runtime = runtime();
    let concurrency = 4;
    let mut spec = spec("many");
    spec.settings = s3_settings(&front.endpoint(), "many");
    spec.max_concurrency = concurrency;
    spec.call_timeout = Duration::from_secs(60);
    spec.tls = bucket_tls(dir.path(), Some(&ca), None);
    let client = BucketClient::open(load(&runtime, "blockferry_s3"), spec).await.unwrap();
    let results: Vec<_> = futures::stream::iter(0..200u64)
        .map(|n| {
            let client = &client;
            async move { put(client, n, &format!("{n:036}.blk"), &crate::common::bytes(4096, n)).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Uploaded))), "{results:?}");
    assert_eq!(std::fs::read_dir(s3.root.join("many")).unwrap().count(), 200);
    let accepted = front.accepted();
    assert!(
        accepted <= concurrency + 2,
        "200 uploads, {concurrency} at a time, took {accepted} TLS connections: they are not kept alive"
    );
    let (opened, reused) = client.connections();
    assert_eq!(opened as usize, accepted, "the terminator saw every connection the bucket opened");
    assert!(reused >= 190, "requests reused kept-alive connections: {reused}");
}

/// The permanent error of one upload through `client`, which must have been
/// its only connection attempt to `front`.
async fn refused_once(client: &BucketClient, front: &TlsFront) -> String {
    let err = put(client, 1, "refused.blk", b"never stored").await.unwrap_err();
    assert!(!err.is_retryable(), "a refused certificate is permanent: {err}");
    let message = permanent(err);
    assert_eq!(front.accepted(), 1, "not retried within the call: {message}");
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_no_trusted_ca_signed_fails_at_once_naming_tls_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry private CA");
    let s3 = S3sFs::start("blocks");
    let runtime = runtime();
    // Without `tls_ca_file` (the bundled web roots alone), and with the CA
    // file of another CA.
    let other = TestCa::new("some other CA");
    for (name, tls) in [("no-ca", BucketTls::default()), ("other-ca", bucket_tls(dir.path(), Some(&other), None))] {
        let front = TlsFront::start(loopback(s3.port), &ca.server(&["localhost"]), FrontOptions::default());
        let client = open(&runtime, "blockferry_s3", name, s3_settings(&front.endpoint(), "blocks"), tls).await;
        let message = refused_once(&client, &front).await;
        for part in [name, &front.endpoint(), "CN=localhost", "CN=blockferry private CA", "`tls_ca_file`"] {
            assert!(message.contains(part), "{name}: the error names {part}: {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_or_misnamed_server_certificate_is_a_permanent_error_saying_which() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry test CA");
    let s3 = S3sFs::start("blocks");
    let runtime = runtime();
    let tls = bucket_tls(dir.path(), Some(&ca), None);

    let front = TlsFront::start(loopback(s3.port), &ca.expired_server(&["localhost"]), FrontOptions::default());
    let client =
        open(&runtime, "blockferry_s3", "expired", s3_settings(&front.endpoint(), "blocks"), tls.clone()).await;
    let message = refused_once(&client, &front).await;
    assert!(message.contains("expired") && message.contains("2021-01-01"), "{message}");
    assert!(message.contains("CN=localhost"), "{message}");

    let front = TlsFront::start(loopback(s3.port), &ca.server(&["storage.internal"]), FrontOptions::default());
    let client = open(&runtime, "blockferry_s3", "misnamed", s3_settings(&front.endpoint(), "blocks"), tls).await;
    let message = refused_once(&client, &front).await;
    for part in ["storage.internal", "not for `localhost`", "`endpoint`"] {
        assert!(message.contains(part), "the error names {part}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_required_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry test CA");
    let clients = TestCa::new("blockferry client CA");
    let s3 = S3sFs::start("mtls");
    let runtime = runtime();
    let server = ca.server(&["localhost"]);
    for tls12_only in [false, true] {
        let options = || FrontOptions { client_ca: Some(&clients), tls12_only };
        let version = if tls12_only { "TLS 1.2" } else { "TLS 1.3" };

        // No client certificate: permanent, naming the keys that fix it.
        let front = TlsFront::start(loopback(s3.port), &server, options());
        let tls = bucket_tls(dir.path(), Some(&ca), None);
        let client = open(&runtime, "blockferry_s3", "no-cert", s3_settings(&front.endpoint(), "mtls"), tls).await;
        let message = refused_once(&client, &front).await;
        assert!(
            message.contains("`tls_client_cert_file`") && message.contains("`tls_client_key_file`"),
            "{version}: {message}"
        );

        // A certificate from a CA the server does not trust: permanent, naming it.
        let front = TlsFront::start(loopback(s3.port), &server, options());
        let stranger = ca.client("stranger");
        let tls = bucket_tls(dir.path(), Some(&ca), Some(&stranger));
        let client = open(&runtime, "blockferry_s3", "stranger", s3_settings(&front.endpoint(), "mtls"), tls).await;
        let message = refused_once(&client, &front).await;
        assert!(message.contains("CN=stranger") && message.contains("`tls_client_cert_file`"), "{version}: {message}");

        // The right certificate: uploads go through, on kept-alive connections.
        let front = TlsFront::start(loopback(s3.port), &server, options());
        let tls = bucket_tls(dir.path(), Some(&ca), Some(&clients.client("blockferry-node-1")));
        let client = open(&runtime, "blockferry_s3", "mtls", s3_settings(&front.endpoint(), "mtls"), tls).await;
        for n in 0..5u64 {
            let bytes = crate::common::bytes(8192, n);
            let key = format!("{version}/{n}.blk");
            assert_eq!(put(&client, n, &key, &bytes).await.unwrap(), Outcome::Uploaded, "{version}");
            assert_eq!(std::fs::read(s3.root.join("mtls").join(&key)).unwrap(), bytes);
        }
        assert_eq!(front.accepted(), 1, "{version}: one kept-alive connection");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_resolving_into_a_denied_network_is_refused_over_https_too() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry test CA");
    let s3 = S3sFs::start("blocks");
    let front = TlsFront::start(loopback(s3.port), &ca.server(&["localhost"]), FrontOptions::default());
    let runtime = runtime();
    let mut spec = spec("denied");
    spec.settings = s3_settings(&front.endpoint(), "blocks");
    spec.denied_networks = vec!["127.0.0.0/8".parse().unwrap()];
    spec.tls = bucket_tls(dir.path(), Some(&ca), None);
    let client = BucketClient::open(load(&runtime, "blockferry_s3"), spec).await.unwrap();
    let message = permanent(put(&client, 1, "denied.blk", b"x").await.unwrap_err());
    assert!(message.contains("not permitted"), "{message}");
    assert_eq!(client.refused_requests(), 1);
    assert_eq!(front.accepted(), 0, "`localhost` resolves into 127.0.0.0/8: nothing was connected");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_lost_during_the_handshake_stays_transient() {
    // A server that accepts and closes at once, before any TLS.
    let (port, server) = serve_on_loopback(|client| async move { drop(client) });
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("blockferry test CA");
    let runtime = runtime();
    let endpoint = format!("https://localhost:{port}");
    let client = open(
        &runtime,
        "blockferry_s3",
        "flaky",
        s3_settings(&endpoint, "blocks"),
        bucket_tls(dir.path(), Some(&ca), None),
    )
    .await;
    let err = put(&client, 1, "flaky.blk", b"x").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let message = transient(err);
    assert!(!message.contains("tls_ca_file"), "no certificate was involved: {message}");
    server.shutdown_background();
}

/// Writes `blockferry.toml` in `dir` with one `s3` bucket at `endpoint` whose
/// table has `tls` lines too; returns its path.
fn write_config(dir: &Path, endpoint: &str, tls: &str) -> std::path::PathBuf {
    let path = dir.join("blockferry.toml");
    std::fs::write(
        &path,
        format!(
            "credentials = \"credentials.toml\"\n[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
             [[buckets]]\nname = \"cloud\"\nplugin = {:?}\ncall_timeout_ms = 5000\n{tls}\n\
             [buckets.settings]\nendpoint = \"{endpoint}\"\nbucket = \"blocks\"\nregion = \"us-east-1\"\naddressing = \"path\"\n",
            workspace().join("target/test-plugin-cache").display().to_string(),
            plugin_path("blockferry_s3").display().to_string(),
        ),
    )
    .unwrap();
    write_s3_credentials(dir, &["cloud"]);
    path
}

fn config_error(dir: &Path, tls: &str) -> String {
    let path = write_config(dir, "https://localhost:9", tls);
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { .. } | ConfigError::Parse { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn missing_or_unusable_tls_files_are_config_errors_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("garbage.pem"), "this is not PEM\n").unwrap();
    let ca = TestCa::new("blockferry test CA");
    ca.write(d, "ca");
    ca.client("one").write(d, "one");
    ca.client("two").write(d, "two");
    for (tls, key, names) in [
        ("tls_ca_file = \"missing.pem\"", "buckets[0].tls_ca_file", "missing.pem"),
        ("tls_ca_file = \"garbage.pem\"", "buckets[0].tls_ca_file", "garbage.pem"),
        ("tls_client_cert_file = \"one.crt\"", "buckets[0].tls_client_cert_file", "tls_client_key_file"),
        (
            "tls_client_cert_file = \"garbage.pem\"\ntls_client_key_file = \"one.key\"",
            "buckets[0].tls_client_cert_file",
            "garbage.pem",
        ),
        (
            "tls_client_cert_file = \"one.crt\"\ntls_client_key_file = \"ca.pem\"",
            "buckets[0].tls_client_key_file",
            "ca.pem",
        ),
        (
            "tls_client_cert_file = \"one.crt\"\ntls_client_key_file = \"two.key\"",
            "buckets[0].tls_client_key_file",
            "one.crt",
        ),
    ] {
        let message = config_error(d, tls);
        assert!(message.contains(&format!("`{key}`")) && message.contains(names), "{tls}: {message}");
    }
    // There is no key that turns verification off.
    let message = config_error(d, "tls_verify = false");
    assert!(message.contains("tls_verify") && message.contains("tls_ca_file"), "names the known keys: {message}");
    // Relative names are the config directory's; a good set loads.
    let config = Config::load(&write_config(
        d,
        "https://localhost:9",
        "tls_ca_file = \"ca.pem\"\ntls_client_cert_file = \"one.crt\"\ntls_client_key_file = \"one.key\"",
    ))
    .unwrap();
    let bucket = &config.buckets[0];
    assert_eq!(bucket.tls_ca_file.as_deref(), Some(d.join("ca.pem").as_path()));
    let tls = blockferry::plugin::tls::LoadedTls::client_of(bucket.tls.as_ref());
    assert!(tls.client_certificate.is_some_and(|c| c.contains("CN=one")), "the client certificate is presented");
}

#[test]
fn a_changed_tls_file_changes_the_bucket_so_a_reload_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    TestCa::new("first CA").write(d, "ca");
    let path = write_config(d, "https://localhost:9", "tls_ca_file = \"ca.pem\"");
    let before = Config::load(&path).unwrap();
    assert_eq!(Config::load(&path).unwrap().buckets, before.buckets, "same files, same bucket");
    TestCa::new("second CA").write(d, "ca");
    assert_ne!(Config::load(&path).unwrap().buckets, before.buckets, "a new CA file is a changed bucket");
}

#[tokio::test(flavor = "multi_thread")]
async fn blockferry_run_uploads_over_mutual_tls_once_its_ca_file_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("blockferry test CA");
    let clients = TestCa::new("blockferry client CA");
    let s3 = S3sFs::start("blocks");
    let front = TlsFront::start(
        loopback(s3.port),
        &ca.server(&["localhost"]),
        FrontOptions { client_ca: Some(&clients), tls12_only: false },
    );
    // The CA file first holds the wrong CA.
    TestCa::new("not the server's CA").write(d, "ca");
    clients.client("blockferry-node-1").write(d, "client");
    let config = write_config(
        d,
        &front.endpoint(),
        "tls_ca_file = \"ca.pem\"\ntls_client_cert_file = \"client.crt\"\ntls_client_key_file = \"client.key\"",
    );
    let sidecar = Sidecar::start(&config, d, &[]);
    assert!(publish(&PublisherOptions::new(sidecar.endpoint(), 0, 3, 4096)).await.unwrap().complete());
    wait_until("the refused certificate is logged with its fix", || {
        sidecar.log().contains("`tls_ca_file`") && sidecar.log().contains("permanent")
    })
    .await;
    let uploaded = || (0..3).all(|n| s3.root.join(format!("blocks/{n:036}.blk")).exists());
    assert!(!uploaded());

    // The right CA: the change is picked up, the bucket reopened, the blocks uploaded.
    ca.write(d, "ca");
    wait_until("every block is uploaded over HTTPS", uploaded).await;
    let log = sidecar.log();
    assert!(log.contains("config reloaded") && log.contains("cloud"), "{log}");
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_system_roots_trusts_the_system_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("blockferry system CA");
    let s3 = S3sFs::start("blocks");
    let front = TlsFront::start(loopback(s3.port), &ca.server(&["localhost"]), FrontOptions::default());
    let config = write_config(d, &front.endpoint(), "tls_system_roots = true");
    // The system store of the sidecar is this CA alone (SSL_CERT_FILE replaces /etc/ssl/certs).
    let store = ca.write(d, "system-store");
    let sidecar = Sidecar::start_with_env(&config, d, &[], &[("SSL_CERT_FILE", &store)]);
    assert!(publish(&PublisherOptions::new(sidecar.endpoint(), 0, 3, 4096)).await.unwrap().complete());
    wait_until("every block is uploaded over HTTPS", || {
        (0..3).all(|n| s3.root.join(format!("blocks/{n:036}.blk")).exists())
    })
    .await;
    assert!(front.handshakes() >= 1);
}
