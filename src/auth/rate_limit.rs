//! [`RateLimiter`]: a token bucket per client address, for the routes anyone
//! may call for free (SIWE nonces and sign-ins), so a flood from one address
//! can neither fill the store nor crowd out other clients; and per any other
//! key (a wallet, for key creation, whose funding check reads the chain).
//!
//! The address is the TCP peer's: forwarded headers are not trusted (anyone
//! can send them). IPv6 clients are grouped by /64, the block one subscriber
//! usually holds. The map is bounded: at [`CLIENTS_MAX`] addresses, buckets
//! that have refilled are dropped, and if none has, new addresses wait.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Client addresses tracked at once (memory bound).
pub const CLIENTS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Up to `burst` requests at once per client (a client address unless
/// said otherwise), refilled at `per_s` a second.
pub struct RateLimiter<K = IpAddr> {
    burst: f64,
    per_s: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl RateLimiter<IpAddr> {
    /// Takes one token for `client` (IPv6 by its /64), or says how long
    /// until one is there.
    pub fn check(&self, client: IpAddr) -> Result<(), Limited> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Limited> {
        self.take_at(group(client), now)
    }
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(burst: u32, per_s: u32) -> RateLimiter<K> {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            per_s: f64::from(per_s.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn take(&self, key: K) -> Result<(), Limited> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, client: K, now: Instant) -> Result<(), Limited> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= CLIENTS_MAX && !buckets.contains_key(&client) {
            let (burst, per_s) = (self.burst, self.per_s);
            buckets.retain(|_, b| refilled(b, now, burst, per_s) < burst);
            if buckets.len() >= CLIENTS_MAX {
                return Err(Limited {
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, now, self.burst, self.per_s);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_s = (1.0 - bucket.tokens) / self.per_s;
        Err(Limited {
            retry_after: Duration::from_secs_f64(wait_s),
        })
    }
}

fn refilled(bucket: &Bucket, now: Instant, burst: f64, per_s: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * per_s).min(burst)
}

/// IPv4 as is; IPv6 by its /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = RateLimiter::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(a, t0).is_ok());
        }
        let refused = limiter.check_at(a, t0).unwrap_err();
        assert!(refused.retry_after <= Duration::from_millis(500));
        assert!(
            limiter.check_at(b, t0).is_ok(),
            "another client is not affected"
        );
        // Half a second at 2/s brings one token back, and only one.
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.check_at(a, later).is_ok());
        assert!(limiter.check_at(a, later).is_err());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.check_at(one, t0).is_ok());
        assert!(limiter.check_at(same_64, t0).is_err());
        assert!(limiter.check_at(other_64, t0).is_ok());
    }
}
