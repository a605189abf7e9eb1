//! Prometheus metrics, served at `GET /metrics`.
//!
//! Every crate records through the `metrics` facade (`counter!`,
//! `histogram!`, `gauge!`): a relaxed atomic per sample, nothing on the hot
//! path waits. This module installs the Prometheus recorder once per process
//! and renders it. What lives in memory (live key actors, leases) is read
//! at scrape time. What lives in the store is read in the background, once
//! per `http.metrics_refresh_ms` however many scrape ([`StoreGauges`],
//! [`StoreGaugeCache`]): a scrape is never a store query, so scrapers cannot
//! take the paid path's connections (a `GROUP BY` over every charge took
//! 0.27 s at 2M charges, and 32 concurrent scrapers made `/readyz` fail).
//!
//! Names are `tollgate_*`; units are in the names (`_seconds`, `_total`).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ledger::{Store, StoreError};

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
        "tollgate_payers_held_back",
        "Payers settlement holds back (balance or allowance short): their keys are fenced"
    );
    describe_gauge!(
        "tollgate_payers_held_back_owed_atomic",
        "What the held-back payers owe together, in USDC atomic units"
    );
    describe_gauge!(
        "tollgate_settlement_chain_paused",
        "1 while a chain's settlement is paused (settlements list says why)"
    );
    describe_counter!(
        "tollgate_store_gauge_reads_total",
        "Background reads of the store's gauges (one per http.metrics_refresh_ms)"
    );
    describe_gauge!(
        "tollgate_store_gauges_age_seconds",
        Unit::Seconds,
        "Age of the store gauges' latest read"
    );
}

/// Every gauge `/metrics` shows of the store, from one background read.
///
/// To add a store gauge: a field here, filled in [`StoreGauges::read`], set
/// in [`StoreGauges::publish`], and described in `describe()`. Each read
/// costs one round of queries per `http.metrics_refresh_ms`, never one per
/// scrape.
#[derive(Debug, Clone, Default)]
pub struct StoreGauges {
    /// `tollgate_charges{status}`.
    pub charges_by_status: Vec<(String, i64)>,
    /// `tollgate_settlement_batches{status}`.
    pub batches_by_status: Vec<(String, i64)>,
    /// `tollgate_settlement_chain_paused{chain}`: whether each chain's
    /// settlement is paused.
    pub chains_paused: Vec<(String, bool)>,
    /// `tollgate_payers_held_back{chain}` and
    /// `tollgate_payers_held_back_owed_atomic{chain}`: payers settlement
    /// holds back (their keys fenced), and what they owe together.
    pub held_back: Vec<(String, i64, i64)>,
}

impl StoreGauges {
    /// Reads every store gauge.
    pub async fn read(store: &Store) -> Result<StoreGauges, StoreError> {
        let chains_paused = store
            .chain_accounts()
            .await?
            .into_iter()
            .map(|account| {
                (
                    account.chain_id.to_string(),
                    account.paused_reason.is_some(),
                )
            })
            .collect();
        let held_back = store
            .held_back_totals()
            .await?
            .into_iter()
            .map(|(chain, payers, owed)| (chain.to_string(), payers, owed.to_db()))
            .collect();
        Ok(StoreGauges {
            charges_by_status: store.charge_status_counts().await?,
            batches_by_status: store.batch_status_counts().await?,
            chains_paused,
            held_back,
        })
    }

    /// Sets the gauges to this read.
    fn publish(&self) {
        for (status, n) in &self.charges_by_status {
            metrics::gauge!("tollgate_charges", "status" => status.clone()).set(*n as f64);
        }
        for (status, n) in &self.batches_by_status {
            metrics::gauge!("tollgate_settlement_batches", "status" => status.clone())
                .set(*n as f64);
        }
        for (chain, paused) in &self.chains_paused {
            metrics::gauge!("tollgate_settlement_chain_paused", "chain" => chain.clone())
                .set(if *paused { 1.0 } else { 0.0 });
            // A chain with none held back reads 0, not its last count.
            let (payers, owed) = self
                .held_back
                .iter()
                .find(|(c, _, _)| c == chain)
                .map_or((0, 0), |(_, payers, owed)| (*payers, *owed));
            metrics::gauge!("tollgate_payers_held_back", "chain" => chain.clone())
                .set(payers as f64);
            metrics::gauge!("tollgate_payers_held_back_owed_atomic", "chain" => chain.clone())
                .set(owed as f64);
        }
    }
}

/// The latest [`StoreGauges`] read, shared by the refresh task and the
/// scrapes. Cheap to clone.
#[derive(Clone, Default)]
pub struct StoreGaugeCache {
    latest: Arc<Mutex<Latest>>,
}

#[derive(Default)]
struct Latest {
    gauges: Option<StoreGauges>,
    read_at: Option<Instant>,
    /// Reads of the store so far (`tollgate_store_gauge_reads_total`).
    reads: u64,
}

impl StoreGaugeCache {
    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the store's gauges every `every`, until the process stops. A
    /// failed read keeps the previous one (its age shows it) and is logged
    /// once until a read succeeds again.
    pub async fn run(self, store: Store, every: Duration) {
        let mut failing = false;
        loop {
            let read = StoreGauges::read(&store).await;
            match read {
                Ok(gauges) => {
                    let mut latest = self.latest();
                    latest.gauges = Some(gauges);
                    latest.read_at = Some(Instant::now());
                    latest.reads += 1;
                    failing = false;
                }
                Err(error) if !failing => {
                    tracing::warn!(%error, "the store's gauges could not be read; serving the last read");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Sets the store's gauges from the latest read (no store query).
    fn publish(&self) {
        let latest = self.latest();
        if let Some(gauges) = &latest.gauges {
            gauges.publish();
        }
        metrics::counter!("tollgate_store_gauge_reads_total").absolute(latest.reads);
        if let Some(read_at) = latest.read_at {
            metrics::gauge!("tollgate_store_gauges_age_seconds")
                .set(read_at.elapsed().as_secs_f64());
        }
    }
}

/// Sets the gauges kept in memory (the gateway's actors and leases, the
/// store's latest background read), then renders everything. Reads nothing
/// from the store.
pub fn render(gateway: &crate::gateway::Gateway, store_gauges: &StoreGaugeCache) -> Option<String> {
    let handle = handle()?;
    metrics::gauge!("tollgate_key_actors_live").set(gateway.registry.loaded() as f64);
    metrics::counter!("tollgate_holds_expired_total").absolute(gateway.registry.expired_holds());
    let (taken, returned) = gateway.leases.counts();
    metrics::counter!("tollgate_leases_taken_total").absolute(taken);
    metrics::counter!("tollgate_leases_returned_total").absolute(returned);
    store_gauges.publish();
    Some(handle.render())
}
