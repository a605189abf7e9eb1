//! The durable step of the queue mode alone, for the gateway benchmark
//! (`scripts/bench-gateway`): one paid call's event, published to RabbitMQ
//! and confirmed, one at a time (concurrency 1), through the gateway's own
//! [`Queue`] — a persistent message on a quorum queue, as a paid call
//! publishes it. Issue 16 sets the queue mode's c=1 target against it: the
//! gateway's added p50 at most this p50 + 0.3 ms.
//!
//! Usage: `confirmed_publish AMQP_URL SECONDS`. Prints
//! `RESULT publishes p50_µs p99_µs`; the queue it declares is deleted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ledger::model::NewCharge;
use ledger::{Amount, ChainId, KeyId, LeaseId, RequestId, WalletAddress};
use workers::event::CallCompleted;
use workers::queue::{Queue, QueueOptions};
use workers::sink::CallContext;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: confirmed_publish AMQP_URL SECONDS";
    let url = args.next().expect(usage);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).expect(usage);
    let queue = Queue::connect(&url, QueueOptions::default())
        .await
        .expect("broker");
    let name = format!("bench-confirm-{}", std::process::id());
    queue.declare(&name).await.expect("declare");
    let wallet: WalletAddress = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        .parse()
        .unwrap();
    let call = CallContext {
        hold: Amount::from_atomic(21).unwrap(),
        started_at_ms: ledger::time::now_ms(),
        payer: Some((wallet, ChainId(43113))),
    };
    let key = KeyId::generate();
    let lease = LeaseId::generate();
    let mut latencies_us = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        // The event of a bench call (`mock_ok`, 5 output tokens), built and
        // serialised per publish, as the gateway does.
        let started = Instant::now();
        let charge = NewCharge {
            request_id: RequestId::generate(),
            key_id: key.clone(),
            model: "mock_ok".into(),
            price_version: "bench".into(),
            input_tokens: 9,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 5,
            amount: Amount::from_atomic(19).unwrap(),
            reported: Some((9, 5)),
            reported_cache: Some((0, 0)),
            created_at_ms: ledger::time::now_ms(),
            lease: Some(lease.clone()),
            client_request_id: None,
        };
        let event = CallCompleted::of_charge(&charge, &call);
        queue
            .publish(&name, charge.request_id.as_str(), event.to_json().into())
            .await
            .expect("confirmed publish");
        latencies_us.push(started.elapsed().as_micros());
    }
    queue.delete(&name).await.expect("delete");
    latencies_us.sort_unstable();
    let at = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q) as usize];
    println!("RESULT {} {} {}", latencies_us.len(), at(0.5), at(0.99));
}
