//! [`LedgerWriter`]: the in-process ledger writer of the embedded mode —
//! group commit of charges.
//!
//! Callers hand it a priced charge and wait for its answer; one writer
//! drains the queue and writes whatever has gathered (at most [`BATCH_MAX`]
//! charges) in one transaction, then answers each caller. A caller hears
//! "recorded" only after the transaction committed, so a call that reports
//! a final amount has its charge on disk even if the process dies the next
//! instant (invariant 2). Under load, one transaction carries many calls:
//! the cost of a commit is shared, not paid per call.
//!
//! On SQLite the writer is a thread of its own with a connection of its own
//! ([`ledger::store::charge_connection`]): a batch is written in place, with
//! no hop to sqlx's worker thread per statement. A batch that connection
//! leaves undecided (a duplicate, a key past its limit), or a failure of
//! it, goes through [`Store::record_charges`] on the pool, as every batch
//! does on PostgreSQL (a task).

use ledger::model::{ChargeOutcome, NewCharge};
use ledger::store::charge_connection::ChargeConnection;
use ledger::Store;
use tokio::sync::{mpsc, oneshot};

use crate::sink::{CallContext, ChargeSink, RecordFuture, SinkError};

/// The most charges one transaction carries: keeps a transaction short so
/// readers and the next batch never wait long.
pub const BATCH_MAX: usize = 256;

/// Charges waiting for the writer; past this, callers wait to enqueue
/// (back-pressure instead of unbounded memory).
pub const QUEUE_MAX: usize = 8_192;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The transaction failed (the store is down, say); nothing was written.
    #[error("the ledger could not be written: {0}")]
    Store(String),
    /// The writer task is gone (shutting down).
    #[error("the ledger writer has stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<ChargeOutcome, WriteError>>;
type Queued = mpsc::Receiver<(NewCharge, Reply)>;

/// A handle to the writer task. Cheap to clone; the task ends when every
/// handle is dropped, after writing what was queued.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<(NewCharge, Reply)>,
}

impl LedgerWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(store: Store) -> LedgerWriter {
        LedgerWriter::spawn(store).0
    }

    /// As [`LedgerWriter::start`], with a handle for its owner to watch: it
    /// ends only when every handle to the writer is dropped and what was
    /// queued is written.
    pub fn spawn(store: Store) -> (LedgerWriter, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        let task = match store.charge_connection() {
            Ok(Some(connection)) => spawn_thread(store, connection, receiver),
            Ok(None) => tokio::spawn(run(store, receiver)),
            Err(error) => {
                tracing::warn!(%error, "no SQLite connection of the ledger writer's own; it writes through the pool");
                tokio::spawn(run(store, receiver))
            }
        };
        (LedgerWriter { queue }, task)
    }

    /// Writes `charge` once and answers what happened, after the commit.
    pub async fn record(&self, charge: NewCharge) -> Result<ChargeOutcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((charge, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

impl ChargeSink for LedgerWriter {
    fn record(&self, charge: NewCharge, _call: CallContext) -> RecordFuture {
        let writer = self.clone();
        Box::pin(async move {
            LedgerWriter::record(&writer, charge)
                .await
                .map_err(|error| match error {
                    WriteError::Store(cause) => SinkError::Failed(cause),
                    WriteError::Stopped => SinkError::Stopped,
                })
        })
    }
}

/// Tries a batch up to [`ATTEMPTS`] times. Writing charges is idempotent
/// (the request id is the key; a failed transaction wrote nothing), so a
/// transient failure — a PostgreSQL deadlock or serialization failure
/// against a concurrent sign-in, a busy SQLite — costs a retry, not the
/// batch's charges.
async fn record_with_retries(
    store: &Store,
    charges: &[NewCharge],
) -> Result<Vec<ChargeOutcome>, ledger::StoreError> {
    let mut attempt = 1;
    loop {
        match store.record_charges(charges).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(error) if attempt < ATTEMPTS => {
                tracing::warn!(%error, attempt, "writing charges failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// How often a batch is tried before its callers hear it failed.
const ATTEMPTS: u32 = 3;

async fn run(store: Store, mut receiver: Queued) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    // `recv_many` waits for the first charge, then takes whatever else is
    // already queued: under load batches grow, idle they are single charges.
    while receiver.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let (charges, replies): (Vec<NewCharge>, Vec<Reply>) = batch.drain(..).unzip();
        let written = record_with_retries(&store, &charges).await;
        answer(replies, written);
    }
}

/// Starts [`run_on_thread`] on a thread named `ledger-writer`; the task it
/// answers ends when the thread does. When no thread can start, a task
/// writes through the pool instead.
fn spawn_thread(
    store: Store,
    connection: ChargeConnection,
    receiver: Queued,
) -> tokio::task::JoinHandle<()> {
    let runtime = tokio::runtime::Handle::current();
    let (done, finished) = oneshot::channel::<()>();
    // The connection and the queue are handed over once the thread runs, so
    // a thread that cannot start leaves them here.
    let (hand_over, handed) = std::sync::mpsc::sync_channel::<(ChargeConnection, Queued)>(1);
    let thread_store = store.clone();
    let started = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            if let Ok((connection, mut receiver)) = handed.recv() {
                run_on_thread(&thread_store, connection, &mut receiver, &runtime);
                let _ = done.send(());
            }
        });
    let receiver = match started {
        Ok(_) => match hand_over.send((connection, receiver)) {
            Ok(()) => {
                return tokio::spawn(async move {
                    // Ends when the thread is done (or gone: a panic).
                    let _ = finished.await;
                });
            }
            Err(std::sync::mpsc::SendError((_, receiver))) => receiver,
        },
        Err(error) => {
            tracing::error!(%error, "the ledger writer's thread could not start; it writes through the pool");
            receiver
        }
    };
    tokio::spawn(run(store, receiver))
}

/// The thread's loop: each batch through its own connection, and through
/// the pool (on `runtime`) when that connection leaves it undecided or
/// fails.
fn run_on_thread(
    store: &Store,
    mut connection: ChargeConnection,
    receiver: &mut Queued,
    runtime: &tokio::runtime::Handle,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while receiver.blocking_recv_many(&mut batch, BATCH_MAX) > 0 {
        let (charges, replies): (Vec<NewCharge>, Vec<Reply>) = batch.drain(..).unzip();
        let written = match connection.record_new_charges(&charges) {
            Ok(Some(outcomes)) => Ok(outcomes),
            Ok(None) => runtime.block_on(record_with_retries(store, &charges)),
            Err(error) => {
                tracing::warn!(%error, charges = charges.len(), "the ledger writer's connection failed; writing through the pool");
                runtime.block_on(record_with_retries(store, &charges))
            }
        };
        answer(replies, written);
    }
}

/// Answers each caller of a batch with its charge's outcome, or the
/// batch's failure.
fn answer(replies: Vec<Reply>, written: Result<Vec<ChargeOutcome>, ledger::StoreError>) {
    match written {
        Ok(outcomes) => {
            debug_assert_eq!(outcomes.len(), replies.len());
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up still has its charge written.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::error!(%error, charges = replies.len(), "writing charges failed");
            let error = WriteError::Store(error.to_string());
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
