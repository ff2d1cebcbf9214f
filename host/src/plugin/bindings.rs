//! Host-side bindings of the `provider` world in `wit/uploader.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "provider",
    imports: { default: async | trappable },
    exports: { default: async },
    additional_derives: [PartialEq, Eq],
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "blockferry:uploader/host.block-body": crate::plugin::body::BlockBody,
    },
});

pub use blockferry::uploader::types::{BlockInfo, Level, Outcome, RemoteObject, UploadError};
