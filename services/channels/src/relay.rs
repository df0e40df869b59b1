//! Messages through the gateway and replies back out. An inbound message (stored before
//! its channel heard it arrived) becomes a SendMessage, with the stored row's id as the
//! idempotency key, so a retry after a crash or a lost answer returns the first reply and
//! never a second ticket; the reply is queued in the transaction that marks the message
//! handled, held by the worker that queued it, and delivered at once; whatever fails is
//! retried by the drainers of every replica, with backoff, and ends as a dead letter.
use std::sync::Arc;
use std::time::Duration;

use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::{Channel, Handler, SendMessageRequest};
use kefu_runtime::retry::is_transient;
use kefu_runtime::{GrpcChannel, LiveTenants, RetryPolicy};
use kefu_storage::channels::{
    ChannelMessage, Direction, Handled, NewChannelMessage, Received, SqlChannels,
};
use kefu_storage::now_millis;
use kefu_tenant::Tenant;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;

use crate::delivery::Deliverer;
use crate::email::MailThread;

/// How long a worker holds a message it is working on: longer than a call may take.
pub const LEASE_MS: i64 = 30_000;
/// How often the drainers look for due messages.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(1);
/// Messages of each direction one drainer works in a pass, each claimed when its turn comes.
const MESSAGES_PER_PASS: usize = 50;
pub const SERVICE: &str = "kefu-channels";

/// The outside channels, by their name in the tables and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Webhook,
    Wechat,
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Wechat => "wechat",
            Self::Email => "email",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "webhook" => Some(Self::Webhook),
            "wechat" => Some(Self::Wechat),
            "email" => Some(Self::Email),
            _ => None,
        }
    }

    /// The channel a conversation on it is counted under.
    pub fn channel(self) -> Channel {
        match self {
            Self::Webhook => Channel::Webhook,
            Self::Wechat => Channel::Wechat,
            Self::Email => Channel::Email,
        }
    }
}

/// The tenant's customer a channel's sender is: a customer who proved an email address
/// is `email:<address>` on every channel where the tenant says so (and always on email);
/// otherwise a webhook's customer is the id the tenant's bridge gives, a WeChat follower
/// `wechat:<OpenID>`.
pub fn customer_for(
    tenant: &Tenant,
    kind: ChannelKind,
    sender: &str,
    verified_email: Option<&str>,
) -> String {
    match verified_email {
        Some(email) if tenant.channels.same_customer_by_verified_email => {
            format!("email:{}", email.trim().to_lowercase())
        }
        _ => match kind {
            ChannelKind::Webhook => sender.to_owned(),
            ChannelKind::Wechat => format!("wechat:{sender}"),
            ChannelKind::Email => format!("email:{}", sender.trim().to_lowercase()),
        },
    }
}

/// What an inbound row holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboundPayload {
    pub customer_id: String,
    pub text: String,
    /// An email's threading, for the replies to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<MailThread>,
}

/// What an outbound row holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyPayload {
    pub customer_id: String,
    pub text: String,
    /// The agent of an agent's reply; empty for the bot.
    #[serde(default)]
    pub agent_id: String,
    /// The channel's id of the message the bot answers; empty for an agent's reply.
    #[serde(default)]
    pub in_reply_to: String,
    /// The email thread a reply by mail answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<MailThread>,
}

/// Why an attempt failed: the receiver's answer, never message text.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// The receiver could not be reached or was busy: waited out, never a dead letter.
    pub transient: bool,
}

impl Failure {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }
}

#[derive(Clone)]
pub struct Relay {
    pub store: SqlChannels,
    pub tenants: Arc<LiveTenants>,
    pub gateway: ConversationServiceClient<GrpcChannel>,
    pub deliverer: Deliverer,
    pub policy: RetryPolicy,
    /// How long a message is held for one attempt (`LEASE_MS`).
    pub lease_ms: i64,
}

/// The bot's answer to an inbound message, as the channel may show it at once.
#[derive(Clone, Debug)]
pub struct Answer {
    pub text: String,
    /// The queued reply, held by whoever received the answer; None when the bot stayed
    /// silent or the reply was queued before.
    pub reply: Option<ChannelMessage>,
}

impl Relay {
    pub fn tenant(&self, tenant_id: &str) -> Result<Arc<Tenant>, Failure> {
        self.tenants
            .current()
            .get(tenant_id)
            .ok_or_else(|| Failure::permanent("the tenant no longer exists"))
    }

    /// Stores an inbound message (creating its conversation), held by the caller for its
    /// first attempt; a message the channel sent before comes back as a duplicate.
    pub async fn receive(
        &self,
        kind: ChannelKind,
        tenant_id: &str,
        thread: &str,
        channel_message_id: &str,
        payload: &InboundPayload,
    ) -> Result<Received, kefu_storage::StoreError> {
        let message = NewChannelMessage {
            tenant_id: tenant_id.to_owned(),
            channel: kind.as_str().into(),
            thread: thread.to_owned(),
            dedup_key: channel_message_id.to_owned(),
            session_id: String::new(),
            role: "customer".into(),
            payload: serde_json::to_string(payload).expect("a message serializes"),
        };
        let received = self
            .store
            .receive(&message, &payload.customer_id, self.lease_ms)
            .await;
        if let Err(error) = &received {
            tracing::warn!(%error, channel = kind.as_str(), "a channel message could not be stored");
        }
        received
    }

    /// The email thread an agent's reply in `conversation` answers: the customer's
    /// newest mail; None on other channels.
    pub async fn mail_thread(
        &self,
        conversation: &kefu_storage::channels::ChannelConversation,
    ) -> Result<Option<MailThread>, kefu_storage::StoreError> {
        if conversation.channel != ChannelKind::Email.as_str() {
            return Ok(None);
        }
        let latest = self
            .store
            .latest_inbound(
                &conversation.tenant_id,
                &conversation.channel,
                &conversation.thread,
            )
            .await?;
        Ok(latest
            .and_then(|message| serde_json::from_str::<InboundPayload>(&message.payload).ok())
            .and_then(|payload| payload.mail))
    }

    /// Works a stored message through the gateway in the background and delivers its
    /// reply, unless the caller takes the answer through `answer` first.
    pub fn spawn_handling(
        &self,
        message: ChannelMessage,
        answer: Option<tokio::sync::oneshot::Sender<Answer>>,
    ) {
        let relay = self.clone();
        tokio::spawn(async move {
            let Some(handled) = relay.handle_inbound(&message).await else {
                return;
            };
            let unclaimed = match answer {
                Some(waiting) => waiting.send(handled).err(),
                None => Some(handled),
            };
            if let Some(Answer {
                reply: Some(reply), ..
            }) = unclaimed
            {
                relay.deliver(&reply).await;
            }
        });
    }

    /// The gateway call's credentials: the tenant's channel key and, where the tenant
    /// verifies customers, the customer's hash.
    pub(crate) fn authorize<T>(
        &self,
        tenant: &Tenant,
        customer_id: &str,
        message: T,
    ) -> Result<tonic::Request<T>, Failure> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Some(key) = &tenant.channels.gateway_key {
            let key = key
                .read()
                .map_err(|error| Failure::permanent(format!("gateway_key: {error:#}")))?;
            let value = MetadataValue::try_from(format!("Bearer {key}"))
                .map_err(|_| Failure::permanent("gateway_key is not a valid header value"))?;
            metadata.insert("authorization", value);
        }
        if let Some(variable) = &tenant.customer_hmac_secret_env {
            let secret = std::env::var(variable).map_err(|_| {
                Failure::permanent(format!(
                    "the customer verification secret {variable} is not set"
                ))
            })?;
            let hash = kefu_tenant::customer_hash(&secret, customer_id);
            metadata.insert(
                "x-kefu-customer-hash",
                MetadataValue::try_from(hash).expect("hex is a valid header value"),
            );
        }
        Ok(request)
    }

    /// Sends a held inbound message through the gateway, queues its reply and records
    /// the outcome; a failure is backed off or dead-lettered here.
    pub async fn handle_inbound(&self, message: &ChannelMessage) -> Option<Answer> {
        match self.try_inbound(message).await {
            Ok(answer) => {
                count(message, "handled");
                Some(answer)
            }
            Err(failure) => {
                self.failed(message, failure).await;
                None
            }
        }
    }

    async fn try_inbound(&self, message: &ChannelMessage) -> Result<Answer, Failure> {
        let kind = ChannelKind::parse(&message.channel)
            .ok_or_else(|| Failure::permanent("unknown channel"))?;
        let payload: InboundPayload = serde_json::from_str(&message.payload)
            .map_err(|_| Failure::permanent("the stored message is unreadable"))?;
        let tenant = self.tenant(&message.tenant_id)?;
        let conversation = self
            .store
            .conversation(&message.tenant_id, &message.channel, &message.thread)
            .await
            .map_err(|error| Failure::transient(error.to_string()))?;
        let request = SendMessageRequest {
            tenant_id: message.tenant_id.clone(),
            customer_id: payload.customer_id.clone(),
            session_id: conversation.map(|c| c.session_id).unwrap_or_default(),
            channel: kind.channel() as i32,
            text: payload.text.clone(),
            message_id: format!("ch-{}", message.message_id),
        };
        let request = self.authorize(&tenant, &payload.customer_id, request)?;
        let response = self
            .gateway
            .clone()
            .send_message(request)
            .await
            .map_err(|status| Failure {
                message: format!("gateway: {:?}: {}", status.code(), status.message()),
                transient: is_transient(&status),
            })?
            .into_inner();
        let reply = (!response.reply.trim().is_empty()).then(|| NewChannelMessage {
            tenant_id: message.tenant_id.clone(),
            channel: message.channel.clone(),
            thread: message.thread.clone(),
            dedup_key: format!("reply:{}", message.dedup_key),
            session_id: response.session_id.clone(),
            role: "bot".into(),
            payload: serde_json::to_string(&ReplyPayload {
                customer_id: payload.customer_id.clone(),
                text: response.reply.clone(),
                agent_id: String::new(),
                in_reply_to: message.dedup_key.clone(),
                mail: payload.mail.clone(),
            })
            .expect("a reply serializes"),
        });
        let handled = Handled {
            session_id: response.session_id.clone(),
            with_human: response.handler != Handler::Bot as i32
                && response.handler != Handler::Unspecified as i32,
            reply,
            hold_ms: self.lease_ms,
        };
        let queued = self
            .store
            .inbound_handled(message, &handled)
            .await
            .map_err(|error| Failure::transient(error.to_string()))?;
        Ok(Answer {
            text: response.reply,
            reply: queued,
        })
    }

    /// Delivers a held outbound message on its channel and records the outcome.
    pub async fn deliver(&self, message: &ChannelMessage) {
        let outcome = match self.tenant(&message.tenant_id) {
            Ok(tenant) => self.deliverer.deliver(&tenant, message).await,
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(()) => match self.store.delivered(message).await {
                Ok(()) => count(message, "delivered"),
                Err(error) => {
                    tracing::warn!(delivery_id = %message.message_id, %error, "delivered but not recorded; it may be sent again")
                }
            },
            Err(failure) => self.failed(message, failure).await,
        }
    }

    async fn failed(&self, message: &ChannelMessage, failure: Failure) {
        let retry_at = self
            .policy
            .retry_at(message.attempts, failure.transient, now_millis());
        let outcome = if retry_at.is_some() {
            "retry"
        } else {
            "dead_letter"
        };
        tracing::warn!(
            channel_message_id = %message.message_id,
            channel = %message.channel,
            direction = message.direction.as_str(),
            attempts = message.attempts,
            error = %failure.message,
            outcome,
            "channel message not through"
        );
        count(message, outcome);
        if let Err(error) = self
            .store
            .attempt_failed(message, &failure.message, retry_at)
            .await
        {
            tracing::warn!(%error, "the failed attempt was not recorded; the lease will free it");
        }
    }

    /// Works due messages, inbound first, up to `MESSAGES_PER_PASS` of each direction,
    /// claiming each when its turn comes (a lease covers one attempt).
    pub async fn drain(&self) -> Result<usize, kefu_storage::StoreError> {
        let mut worked = 0;
        for _ in 0..MESSAGES_PER_PASS {
            let Some(message) = self.store.claim_next(Direction::In, self.lease_ms).await? else {
                break;
            };
            if let Some(Answer {
                reply: Some(reply), ..
            }) = self.handle_inbound(&message).await
            {
                self.deliver(&reply).await;
            }
            worked += 1;
        }
        for _ in 0..MESSAGES_PER_PASS {
            let Some(message) = self.store.claim_next(Direction::Out, self.lease_ms).await? else {
                break;
            };
            self.deliver(&message).await;
            worked += 1;
        }
        Ok(worked)
    }

    pub async fn publish_metrics(&self) -> Result<(), kefu_storage::StoreError> {
        let stats = self.store.stats().await?;
        let oldest_age = stats
            .oldest_pending_at
            .map_or(0.0, |at| (now_millis() - at).max(0) as f64 / 1000.0);
        metrics::gauge!("kefu_channel_messages_pending", "service" => SERVICE, "direction" => "in")
            .set(stats.pending_in as f64);
        metrics::gauge!("kefu_channel_messages_pending", "service" => SERVICE, "direction" => "out")
            .set(stats.pending_out as f64);
        metrics::gauge!("kefu_channel_messages_dead_letters", "service" => SERVICE)
            .set(stats.dead as f64);
        metrics::gauge!("kefu_channel_messages_oldest_age_seconds", "service" => SERVICE)
            .set(oldest_age);
        Ok(())
    }

    /// The drainer: due messages and the metrics every `DRAIN_INTERVAL`, until shutdown.
    pub fn spawn_drainer(self, shutdown: &kefu_runtime::Shutdown) {
        shutdown.every(DRAIN_INTERVAL, move || {
            let relay = self.clone();
            async move {
                match relay.drain().await {
                    Ok(0) => {}
                    Ok(worked) => tracing::info!(worked, "channel messages retried"),
                    Err(error) => tracing::warn!(%error, "the channel messages could not be read"),
                }
                if let Err(error) = relay.publish_metrics().await {
                    tracing::debug!(%error, "channel metrics not read");
                }
            }
        });
    }
}

fn count(message: &ChannelMessage, outcome: &'static str) {
    count_message(&message.channel, message.direction.as_str(), outcome);
}

/// Counts a channel message by how its handling ended.
pub fn count_message(channel: &str, direction: &'static str, outcome: &'static str) {
    metrics::counter!(
        "kefu_channel_messages_total",
        "service" => SERVICE,
        "channel" => channel.to_owned(),
        "direction" => direction,
        "outcome" => outcome
    )
    .increment(1);
}

/// Counts a request refused at a channel's door, by the status it got.
pub fn count_refusal(channel: &str, status: u16) {
    metrics::counter!(
        "kefu_channel_refusals_total",
        "service" => SERVICE,
        "channel" => channel.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use kefu_storage::channels::{Handled, NewChannelMessage, Received};
    use kefu_storage::Database;
    use kefu_test_db::TestDb;

    use super::*;

    const REPLIES: usize = 16;
    /// The receiver takes this long over each reply ...
    const RECEIVER_DELAY: Duration = Duration::from_millis(250);
    /// ... so one delivery fits in a lease, and the replies sent one after another do not.
    const LEASE_MS_HERE: i64 = 1_000;

    /// The tenant's webhook receiver, slow to answer; counts the deliveries of each reply.
    async fn slow_receiver() -> (u16, Arc<Mutex<HashMap<String, usize>>>) {
        let got = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let counted = got.clone();
        let app = axum::Router::new().route(
            "/replies",
            axum::routing::post(move |body: String| async move {
                let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
                let delivery = reply["delivery_id"].as_str().unwrap().to_owned();
                *counted.lock().unwrap().entry(delivery).or_default() += 1;
                tokio::time::sleep(RECEIVER_DELAY).await;
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (port, got)
    }

    /// The demo tenant with a webhook channel that delivers to `port`.
    fn tenants_with_webhook(dir: &std::path::Path, port: u16) -> Arc<LiveTenants> {
        let secret = dir.join("webhook-secret");
        std::fs::write(&secret, "test-secret").unwrap();
        let demo = dir.join("tenants/demo");
        std::fs::create_dir_all(&demo).unwrap();
        let toml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tenants/demo/tenant.toml"
        ))
        .unwrap();
        std::fs::write(
            demo.join("tenant.toml"),
            format!(
                "{toml}\n[channels.webhook]\nsecret = {{ file = {secret:?} }}\ndeliver_url = \"http://127.0.0.1:{port}/replies\"\n"
            ),
        )
        .unwrap();
        LiveTenants::load(&dir.join("tenants")).unwrap()
    }

    /// Replies to webhook customers, queued and due at once.
    async fn queue_replies(store: &SqlChannels) {
        for i in 0..REPLIES {
            let customer = format!("customer-{i}");
            let inbound = NewChannelMessage {
                tenant_id: "demo".into(),
                channel: "webhook".into(),
                thread: customer.clone(),
                dedup_key: format!("m-{i}"),
                session_id: String::new(),
                role: "customer".into(),
                payload: "{}".into(),
            };
            let Received::New(received) = store.receive(&inbound, &customer, 0).await.unwrap()
            else {
                panic!("a new message is new");
            };
            let reply = NewChannelMessage {
                dedup_key: format!("reply:m-{i}"),
                session_id: format!("session-{i}"),
                role: "bot".into(),
                payload: serde_json::to_string(&ReplyPayload {
                    customer_id: customer,
                    text: "Here is how to reset your password.".into(),
                    agent_id: String::new(),
                    in_reply_to: inbound.dedup_key.clone(),
                    mail: None,
                })
                .unwrap(),
                ..inbound
            };
            let handled = Handled {
                session_id: format!("session-{i}"),
                with_human: false,
                reply: Some(reply),
                hold_ms: 0,
            };
            store
                .inbound_handled(&received, &handled)
                .await
                .unwrap()
                .expect("queued");
        }
    }

    /// Two replicas drain the replies while the customer's webhook is slow: each reply
    /// reaches the customer once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_draining_towards_a_slow_webhook_send_each_reply_once() {
        let (_guard, url) = TestDb::postgres().await;
        let store = SqlChannels::new(Database::connect(&url).await.unwrap());
        queue_replies(&store).await;
        let (port, got) = slow_receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let connect = kefu_runtime::Connector::new(
            "test",
            &kefu_runtime::ClientArgs::default(),
            &kefu_runtime::TlsArgs::default(),
        )
        .unwrap();
        let relay = Relay {
            store,
            tenants: tenants_with_webhook(dir.path(), port),
            // Never called: every inbound message here was handled already.
            gateway: ConversationServiceClient::new(
                connect
                    .channel("kefu-gateway", "http://127.0.0.1:9")
                    .unwrap(),
            ),
            deliverer: Deliverer::new(Duration::from_secs(5)).unwrap(),
            policy: RetryPolicy::new(8, 60_000),
            lease_ms: LEASE_MS_HERE,
        };

        // Two replicas' drainers look every 100 ms for 4 s.
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let relay = relay.clone();
                tokio::spawn(async move {
                    let until = tokio::time::Instant::now() + Duration::from_secs(4);
                    while tokio::time::Instant::now() < until {
                        relay.drain().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        for replica in replicas {
            replica.await.unwrap();
        }

        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), REPLIES, "every reply was delivered: {got:?}");
        for (delivery, times) in got {
            assert_eq!(
                times, 1,
                "reply {delivery} reached the customer {times} times"
            );
        }
    }
}
