//! `[gateway]`: the paid path's bounds — bodies, calls in flight, loaded
//! keys, upstream and stream timeouts, hold slack, actor threads.

use serde::Deserialize;

use super::{invalid, SettingsError};

/// The paid `/external/v1` path: key actors, upstream calls, bodies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub chat_body_max_bytes: usize,
    pub in_flight_per_key_max: u32,
    pub loaded_keys_max: usize,
    pub key_idle_ms: i64,
    pub upstream_connect_timeout_ms: u64,
    pub upstream_timeout_ms: u64,
    pub stream_idle_timeout_ms: u64,
    pub stream_max_ms: u64,
    pub hold_slack_ms: i64,
    /// Actor threads; 0 means one per core.
    pub actor_threads: usize,
}

impl GatewaySettings {
    /// The longest a hold can live: the longest call (a whole stream or a
    /// non-streamed upstream call) plus the slack. A stopped key's unspent
    /// budget stays committed this long unless its calls are seen to drain.
    pub fn hold_max_ms(&self) -> i64 {
        let longest = self.stream_max_ms.max(self.upstream_timeout_ms);
        i64::try_from(longest)
            .unwrap_or(i64::MAX)
            .saturating_add(self.hold_slack_ms.max(0))
    }
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if self.chat_body_max_bytes == 0 || self.chat_body_max_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "gateway.chat_body_max_bytes",
                "must be between 1 and 67108864",
            ));
        }
        if self.in_flight_per_key_max == 0 {
            return Err(invalid(
                "gateway.in_flight_per_key_max",
                "must be at least 1",
            ));
        }
        if self.loaded_keys_max == 0 {
            return Err(invalid("gateway.loaded_keys_max", "must be at least 1"));
        }
        for (name, value) in [
            ("gateway.key_idle_ms", self.key_idle_ms),
            ("gateway.hold_slack_ms", self.hold_slack_ms),
        ] {
            if value <= 0 {
                return Err(invalid(name, "must be a positive number of milliseconds"));
            }
        }
        for (name, value) in [
            (
                "gateway.upstream_connect_timeout_ms",
                self.upstream_connect_timeout_ms,
            ),
            ("gateway.upstream_timeout_ms", self.upstream_timeout_ms),
            (
                "gateway.stream_idle_timeout_ms",
                self.stream_idle_timeout_ms,
            ),
            ("gateway.stream_max_ms", self.stream_max_ms),
        ] {
            if value == 0 || value > 86_400_000 {
                return Err(invalid(name, "must be between 1 and 86400000 milliseconds"));
            }
        }
        Ok(())
    }
}
