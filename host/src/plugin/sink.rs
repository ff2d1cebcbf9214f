//! The `block-sink` resource: where a plugin writes an object it reads for
//! the host (`bucket-reader.reader.get`). The host picks the destination — a
//! file, bounded memory, or nothing but the digest — and hashes every byte
//! as it arrives, so an object is never held whole unless the host asked.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use md5::{Digest, Md5};
use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynOutputStream, OutputStream, Pollable, StreamError, StreamResult};

use super::bindings::blockferry::uploader::host::HostBlockSink;
use super::sandbox::{StoreState, StreamSlot};
use crate::sync::Locked;

/// Bytes a plugin may write to a sink per `check-write` permit.
const WRITE_PERMIT: usize = 1 << 20;

/// Where a sink's bytes go.
#[derive(Debug)]
pub enum SinkTarget {
    /// Appended to a file (the caller syncs and renames it).
    File(File),
    /// Kept in memory.
    Memory(Vec<u8>),
    /// Only hashed and counted (`verify --deep`).
    Digest,
}

/// What a sink received: its target back, and the size and MD5 of the bytes.
#[derive(Debug)]
pub struct Received {
    /// The destination, with every byte written to it.
    pub target: SinkTarget,
    /// Bytes written.
    pub size: u64,
    /// MD5 of the bytes written.
    pub md5: [u8; 16],
}

#[derive(Debug)]
struct State {
    target: SinkTarget,
    md5: Md5,
    size: u64,
    limit: u64,
    failed: Option<String>,
}

/// A destination for one object's bytes, shared by the host (which takes the
/// result) and the plugin (which writes). Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlockSink {
    state: Arc<Mutex<State>>,
}

impl BlockSink {
    /// A sink writing to `target` that refuses more than `limit` bytes.
    pub fn new(target: SinkTarget, limit: u64) -> Self {
        let state = State { target, md5: Md5::new(), size: 0, limit, failed: None };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// Append `bytes`, or say why not (over the limit, a write error). After a
    /// failure every later write fails the same way.
    pub fn append(&self, bytes: &[u8]) -> Result<(), String> {
        let mut s = self.state.locked();
        if let Some(e) = &s.failed {
            return Err(e.clone());
        }
        if s.size + bytes.len() as u64 > s.limit {
            let e = format!(
                "the object is larger than the {} bytes the host accepts for it; it is not a block this host wrote",
                s.limit
            );
            s.failed = Some(e.clone());
            return Err(e);
        }
        let written = match &mut s.target {
            SinkTarget::File(file) => {
                file.write_all(bytes).map_err(|e| format!("cannot write the object to disk: {e}"))
            }
            SinkTarget::Memory(buf) => {
                buf.extend_from_slice(bytes);
                Ok(())
            }
            SinkTarget::Digest => Ok(()),
        };
        if let Err(e) = written {
            s.failed = Some(e.clone());
            return Err(e);
        }
        s.md5.update(bytes);
        s.size += bytes.len() as u64;
        Ok(())
    }

    /// Everything received so far, the target handed back. Fails with the
    /// first write error, if any.
    pub fn finish(self) -> Result<Received, String> {
        let mut s = self.state.locked();
        if let Some(e) = s.failed.take() {
            return Err(e);
        }
        let target = std::mem::replace(&mut s.target, SinkTarget::Digest);
        let md5 = std::mem::take(&mut s.md5).finalize().into();
        Ok(Received { target, size: s.size, md5 })
    }
}

/// A `wasi:io` output-stream appending to a sink. Writes complete at once,
/// so it is always ready and always flushed.
struct SinkStream {
    sink: BlockSink,
    /// Its place among the instance's open streams.
    _slot: StreamSlot,
}

#[async_trait::async_trait]
impl Pollable for SinkStream {
    async fn ready(&mut self) {}
}

impl OutputStream for SinkStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.append(&bytes).map_err(|e| StreamError::LastOperationFailed(wasmtime::format_err!("{e}")))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        match &self.sink.state.locked().failed {
            Some(e) => Err(StreamError::LastOperationFailed(wasmtime::format_err!("{e}"))),
            None => Ok(WRITE_PERMIT),
        }
    }
}

impl HostBlockSink for StoreState {
    async fn write(&mut self, sink: Resource<BlockSink>, bytes: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.table.get(&sink)?.append(&bytes))
    }

    async fn stream(
        &mut self,
        sink: Resource<BlockSink>,
    ) -> wasmtime::Result<Result<Resource<DynOutputStream>, String>> {
        let sink = self.table.get(&sink)?.clone();
        let slot = match self.stream_slot() {
            Ok(slot) => slot,
            Err(e) => return Ok(Err(e)),
        };
        let stream: DynOutputStream = Box::new(SinkStream { sink, _slot: slot });
        Ok(Ok(self.table.push(stream)?))
    }

    async fn drop(&mut self, sink: Resource<BlockSink>) -> wasmtime::Result<()> {
        self.table.delete(sink)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_it_keeps_and_refuses_past_its_limit() {
        let sink = BlockSink::new(SinkTarget::Memory(Vec::new()), 10);
        sink.append(b"hello ").unwrap();
        sink.append(b"wor").unwrap();
        let err = sink.append(b"ld!!").unwrap_err();
        assert!(err.contains("larger than the 10 bytes"), "{err}");
        assert_eq!(sink.clone().finish().unwrap_err(), err);

        let sink = BlockSink::new(SinkTarget::Digest, 64);
        sink.append(b"hello world").unwrap();
        let got = sink.finish().unwrap();
        assert_eq!(got.size, 11);
        assert_eq!(hex::encode(got.md5), "5eb63bbbe01eeed093cb22bb8f5acdc3");
    }
}
