//! Upload throughput of the S3 plugin beside a native client (`object_store`) uploading the same
//! blocks to the same `s3s-fs` server in the same run. The measuring code lives beside the
//! provider's tests, whose servers and helpers it uses. Run with
//! `scripts/build-plugins.sh && scripts/install-test-servers.sh && cargo bench -p blockferry --bench s3_throughput`.

#[allow(dead_code, unused_imports)]
#[path = "../../tests/s3_provider.rs"]
mod provider;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(provider::throughput_beside_a_native_client());
}
