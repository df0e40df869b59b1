//! `kefu bench`: load through the gateway as customers make it. Closed loop (N customers,
//! each sending its next message when the last is answered, after an optional think
//! time) or open loop (a fixed arrival rate, whatever the answers do; latency counts
//! from when a message was due, so a slow server cannot hide its queue). A message opens
//! a new session, unless closed-loop customers go on for several turns
//! (`--turns-per-session`), and no text goes out twice in a run (see [`message_text`]),
//! so no cache answers a repeat. Reports turns/s, latency percentiles
//! of the answered turns and the errors by status code, as a table and as JSON.
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::{Channel as MessageChannel, SendMessageRequest};
use tonic::transport::Channel;

/// Realistic first messages for the demo tenant, in English and Chinese.
const DEFAULT_MESSAGES: &[&str] = &[
    "Hello, I need some help with my account",
    "My order still has not arrived, can you check where it is?",
    "How much is the Pro plan per year?",
    "The camera app crashes every time I open the live view",
    "I was charged twice for my subscription this month",
    "How do I change the email address on my account?",
    "Can I get a refund if I cancel within the first week?",
    "How long does shipping to Canada take?",
    "I forgot my password and the reset email never comes",
    "This is the third time I am writing and nobody answers, I want to cancel",
    "我的订单什么时候发货？",
    "我想退款，产品用了两天就坏了",
    "怎么修改账户密码？",
    "专业版一年多少钱？",
    "收不到验证码怎么办",
    "你们的客服电话是多少",
];

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// The gateway to load.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub gateway: String,
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Closed loop: this many customers at once (ignored with --rate).
    #[arg(long, default_value_t = 64)]
    pub customers: usize,
    /// Closed loop: each customer's pause between an answer and its next message, in ms;
    /// the customers' first messages are spread over one such pause.
    #[arg(long, default_value_t = 0)]
    pub think_ms: u64,
    /// Closed loop: messages a customer sends in one session before starting the next,
    /// each after the answer to the last (follow-ups load the session's history).
    #[arg(long, default_value_t = 1, conflicts_with_all = ["rate", "rate_from"])]
    pub turns_per_session: u32,
    /// Open loop: messages per second, arriving at a fixed pace.
    #[arg(long, conflicts_with = "rate_from")]
    pub rate: Option<f64>,
    /// Open loop at a multiple (--rate-factor) of the turns/s an earlier run measured
    /// (its --json file), e.g. half or twice the capacity a closed loop found.
    #[arg(long, value_name = "FILE.json")]
    pub rate_from: Option<PathBuf>,
    #[arg(long, default_value_t = 1.0, requires = "rate_from")]
    pub rate_factor: f64,
    /// How long to wait for the gateway to be SERVING before starting, in seconds.
    #[arg(long, default_value_t = 180)]
    pub wait_ready: u64,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of load before measuring (connections, caches of the models, JIT of the pools).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Messages to send: a CSV whose first column (header `text`) holds them; default: a
    /// built-in bilingual pool. Each goes out as written on the first pass over them, then
    /// with a short reference (` #N`); a file sent again to the same kefu within the hour
    /// its caches keep a text is partly answered from them on that first pass.
    #[arg(long, value_name = "FILE.csv")]
    pub messages: Option<PathBuf>,
    /// Also write the result as JSON here.
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,
    /// The deadline of each message, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub deadline_ms: u64,
    /// Send through the signed-webhook channel instead of gRPC: POST each message here
    /// (e.g. http://127.0.0.1:8090/webhooks/demo); a turn is answered when its reply
    /// reaches --webhook-receive, which the tenant's `deliver_url` must name.
    #[arg(long, value_name = "URL", requires = "webhook_secret_env")]
    pub webhook: Option<String>,
    /// The environment variable holding the tenant's webhook secret.
    #[arg(long, value_name = "VAR")]
    pub webhook_secret_env: Option<String>,
    /// Where replies are received: deliver_url = "http://<this>/replies".
    #[arg(long, default_value = "127.0.0.1:8091")]
    pub webhook_receive: std::net::SocketAddr,
}

/// What the measured window saw.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    errors: BTreeMap<String, u64>,
    /// The sessions the gateway answered in (one per turn unless customers go on).
    sessions: HashSet<String>,
}

fn load_messages(path: Option<&PathBuf>) -> anyhow::Result<Vec<String>> {
    let Some(path) = path else {
        return Ok(DEFAULT_MESSAGES.iter().map(|m| m.to_string()).collect());
    };
    let mut reader = csv::Reader::from_path(path)
        .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
    let messages: Vec<String> = reader
        .records()
        .filter_map(|record| Some(record.ok()?.get(0)?.trim().to_owned()))
        .filter(|text| !text.is_empty())
        .collect();
    anyhow::ensure!(!messages.is_empty(), "{} holds no messages", path.display());
    Ok(messages)
}

/// A customer's conversation: who they are and the session their next message continues
/// (empty: the next message starts one).
#[derive(Default)]
struct Conversation {
    customer_id: Option<String>,
    session_id: String,
    turns: u32,
}

/// How messages reach kefu.
enum Driver {
    Grpc(Vec<ConversationServiceClient<Channel>>),
    Webhook(crate::webhook_driver::WebhookDriver),
}

struct Load {
    driver: Driver,
    messages: Vec<String>,
    tenant: String,
    /// Tells this run's repeated messages and its customers from an earlier run's, so that
    /// no cache (the router keeps classifications for an hour) answers from a previous run.
    run: u32,
    deadline: Duration,
    sequence: AtomicU64,
    tally: Mutex<Tally>,
    /// When the measured window opens and closes.
    window: (Instant, Instant),
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Load {
    /// Sends the conversation's next message, due at `due`; counts it when it was due
    /// inside the window.
    async fn send(&self, due: Instant, conversation: &mut Conversation) {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let customer_id = conversation
            .customer_id
            .get_or_insert_with(|| format!("bench-{}-{n}", self.run))
            .clone();
        let text = message_text(&self.messages, self.run, n);
        let outcome = match &self.driver {
            Driver::Grpc(clients) => {
                let mut request = tonic::Request::new(SendMessageRequest {
                    tenant_id: self.tenant.clone(),
                    customer_id,
                    session_id: conversation.session_id.clone(),
                    channel: MessageChannel::Web as i32,
                    text,
                    ..Default::default()
                });
                request.set_timeout(self.deadline);
                let mut client = clients[n as usize % clients.len()].clone();
                match tokio::time::timeout(self.deadline, client.send_message(request)).await {
                    Ok(Ok(response)) => Ok(response.into_inner().session_id),
                    Ok(Err(status)) => Err(format!("{:?}", status.code())),
                    Err(_) => Err("DeadlineExceeded".to_owned()),
                }
            }
            // The webhook's customer continues their session by themselves.
            Driver::Webhook(webhook) => {
                let message_id = format!("bench-{}-m{n}", self.run);
                webhook
                    .send(&customer_id, &message_id, &text, self.deadline)
                    .await
            }
        };
        let elapsed_ms = due.elapsed().as_secs_f64() * 1000.0;
        conversation.turns += 1;
        if let Ok(session) = &outcome {
            conversation.session_id = session.clone();
        }
        if outcome.is_ok() {
            self.answered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if due < self.window.0 || due >= self.window.1 {
            return;
        }
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(session) => {
                tally.latencies_ms.push(elapsed_ms);
                tally.sessions.insert(session);
            }
            Err(code) => *tally.errors.entry(code).or_default() += 1,
        }
    }
}

/// The `n`th message of a run: the messages in turn, as written on the first pass, then
/// with a short reference (` #N`, N the run's number plus the pass) so that a repeat is a
/// new text to every cache. The reference is kept short because the encoder's work
/// grows with the tokens: a longer one once doubled the length of a typical message.
fn message_text(messages: &[String], run: u32, n: u64) -> String {
    let text = &messages[n as usize % messages.len()];
    match n / messages.len() as u64 {
        0 => text.clone(),
        pass => format!("{text} #{}", u64::from(run) + pass),
    }
}

/// The open-loop rate asked for, directly or from an earlier run's turns/s.
fn open_loop_rate(args: &BenchArgs) -> anyhow::Result<Option<f64>> {
    let Some(path) = &args.rate_from else {
        return Ok(args.rate);
    };
    let earlier: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?,
    )?;
    let measured = earlier["turns_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("{} has no turns_per_second", path.display()))?;
    Ok(Some(measured * args.rate_factor))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let messages = load_messages(args.messages.as_ref())?;
    let rate = open_loop_rate(&args)?;
    crate::stack::wait_until_serving(&args.gateway, Duration::from_secs(args.wait_ready)).await?;
    let driver = match &args.webhook {
        Some(url) => {
            let variable = args.webhook_secret_env.as_deref().unwrap_or_default();
            let secret = std::env::var(variable)
                .map_err(|_| anyhow::anyhow!("--webhook-secret-env: {variable} is not set"))?;
            Driver::Webhook(
                crate::webhook_driver::WebhookDriver::start(url, secret, args.webhook_receive)
                    .await?,
            )
        }
        None => {
            // Several connections, as many customers' apps would open.
            let mut clients = Vec::new();
            for _ in 0..4 {
                let channel = Channel::from_shared(args.gateway.clone())?
                    .connect()
                    .await
                    .map_err(|error| anyhow::anyhow!("connecting to {}: {error}", args.gateway))?;
                clients.push(ConversationServiceClient::new(channel));
            }
            Driver::Grpc(clients)
        }
    };
    let started = Instant::now();
    let measured_from = started + Duration::from_secs(args.warmup);
    let end = measured_from + Duration::from_secs(args.duration);
    let load = Arc::new(Load {
        driver,
        messages,
        tenant: args.tenant.clone(),
        run: (uuid::Uuid::new_v4().as_u128() % 1_000_000) as u32,
        deadline: Duration::from_millis(args.deadline_ms),
        sequence: AtomicU64::new(0),
        tally: Mutex::new(Tally::default()),
        window: (measured_from, end),
        answered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let mode = match rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
            format!("open loop, {rate} messages/s")
        }
        None => {
            anyhow::ensure!(args.customers > 0, "--customers must be at least 1");
            anyhow::ensure!(
                args.turns_per_session > 0,
                "--turns-per-session must be at least 1"
            );
            format!(
                "closed loop, {} customers, think {} ms, {} turns per session",
                args.customers, args.think_ms, args.turns_per_session
            )
        }
    };
    eprintln!(
        "kefu bench: {mode} against {} (warm-up {} s, measuring {} s)",
        args.gateway, args.warmup, args.duration
    );
    let progress = {
        let load = load.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let answered = load.answered.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>4.0} s  answered {answered} ({}/s)  failed {}",
                    started.elapsed().as_secs_f64(),
                    answered - last,
                    load.failed.load(Ordering::Relaxed)
                );
                last = answered;
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    match rate {
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut due = started;
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let load = load.clone();
                tasks.spawn(async move { load.send(due, &mut Conversation::default()).await });
                due += interval;
                // Reap finished sends so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
        }
        None => {
            let think = Duration::from_millis(args.think_ms);
            let turns_per_session = args.turns_per_session;
            for i in 0..args.customers {
                let load = load.clone();
                // Customers who think arrive spread over one think time, as real ones
                // do, not all in the same instant.
                let arrival = think.mul_f64(i as f64 / args.customers as f64);
                tasks.spawn(async move {
                    tokio::time::sleep(arrival).await;
                    let mut conversation = Conversation::default();
                    while Instant::now() < end {
                        load.send(Instant::now(), &mut conversation).await;
                        if conversation.turns == turns_per_session {
                            conversation = Conversation::default();
                        }
                        tokio::time::sleep(think).await;
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    progress.abort();

    let tally = std::mem::take(&mut *load.tally.lock().unwrap_or_else(|e| e.into_inner()));
    let report = Report::new(&mode, args.duration, tally);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .map_err(|error| anyhow::anyhow!("writing {}: {error}", path.display()))?;
    }
    Ok(report.table())
}

struct Report {
    mode: String,
    seconds: u64,
    answered: usize,
    sessions: usize,
    errors: BTreeMap<String, u64>,
    percentiles: [(f64, f64); 4],
    max: f64,
}

/// The `q` quantile (0..=1) of sorted values, by nearest rank; 0 without values.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        0.0
    } else {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }
}

impl Report {
    fn new(mode: &str, seconds: u64, mut tally: Tally) -> Self {
        tally.latencies_ms.sort_by(f64::total_cmp);
        let latencies = &tally.latencies_ms;
        let at = |q: f64| percentile(latencies, q);
        Self {
            mode: mode.to_owned(),
            seconds,
            answered: latencies.len(),
            sessions: tally.sessions.len(),
            errors: tally.errors,
            percentiles: [0.5, 0.95, 0.99, 0.999].map(|q| (q, at(q))),
            max: latencies.last().copied().unwrap_or(0.0),
        }
    }

    fn sent(&self) -> u64 {
        self.answered as u64 + self.errors.values().sum::<u64>()
    }

    fn turns_per_second(&self) -> f64 {
        self.answered as f64 / self.seconds.max(1) as f64
    }

    fn table(&self) -> String {
        let mut table = format!(
            "mode            {}\nsent            {}\nanswered        {}\nsessions        {}\nturns/s         {:.1}\n",
            self.mode,
            self.sent(),
            self.answered,
            self.sessions,
            self.turns_per_second()
        );
        for (q, ms) in self.percentiles {
            table.push_str(&format!("p{:<14} {ms:.1} ms\n", q * 100.0));
        }
        table.push_str(&format!("max             {:.1} ms\n", self.max));
        for (code, count) in &self.errors {
            table.push_str(&format!("error {code:<9} {count}\n"));
        }
        table
    }

    fn json(&self) -> serde_json::Value {
        let percentiles: serde_json::Map<String, serde_json::Value> = self
            .percentiles
            .iter()
            .map(|(q, ms)| (format!("p{}_ms", q * 100.0), (*ms).into()))
            .collect();
        serde_json::json!({
            "mode": self.mode,
            "seconds": self.seconds,
            "sent": self.sent(),
            "answered": self.answered,
            "sessions": self.sessions,
            "turns_per_second": self.turns_per_second(),
            "latency": percentiles,
            "max_ms": self.max,
            "errors": self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_go_out_as_written_first_then_with_a_short_reference() {
        let messages = vec!["Where is my order?".to_owned(), "我想退款".to_owned()];
        let sent: Vec<String> = (0..6).map(|n| message_text(&messages, 41, n)).collect();
        assert_eq!(&sent[..2], &messages[..]);
        assert_eq!(sent[2], "Where is my order? #42");
        assert_eq!(sent[5], "我想退款 #43");
        let distinct: std::collections::HashSet<_> = sent.iter().collect();
        assert_eq!(distinct.len(), sent.len(), "no text repeats within a run");
    }
}
