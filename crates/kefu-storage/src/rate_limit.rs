//! Per-tenant request rates: a token bucket of `burst` requests refilled at
//! `requests_per_second`. With Redis the bucket is one for all gateway replicas (GCRA,
//! one atomic script per request); without it, or while Redis is down, each process
//! keeps its own.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_redis::redis;

use crate::Redis;

/// A tenant's limit, from the `[rate_limit]` section of its tenant.toml.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Milliseconds between two requests at the sustained rate.
    fn interval_ms(&self) -> f64 {
        1000.0 / self.per_second.max(f64::MIN_POSITIVE)
    }
}

/// Generic cell rate algorithm: the key holds the theoretical arrival time (ms, the
/// server's clock); a request is admitted when it is at most `burst - 1` intervals
/// early. Returns 0 when admitted, else the milliseconds to wait.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
";

pub struct RateLimiter {
    redis: Option<Redis>,
    local: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(redis: Option<Redis>) -> Self {
        Self {
            redis,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request of `tenant`, or says how long to wait before the next one.
    pub async fn admit(&self, tenant: &str, rate: Rate) -> Result<(), Duration> {
        if let Some(redis) = &self.redis {
            match self.admit_shared(redis, tenant, rate).await {
                Ok(result) => return result,
                Err(error) => {
                    tracing::warn!(%error, "shared rate limit unavailable; limiting in this process")
                }
            }
        }
        self.admit_local(tenant, rate, Instant::now())
    }

    async fn admit_shared(
        &self,
        redis: &Redis,
        tenant: &str,
        rate: Rate,
    ) -> anyhow::Result<Result<(), Duration>> {
        let interval = rate.interval_ms();
        let tolerance = interval * (rate.burst.max(1) - 1) as f64;
        let mut connection = redis.connection().await?;
        let wait: i64 = redis::cmd("EVAL")
            .arg(GCRA)
            .arg(1)
            .arg(redis.key(&["rate", tenant]))
            .arg(interval)
            .arg(tolerance)
            .query_async(&mut connection)
            .await?;
        Ok(if wait > 0 {
            Err(Duration::from_millis(wait as u64))
        } else {
            Ok(())
        })
    }

    fn admit_local(&self, tenant: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let burst = rate.burst.max(1) as f64;
        let (tokens, last) = buckets.entry(tenant.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate.per_second).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            // A rate small enough saturates the wait rather than overflowing a Duration.
            Err(
                Duration::try_from_secs_f64((1.0 - *tokens) / rate.per_second)
                    .unwrap_or(Duration::MAX),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(None);
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.admit_local("t", rate, start).is_ok());
        }
        let wait = limiter.admit_local("t", rate, start).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::from_millis(90),
            "{wait:?}"
        );
        assert!(
            limiter.admit_local("other", rate, start).is_ok(),
            "tenants have their own buckets"
        );
        assert!(limiter
            .admit_local("t", rate, start + Duration::from_millis(100))
            .is_ok());
        assert!(limiter
            .admit_local("t", rate, start + Duration::from_millis(110))
            .is_err());
    }
}
