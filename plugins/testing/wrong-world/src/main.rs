//! Test fixture: a `wasi:cli/run` command component that does not export
//! `blockferry:uploader/bucket-uploader`, which the host must refuse to load.

fn main() {
    println!("blockferry-wrong-world: a command, not a storage provider");
}
