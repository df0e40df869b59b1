//! Rates on which the `tenant_file` fuzz target (fuzz/src/tenant.rs) panicked: the
//! tenant file `rate_limit = { requests_per_second = 1e-300, burst = 1 }` passes
//! validation (positive and finite), and the gateway applies it per call.
use kefu_storage::{Rate, RateLimiter};

#[tokio::test]
async fn a_tiny_rate_refuses_without_panicking() {
    let limiter = RateLimiter::new(None, "test");
    let rate = Rate {
        per_second: 1e-300,
        burst: 1,
    };
    assert!(limiter.admit("acme", rate).await.is_ok(), "the burst");
    // The wait until the next token is ~1e300 s, beyond what a Duration holds.
    assert!(limiter.admit("acme", rate).await.is_err());
}
