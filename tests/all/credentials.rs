//! Ambient cloud credentials brokered by the host: the broker obtains them
//! from a fake of each platform source (`common::metadata`: IMDSv2, the ECS
//! container endpoint, STS `AssumeRoleWithWebIdentity`, the GCE metadata
//! server) on loopback, and the S3 and GCS providers sign with them
//! (`host.credentials`). A recording proxy in front of moto /
//! fake-gcs-server shows which credentials each request carried; s3s-fs,
//! which verifies SigV4, shows that requests signed with a session token are
//! valid. Nothing here reads the test process's environment: the sources
//! are named by config keys.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::metadata::{ECS_PATH, FakeMetadata, Mode, STS_PATH, key_id};
use crate::common::servers::{ACCESS_KEY, FakeGcs, FaultProxy, Moto, S3sFs, SECRET_KEY, SeenRequest};
use crate::common::sidecar::Sidecar;
use crate::common::*;
use blockferry::config::Config;
use blockferry::credentials::{Broker, CredentialsSource, SourceSettings};
use blockferry::plugin::{BucketClient, BucketSpec, CallError, Outcome, PluginFailure, PluginRuntime};
use blockferry_sim::{PublisherOptions, publish};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The broker of bucket `name` for `settings`, environment-free.
fn broker(name: &str, settings: SourceSettings) -> Arc<Broker> {
    let source = settings.resolve(name, |_| None).expect("resolves").expect("a platform source");
    Arc::new(Broker::new(name, source, blockferry::plugin::tls::BucketTls::default().config))
}

/// `settings` of source `source` at `endpoint`.
fn source(source: CredentialsSource, endpoint: String) -> SourceSettings {
    SourceSettings { source, endpoint: Some(endpoint), ..Default::default() }
}

/// A spec of bucket `name` whose credentials come from `broker`: the plugin
/// gets `settings` and `credentials_source`, as the host passes them.
fn brokered_spec(name: &str, settings: Vec<(String, String)>, broker: Arc<Broker>) -> BucketSpec {
    let mut spec = spec(name);
    spec.settings = settings;
    spec.settings.push(("credentials_source".into(), broker.source().name().into()));
    spec.credentials = Some(broker);
    spec.call_timeout = Duration::from_secs(60);
    spec
}

/// S3 settings of `bucket` at `endpoint` without keys.
fn s3_settings(endpoint: &str, bucket: &str) -> Vec<(String, String)> {
    settings_with(
        &[("endpoint", endpoint), ("bucket", bucket), ("region", "us-east-1"), ("addressing", "path")],
        &[("retry_base_delay_ms", "20")],
    )
}

async fn open(runtime: &PluginRuntime, plugin: &str, spec: BucketSpec) -> BucketClient {
    BucketClient::open(load(runtime, plugin), spec).await.unwrap_or_else(|e| panic!("open {plugin}: {e}"))
}

fn header<'a>(request: &'a SeenRequest, name: &str) -> Option<&'a str> {
    request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The access key id of a SigV4 `authorization` header.
fn signed_key_id(request: &SeenRequest) -> String {
    let auth = header(request, "authorization").unwrap_or_else(|| panic!("unsigned request {}", request.target));
    let credential = auth.split("Credential=").nth(1).unwrap_or_else(|| panic!("not SigV4: {auth}"));
    credential.split('/').next().unwrap().to_string()
}

/// Checks that every request `proxy` saw was signed with an issued key and
/// the session token issued with it; returns the distinct key ids in order.
fn keys_used(proxy: &FaultProxy) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for request in proxy.seen() {
        let id = signed_key_id(&request);
        let n: usize =
            id.strip_prefix("ASIAFAKE").unwrap_or_else(|| panic!("not an issued key: {id}")).parse().unwrap();
        assert_eq!(header(&request, "x-amz-security-token"), Some(format!("session-{n}").as_str()), "{id}");
        if keys.last() != Some(&id) {
            keys.push(id);
        }
    }
    keys
}

#[tokio::test]
async fn aws_instance_credentials_sign_uploads_and_rotate_mid_stream_without_a_failed_upload() {
    let fake = FakeMetadata::start(LOOPBACK, Duration::from_secs(2));
    let moto = Moto::start();
    moto.create_bucket("imds");
    let proxy = FaultProxy::start(moto.addr(), |_, _, _| None);
    let runtime = runtime();
    let broker = broker("imds", source(CredentialsSource::AwsInstance, fake.url()));
    let client =
        open(&runtime, "blockferry_s3", brokered_spec("imds", s3_settings(&proxy.endpoint(), "imds"), broker)).await;

    // Uploads for 5 s while the credentials (2 s lifetime, replaced after 1 s) rotate.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(5) {
        n += 1;
        let outcome = put(&client, n, &format!("imds/{n}.blk"), &bytes(2048, n)).await;
        assert_eq!(outcome.unwrap(), Outcome::Uploaded, "upload {n} after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = keys_used(&proxy);
    assert!(keys.len() >= 3, "the credentials rotated: {keys:?}");
    assert_eq!(keys.first(), Some(&key_id(1)));
    assert!(keys.len() <= fake.issued(), "only issued keys were used");
    // IMDSv2 only: the broker always sent a session token, and the fake refuses requests without one.
    assert_eq!(fake.refused(), 0);
    let (status, _, _) = crate::common::servers::http(
        fake.addr.port(),
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        "text/plain",
        b"",
    );
    assert_eq!(status, 401, "IMDSv1 is refused");
    // What landed is what was sent (read back by boto3, an independent client).
    let listed = crate::common::servers::boto(
        &moto.endpoint(),
        "print(len(s3.list_objects_v2(Bucket='imds', Prefix='imds/')['Contents']))",
    );
    assert_eq!(listed.trim(), n.to_string());
}

#[tokio::test]
async fn expired_credentials_are_replaced_before_the_next_request() {
    let fake = FakeMetadata::start(LOOPBACK, Duration::from_secs(1));
    let moto = Moto::start();
    moto.create_bucket("expiry");
    let proxy = FaultProxy::start(moto.addr(), |_, _, _| None);
    let runtime = runtime();
    let broker = broker("expiry", source(CredentialsSource::AwsInstance, fake.url()));
    let client =
        open(&runtime, "blockferry_s3", brokered_spec("expiry", s3_settings(&proxy.endpoint(), "expiry"), broker))
            .await;
    // Four uploads at once: one refresh in flight, the others wait for it.
    let keys: Vec<String> = (1..=4).map(|n| format!("e/{n}.blk")).collect();
    let first = keys.iter().zip(1..).map(|(key, n)| put(&client, n, key, b"one"));
    for outcome in futures::future::join_all(first).await {
        assert_eq!(outcome.unwrap(), Outcome::Uploaded);
    }
    assert_eq!(fake.issued(), 1);
    // Past the expiry of the first credentials: the next request asks for new ones first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(put(&client, 5, "e/5.blk", b"two").await.unwrap(), Outcome::Uploaded);
    assert_eq!(fake.issued(), 2);
    assert_eq!(keys_used(&proxy), [key_id(1), key_id(2)]);
}

#[tokio::test]
async fn aws_ecs_credentials_are_asked_with_the_authorization_token_from_its_file() {
    let fake = FakeMetadata::start(LOOPBACK, Duration::from_secs(3600));
    fake.state.lock().unwrap().ecs_authorization = Some("ecs-token-1".into());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("ecs-token");
    std::fs::write(&token_file, "ecs-token-1\n").unwrap();
    let moto = Moto::start();
    moto.create_bucket("ecs");
    let proxy = FaultProxy::start(moto.addr(), |_, _, _| None);
    let runtime = runtime();
    let settings = SourceSettings {
        authorization_token_file: Some(token_file.clone()),
        ..source(CredentialsSource::AwsEcs, format!("{}{ECS_PATH}", fake.url()))
    };
    let client = open(
        &runtime,
        "blockferry_s3",
        brokered_spec("ecs", s3_settings(&proxy.endpoint(), "ecs"), broker("ecs", settings)),
    )
    .await;
    assert_eq!(put(&client, 1, "ecs/1.blk", b"task role").await.unwrap(), Outcome::Uploaded);
    assert_eq!(keys_used(&proxy), [key_id(1)]);
    assert_eq!(fake.refused(), 0);

    // A token the endpoint refuses is permanent and names the source and the fix.
    let wrong = SourceSettings {
        authorization_token_file: Some(dir.path().join("missing")),
        ..source(CredentialsSource::AwsEcs, format!("{}{ECS_PATH}", fake.url()))
    };
    let client = open(
        &runtime,
        "blockferry_s3",
        brokered_spec("ecs2", s3_settings(&proxy.endpoint(), "ecs"), broker("ecs2", wrong)),
    )
    .await;
    let message = permanent(put(&client, 2, "ecs/2.blk", b"x").await.unwrap_err());
    for needle in ["aws-ecs", "cannot read the authorization token file", "missing", "task role"] {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
}

#[tokio::test]
async fn aws_web_identity_assumes_the_role_with_the_token_file_read_again_at_each_refresh() {
    let fake = FakeMetadata::start(LOOPBACK, Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "jwt-one").unwrap();
    let moto = Moto::start();
    moto.create_bucket("irsa");
    let proxy = FaultProxy::start(moto.addr(), |_, _, _| None);
    let runtime = runtime();
    let settings = SourceSettings {
        role_arn: Some("arn:aws:iam::123456789012:role/blockferry".into()),
        web_identity_token_file: Some(token_file.clone()),
        ..source(CredentialsSource::AwsWebIdentity, format!("{}{STS_PATH}", fake.url()))
    };
    let client = open(
        &runtime,
        "blockferry_s3",
        brokered_spec("irsa", s3_settings(&proxy.endpoint(), "irsa"), broker("irsa", settings)),
    )
    .await;
    assert_eq!(put(&client, 1, "irsa/1.blk", b"one").await.unwrap(), Outcome::Uploaded);
    // The platform rotates the projected token; the next refresh presents the new one.
    std::fs::write(&token_file, "jwt-two").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(put(&client, 2, "irsa/2.blk", b"two").await.unwrap(), Outcome::Uploaded);
    assert_eq!(keys_used(&proxy), [key_id(1), key_id(2)]);
    assert_eq!(fake.state.lock().unwrap().web_identity_tokens, ["jwt-one", "jwt-two"]);
}

#[tokio::test]
async fn gcp_metadata_tokens_authorise_gcs_uploads_and_rotate() {
    let fake = FakeMetadata::start(LOOPBACK, Duration::from_secs(2));
    let gcs = FakeGcs::start();
    gcs.create_bucket("gce");
    let proxy = FaultProxy::start(([127, 0, 0, 1], gcs.port).into(), |_, _, _| None);
    let runtime = runtime();
    let settings = settings_with(&[("endpoint", &proxy.endpoint()), ("bucket", "gce")], &[]);
    let spec = brokered_spec("gce", settings, broker("gce", source(CredentialsSource::GcpMetadata, fake.url())));
    let client = open(&runtime, "blockferry_gcs", spec).await;
    let one = bytes(1000, 1);
    assert_eq!(put(&client, 1, "gce/1.blk", &one).await.unwrap(), Outcome::Uploaded);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(put(&client, 2, "gce/2.blk", &bytes(1000, 2)).await.unwrap(), Outcome::Uploaded);
    let tokens: Vec<String> =
        proxy.seen().iter().map(|r| header(r, "authorization").unwrap_or("-").to_string()).collect();
    assert_eq!(tokens.first().map(String::as_str), Some("Bearer gce-token-1"), "{tokens:?}");
    assert_eq!(tokens.last().map(String::as_str), Some("Bearer gce-token-2"), "{tokens:?}");
    assert!(tokens.iter().all(|t| t.starts_with("Bearer gce-token-")), "{tokens:?}");
    assert_eq!(fake.refused(), 0, "every request carried Metadata-Flavor: Google");
    assert_eq!(gcs.download("gce", "gce/1.blk").as_deref(), Some(&one[..]));
}

#[tokio::test]
async fn a_source_answering_404_or_garbage_is_a_permanent_error_naming_it_and_a_503_is_transient() {
    let fake = FakeMetadata::start(LOOPBACK, Duration::from_secs(3600));
    let runtime = runtime();
    // Nothing is uploaded: the request is never signed. Any endpoint will do.
    let s3 = |name: &str, kind: CredentialsSource| {
        brokered_spec(name, s3_settings("http://127.0.0.1:9", "none"), broker(name, source(kind, fake.url())))
    };
    let imds = open(&runtime, "blockferry_s3", s3("imds", CredentialsSource::AwsInstance)).await;
    let gce = open(
        &runtime,
        "blockferry_gcs",
        brokered_spec(
            "gce",
            settings_with(&[("endpoint", "http://127.0.0.1:9"), ("bucket", "none")], &[]),
            broker("gce", source(CredentialsSource::GcpMetadata, fake.url())),
        ),
    )
    .await;

    fake.set_mode(Mode::NotFound);
    let message = permanent(put(&imds, 1, "k", b"x").await.unwrap_err());
    for needle in ["credentials_source = \"aws-instance\"", &fake.url(), "HTTP 404", "instance profile", "bucket imds"]
    {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
    let message = permanent(put(&gce, 1, "k", b"x").await.unwrap_err());
    for needle in ["credentials_source = \"gcp-metadata\"", "HTTP 404", "service account"] {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }

    fake.set_mode(Mode::Garbage);
    let message = permanent(put(&imds, 1, "k", b"x").await.unwrap_err());
    assert!(message.contains("aws-instance") && message.contains("captive portal"), "{message}");
    let message = permanent(put(&gce, 1, "k", b"x").await.unwrap_err());
    assert!(message.contains("gcp-metadata") && message.contains("captive portal"), "{message}");

    // Down for a moment: retried by the broker, then transient (the host retries the upload later).
    fake.set_mode(Mode::Unavailable);
    let before = fake.requests();
    let message = transient(put(&gce, 1, "k", b"x").await.unwrap_err());
    assert!(message.contains("gcp-metadata") && message.contains("HTTP 503"), "{message}");
    assert_eq!(fake.requests() - before, 3, "three attempts");

    // A source nobody listens on is transient too.
    let port = crate::common::servers::free_port();
    let closed = broker("gone", source(CredentialsSource::AwsInstance, format!("http://127.0.0.1:{port}")));
    let gone =
        open(&runtime, "blockferry_s3", brokered_spec("gone", s3_settings("http://127.0.0.1:9", "none"), closed)).await;
    let message = transient(put(&gone, 1, "k", b"x").await.unwrap_err());
    assert!(message.contains("aws-instance") && message.contains("cannot connect"), "{message}");
}

#[tokio::test]
async fn the_plugin_itself_cannot_reach_the_metadata_address_the_host_uses() {
    // The fake stands on 127.0.0.2, denied to the plugins like 169.254.169.254
    // (denied by default); moto on 127.0.0.1 stays reachable.
    let metadata_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let fake = FakeMetadata::start(metadata_ip, Duration::from_secs(3600));
    let moto = Moto::start();
    moto.create_bucket("sandboxed");
    let runtime = runtime();
    let deny = |mut spec: BucketSpec| {
        spec.denied_networks.push("127.0.0.2/32".parse().unwrap());
        spec
    };
    let s3 = deny(brokered_spec(
        "sandboxed",
        s3_settings(&moto.endpoint(), "sandboxed"),
        broker("sandboxed", source(CredentialsSource::AwsInstance, fake.url())),
    ));
    let client = open(&runtime, "blockferry_s3", s3).await;
    assert_eq!(put(&client, 1, "s/1.blk", b"signed by the host's credentials").await.unwrap(), Outcome::Uploaded);
    let host_requests = fake.requests();
    assert_eq!(fake.issued(), 1);

    // A plugin of a bucket with the same broker tries the metadata service itself.
    let mut rogue =
        deny(brokered_spec("rogue", Vec::new(), broker("rogue", source(CredentialsSource::AwsInstance, fake.url()))));
    rogue.allow_hosts = vec![fake.addr.to_string(), "169.254.169.254:80".into()];
    let rogue = open(&runtime, "blockferry_misbehave", rogue).await;
    for url in [
        format!("{}/latest/meta-data/iam/security-credentials/", fake.url()),
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_string(),
    ] {
        let err = put(&rogue, 1, &format!("egress:{url}"), b"x").await.unwrap_err();
        let CallError::Plugin(PluginFailure::Permanent(message)) = &err else { panic!("{url}: got {err}") };
        assert!(message.contains("egress to"), "{url}: {message}");
    }
    assert_eq!(rogue.refused_requests(), 2);
    assert_eq!(fake.requests(), host_requests, "no request of the plugin reached the metadata service");
}

/// A config file with one `s3` bucket whose table ends with `bucket_keys`.
fn sidecar_config(dir: &Path, endpoint: &str, bucket_keys: &str) -> std::path::PathBuf {
    let path = dir.join("blockferry.toml");
    let text = format!(
        "[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = {:?}\n\
         [[buckets]]\nname = \"cloud\"\nplugin = {:?}\n{bucket_keys}\n\
         [buckets.settings]\nendpoint = \"{endpoint}\"\nbucket = \"blocks\"\nregion = \"us-east-1\"\naddressing = \"path\"\n",
        workspace().join("target/test-plugin-cache").display().to_string(),
        plugin_path("blockferry_s3").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_uploads_with_instance_credentials_to_a_server_that_verifies_signatures() {
    // s3s-fs verifies SigV4 with the test keys: the fake issues those, with a
    // new session token each time (signed, so a wrong token fails the request).
    let fake = FakeMetadata::start(LOOPBACK, Duration::from_secs(2));
    fake.state.lock().unwrap().fixed_keys = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
    let s3 = S3sFs::start("blocks");
    let proxy = FaultProxy::start(([127, 0, 0, 1], s3.port).into(), |_, _, _| None);
    let dir = tempfile::tempdir().unwrap();
    let keys = format!("credentials_source = \"aws-instance\"\ncredentials_endpoint = \"{}\"", fake.url());
    let config = sidecar_config(dir.path(), &proxy.endpoint(), &keys);
    let sidecar = Sidecar::start(&config, dir.path(), &[]);
    let blocks = 12;
    for first in (0..blocks).step_by(3) {
        assert!(publish(&PublisherOptions::new(sidecar.endpoint(), first, 3, 2048)).await.unwrap().complete());
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..blocks).all(|n| s3.root.join(format!("blocks/{n:036}.blk")).exists()) {
        assert!(Instant::now() < deadline, "not every block arrived: {}", sidecar.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = sidecar.stop();
    let log = String::from_utf8_lossy(&log.stderr).into_owned();
    let tokens: std::collections::BTreeSet<String> =
        proxy.seen().iter().filter_map(|r| header(r, "x-amz-security-token").map(str::to_string)).collect();
    assert!(tokens.len() >= 2, "the session token rotated: {tokens:?}");
    assert!(proxy.seen().iter().all(|r| header(r, "x-amz-security-token").is_some()), "every request carried one");
    assert!(!log.contains("session-1"), "credentials are never logged");
    assert!(log.contains("obtained credentials"), "{log}");
}

#[test]
fn a_bucket_with_a_platform_source_and_static_keys_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = sidecar_config(
        dir.path(),
        "http://127.0.0.1:9",
        "credentials_source = \"aws-instance\"\ncredentials_endpoint = \"http://127.0.0.1:9\"",
    );
    let with_key = std::fs::read_to_string(&config).unwrap() + "access_key_id = \"AKIA\"\n";
    std::fs::write(&config, with_key).unwrap();
    let err = Config::load(&config).unwrap_err().to_string();
    for needle in ["buckets[0].credentials_source", "aws-instance", "settings.access_key_id", "keep one"] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }

    // From the credentials file too.
    let config = sidecar_config(dir.path(), "http://127.0.0.1:9", "credentials_source = \"gcp-metadata\"");
    let text = format!("credentials = \"creds.toml\"\n{}", std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, text).unwrap();
    let creds = dir.path().join("creds.toml");
    std::fs::write(&creds, "[buckets.cloud]\nbearer_token = \"t\"\n").unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = Config::load(&config).unwrap_err().to_string();
    assert!(err.contains("gcp-metadata") && err.contains("`bearer_token` of the credentials file"), "{err}");

    // Source keys without a source, and a source missing what it needs, name the key.
    let config = sidecar_config(dir.path(), "http://127.0.0.1:9", "role_arn = \"arn:aws:iam::1:role/r\"");
    let err = Config::load(&config).unwrap_err().to_string();
    assert!(err.contains("buckets[0].role_arn") && err.contains("static"), "{err}");
    let config = sidecar_config(
        dir.path(),
        "http://127.0.0.1:9",
        "credentials_source = \"aws-web-identity\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nweb_identity_token_file = \"t\"",
    );
    let loaded = Config::load(&config).unwrap();
    let resolved = loaded.buckets[0].resolved_source.clone().unwrap();
    assert_eq!(resolved.web_identity_token_file, dir.path().join("t"), "relative to the config");
    assert!(loaded.buckets[0].settings_list().contains(&("credentials_source".into(), "aws-web-identity".into())));
}
