//! Dynamic batching of the encoder: the texts of concurrent requests wait in one queue,
//! and a pool of compute threads (one per core) each takes what is waiting, up to a batch
//! size, and runs it as one packed forward pass. Under load, batches form by themselves
//! while every thread is busy; a thread that wakes while others are computing may wait a
//! bounded moment for more. A lone request on an idle machine is not held back: it runs at
//! once, its larger matrix products shared over the cores.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::oneshot;

use super::embeddings;
use crate::bert::Bert;

/// How texts are grouped; read from the environment by [`BatchSettings::from_env`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Compute threads (`KEFU_ENCODER_THREADS`, default: the number of cores).
    pub threads: usize,
    /// Most texts in one forward pass (`KEFU_ENCODER_BATCH`).
    pub max_batch: usize,
    /// How long a thread that wakes while others compute waits for more texts
    /// (`KEFU_ENCODER_WAIT_US`).
    pub max_wait: Duration,
}

/// Most tokens in one forward pass: a batch of long texts is cut short earlier.
const MAX_BATCH_TOKENS: usize = 2048;

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_batch: 16,
            max_wait: Duration::from_micros(1000),
        }
    }
}

impl BatchSettings {
    /// The defaults, overridden by `KEFU_ENCODER_THREADS`, `KEFU_ENCODER_BATCH` and
    /// `KEFU_ENCODER_WAIT_US` where set.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let read = |name: &str| -> Result<Option<u64>> {
            lookup(name)
                .map(|value| {
                    value
                        .trim()
                        .parse::<u64>()
                        .with_context(|| format!("{name}={value:?} is not a whole number"))
                })
                .transpose()
        };
        let mut settings = Self::default();
        if let Some(threads) = read("KEFU_ENCODER_THREADS")? {
            if !(1..=256).contains(&threads) {
                bail!("KEFU_ENCODER_THREADS must be between 1 and 256, not {threads}");
            }
            settings.threads = threads as usize;
        }
        if let Some(batch) = read("KEFU_ENCODER_BATCH")? {
            if !(1..=256).contains(&batch) {
                bail!("KEFU_ENCODER_BATCH must be between 1 and 256, not {batch}");
            }
            settings.max_batch = batch as usize;
        }
        if let Some(wait) = read("KEFU_ENCODER_WAIT_US")? {
            if wait > 100_000 {
                bail!("KEFU_ENCODER_WAIT_US must be at most 100000 (0.1 s), not {wait}");
            }
            settings.max_wait = Duration::from_micros(wait);
        }
        Ok(settings)
    }
}

struct Job {
    ids: Vec<u32>,
    queued: Instant,
    reply: oneshot::Sender<Vec<f32>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads running a forward pass.
    busy: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
    settings: BatchSettings,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The queue and its compute threads; the threads start with the first text and stop
/// when the batcher is dropped.
pub(super) struct Batcher {
    shared: Arc<Shared>,
    model: Arc<Bert>,
    started: OnceLock<()>,
}

impl Batcher {
    pub fn new(model: Arc<Bert>, settings: BatchSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                arrived: Condvar::new(),
                settings,
            }),
            model,
            started: OnceLock::new(),
        }
    }

    /// The embedding of one tokenized text, computed in a batch with whatever else waits.
    pub async fn embed(&self, ids: Vec<u32>) -> Result<Vec<f32>> {
        self.started.get_or_init(|| self.start());
        let (reply, embedding) = oneshot::channel();
        self.shared.lock().jobs.push_back(Job {
            ids,
            queued: Instant::now(),
            reply,
        });
        self.shared.arrived.notify_one();
        embedding
            .await
            .map_err(|_| anyhow!("the encoder failed on this text"))
    }

    fn start(&self) {
        for i in 0..self.shared.settings.threads {
            let (shared, model) = (self.shared.clone(), self.model.clone());
            std::thread::Builder::new()
                .name(format!("kefu-encoder-{i}"))
                .spawn(move || work(&shared, &model))
                .expect("starting an encoder thread");
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.arrived.notify_all();
    }
}

/// A compute thread: takes a batch, runs it, answers each text's caller; until closed.
fn work(shared: &Shared, model: &Bert) {
    while let Some((batch, alone)) = next_batch(shared) {
        let seqs: Vec<&[u32]> = batch.iter().map(|job| job.ids.as_slice()).collect();
        // A panic fails this batch's requests (their senders are dropped), not the thread.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            embeddings(model, &seqs, alone && seqs.len() == 1)
        }));
        shared.lock().busy -= 1;
        if let Ok(vectors) = result {
            for (job, vector) in batch.into_iter().zip(vectors) {
                // The caller may have given up (deadline, cancelled request).
                let _ = job.reply.send(vector);
            }
        }
    }
}

/// Waits for texts and takes the next batch, and whether its thread is the only one at
/// work with nothing else waiting (then a single text may use every core); None once
/// closed.
fn next_batch(shared: &Shared) -> Option<(Vec<Job>, bool)> {
    let settings = &shared.settings;
    let mut queue = shared.lock();
    loop {
        // Callers that gave up are not computed for.
        queue.jobs.retain(|job| !job.reply.is_closed());
        if queue.closed {
            return None;
        }
        if !queue.jobs.is_empty() {
            break;
        }
        queue = shared
            .arrived
            .wait(queue)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    // While others compute, requests arrive faster than one thread serves them: a short
    // wait fills the batch. An idle machine never waits.
    if queue.busy > 0 && !settings.max_wait.is_zero() {
        let deadline = queue.jobs[0].queued + settings.max_wait;
        while queue.jobs.len() < settings.max_batch && !queue.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = shared
                .arrived
                .wait_timeout(queue, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
    let mut batch = Vec::with_capacity(settings.max_batch.min(queue.jobs.len()));
    let mut tokens = 0;
    while let Some(job) = queue.jobs.front() {
        if batch.len() == settings.max_batch
            || (!batch.is_empty() && tokens + job.ids.len() > MAX_BATCH_TOKENS)
        {
            break;
        }
        tokens += job.ids.len();
        batch.extend(queue.jobs.pop_front());
    }
    let alone = queue.busy == 0 && queue.jobs.is_empty();
    queue.busy += 1;
    if !queue.jobs.is_empty() {
        shared.arrived.notify_one();
    }
    Some((batch, alone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_and_are_checked() {
        let settings = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            BatchSettings::from_lookup(move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        assert_eq!(settings(&[]).unwrap(), BatchSettings::default());
        let set = settings(&[("KEFU_ENCODER_BATCH", "4"), ("KEFU_ENCODER_WAIT_US", "0")]).unwrap();
        assert_eq!((set.max_batch, set.max_wait), (4, Duration::ZERO));
        assert!(settings(&[("KEFU_ENCODER_BATCH", "0")]).is_err());
        assert!(settings(&[("KEFU_ENCODER_THREADS", "0")]).is_err());
        assert!(settings(&[("KEFU_ENCODER_WAIT_US", "1000000")]).is_err());
        let error = format!(
            "{:#}",
            settings(&[("KEFU_ENCODER_BATCH", "many")]).unwrap_err()
        );
        assert!(error.contains("KEFU_ENCODER_BATCH"), "{error}");
    }
}
