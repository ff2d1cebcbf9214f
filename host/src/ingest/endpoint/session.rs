//! One publisher's stream: assembling blocks from items, storing them, and
//! answering as a block node would (see the table in the module above).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blockferry_proto::api::publish_stream_request::{EndStream, Request};
use blockferry_proto::api::publish_stream_response::{
    BehindPublisher, BlockAcknowledgement, EndOfStream, Response, SkipBlock,
};
use blockferry_proto::item::header_number;
use blockferry_proto::{
    EndOfStreamCode, EndStreamCode, ItemKind, PublishStreamRequest, PublishStreamResponse, UNKNOWN_BLOCK_NUMBER,
};
use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::Ingest;
use crate::buffer::Block;
use crate::store::StoreError;

/// Whether the stream goes on after a message.
enum Flow {
    Continue,
    End,
}

/// The block being received.
enum Open {
    /// Between blocks.
    Nothing,
    /// Receiving block `number`; `stored` when it was already stored (its
    /// items are compared with the stored copy, never written again).
    Receiving { number: u64, items: Vec<Bytes>, bytes: usize, has_proof: bool, stored: bool },
    /// Dropping a block's items until the next header (after a gap).
    Discarding,
}

/// One publisher's stream.
pub(super) struct Session {
    ingest: Arc<Ingest>,
    tx: mpsc::Sender<Result<PublishStreamResponse, Status>>,
    open: Open,
}

impl Session {
    pub(super) fn new(ingest: Arc<Ingest>, tx: mpsc::Sender<Result<PublishStreamResponse, Status>>) -> Self {
        Self { ingest, tx, open: Open::Nothing }
    }

    /// Handle requests until the stream ends.
    pub(super) async fn run(mut self, mut inbound: Streaming<PublishStreamRequest>) {
        loop {
            let request = match inbound.message().await {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(status) => {
                    let why = if status.code() == tonic::Code::OutOfRange {
                        // tonic's answer to a message above the decoding limit.
                        let limit = self.ingest.limits.hard_limit_bytes;
                        format!(
                            "request too large: {} (requests up to ingest.hard_limit_bytes = {limit} bytes are \
                             accepted; raise it if the consensus node's hard limit is higher)",
                            status.message()
                        )
                    } else {
                        format!("unreadable request: {}", status.message())
                    };
                    self.invalid(why).await;
                    return;
                }
            };
            if let Flow::End = self.handle(request).await {
                return;
            }
        }
    }

    async fn handle(&mut self, request: PublishStreamRequest) -> Flow {
        match request.request {
            Some(Request::BlockItems(set)) => {
                for item in set.block_items {
                    if let Flow::End = self.item(item).await {
                        return Flow::End;
                    }
                }
                Flow::Continue
            }
            Some(Request::EndOfBlock(end)) => match &self.open {
                Open::Receiving { number, .. } if *number == end.block_number => self.finish().await,
                Open::Receiving { number, .. } => {
                    let msg = format!("BlockEnd for block {} while block {number} is open", end.block_number);
                    self.invalid(msg).await
                }
                // The end of a skipped or discarded block.
                Open::Discarding | Open::Nothing => {
                    self.open = Open::Nothing;
                    Flow::Continue
                }
            },
            Some(Request::EndStream(end)) => {
                self.publisher_ended(&end);
                Flow::End
            }
            None => self.invalid("a request with no content (none of block_items, end_stream, end_of_block)").await,
        }
    }

    async fn item(&mut self, item: Bytes) -> Flow {
        let kind = match ItemKind::of(&item) {
            Ok(kind) => kind,
            Err(e) => return self.invalid(format!("{}: {e}", self.position())).await,
        };
        if kind == ItemKind::BLOCK_HEADER {
            // The next header also ends the open block, except a skipped
            // one: the publisher stops sending it part-way, so without its
            // `BlockEnd` it is incomplete and simply dropped.
            match self.open {
                Open::Receiving { stored: true, .. } => self.open = Open::Nothing,
                Open::Receiving { .. } => {
                    if let Flow::End = self.finish().await {
                        return Flow::End;
                    }
                }
                _ => {}
            }
            return self.header(item).await;
        }
        let max = self.ingest.limits.max_block_bytes;
        match &mut self.open {
            Open::Receiving { number, items, bytes, has_proof, .. } => {
                *bytes += item.len();
                *has_proof |= kind == ItemKind::BLOCK_PROOF;
                items.push(item);
                if *bytes > max {
                    let msg = format!(
                        "block {number} is larger than ingest.max_block_bytes = {max} bytes; raise it to accept such blocks"
                    );
                    return self.invalid(msg).await;
                }
                Flow::Continue
            }
            Open::Discarding => Flow::Continue,
            Open::Nothing => self.invalid(format!("{kind} before any block_header")).await,
        }
    }

    async fn header(&mut self, item: Bytes) -> Flow {
        let number = match header_number(&item) {
            Ok(n) => n,
            Err(e) => return self.invalid(format!("{}: {e}", self.position())).await,
        };
        let latest = self.ingest.latest();
        match latest {
            Some(latest) if number <= latest => {
                self.ingest.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(block = number, latest, "block already stored: SkipBlock");
                // Receiving it anyway lets a whole block that was sent before
                // the SkipBlock arrived be compared with the stored copy.
                self.open = if self.ingest.store.has_block(number) {
                    Open::Receiving { number, bytes: item.len(), items: vec![item], has_proof: false, stored: true }
                } else {
                    Open::Discarding
                };
                self.send(Response::SkipBlock(SkipBlock { block_number: number })).await
            }
            Some(latest) if number > latest + 1 => {
                self.ingest.counters.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(block = number, latest, "gap in the block stream: asking for block {}", latest + 1);
                self.open = Open::Discarding;
                self.send(Response::NodeBehindPublisher(BehindPublisher { block_number: latest })).await
            }
            _ => {
                self.open =
                    Open::Receiving { number, bytes: item.len(), items: vec![item], has_proof: false, stored: false };
                Flow::Continue
            }
        }
    }

    /// The open block is complete: store it, then acknowledge it.
    async fn finish(&mut self) -> Flow {
        let Open::Receiving { number, items, has_proof, stored, .. } = std::mem::replace(&mut self.open, Open::Nothing)
        else {
            return Flow::Continue;
        };
        if !has_proof && !stored {
            // Nothing of it was written.
            return self.invalid(format!("block {number} ended without a block_proof item")).await;
        }
        let block = Arc::new(Block::new(number, items));
        let written = {
            let (ingest, block) = (self.ingest.clone(), block.clone());
            tokio::task::spawn_blocking(move || ingest.store.write_block(number, &block.encode(), &ingest.buckets()))
                .await
                .unwrap_or_else(|e| Err(StoreError::Io { op: "storing", path: "(task)".into(), error: e.into() }))
        };
        match written {
            Ok(_) if stored => Flow::Continue,
            Ok(_) => {
                self.ingest.set_store_error(None);
                self.ingest.set_latest(number);
                self.ingest.buffer.insert(block.clone());
                (self.ingest.on_stored)(number);
                self.ingest.counters.blocks.fetch_add(1, Ordering::Relaxed);
                self.ingest.counters.bytes.fetch_add(block.size, Ordering::Relaxed);
                tracing::debug!(block = number, bytes = block.size, "block stored");
                // Backpressure: hold the acknowledgement (and stop reading)
                // until block nodes catch up.
                self.ingest.buffer.wait_for_capacity().await;
                self.send(Response::Acknowledgement(BlockAcknowledgement { block_number: number })).await
            }
            Err(e @ StoreError::Conflict { .. }) => {
                tracing::error!(block = number, "{e}");
                let latest = self.ingest.latest().unwrap_or(UNKNOWN_BLOCK_NUMBER);
                self.end(EndOfStreamCode::DuplicateBlock, latest).await
            }
            Err(e) => {
                self.ingest.counters.persistence_failed.fetch_add(1, Ordering::Relaxed);
                self.ingest.set_store_error(Some(e.to_string()));
                tracing::error!(
                    block = number,
                    "cannot store the block: {e}; the stream ends with PERSISTENCE_FAILED and the consensus node \
                     resends it"
                );
                let latest = self.ingest.latest().unwrap_or(UNKNOWN_BLOCK_NUMBER);
                self.end(EndOfStreamCode::PersistenceFailed, latest).await
            }
        }
    }

    fn publisher_ended(&self, end: &EndStream) {
        let code = EndStreamCode::try_from(end.end_code).unwrap_or(EndStreamCode::Unknown);
        let open = match &self.open {
            Open::Receiving { number, stored: false, .. } => format!("; incomplete block {number} dropped"),
            _ => String::new(),
        };
        let (earliest, latest) = (end.earliest_block_number, end.latest_block_number);
        match code {
            EndStreamCode::Reset => {
                tracing::info!(earliest, latest, "publisher ended its stream (RESET){open}")
            }
            EndStreamCode::TooFarBehind => tracing::error!(
                earliest,
                latest,
                "publisher ended its stream with TOO_FAR_BEHIND{open}: it no longer holds block {}; backfill the missing \
                 blocks from the consensus node's block files with `blockferry import`",
                self.ingest.latest().map_or(0, |l| l + 1)
            ),
            code => tracing::warn!(earliest, latest, "publisher ended its stream with {}{open}", code.as_str_name()),
        }
    }

    /// Where in the stream we are, for messages.
    fn position(&self) -> String {
        match &self.open {
            Open::Receiving { number, items, .. } => format!("item {} of block {number}", items.len()),
            _ => "an item between blocks".into(),
        }
    }

    /// End the stream with `INVALID_REQUEST`, saying why.
    async fn invalid(&mut self, why: impl Into<String>) -> Flow {
        self.ingest.counters.invalid.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("invalid request from the publisher: {}; stream ended", why.into());
        let latest = self.ingest.latest().unwrap_or(UNKNOWN_BLOCK_NUMBER);
        self.end(EndOfStreamCode::InvalidRequest, latest).await
    }

    async fn end(&mut self, code: EndOfStreamCode, block_number: u64) -> Flow {
        self.open = Open::Nothing;
        let _ = self
            .send(Response::EndStream(EndOfStream { status: code as i32, block_number, proximate_block_number: 0 }))
            .await;
        Flow::End
    }

    async fn send(&self, response: Response) -> Flow {
        match self.tx.send(Ok(PublishStreamResponse { response: Some(response) })).await {
            Ok(()) => Flow::Continue,
            // The publisher hung up.
            Err(_) => Flow::End,
        }
    }
}
