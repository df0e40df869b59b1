//! Agents' replies on the customer's channel. While a human has a channel conversation's
//! session, one replica follows the session's event stream through the gateway (under a
//! lease it renews, so another takes over when it dies), resuming after the last event
//! it took; each agent's reply is queued in the transaction that moves past its event,
//! then delivered. Following ends when the session returns to the bot.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kefu_proto::v1::conversation_event::Kind;
use kefu_proto::v1::{Handler, StreamEventsRequest};
use kefu_runtime::Shutdown;
use kefu_storage::channels::{ChannelConversation, NewChannelMessage};

use crate::relay::{Relay, ReplyPayload};

/// How long a replica holds a conversation it follows without renewing.
const FOLLOW_LEASE_MS: i64 = 10_000;
/// How often the lease is renewed and new conversations to follow are looked for.
const FOLLOW_TICK: Duration = Duration::from_secs(1);
const RENEW_EVERY: Duration = Duration::from_secs(3);
const CLAIM_BATCH: i64 = 100;
/// Wait before reopening a stream that ended (the gateway restarted, a network blip).
const REOPEN_AFTER: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Follower {
    relay: Relay,
    shutdown: Shutdown,
    /// The conversations this replica follows now.
    running: Arc<Mutex<HashSet<(String, String, String)>>>,
}

impl Follower {
    pub fn spawn(relay: Relay, shutdown: &Shutdown) {
        let follower = Self {
            relay,
            shutdown: shutdown.clone(),
            running: Arc::default(),
        };
        shutdown.every(FOLLOW_TICK, move || {
            let follower = follower.clone();
            async move { follower.claim().await }
        });
    }

    async fn claim(&self) {
        let claimed = match self
            .relay
            .store
            .claim_following(CLAIM_BATCH, FOLLOW_LEASE_MS)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "conversations to follow could not be read");
                return;
            }
        };
        for conversation in claimed {
            let key = (
                conversation.tenant_id.clone(),
                conversation.channel.clone(),
                conversation.thread.clone(),
            );
            if !self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone())
            {
                continue;
            }
            let follower = self.clone();
            tokio::spawn(async move {
                follower.follow(conversation).await;
                follower
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            });
        }
    }

    /// Follows one conversation until it goes back to the bot, its lease is lost, or
    /// shutdown.
    async fn follow(&self, mut conversation: ChannelConversation) {
        let mut renew = tokio::time::interval(RENEW_EVERY);
        loop {
            if self.shutdown.is_triggered() {
                return;
            }
            let Ok(tenant) = self.relay.tenant(&conversation.tenant_id) else {
                return;
            };
            let request = StreamEventsRequest {
                tenant_id: conversation.tenant_id.clone(),
                customer_id: conversation.customer_id.clone(),
                session_id: conversation.session_id.clone(),
                after_event_id: conversation.last_event_id,
            };
            let stream = match self.relay_request(&tenant, &conversation, request) {
                Some(request) => self.relay.gateway.clone().stream_events(request).await,
                None => return,
            };
            let mut events = match stream {
                Ok(events) => events.into_inner(),
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "session events not opened; trying again");
                    if !self.pause(&conversation, &mut renew).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(event)) => {
                            if !self.take(&mut conversation, event).await {
                                return;
                            }
                        }
                        _ => break,
                    },
                    _ = renew.tick() => {
                        if !self.renew(&conversation).await {
                            return;
                        }
                    }
                    _ = self.shutdown.wait() => return,
                }
            }
            if !self.pause(&conversation, &mut renew).await {
                return;
            }
        }
    }

    fn relay_request(
        &self,
        tenant: &kefu_tenant::Tenant,
        conversation: &ChannelConversation,
        request: StreamEventsRequest,
    ) -> Option<tonic::Request<StreamEventsRequest>> {
        match self
            .relay
            .authorize(tenant, &conversation.customer_id, request)
        {
            Ok(request) => Some(request),
            Err(failure) => {
                tracing::warn!(error = %failure.message, "a followed conversation cannot be authorized");
                None
            }
        }
    }

    /// Waits before reopening a stream, keeping the lease; false when it is lost.
    async fn pause(
        &self,
        conversation: &ChannelConversation,
        renew: &mut tokio::time::Interval,
    ) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(REOPEN_AFTER) => true,
            _ = renew.tick() => self.renew(conversation).await,
            _ = self.shutdown.wait() => false,
        }
    }

    async fn renew(&self, conversation: &ChannelConversation) -> bool {
        self.relay
            .store
            .renew_following(conversation, FOLLOW_LEASE_MS)
            .await
            .unwrap_or(true)
    }

    /// Takes one event; false when following ends.
    async fn take(
        &self,
        conversation: &mut ChannelConversation,
        event: kefu_proto::v1::ConversationEvent,
    ) -> bool {
        let (reply, back_to_bot) = match &event.kind {
            Some(Kind::AgentReply(reply)) => {
                let mail = match self.relay.mail_thread(conversation).await {
                    Ok(mail) => mail,
                    Err(error) => {
                        tracing::warn!(%error, "the mail thread of an agent's reply could not be read");
                        return false;
                    }
                };
                (
                    Some(NewChannelMessage {
                        tenant_id: conversation.tenant_id.clone(),
                        channel: conversation.channel.clone(),
                        thread: conversation.thread.clone(),
                        dedup_key: format!("event:{}:{}", conversation.session_id, event.event_id),
                        session_id: conversation.session_id.clone(),
                        role: "agent".into(),
                        payload: serde_json::to_string(&ReplyPayload {
                            customer_id: conversation.customer_id.clone(),
                            text: reply.text.clone(),
                            agent_id: reply.agent_id.clone(),
                            in_reply_to: String::new(),
                            mail,
                        })
                        .expect("a reply serializes"),
                    }),
                    false,
                )
            }
            Some(Kind::HandlerChange(change)) => (None, change.handler == Handler::Bot as i32),
            None => (None, false),
        };
        match self
            .relay
            .store
            .event_followed(
                conversation,
                event.event_id,
                reply.as_ref(),
                back_to_bot,
                self.relay.lease_ms,
            )
            .await
        {
            Ok(queued) => {
                conversation.last_event_id = event.event_id;
                if let Some(queued) = queued {
                    self.relay.deliver(&queued).await;
                }
                !back_to_bot
            }
            Err(error) => {
                // Not moved past: the stream is reopened after the last event taken.
                tracing::warn!(%error, "a session event could not be stored");
                false
            }
        }
    }
}
