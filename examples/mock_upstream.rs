//! A fast mock OpenAI-compatible upstream for the gateway benchmark
//! (`scripts/bench-gateway`): the same mock the tests use
//! (`tests/common/mock_upstream.rs`), on a given port, without recording.
//!
//! Usage: `mock_upstream PORT [WORKERS]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mock_upstream.rs"]
mod mock_upstream;

use std::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: mock_upstream PORT [WORKERS]");
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let mock = mock_upstream::start(listener, workers, false);
    println!("mock upstream on {}", mock.base_url);
    // Ends on SIGINT or SIGTERM (the benchmark script sends SIGTERM).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
