//! Upload throughput of the GCS plugin against fake-gcs-server. The measuring code lives beside the
//! provider's tests, whose servers and helpers it uses. Run with
//! `scripts/build-plugins.sh && scripts/install-test-servers.sh && cargo bench -p blockferry --bench gcs_throughput`.

#[allow(unused_imports)]
#[path = "../../tests/all/common/mod.rs"]
mod common;
#[allow(dead_code, unused_imports)]
#[path = "../../tests/all/gcs_provider.rs"]
mod provider;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(provider::throughput_against_the_emulator());
}
