//! The ledger's clock: milliseconds since the Unix epoch, as `i64`.
//!
//! The Compose surface speaks in these milliseconds; the store keeps them in
//! `*_at_ms` columns. One function reads the system clock so that tests and
//! future simulated clocks have one place to hook.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
}
