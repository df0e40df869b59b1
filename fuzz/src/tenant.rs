//! `kefu_tenant::Tenant::parse`: never panics, and what it accepts is valid and
//! usable: a good id, intents with examples under distinct names, keys with distinct
//! ids, a SHA-256 in hex and an actor, and a rate limit the gateway's limiter can apply.
use std::collections::BTreeSet;

use kefu_storage::{Rate, RateLimiter};
use kefu_tenant::{is_valid_id, Tenant};

pub fn check(source: &str) {
    let Ok(tenant) = Tenant::parse(source) else {
        return;
    };
    assert!(
        is_valid_id(&tenant.id),
        "accepted tenant id {:?}",
        tenant.id
    );
    assert_eq!(tenant.source, source);
    assert!(
        !tenant.intents.is_empty(),
        "accepted a tenant without intents"
    );
    let mut names = BTreeSet::new();
    for intent in &tenant.intents {
        assert!(names.insert(&intent.name), "intent {} twice", intent.name);
        assert!(
            !intent.examples.is_empty(),
            "intent {} without examples",
            intent.name
        );
        assert!(tenant.intent(&intent.name).is_some());
    }
    let examples: usize = tenant.intents.iter().map(|i| i.examples.len()).sum();
    assert_eq!(tenant.training_examples().len(), examples);
    let mut ids = BTreeSet::new();
    for key in &tenant.api_keys {
        assert!(
            ids.insert(&key.id) && !key.id.trim().is_empty(),
            "key id {:?}",
            key.id
        );
        assert!(
            key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "accepted sha256 {:?}",
            key.sha256
        );
        // The actor of every audit entry made with the key.
        assert!(
            !key.actor().trim().is_empty(),
            "key {} acts as {:?}",
            key.id,
            key.actor()
        );
    }
    // Any text may be presented as a key; only a stored digest matches.
    if let Some(key) = tenant.find_key(source) {
        panic!("the tenant file itself matched key {}", key.id);
    }
    let _ = tenant.customers_need_key();

    // As the gateway applies it (without Redis): through the burst and beyond.
    if let Some(limit) = tenant.rate_limit {
        let rate = Rate {
            per_second: limit.requests_per_second,
            burst: limit.burst,
        };
        let limiter = RateLimiter::new(None, "test");
        for _ in 0..=limit.burst.min(100) {
            let _ = futures::executor::block_on(limiter.admit(&tenant.id, rate));
        }
    }
}
