//! Per-tenant request rates: a token bucket of `burst` requests refilled at
//! `requests_per_second`. With Redis the bucket is one for all gateway replicas (GCRA,
//! one atomic script per request); without it, or while Redis is down, each process
//! keeps its own, so that N replicas admit up to N times the rate until Redis is back.
//! The outage and the recovery are logged once each, and `kefu_rate_limit_shared`
//! (1 shared, 0 per process) says which holds.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Whether the last request was limited through Redis.
    shared: AtomicBool,
    /// The `service` label of the metric.
    service: &'static str,
}

impl RateLimiter {
    pub fn new(redis: Option<Redis>, service: &'static str) -> Self {
        if redis.is_some() {
            metrics::gauge!("kefu_rate_limit_shared", "service" => service).set(1.0);
        }
        Self {
            redis,
            local: Mutex::new(HashMap::new()),
            shared: AtomicBool::new(true),
            service,
        }
    }

    /// Admits one request of `tenant`, or says how long to wait before the next one.
    pub async fn admit(&self, tenant: &str, rate: Rate) -> Result<(), Duration> {
        if let Some(redis) = &self.redis {
            let shared = self.admit_shared(redis, tenant, rate).await;
            self.note_shared(shared.as_ref().err());
            if let Ok(result) = shared {
                return result;
            }
        }
        self.admit_local(tenant, rate, Instant::now())
    }

    /// Logs and exports a change between shared and per-process limiting, once.
    fn note_shared(&self, error: Option<&anyhow::Error>) {
        let shared = error.is_none();
        if self.shared.swap(shared, Ordering::Relaxed) == shared {
            return;
        }
        metrics::gauge!("kefu_rate_limit_shared", "service" => self.service).set(if shared {
            1.0
        } else {
            0.0
        });
        match error {
            Some(error) => tracing::warn!(
                error = %format!("{error:#}"),
                "shared rate limit unavailable (Redis); each replica limits on its own until it is back"
            ),
            None => tracing::info!("shared rate limit is back (Redis)"),
        }
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
        let limiter = RateLimiter::new(None, "test");
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

    /// Redis down: each process limits on its own; Redis up again: shared again. A
    /// redis-server of the test's own, on a port that first has nothing listening.
    #[tokio::test]
    async fn an_outage_limits_in_the_process_until_redis_is_back() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let redis = Redis::connect(&format!("redis://127.0.0.1:{port}"), "rate-test:").unwrap();
        let limiter = RateLimiter::new(Some(redis), "test");
        let rate = Rate {
            per_second: 0.001,
            burst: 2,
        };
        assert!(limiter.admit("t", rate).await.is_ok());
        assert!(!limiter.shared.load(Ordering::Relaxed));
        assert!(limiter.admit("t", rate).await.is_ok());
        assert!(
            limiter.admit("t", rate).await.is_err(),
            "the burst, per process"
        );

        let mut server = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !limiter.shared.load(Ordering::Relaxed) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = limiter.admit("u", rate).await;
        }
        let shared = limiter.shared.load(Ordering::Relaxed);
        server.kill().ok();
        server.wait().ok();
        assert!(shared, "shared again once Redis answers");
    }
}
