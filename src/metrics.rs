//! Prometheus metrics, served at `GET /metrics`.
//!
//! Every crate records through the `metrics` facade (`counter!`,
//! `histogram!`, `gauge!`): a relaxed atomic per sample, nothing on the hot
//! path waits. This module installs the Prometheus recorder once per process
//! and renders it; what lives in the store (charges and batches by status,
//! paused chains) and in memory (live key actors) is read at scrape time, so
//! it costs nothing between scrapes.
//!
//! Names are `tollgate_*`; units are in the names (`_seconds`, `_total`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets for `*_seconds` histograms: 100 µs to 60 s.
const BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    15.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` if another
/// recorder was installed first (then nothing is exported).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS_SECONDS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// Drains histogram samples into their buckets every few seconds (without
/// it they would pile up between scrapes). Runs until the process stops.
pub async fn upkeep() {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(handle) = handle() {
            handle.run_upkeep();
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "tollgate_http_requests_total",
        "HTTP requests by route and status"
    );
    describe_histogram!(
        "tollgate_http_request_duration_seconds",
        Unit::Seconds,
        "Time to the response's head, by route"
    );
    describe_counter!(
        "tollgate_payment_required_total",
        "402 answers by cause (insufficient_budget, insufficient_funds, …)"
    );
    describe_gauge!("tollgate_key_actors_live", "Key actors alive on this node");
    describe_gauge!(
        "tollgate_charges",
        "Charges in the ledger by settlement status"
    );
    describe_gauge!(
        "tollgate_settlement_batches",
        "Settlement batches by status"
    );
    describe_gauge!(
        "tollgate_settlement_chain_paused",
        "1 while a chain's settlement is paused (settlements list says why)"
    );
}

/// Sets the gauges read at scrape time, then renders everything.
pub async fn render(state: &crate::state::AppState) -> Option<String> {
    let handle = handle()?;
    let gateway = &state.gateway;
    metrics::gauge!("tollgate_key_actors_live").set(gateway.registry.loaded() as f64);
    metrics::counter!("tollgate_holds_expired_total").absolute(gateway.registry.expired_holds());
    let (taken, returned) = gateway.leases.counts();
    metrics::counter!("tollgate_leases_taken_total").absolute(taken);
    metrics::counter!("tollgate_leases_returned_total").absolute(returned);
    if let Ok(counts) = state.store.charge_status_counts().await {
        for (status, n) in counts {
            metrics::gauge!("tollgate_charges", "status" => status).set(n as f64);
        }
    }
    if let Ok(counts) = state.store.batch_status_counts().await {
        for (status, n) in counts {
            metrics::gauge!("tollgate_settlement_batches", "status" => status).set(n as f64);
        }
    }
    if let Ok(accounts) = state.store.chain_accounts().await {
        for account in accounts {
            let paused = if account.paused_reason.is_some() {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("tollgate_settlement_chain_paused", "chain" => account.chain_id.to_string())
                .set(paused);
        }
    }
    Some(handle.render())
}
