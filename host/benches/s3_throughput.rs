//! Upload throughput and host CPU of the S3 plugin beside a native client (`object_store`)
//! uploading the same blocks to the same `s3s-fs` server in the same run. The measuring code
//! lives beside the provider's tests, whose servers and helpers it uses. Run with
//! `scripts/build-plugins.sh && scripts/install-test-servers.sh && cargo bench -p blockferry --bench s3_throughput`.
//! Each row is measured over plain HTTP, then over HTTPS (a TLS terminator in front of the server,
//! the same private CA given to both clients).

#[allow(unused_imports)]
#[path = "../../tests/all/common/mod.rs"]
mod common;
#[allow(dead_code, unused_imports)]
#[path = "../../tests/all/s3_provider.rs"]
mod provider;
mod report;

use report::{Goal, row};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Plain HTTP, then HTTPS through a TLS terminator with a private CA both clients trust.
    for (https, over) in [(false, ""), (true, ", over HTTPS")] {
        rows(rt.block_on(provider::throughput_beside_a_native_client(report::cpu_seconds, https)), over);
    }
}

/// The report rows of one transport's figures; `over` ends each row's name.
fn rows(figures: Vec<provider::Throughput>, over: &str) {
    for t in figures {
        let [plugin, native] = t.mib_per_s;
        if t.label == "16 MiB" {
            row(
                &format!("S3 plugin upload, 16 MiB blocks, vs object_store (s3s-fs){over}"),
                plugin,
                "MiB/s",
                Some(native),
                Goal::RatioAtLeast(0.9),
            );
            let [plugin, native] = t.cpu_s_per_gib;
            row(
                &format!("host CPU per GiB uploaded, S3 plugin vs object_store (16 MiB blocks){over}"),
                plugin,
                "s/GiB",
                Some(native),
                Goal::RatioAtMost(1.3),
            );
        } else {
            let [plugin, native] = t.blocks_per_s;
            row(
                &format!("S3 plugin upload, 64 KiB blocks, 8 in flight, vs object_store{over}"),
                plugin,
                "blocks/s",
                Some(native),
                Goal::RatioAtLeast(0.8),
            );
            let [plugin, native] = t.cpu_s_per_gib;
            row(
                &format!("host CPU per GiB uploaded, S3 plugin vs object_store (64 KiB blocks){over}"),
                plugin,
                "s/GiB",
                Some(native),
                Goal::RatioAtMost(1.3),
            );
        }
    }
}
