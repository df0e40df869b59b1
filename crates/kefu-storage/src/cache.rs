//! Caching shared by replicas: an in-process first level in front of Redis (when
//! `REDIS_URL` is set), plus change notification over Redis pub/sub so that every
//! replica reloads a tenant's intents or documents within seconds of a change.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncCommands};
use futures::future::BoxFuture;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// A connection to Redis shared by the caches and notifications of one service.
#[derive(Clone)]
pub struct Redis {
    pool: deadpool_redis::Pool,
    client: redis::Client,
    /// Prefix of every key and channel, e.g. `kefu:`; tests use their own.
    prefix: String,
}

impl Redis {
    /// The Redis of the configuration, if `REDIS_URL` is set.
    pub fn from_args(data: &kefu_runtime::DataArgs) -> anyhow::Result<Option<Self>> {
        match data
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
        {
            Some(url) => Ok(Some(Self::connect(url, &data.redis_prefix)?)),
            None => Ok(None),
        }
    }

    pub fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|error| anyhow::anyhow!("invalid REDIS_URL: {error}"))?;
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(deadpool_redis::PoolConfig {
            max_size: 32,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(Duration::from_secs(1)),
                create: Some(Duration::from_secs(1)),
                recycle: Some(Duration::from_secs(1)),
            },
            ..Default::default()
        });
        let pool = config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|error| anyhow::anyhow!("creating the Redis pool: {error}"))?;
        Ok(Self {
            pool,
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// A pooled connection, for commands the cache does not wrap.
    pub async fn connection(&self) -> anyhow::Result<deadpool_redis::Connection> {
        Ok(self.pool.get().await?)
    }

    pub fn key(&self, parts: &[&str]) -> String {
        format!("{}{}", self.prefix, parts.join(":"))
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut connection = self.pool.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }

    pub fn probe(&self) -> RedisProbe {
        RedisProbe(self.clone())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let mut connection = self.pool.get().await?;
        Ok(connection.get(key).await?)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> anyhow::Result<()> {
        let mut connection = self.pool.get().await?;
        let _: () = connection.set_ex(key, value, ttl.as_secs().max(1)).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let mut connection = self.pool.get().await?;
        let _: () = connection.del(key).await?;
        Ok(())
    }

    /// Tells every replica that `topic` changed for `tenant_id`.
    pub async fn publish(&self, topic: &str, tenant_id: &str) -> anyhow::Result<()> {
        let mut connection = self.pool.get().await?;
        let _: () = connection
            .publish(self.key(&["events", topic]), tenant_id)
            .await?;
        Ok(())
    }

    /// Announces a change to the other replicas. A failure is only logged: the change
    /// itself is stored, and replicas that miss it catch up at their next start.
    pub async fn announce(&self, topic: &str, tenant_id: &str) {
        if let Err(error) = self.publish(topic, tenant_id).await {
            tracing::warn!(%error, topic, "could not notify the other replicas");
        }
    }

    /// Runs `reload` for every tenant announced on `topic`, logging what it reports.
    pub fn on_change<F, Fut>(&self, topic: &'static str, reload: F)
    where
        F: Fn(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<String>> + Send,
    {
        let mut changes = self.subscribe(topic);
        tokio::spawn(async move {
            while let Some(tenant_id) = changes.recv().await {
                match reload(tenant_id.clone()).await {
                    Ok(summary) => {
                        tracing::info!(tenant = %tenant_id, topic, %summary, "reloaded after a change")
                    }
                    Err(error) => {
                        tracing::error!(tenant = %tenant_id, topic, error = %format!("{error:#}"), "reloading after a change failed")
                    }
                }
            }
        });
    }

    /// Tenant ids announced on `topic`, from now on. Reconnects by itself; while
    /// disconnected nothing arrives, and the health probe reports the outage.
    fn subscribe(&self, topic: &str) -> mpsc::Receiver<String> {
        let (sender, receiver) = mpsc::channel(64);
        let client = self.client.clone();
        let channel = self.key(&["events", topic]);
        tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(&channel).await.is_ok() {
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                if let Ok(tenant) = message.get_payload::<String>() {
                                    if sender.send(tenant).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "change notifications: Redis unreachable")
                    }
                }
                if sender.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        receiver
    }
}

pub struct RedisProbe(Redis);

impl kefu_runtime::Probe for RedisProbe {
    fn name(&self) -> &str {
        "redis"
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.0.ping())
    }
}

/// Bound of the in-process level; beyond it the oldest entries go first.
const LOCAL_CAPACITY: usize = 10_000;

/// The in-process level: entries with the time they were stored, and the order they were
/// stored in. All entries share one time to live, so the oldest is also the first to
/// expire, and evicting costs O(1) per insert however full the level is.
struct LocalLevel {
    entries: HashMap<String, (Instant, Vec<u8>)>,
    /// (stored at, key), oldest first; an element whose time no longer matches its
    /// entry's (replaced or removed since) is skipped.
    order: VecDeque<(Instant, String)>,
    capacity: usize,
}

impl LocalLevel {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn get(&self, key: &str, ttl: Duration) -> Option<Vec<u8>> {
        let (stored, value) = self.entries.get(key)?;
        (stored.elapsed() < ttl).then(|| value.clone())
    }

    fn insert(&mut self, key: String, value: Vec<u8>, ttl: Duration) {
        let now = Instant::now();
        while let Some((stored, oldest)) = self.order.front() {
            let expired = now.duration_since(*stored) >= ttl;
            let full = self.entries.len() >= self.capacity && !self.entries.contains_key(&key);
            if !expired && !full {
                break;
            }
            if self.entries.get(oldest).is_some_and(|(at, _)| at == stored) {
                self.entries.remove(oldest);
            }
            self.order.pop_front();
        }
        // Keys stored again or removed leave stale elements behind; once the order holds
        // twice the capacity, keep only the elements that still match an entry.
        if self.order.len() >= 2 * self.capacity.max(1) {
            let entries = &self.entries;
            self.order
                .retain(|(at, key)| entries.get(key).is_some_and(|(stored, _)| stored == at));
        }
        self.order.push_back((now, key.clone()));
        self.entries.insert(key, (now, value));
    }

    fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    fn remove_prefix(&mut self, prefix: &str) {
        self.entries.retain(|key, _| !key.starts_with(prefix));
    }
}

/// A two-level cache of one kind of result (`classification`, `retrieval`, `session`).
pub struct Cache {
    kind: &'static str,
    service: &'static str,
    ttl: Duration,
    local: Mutex<LocalLevel>,
    redis: Option<Redis>,
}

/// A stable cache key from the parts that determine a result (texts are hashed, so no
/// customer text ends up in Redis key names).
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..16])
}

impl Cache {
    pub fn new(
        kind: &'static str,
        service: &'static str,
        ttl: Duration,
        redis: Option<Redis>,
    ) -> Self {
        Self {
            kind,
            service,
            ttl,
            local: Mutex::new(LocalLevel::new(LOCAL_CAPACITY)),
            redis,
        }
    }

    fn redis_key(redis: &Redis, kind: &str, tenant_id: &str, key: &str) -> String {
        redis.key(&[kind, tenant_id, key])
    }

    fn record(&self, hit: bool) {
        metrics::counter!("kefu_cache_requests_total", "service" => self.service, "cache" => self.kind, "result" => if hit { "hit" } else { "miss" }).increment(1);
    }

    pub async fn get(&self, tenant_id: &str, key: &str) -> Option<Vec<u8>> {
        let local_key = format!("{tenant_id}:{key}");
        let local = self
            .local
            .lock()
            .expect("cache lock")
            .get(&local_key, self.ttl);
        if let Some(value) = local {
            self.record(true);
            return Some(value);
        }
        if let Some(redis) = &self.redis {
            match redis
                .get(&Self::redis_key(redis, self.kind, tenant_id, key))
                .await
            {
                Ok(Some(value)) => {
                    self.put_local(local_key, value.clone());
                    self.record(true);
                    return Some(value);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(cache = self.kind, %error, "shared cache unavailable")
                }
            }
        }
        self.record(false);
        None
    }

    pub async fn put(&self, tenant_id: &str, key: &str, value: Vec<u8>) {
        if let Some(redis) = &self.redis {
            if let Err(error) = redis
                .set(
                    &Self::redis_key(redis, self.kind, tenant_id, key),
                    &value,
                    self.ttl,
                )
                .await
            {
                tracing::debug!(cache = self.kind, %error, "shared cache unavailable");
            }
        }
        self.put_local(format!("{tenant_id}:{key}"), value);
    }

    pub async fn remove(&self, tenant_id: &str, key: &str) {
        self.local
            .lock()
            .expect("cache lock")
            .remove(&format!("{tenant_id}:{key}"));
        if let Some(redis) = &self.redis {
            if let Err(error) = redis
                .delete(&Self::redis_key(redis, self.kind, tenant_id, key))
                .await
            {
                tracing::debug!(cache = self.kind, %error, "shared cache unavailable");
            }
        }
    }

    /// Drops this replica's first level for a tenant (after a change notification).
    pub fn forget_tenant(&self, tenant_id: &str) {
        let prefix = format!("{tenant_id}:");
        self.local
            .lock()
            .expect("cache lock")
            .remove_prefix(&prefix);
    }

    fn put_local(&self, key: String, value: Vec<u8>) {
        self.local
            .lock()
            .expect("cache lock")
            .insert(key, value, self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_full_level_drops_its_oldest_entry() {
        let mut level = LocalLevel::new(3);
        for key in ["a", "b", "c", "d"] {
            level.insert(key.into(), key.as_bytes().to_vec(), HOUR);
        }
        assert_eq!(level.get("a", HOUR), None);
        for key in ["b", "c", "d"] {
            assert_eq!(level.get(key, HOUR), Some(key.as_bytes().to_vec()));
        }
    }

    #[test]
    fn a_key_stored_again_counts_from_its_new_time() {
        let mut level = LocalLevel::new(2);
        level.insert("a".into(), b"1".to_vec(), HOUR);
        level.insert("b".into(), b"2".to_vec(), HOUR);
        level.insert("a".into(), b"3".to_vec(), HOUR); // replaces; nothing evicted
        assert_eq!(level.get("b", HOUR), Some(b"2".to_vec()));
        level.insert("c".into(), b"4".to_vec(), HOUR); // evicts b, now the oldest
        assert_eq!(level.get("b", HOUR), None);
        assert_eq!(level.get("a", HOUR), Some(b"3".to_vec()));
        assert_eq!(level.get("c", HOUR), Some(b"4".to_vec()));
    }

    #[test]
    fn expired_entries_are_neither_served_nor_kept() {
        let ttl = Duration::from_millis(20);
        let mut level = LocalLevel::new(100);
        level.insert("old".into(), b"x".to_vec(), ttl);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(level.get("old", ttl), None);
        level.insert("new".into(), b"y".to_vec(), ttl);
        assert!(!level.entries.contains_key("old"));
        assert_eq!(level.get("new", ttl), Some(b"y".to_vec()));
    }

    #[test]
    fn one_key_stored_over_and_over_keeps_the_order_bounded() {
        let mut level = LocalLevel::new(10);
        for i in 0..1000u32 {
            level.insert("session".into(), i.to_le_bytes().to_vec(), HOUR);
        }
        assert!(level.order.len() <= 20, "{}", level.order.len());
        assert_eq!(
            level.get("session", HOUR),
            Some(999u32.to_le_bytes().to_vec())
        );
    }

    #[test]
    fn forgetting_a_tenant_keeps_the_others() {
        let mut level = LocalLevel::new(10);
        level.insert("t1:a".into(), b"1".to_vec(), HOUR);
        level.insert("t2:a".into(), b"2".to_vec(), HOUR);
        level.remove_prefix("t1:");
        assert_eq!(level.get("t1:a", HOUR), None);
        assert_eq!(level.get("t2:a", HOUR), Some(b"2".to_vec()));
    }
}
