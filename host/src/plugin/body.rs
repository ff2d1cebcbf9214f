//! The `block-body` resource: a block's bytes lent to a plugin for one call,
//! read in bounded chunks or streamed, never copied whole into the guest.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use futures::FutureExt;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{DynInputStream, InputStream, Pollable, StreamError, StreamResult};

use super::bindings::blockferry::uploader::host::HostBlockBody;
use super::sandbox::{StoreState, StreamSlot};

/// Largest chunk a plugin may ask for in one `read`.
pub const MAX_READ: u32 = 16 * 1024 * 1024;
/// A stream over at most this many bytes of a file is read in one
/// positioned read and served from memory: one trip to the blocking pool
/// instead of an open, a seek and a read per 64 KiB on it (small blocks).
const STREAM_IN_ONE_READ: u64 = 1024 * 1024;

/// Where the bytes of a block body live.
#[derive(Clone, Debug)]
enum Source {
    /// A file on disk (the block store's block file), opened once for
    /// positioned reads; streams open it again so each has its own offset.
    File { file: Arc<File>, path: Arc<Path> },
    /// Bytes in memory (tests, benchmarks, small generated blocks).
    Memory(Bytes),
}

/// A block's bytes, as lent to a plugin. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlockBody {
    source: Source,
    size: u64,
}

impl BlockBody {
    /// A body backed by the file at `path`; it is opened and its size taken now.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path: PathBuf = path.into();
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { source: Source::File { file: Arc::new(file), path: path.into() }, size })
    }

    /// A body backed by bytes in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self { size: bytes.len() as u64, source: Source::Memory(bytes) }
    }

    /// Size of the body in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Read up to `len` bytes at `offset` (fewer only at the end).
    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        if len > MAX_READ {
            return Err(format!("read of {len} bytes refused: at most {MAX_READ} bytes per read; read in parts"));
        }
        let end = self.size.min(offset.saturating_add(u64::from(len)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let want = (end - offset) as usize;
        match &self.source {
            Source::Memory(bytes) => Ok(bytes[offset as usize..end as usize].to_vec()),
            Source::File { file, .. } => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; want];
                    let mut filled = 0;
                    while filled < want {
                        match file.read_at(&mut buf[filled..], offset + filled as u64) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                return Err(format!("reading block body at offset {offset}: {e}"));
                            }
                        }
                    }
                    buf.truncate(filled);
                    Ok(buf)
                })
                .await
                .map_err(|e| format!("reading block body: {e}"))?
            }
        }
    }

    /// A `wasi:io` input-stream over the body from `offset` to the end.
    pub async fn stream_from(&self, offset: u64) -> Result<DynInputStream, String> {
        match &self.source {
            Source::Memory(bytes) => {
                let start = (offset.min(self.size)) as usize;
                Ok(Box::new(MemoryInputPipe::new(bytes.slice(start..))))
            }
            Source::File { .. } if self.size.saturating_sub(offset) <= STREAM_IN_ONE_READ => {
                let bytes = self.read_at(offset, STREAM_IN_ONE_READ as u32).await?;
                Ok(Box::new(MemoryInputPipe::new(bytes)))
            }
            Source::File { path, .. } => {
                let path = path.clone();
                let file = tokio::task::spawn_blocking(move || {
                    let mut file =
                        File::open(&path).map_err(|e| format!("streaming block body {}: {e}", path.display()))?;
                    file.seek(SeekFrom::Start(offset))
                        .map_err(|e| format!("streaming block body from offset {offset}: {e}"))?;
                    Ok::<_, String>(file)
                })
                .await
                .map_err(|e| format!("streaming block body: {e}"))??;
                Ok(Box::new(FileStream::new(file, self.size.saturating_sub(offset))))
            }
        }
    }
}

/// A chunk read on the blocking pool, with the file to read the next one from.
type ChunkRead = tokio::task::JoinHandle<(File, std::io::Result<Bytes>)>;

/// A stream over the rest of a block file: chunks of [`STREAM_IN_ONE_READ`]
/// read on the blocking pool, the next one started when the last is handed
/// over (one read ahead), each handed on as read, without a copy.
struct FileStream {
    /// The file, between reads (`None` while one is in flight).
    file: Option<File>,
    /// Bytes still to read from the file.
    left: u64,
    /// Read and not yet taken.
    ready: Bytes,
    pending: Option<ChunkRead>,
    /// Why the last read failed, once.
    failed: Option<std::io::Error>,
}

impl FileStream {
    /// The next `left` bytes of `file`, from its position.
    fn new(file: File, left: u64) -> Self {
        let mut stream = FileStream { file: Some(file), left, ready: Bytes::new(), pending: None, failed: None };
        stream.start();
        stream
    }

    /// Start reading the next chunk, unless one is in flight or all is read.
    fn start(&mut self) {
        if self.left == 0 || self.pending.is_some() {
            return;
        }
        let Some(file) = self.file.take() else { return };
        let len = self.left.min(STREAM_IN_ONE_READ);
        self.left -= len;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(len as usize);
            let read = (&file).take(len).read_to_end(&mut chunk).map(|_| Bytes::from(chunk));
            (file, read)
        }));
    }

    /// Take in a finished read, and start the next.
    fn settle(&mut self, joined: Result<(File, std::io::Result<Bytes>), tokio::task::JoinError>) {
        self.pending = None;
        match joined {
            Ok((file, Ok(chunk))) => {
                // A file shorter than its size ends the stream there.
                if chunk.is_empty() {
                    self.left = 0;
                }
                self.ready = chunk;
                self.file = Some(file);
            }
            Ok((_, Err(e))) => self.failed = Some(e),
            Err(e) => self.failed = Some(std::io::Error::other(e)),
        }
        self.start();
    }
}

#[async_trait::async_trait]
impl Pollable for FileStream {
    async fn ready(&mut self) {
        if self.ready.is_empty()
            && self.failed.is_none()
            && let Some(pending) = &mut self.pending
        {
            let joined = pending.await;
            self.settle(joined);
        }
    }
}

#[async_trait::async_trait]
impl InputStream for FileStream {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if self.ready.is_empty()
            && let Some(joined) = self.pending.as_mut().and_then(|pending| pending.now_or_never())
        {
            self.settle(joined);
        }
        if !self.ready.is_empty() {
            let n = size.min(self.ready.len());
            return Ok(self.ready.split_to(n));
        }
        if let Some(e) = self.failed.take() {
            return Err(StreamError::LastOperationFailed(wasmtime::format_err!("reading block body: {e}")));
        }
        if self.pending.is_none() { Err(StreamError::Closed) } else { Ok(Bytes::new()) }
    }
}

/// A body stream holding its place among the instance's open streams.
struct CountedStream {
    inner: DynInputStream,
    _slot: StreamSlot,
}

#[async_trait::async_trait]
impl Pollable for CountedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl InputStream for CountedStream {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.read(size)
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.blocking_read(size).await
    }

    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.skip(nelem)
    }

    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.blocking_skip(nelem).await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

impl HostBlockBody for StoreState {
    async fn size(&mut self, body: Resource<BlockBody>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&body)?.size())
    }

    async fn read(
        &mut self,
        body: Resource<BlockBody>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let body = self.table.get(&body)?.clone();
        Ok(body.read_at(offset, len).await)
    }

    async fn stream(
        &mut self,
        body: Resource<BlockBody>,
        offset: u64,
    ) -> wasmtime::Result<Result<Resource<DynInputStream>, String>> {
        let body = self.table.get(&body)?.clone();
        let slot = match self.stream_slot() {
            Ok(slot) => slot,
            Err(e) => return Ok(Err(e)),
        };
        match body.stream_from(offset).await {
            Ok(inner) => {
                let stream: DynInputStream = Box::new(CountedStream { inner, _slot: slot });
                Ok(Ok(self.table.push(stream)?))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    async fn drop(&mut self, body: Resource<BlockBody>) -> wasmtime::Result<()> {
        self.table.delete(body)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi::p2::StreamError;

    /// Everything `stream` yields until it closes.
    async fn drain(mut stream: DynInputStream) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            match stream.blocking_read(1 << 20).await {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_file_streams_whole_from_any_offset_small_or_large() {
        let dir = tempfile::tempdir().unwrap();
        // Below, at and above the size read in one go.
        for size in [0, 70_000, STREAM_IN_ONE_READ as usize, STREAM_IN_ONE_READ as usize + 70_000] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join(format!("{size}.blk"));
            std::fs::write(&path, &bytes).unwrap();
            let body = BlockBody::open(&path).unwrap();
            for offset in [0, 1, 65_536, size] {
                let offset = offset.min(size);
                let streamed = drain(body.stream_from(offset as u64).await.unwrap()).await;
                assert!(streamed == bytes[offset..], "size {size}, offset {offset}: {} bytes", streamed.len());
            }
        }
    }
}
