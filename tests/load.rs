//! `make bench`: 100 concurrent customers send "Hello, I need help" through the gateway;
//! prints the latency distribution. Ignored in `make test` (timings are measured, not asserted there).
mod common;

use std::time::Instant;

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
                    let result = common::send(common::message(
                        &format!("bench-{round}-{i}"),
                        "Hello, I need help",
                    ))
                    .await;
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
