//! Faults between a plugin and its server at increasing rates: S3 uploads
//! through a fault-injecting proxy (503 SlowDown, connection resets, stalls)
//! in front of `s3s-fs`. At every rate every block arrives intact; the test
//! prints the throughput and latency it reached at each rate (see
//! RELIABILITY.md; `cargo nextest run -p blockferry --test all fault_rates:: --no-capture`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::servers::{ACCESS_KEY, Fault, FaultProxy, S3sFs, SECRET_KEY};
use crate::common::*;
use blockferry::plugin::{BlockBody, BucketClient, Outcome};
use md5::{Digest, Md5};

const BLOCKS: u64 = 60;
const SIZE: usize = 64 * 1024;
const IN_FLIGHT: usize = 4;

/// Request `n`'s fault at `percent` of requests: a 503, a reset or a 200 ms stall.
fn plan(percent: u64) -> impl Fn(usize, &str, &str) -> Option<Fault> + Send + Sync + 'static {
    move |n, _, _| {
        let roll = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        (roll % 100 < percent).then(|| match roll % 3 {
            0 => Fault::Status(503, "SlowDown", None),
            1 => Fault::Reset,
            _ => Fault::Delay(Duration::from_millis(200)),
        })
    }
}

/// Upload every block, `IN_FLIGHT` at a time, retrying a block the plugin gave
/// up on (as the host's upload manager does); returns (seconds, latencies, host retries).
async fn upload_all(client: Arc<BucketClient>) -> (f64, Vec<Duration>, u64) {
    let started = Instant::now();
    let retries = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, retries, next) = (client.clone(), retries.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= BLOCKS {
                    return latencies;
                }
                let bytes = crate::common::bytes(SIZE, n);
                let info = block(n, &format!("f/{n}.blk"), &bytes);
                let t = Instant::now();
                loop {
                    match client.put_block(&info, &BlockBody::from_bytes(bytes.clone())).await {
                        Ok(Outcome::Uploaded | Outcome::AlreadyPresent) => break,
                        Err(e) => {
                            assert!(e.is_retryable(), "block {n}: a fault is never permanent: {e}");
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort();
    (started.elapsed().as_secs_f64(), latencies, retries.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_arrive_intact_at_every_fault_rate() {
    let runtime = runtime();
    println!("| faulty requests | faults injected | throughput | latency p50 / p99 | host retries |");
    println!("|---|---|---|---|---|");
    for percent in [0, 10, 30] {
        let server = S3sFs::start("faults");
        let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap(), plan(percent));
        let mut spec = spec("faults");
        spec.settings = settings_with(
            &[
                ("endpoint", &proxy.endpoint()),
                ("bucket", "faults"),
                ("region", "us-east-1"),
                ("addressing", "path"),
                ("access_key_id", ACCESS_KEY),
                ("secret_access_key", SECRET_KEY),
            ],
            &[("retry_max_attempts", "4"), ("retry_base_delay_ms", "10"), ("request_timeout_ms", "2000")],
        );
        spec.call_timeout = Duration::from_secs(30);
        spec.max_concurrency = IN_FLIGHT;
        let client = Arc::new(BucketClient::open(load(&runtime, "blockferry_s3"), spec).await.unwrap());
        let (seconds, latencies, retries) = upload_all(client).await;
        for n in 0..BLOCKS {
            let stored = std::fs::read(server.root.join(format!("faults/f/{n}.blk"))).unwrap();
            assert_eq!(
                Md5::digest(&stored),
                Md5::digest(crate::common::bytes(SIZE, n)),
                "block {n} intact at {percent} %"
            );
        }
        let faults = proxy.faults();
        if percent > 0 {
            assert!(faults > 0, "faults were injected at {percent} %");
        }
        let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "| {percent} % | {faults} of {} | {:.1} MiB/s ({:.0} blocks/s) | {:.0} / {:.0} ms | {retries} |",
            proxy.seen().len(),
            BLOCKS as f64 * SIZE as f64 / seconds / (1 << 20) as f64,
            BLOCKS as f64 / seconds,
            pct(0.5),
            pct(0.99),
        );
    }
}
