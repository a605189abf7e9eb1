//! [`ArbiterPool`]: one actix arbiter (an event-loop thread) per core, for the
//! key actors to live on.
//!
//! actix arbiters must belong to an actix `System`. The HTTP server runs on
//! plain tokio, so the pool starts its own `System` on a small control thread
//! and creates the arbiters from there; actors are then started on them from
//! any thread through their [`ArbiterHandle`]s.

use std::sync::mpsc;
use std::thread;

use actix::prelude::{Arbiter, ArbiterHandle, System};

/// The most arbiters a pool starts, whatever the core count says.
pub const ARBITERS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    #[error("cannot start the actor threads: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("the actor system thread stopped while starting")]
    Stopped,
}

/// A running set of arbiters; stopping it (or dropping it) stops them all.
pub struct ArbiterPool {
    handles: Vec<ArbiterHandle>,
    system: System,
}

impl ArbiterPool {
    /// Starts `count` arbiters (at least 1, at most [`ARBITERS_MAX`]).
    pub fn start(count: usize) -> Result<ArbiterPool, ArbiterError> {
        let count = count.clamp(1, ARBITERS_MAX);
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name("tollgate-actors".into())
            .spawn(move || {
                let runner = System::new();
                let system = System::current();
                let started: Result<Vec<ArbiterHandle>, std::io::Error> = (0..count)
                    .map(|_| Arbiter::try_new().map(|arbiter| arbiter.handle()))
                    .collect();
                let failed = started.is_err();
                if ready_tx.send(started.map(|h| (h, system))).is_err() || failed {
                    return;
                }
                // Runs until `System::stop`; the arbiters stop with it.
                let _ = runner.run();
            })?;
        let (handles, system) = ready_rx.recv().map_err(|_| ArbiterError::Stopped)??;
        Ok(ArbiterPool { handles, system })
    }

    /// The arbiters, in a fixed order.
    pub fn handles(&self) -> &[ArbiterHandle] {
        &self.handles
    }
}

impl Drop for ArbiterPool {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.stop();
        }
        self.system.stop();
    }
}
