//! Host-side bindings of the worlds in `wit/uploader.wit`: `provider` (every
//! provider) and `reading-provider` (providers that also export the
//! `bucket-reader`), sharing one set of imported types and host functions.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "provider",
    imports: { default: async | trappable },
    exports: { default: async },
    additional_derives: [PartialEq, Eq],
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "blockferry:uploader/host.block-body": crate::plugin::body::BlockBody,
        "blockferry:uploader/host.block-sink": crate::plugin::sink::BlockSink,
    },
});

/// The `reading-provider` world: used only to reach the `bucket-reader`
/// export of a component that has one.
pub mod reading {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "reading-provider",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "blockferry:uploader/types": super::blockferry::uploader::types,
            "blockferry:uploader/host": super::blockferry::uploader::host,
        },
    });
}

pub use blockferry::uploader::types::{
    BlockInfo, Confirmation, IncompleteUpload, Level, ListedObject, ObjectPage, Outcome, RemoteObject, UploadError,
};
