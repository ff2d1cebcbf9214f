//! Config and credentials files: each bad one gets a clear error naming the
//! file, the key and the fix; secrets reach the plugin settings and nothing else.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use blockferry::config::{Config, ConfigError};

const GOOD: &str = r#"
credentials = "creds.toml"
[[buckets]]
name = "s3-main"
plugin = "s3.wasm"
[buckets.settings]
bucket = "blocks"
"#;

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn load_err(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bf.toml", config, 0o644);
    let err = Config::load(&path).expect_err("invalid config accepted");
    let msg = err.to_string();
    assert!(msg.contains("bf.toml"), "names the file: {msg}");
    msg
}

#[test]
fn a_missing_file_says_how_to_create_one() {
    let err = Config::load(Path::new("/nonexistent/bf.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("blockferry init"), "{err}");
}

#[test]
fn syntax_errors_and_unknown_keys_name_the_place() {
    let msg = load_err("[store\ndir = 1");
    assert!(msg.contains("line 1"), "{msg}");
    let msg = load_err("[store]\ndirectory = \"x\"\n");
    assert!(msg.contains("directory") && msg.contains("dir"), "names the unknown key and the known ones: {msg}");
    let msg = load_err("mode = \"tape\"\n[[buckets]]\nname=\"a\"\nplugin=\"p\"\n");
    assert!(msg.contains("tape") && msg.contains("file-and-bucket"), "{msg}");
}

#[test]
fn a_block_node_gets_a_consensus_node_s_default_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.toml", "mode = \"grpc\"\n[[block_nodes]]\naddress = \"bn\"\nport = 40840\n", 0o644);
    let config = blockferry::config::Config::load(&path).unwrap();
    let node = &config.block_nodes[0];
    assert_eq!((node.priority, node.soft_limit_bytes, node.hard_limit_bytes), (0, 2_097_152, 6_292_480));
    assert!(config.streams());
}

#[test]
fn invalid_values_name_the_key_and_the_fix() {
    let cases = [
        (
            "[[buckets]]\nname = \"a\"\nplugin = \"p\"\n[[buckets]]\nname = \"a\"\nplugin = \"q\"\n",
            "buckets[1].name",
            "unique",
        ),
        ("[[buckets]]\nname = \"a b\"\nplugin = \"p\"\n", "buckets[0].name", "letters, digits"),
        ("[[buckets]]\nname = \"a\"\nplugin = \"p\"\nsha256 = \"abc\"\n", "buckets[0].sha256", "sha256sum"),
        (
            "[[buckets]]\nname = \"a\"\nplugin = \"p\"\nmemory_limit_mib = 0\n",
            "buckets[0].memory_limit_mib",
            "1 to 4096",
        ),
        ("[[buckets]]\nname = \"a\"\nplugin = \"p\"\nconcurrency = 0\n", "buckets[0].concurrency", "1 to 1024"),
        (
            "[[buckets]]\nname = \"a\"\nplugin = \"p\"\nkey_template = \"same.blk\"\n",
            "buckets[0].key_template",
            "{number}",
        ),
        (
            "[[buckets]]\nname = \"a\"\nplugin = \"p\"\n[buckets.settings]\nx = [1]\n",
            "buckets[0].settings.x",
            "plain values",
        ),
        (
            "[plugins]\ndenied_networks = [\"nope\"]\n[[buckets]]\nname = \"a\"\nplugin = \"p\"\n",
            "plugins.denied_networks[0]",
            "CIDR",
        ),
        (
            "[upload]\nretry_initial_backoff_ms = 10\nretry_max_backoff_ms = 5\n[[buckets]]\nname = \"a\"\nplugin = \"p\"\n",
            "upload.retry_max_backoff_ms",
            "<=",
        ),
        ("mode = \"file-and-bucket\"\n", "`buckets`", "mode = \"file\""),
        ("mode = \"file\"\n[ingest]\nlisten = \"nowhere\"\n", "ingest.listen", "host:port"),
        ("mode = \"file\"\n[ingest]\nhard_limit_bytes = 10\n", "ingest.hard_limit_bytes", "6292480"),
        (
            "mode = \"file\"\n[ingest]\nhard_limit_bytes = 9000000\nmax_block_bytes = 8000000\n",
            "ingest.max_block_bytes",
            ">= hard_limit_bytes",
        ),
        ("mode = \"file\"\n[buffer]\nttl_secs = 0\n", "buffer.ttl_secs", ">= 1"),
        ("mode = \"file\"\n[log]\nlevel = \"loud=please=yes\"\n", "log.level", "error, warn, info"),
        ("mode = \"file\"\n[http]\nlisten = \"nowhere\"\n", "http.listen", "host:port"),
        ("mode = \"grpc\"\n", "`block_nodes`", "[[block_nodes]]"),
        (
            "mode = \"grpc\"\n[[block_nodes]]\naddress = \"bn\"\nport = 1\nsoft_limit_bytes = 7000000\n",
            "block_nodes[0].soft_limit_bytes",
            "soft_limit_bytes <= hard_limit_bytes",
        ),
        (
            "mode = \"grpc\"\n[[block_nodes]]\naddress = \"bn\"\nport = 1\n[[block_nodes]]\naddress = \"bn\"\nport = 1\n",
            "block_nodes[1].address",
            "once",
        ),
        (
            "mode = \"file\"\n[publish]\ninitial_backoff_ms = 5000\nmax_backoff_ms = 10\n",
            "publish.max_backoff_ms",
            "<=",
        ),
        ("mode = \"file\"\n[buffer]\nrecovery_percent = 100\n", "buffer.recovery_percent", "e.g. 85"),
    ];
    // Every spelling of a metadata address in allow_hosts or a URL setting is
    // refused at load, naming the entry.
    let denied = [
        ("allow_hosts = [\"[::ffff:169.254.169.254]:80\"]", "buckets[0].allow_hosts[0]"),
        ("allow_hosts = [\"example.com:443\", \"[::ffff:a9fe:a9fe]:80\"]", "buckets[0].allow_hosts[1]"),
        ("allow_hosts = [\"[0:0:0:0:0:FFFF:A9FE:A9FE]\"]", "buckets[0].allow_hosts[0]"),
        ("allow_hosts = [\"[::169.254.169.254]:80\"]", "buckets[0].allow_hosts[0]"),
        ("allow_hosts = [\"[64:ff9b::a9fe:a9fe]:80\"]", "buckets[0].allow_hosts[0]"),
        ("allow_hosts = [\"http://169.254.169.254/latest\"]", "buckets[0].allow_hosts[0]"),
        ("allow_hosts = [\"[fe80::1]:80\"]", "buckets[0].allow_hosts[0]"),
        ("settings = { endpoint = \"http://[::ffff:169.254.169.254]/\" }", "buckets[0].settings.endpoint"),
    ];
    let overlapping = [
        ("[store]\ndir = \"data/blocks\"\n", "directory = \"data/blocks/bucket\"", "store.dir"),
        ("[store]\ndir = \"data/blocks\"\n", "directory = \"data\"", "store.dir"),
        ("[plugins]\ncache_dir = \"cache\"\n", "directory = \"cache\"", "plugins.cache_dir"),
    ];
    for (section, line, other) in overlapping {
        let msg = load_err(&format!("{section}[[buckets]]\nname = \"a\"\nplugin = \"p\"\n{line}\n"));
        assert!(msg.contains("buckets[0].directory") && msg.contains(other), "{msg}");
        assert!(msg.contains("directory of its own"), "{msg}");
    }
    for (line, key) in denied {
        let msg = load_err(&format!("[[buckets]]\nname = \"a\"\nplugin = \"p\"\n{line}\n"));
        assert!(msg.contains(key), "names {key}: {msg}");
        assert!(msg.contains("denied network") && msg.contains("plugins.denied_networks"), "{msg}");
    }
    for (config, key, fix) in cases {
        let msg = load_err(config);
        assert!(msg.contains(key), "names {key}: {msg}");
        assert!(msg.contains(fix), "says the fix ({fix}): {msg}");
    }
}

#[test]
fn credentials_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bf.toml", GOOD, 0o644);
    write(dir.path(), "creds.toml", "[buckets.s3-main]\nsecret_access_key = \"s3cr3t\"\n", 0o644);
    let msg = Config::load(&config).unwrap_err().to_string();
    assert!(msg.contains("creds.toml") && msg.contains("chmod 600"), "{msg}");
    assert!(!msg.contains("s3cr3t"));
}

#[test]
fn credentials_merge_into_their_bucket_only_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bf.toml", GOOD, 0o644);
    write(
        dir.path(),
        "creds.toml",
        "[buckets.s3-main]\naccess_key_id = \"AKIA1\"\nsecret_access_key = \"s3cr3t\"\n",
        0o600,
    );
    let loaded = Config::load(&config).unwrap();
    let settings = loaded.buckets[0].settings_list();
    assert!(settings.contains(&("secret_access_key".into(), "s3cr3t".into())), "{settings:?}");
    assert!(settings.contains(&("bucket".into(), "blocks".into())));
    assert!(!format!("{loaded:?}").contains("s3cr3t"), "Debug of the config hides secrets");
}

#[test]
fn bad_credentials_files_get_clear_errors_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bf.toml", GOOD, 0o644);
    write(dir.path(), "creds.toml", "[buckets.other]\nsecret_access_key = \"s3cr3t\"\n", 0o600);
    let msg = Config::load(&config).unwrap_err().to_string();
    assert!(msg.contains("buckets.other") && msg.contains("names no bucket"), "{msg}");
    write(dir.path(), "creds.toml", "[buckets.s3-main]\nsecret_access_key = s3cr3t-unquoted\n", 0o600);
    let msg = Config::load(&config).unwrap_err().to_string();
    assert!(msg.contains("creds.toml") && msg.contains("line 2"), "{msg}");
    assert!(!msg.contains("s3cr3t"), "the parser's message must not quote the secret: {msg}");
    std::fs::remove_file(dir.path().join("creds.toml")).unwrap();
    let msg = Config::load(&config).unwrap_err().to_string();
    assert!(msg.contains("creds.toml"), "{msg}");
}
