//! `block-node-sim`: a block node that receives a publisher's blocks (a
//! consensus node's, or blockferry's), acknowledges them and prints one line
//! per block and per `EndStream`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use blockferry_proto::EndOfStreamCode;
use blockferry_proto::api::publish_stream_response::Response;
use blockferry_sim::block_node::{Action, BlockNode, Event, Trigger, end_of_stream};
use clap::Parser;

/// Serve `publishBlockStream` as a block node does, acknowledging every block.
#[derive(Parser, Debug)]
#[command(name = "block-node-sim", version)]
struct Args {
    /// Address to listen on (port 0: any free port; the first line printed names it).
    #[arg(long, default_value = "127.0.0.1:40841")]
    listen: SocketAddr,
    /// The last block the node already has: older headers get SkipBlock, a gap gets BehindPublisher.
    #[arg(long)]
    latest: Option<u64>,
    /// Largest request accepted, in bytes.
    #[arg(long, default_value_t = blockferry_sim::block_node::DEFAULT_HARD_LIMIT)]
    hard_limit: usize,
    /// Acknowledge nothing.
    #[arg(long)]
    no_ack: bool,
    /// Send a stream's response headers only with its first response (as
    /// grpc-python's server does), not when the stream opens.
    #[arg(long)]
    late_headers: bool,
    /// Answer this block's BlockEnd with EndOfStream (once) instead of an acknowledgement.
    #[arg(long)]
    end_of_stream_at: Option<u64>,
    /// The EndOfStream code (SUCCESS, INVALID_REQUEST, ERROR, TIMEOUT, DUPLICATE_BLOCK, BAD_BLOCK_PROOF,
    /// PERSISTENCE_FAILED, UNKNOWN).
    #[arg(long, default_value = "ERROR", value_parser = parse_code)]
    code: EndOfStreamCode,
}

fn parse_code(name: &str) -> Result<EndOfStreamCode, String> {
    EndOfStreamCode::from_str_name(&name.to_ascii_uppercase()).ok_or_else(|| format!("no EndOfStream code {name}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("block-node-sim: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("block-node-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let node = BlockNode::builder()
        .listen(args.listen)
        .hard_limit(args.hard_limit)
        .keep_items(false)
        .late_headers(args.late_headers)
        .start()
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    node.set_latest(args.latest);
    node.ack_nothing(args.no_ack);
    if let Some(n) = args.end_of_stream_at {
        let end = end_of_stream(args.code, n.saturating_sub(1));
        node.script(Trigger::OnBlockEnd(n).then(Action::Respond(end)));
    }
    println!("listening on {}", node.addr());
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let events = node.events_since(seen);
        seen += events.len();
        for event in events {
            if let Some(line) = describe(&event) {
                println!("{line}");
            }
        }
    }
}

/// One line for the events worth printing.
fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::StreamOpened { stream, peer } => match peer {
            Some(peer) => format!("stream {stream} opened by {peer}"),
            None => format!("stream {stream} opened"),
        },
        Event::BlockReceived { stream, number, items, bytes } => {
            format!("block {number}: {items} items, {bytes} bytes (stream {stream})")
        }
        Event::BlockRefused { stream, number } => format!("block {number} refused (stream {stream})"),
        Event::BlockAbandoned { stream, number } => format!("block {number} abandoned (stream {stream})"),
        Event::EndStream(end) => format!(
            "EndStream {} earliest {} latest {} (stream {})",
            end.code.as_str_name(),
            end.earliest,
            end.latest,
            end.stream
        ),
        Event::Responded { stream, response } => match response.response? {
            Response::Acknowledgement(_) => return None,
            Response::EndStream(end) => {
                let code =
                    EndOfStreamCode::try_from(end.status).map_or(end.status.to_string(), |c| c.as_str_name().into());
                format!("sent EndOfStream {code} block {} (stream {stream})", end.block_number)
            }
            Response::SkipBlock(skip) => format!("sent SkipBlock {} (stream {stream})", skip.block_number),
            Response::ResendBlock(resend) => format!("sent ResendBlock {} (stream {stream})", resend.block_number),
            Response::NodeBehindPublisher(behind) => {
                format!("sent BehindPublisher {} (stream {stream})", behind.block_number)
            }
        },
        Event::StreamEnded { stream, end } => format!("stream {stream} ended: {end:?}"),
        _ => return None,
    })
}
