//! `workers` — background work: the queue abstraction (RabbitMQ, in-process),
//! pricing, the ledger writer, the settlement batcher and the chain client.
//!
//! Empty until the workers issue lands; the foundation's store already has the
//! charges, batches and attempts tables they will write.
