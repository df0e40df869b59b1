//! `kefu bench --webhook`: customers on the signed-webhook channel. Each message is
//! POSTed, signed, to the channel service; its turn is answered when the bot's reply,
//! signed by kefu, reaches the bench's own receiver, which the tenant's `deliver_url`
//! names. Signatures are made and checked by the channel service's own protocol code.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use kefu_channels::webhook::{self, OutboundReply};
use tokio::sync::oneshot;

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>;

pub struct WebhookDriver {
    http: reqwest::Client,
    url: String,
    secret: String,
    /// Messages whose reply has not come yet: the reply's session goes to the sender.
    waiting: Waiting,
}

impl WebhookDriver {
    /// Receives replies on `receive` (path /replies) and sends to `url`.
    pub async fn start(url: &str, secret: String, receive: SocketAddr) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let waiting: Waiting = Arc::default();
        let app = {
            let (waiting, secret) = (waiting.clone(), secret.clone());
            axum::Router::new().route(
                "/replies",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let (waiting, secret) = (waiting.clone(), secret.clone());
                    async move { receive_reply(&waiting, &secret, &headers, &body) }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind(receive)
            .await
            .map_err(|error| anyhow::anyhow!("cannot receive replies on {receive}: {error}"))?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            url: url.to_owned(),
            secret,
            waiting,
        })
    }

    /// Sends one message and waits for its reply; the reply's session, or why not.
    pub async fn send(
        &self,
        customer_id: &str,
        message_id: &str,
        text: &str,
        deadline: Duration,
    ) -> Result<String, String> {
        let (reply, replied) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(message_id.to_owned(), reply);
        let body = serde_json::to_vec(&serde_json::json!({
            "message_id": message_id,
            "customer": { "id": customer_id },
            "text": text,
        }))
        .expect("a message serializes");
        let timestamp = kefu_storage::now_secs();
        let sent = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header(webhook::TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                webhook::SIGNATURE_HEADER,
                webhook::sign(&self.secret, timestamp, &body),
            )
            .timeout(deadline)
            .body(body)
            .send()
            .await;
        let outcome = match sent {
            Ok(response) if response.status() == StatusCode::ACCEPTED => {
                match tokio::time::timeout(deadline, replied).await {
                    Ok(Ok(session)) => Ok(session),
                    _ => Err("NoReply".to_owned()),
                }
            }
            Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
            Err(_) => Err("Unreachable".to_owned()),
        };
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(message_id);
        outcome
    }
}

fn receive_reply(waiting: &Waiting, secret: &str, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if webhook::verify(
        secret,
        header(webhook::TIMESTAMP_HEADER),
        header(webhook::SIGNATURE_HEADER),
        body,
        kefu_storage::now_secs(),
    )
    .is_err()
    {
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(reply) = serde_json::from_slice::<OutboundReply>(body) else {
        return StatusCode::BAD_REQUEST;
    };
    if let Some(waiter) = waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&reply.in_reply_to)
    {
        let _ = waiter.send(reply.session_id);
    }
    StatusCode::OK
}
