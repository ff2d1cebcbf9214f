//! `blockferry plugin test`, run as the binary exactly as a plugin author
//! runs it: every bundled provider passes the conformance suite on its
//! emulator (fs on a directory, s3 and minio on s3s-fs and moto, gcs on
//! fake-gcs-server), and a deliberately flawed provider fails exactly the
//! checks its flaw breaks — no more, no fewer.

use std::path::Path;
use std::process::Output;

use crate::common::servers::{ACCESS_KEY, FakeGcs, Moto, S3sFs, SECRET_KEY, write_s3_credentials};
use crate::common::*;

/// `blockferry plugin test PLUGIN --json ARGS`: exit status and the names of
/// the passed, failed and not-applicable checks.
fn plugin_test(plugin: &str, args: &[&str]) -> (Output, Vec<String>, Vec<String>, Vec<String>) {
    let path = plugin_path(plugin).display().to_string();
    // Each provider in its own prefix: two may share a bucket.
    let prefix = format!("conformance/{plugin}/");
    let mut all = vec!["plugin", "test", &path, "--json", "--prefix", &prefix];
    all.extend_from_slice(args);
    let out = blockferry(&all);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("plugin test --json printed no JSON ({e}): {}", text(&out)));
    let names = |result: &str| -> Vec<String> {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["result"] == result)
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    (out, names("pass"), names("fail"), names("not_applicable"))
}

/// Requires a clean pass, and returns the not-applicable checks.
fn conforms(plugin: &str, args: &[&str]) -> Vec<String> {
    conforms_but(plugin, args, &[])
}

/// Requires a pass except, at most, for `server_gaps`: checks the emulator
/// itself cannot pass (it lacks what the check needs of a server).
fn conforms_but(plugin: &str, args: &[&str], server_gaps: &[&str]) -> Vec<String> {
    let (out, passed, failed, na) = plugin_test(plugin, args);
    assert!(failed.iter().all(|f| server_gaps.contains(&f.as_str())), "{plugin}: failed {failed:?}: {}", text(&out));
    assert_eq!(out.status.code(), Some(if failed.is_empty() { 0 } else { 1 }), "{}", text(&out));
    assert!(passed.len() >= 10, "{plugin}: {passed:?}");
    na
}

/// A credentials file in `dir` for bucket `plugin-test` with the S3 test keys.
fn s3_credentials(dir: &Path) -> String {
    write_s3_credentials(dir, &["plugin-test"]).display().to_string()
}

#[test]
fn the_fs_provider_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let na = conforms("blockferry_fs", &["--directory", dir.path().to_str().unwrap()]);
    // No credentials and no endpoint: those checks cannot apply.
    assert_eq!(na, ["wrong-credentials", "unreachable-endpoint", "sandbox-secrets"]);
}

#[test]
fn the_s3_and_minio_providers_conform_on_s3s_fs() {
    let s3s = S3sFs::start("blocks");
    let dir = tempfile::tempdir().unwrap();
    let creds = s3_credentials(dir.path());
    let endpoint = format!("endpoint={}", s3s.endpoint());
    for plugin in ["blockferry_s3", "blockferry_minio"] {
        let mut args = vec!["--setting", &endpoint, "--setting", "bucket=blocks", "--credentials", &creds];
        args.extend_from_slice(&["--setting", "region=us-east-1", "--setting", "addressing=path"]);
        // A 12 MiB block in parts of 5 MiB.
        args.extend_from_slice(&["--setting", "multipart_threshold=5242880", "--setting", "part_size=5242880"]);
        args.extend_from_slice(&["--setting", "retry_base_delay_ms=20", "--setting", "retry_max_delay_ms=200"]);
        // s3s-fs checks signatures, so every check applies. Its conditional
        // create is not atomic (it checks `If-None-Match`, then writes): two
        // racing uploads can both be told 200, so `concurrent-create` may
        // fail on it whatever the client does (moto's test below holds the
        // provider to it).
        assert_eq!(conforms_but(plugin, &args, &["concurrent-create"]), Vec::<String>::new(), "{plugin}");
    }
}

#[test]
fn the_s3_provider_conforms_on_moto() {
    // moto does not check Content-MD5: the provider must see the corrupt
    // body from the server's own digest (the ETag). moto accepts any
    // signature, so the keys are plain settings here: the wrong-credentials
    // check cannot apply to a server that does not check them.
    let moto = Moto::start();
    moto.create_bucket("blocks");
    let endpoint = format!("endpoint={}", moto.endpoint());
    let (key, secret) = (format!("access_key_id={ACCESS_KEY}"), format!("secret_access_key={SECRET_KEY}"));
    let mut args = vec!["--setting", &endpoint, "--setting", "bucket=blocks", "--setting", &key, "--setting", &secret];
    args.extend_from_slice(&["--setting", "region=us-east-1", "--setting", "addressing=path"]);
    // The provider's own key prefix: listings must hand keys back without it.
    args.extend_from_slice(&["--setting", "prefix=net/"]);
    args.extend_from_slice(&["--setting", "multipart_threshold=5242880", "--setting", "part_size=5242880"]);
    assert_eq!(conforms("blockferry_s3", &args), ["wrong-credentials", "sandbox-secrets"]);
}

#[test]
fn the_gcs_provider_conforms_on_fake_gcs_server() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("blocks");
    let endpoint = format!("endpoint={}", gcs.endpoint());
    // With the provider's own key prefix: listings must hand keys back without it.
    let args = ["--setting", &endpoint, "--setting", "bucket=blocks", "--setting", "prefix=net/"];
    let na = conforms("blockferry_gcs", &args);
    assert_eq!(na, ["wrong-credentials", "sandbox-secrets"], "fake-gcs-server takes no credentials");
}

#[test]
fn a_flawed_provider_fails_exactly_the_checks_its_flaw_breaks() {
    for (flaw, expected) in [
        (None, vec![]),
        (Some("overwrite"), vec!["upload-different", "concurrent-create"]),
        (Some("ignore-md5"), vec!["md5-enforced"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let setting = flaw.map(|f| format!("flaw={f}"));
        let mut args = vec!["--directory", dir.path().to_str().unwrap()];
        if let Some(s) = &setting {
            args.extend_from_slice(&["--setting", s]);
        }
        let (out, _, failed, _) = plugin_test("blockferry_flawed", &args);
        assert_eq!(failed, expected, "flaw {flaw:?}: {}", text(&out));
        assert_eq!(out.status.code(), Some(if expected.is_empty() { 0 } else { 1 }), "{}", text(&out));
    }
    // Without --json: a checklist naming what was expected and what came back.
    let dir = tempfile::tempdir().unwrap();
    let path = plugin_path("blockferry_flawed").display().to_string();
    let out = blockferry(&[
        "plugin",
        "test",
        &path,
        "--directory",
        dir.path().to_str().unwrap(),
        "--setting",
        "flaw=overwrite",
    ]);
    let t = text(&out);
    assert!(t.contains("FAIL  upload-different"), "{t}");
    assert!(t.contains("expected: Err(HashMismatch)"), "{t}");
    assert!(t.contains("pass  upload-new"), "{t}");
    assert!(t.contains("does not conform: "), "{t}");
}

#[test]
fn bad_arguments_are_named() {
    let path = plugin_path("blockferry_fs").display().to_string();
    let out = blockferry(&["plugin", "test", &path, "--setting", "no-equals-sign"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--setting \"no-equals-sign\" is not KEY=VALUE"), "{}", text(&out));
}
