//! The broker stopped and started again under load (`rabbitmqctl stop_app`
//! / `start_app`). It is its own test binary, with one test: cargo runs test
//! binaries one at a time, so no other test shares the broker while it is
//! down. While the broker is away, a paid call's publish waits at most
//! `queue.publish_timeout_ms`, then the call fails with 503 and nothing
//! charged; once it is back, calls and the ledger pools resume on their own.
//! Every call that reported a final amount has exactly that charge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{header_amount, spawn_paid_app_with};
use ledger::store::Backend;
use serde_json::json;

/// `rabbitmqctl ARGS`, which must succeed.
fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is needed for this test (RabbitMQ's own CLI)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts the broker's application again however the test ends.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_calls_survive_the_broker_stopping_and_starting() {
    let (amqp, queue) = (common::amqp_url(), common::queue_name());
    let (app, _mock) = spawn_paid_app_with(
        Backend::Postgres,
        &[
            ("TOLLGATE__QUEUE__URL", amqp.as_str()),
            ("TOLLGATE__QUEUE__CALLS_QUEUE", queue.as_str()),
            ("TOLLGATE__QUEUE__PUBLISH_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let key = app.paid_key(1_000_000).await;
    let words: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let body = json!({"model": "echo", "max_tokens": 10,
                      "messages": [{"role": "user", "content": words.join(" ")}]});
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, url, token, body, stop) = (
            app.client.clone(),
            app.url("/external/v1/chat/completions"),
            key.token.clone(),
            body.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut reported = HashMap::new();
            let mut refused = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    200 => {
                        let id = response.headers()["x-request-id"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        reported.insert(
                            id,
                            header_amount(&response, "x-compose-key-final-amount-wei"),
                        );
                    }
                    503 => refused += 1,
                    other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
                }
            }
            (reported, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _back = BrokerBack;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    rabbitmqctl(&["start_app"]);
    // Calls go through again once the connection recovered.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut reported, mut refused) = (HashMap::new(), 0);
    for client in clients {
        let (seen, failed) = client.await.unwrap();
        reported.extend(seen);
        refused += failed;
    }
    assert!(refused > 0, "calls during the outage are refused");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let missing = app.charges_missing(&reported).await;
        let (used, charged) = app.spent(&key.key_id).await;
        if missing == 0 && used == charged {
            eprintln!("answered {}, refused {refused}", reported.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} reported calls have no charge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::delete_queue(&queue).await;
}
