//! `make bench`: 100 concurrent customers send a message each through the gateway;
//! prints the latency distribution. Ignored in `make test` (timings are measured, not asserted there).
//! Every message of a round is different (a topic from the list below plus the customer's
//! own reference), so no service can answer it from its cache: each one is understood,
//! searched and decided afresh.
mod common;

use std::time::Instant;

/// Topics across the demo tenant's intents, in English and Chinese.
const TOPICS: &[&str] = &[
    "Hello, I need help",
    "My order still has not arrived, can you check where it is",
    "How much is the Pro plan per year",
    "The camera app crashes every time I open the live view",
    "I was charged twice for my subscription this month",
    "How do I change the email address on my account",
    "This is the third time I am writing and nobody answers, I want to cancel",
    "我的订单什么时候发货",
    "我想退款，产品用了两天就坏了",
    "怎么修改账户密码",
];

#[tokio::test]
#[ignore = "benchmark: run with `make bench`"]
async fn hundred_concurrent_customers() {
    common::stack();
    // Warm up connections and caches once, as a running system would be.
    common::send(common::message("warm-up", "Hello, I need help"))
        .await
        .unwrap();
    for round in 1..=3 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                tokio::spawn(async move {
                    let begun = Instant::now();
                    let text = format!("{} (ref {round}{i:03})", TOPICS[i % TOPICS.len()]);
                    let result =
                        common::send(common::message(&format!("bench-{round}-{i}"), &text)).await;
                    (result.is_ok(), begun.elapsed().as_secs_f64() * 1000.0)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut failures = 0;
        for task in tasks {
            let (ok, ms) = task.await.unwrap();
            failures += usize::from(!ok);
            latencies.push(ms);
        }
        latencies.sort_by(f64::total_cmp);
        let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
        let p =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "round={round} customers=100 ok={} failed={failures} mean_ms={mean:.1} p50_ms={:.1} p95_ms={:.1} max_ms={:.1} wall_ms={:.1}",
            100 - failures,
            p(0.5),
            p(0.95),
            latencies[latencies.len() - 1],
            started.elapsed().as_secs_f64() * 1000.0
        );
        assert_eq!(failures, 0);
        assert!(mean < 2000.0, "mean latency {mean:.1} ms over 2 s");
    }
}
