//! The HTTP endpoints the channels call: `POST /webhooks/{tenant}` (signed JSON) and
//! `GET|POST /wechat/{tenant}` (WeChat's server URL). Each refuses bad input on the
//! channel's own terms (a status and a JSON error for webhooks; 401/400 and never a
//! crash for WeChat), stores a message before saying it arrived, and hands it to the
//! relay.
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use kefu_storage::channels::Received;
use kefu_storage::now_secs;
use kefu_tenant::{Tenant, WechatChannel};
use serde_json::json;

use crate::relay::{customer_for, ChannelKind, InboundPayload, Relay};
use crate::webhook;
use crate::wechat::{self, SafeMode, WechatError, XmlFields};

/// Largest request body: a message of the largest size with room for its envelope.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// What WeChat expects when there is nothing to reply now.
const WECHAT_NOTHING_NOW: &str = "success";

#[derive(Clone)]
pub struct Endpoints {
    pub relay: Relay,
    pub max_message_bytes: usize,
}

pub fn router(endpoints: Endpoints) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/{tenant}", post(webhook_message))
        .route("/wechat/{tenant}", get(wechat_verify).post(wechat_message))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(endpoints))
}

fn refuse(status: StatusCode, error: impl std::fmt::Display, channel: &'static str) -> Response {
    crate::relay::count_refusal(channel, status.as_u16());
    (status, Json(json!({ "error": error.to_string() }))).into_response()
}

const NO_SUCH_CHANNEL: &str = "no such tenant, or the tenant has no such channel";

/// A channel whose secret cannot be read here: the sender tries again (an operator is
/// told by the error logged with it).
fn not_ready(channel: &'static str) -> Response {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the {channel} channel is not ready"),
        channel,
    )
}

impl Endpoints {
    /// The tenant, when it exists (the same answer otherwise: nothing is learnt about
    /// which tenants exist).
    fn tenant(&self, tenant_id: &str) -> Option<Arc<Tenant>> {
        self.relay.tenants.current().get(tenant_id)
    }

    /// Stores an inbound message; while the store is down the channel is told to try
    /// again.
    async fn receive(
        &self,
        kind: ChannelKind,
        tenant: &Tenant,
        thread: &str,
        channel_message_id: &str,
        payload: InboundPayload,
    ) -> Result<Received, Response> {
        self.relay
            .receive(kind, &tenant.id, thread, channel_message_id, &payload)
            .await
            .map_err(|_| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kefu cannot store messages right now; send it again",
                    kind.as_str(),
                )
            })
    }
}

async fn webhook_message(
    State(endpoints): State<Arc<Endpoints>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const CHANNEL: &str = "webhook";
    let Some((tenant, settings)) = endpoints
        .tenant(&tenant_id)
        .and_then(|tenant| Some((tenant.clone(), tenant.channels.webhook.clone()?)))
    else {
        return refuse(StatusCode::NOT_FOUND, NO_SUCH_CHANNEL, CHANNEL);
    };
    let secret = match settings.secret.read() {
        Ok(secret) => secret,
        Err(error) => {
            tracing::error!(tenant = %tenant.id, error = %format!("{error:#}"), "the webhook secret cannot be read");
            return not_ready(CHANNEL);
        }
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Err(error) = webhook::verify(
        &secret,
        header(webhook::TIMESTAMP_HEADER),
        header(webhook::SIGNATURE_HEADER),
        &body,
        now_secs(),
    ) {
        return refuse(StatusCode::UNAUTHORIZED, error, CHANNEL);
    }
    let message = match webhook::parse_inbound(&body, endpoints.max_message_bytes) {
        Ok(message) => message,
        Err(error) => return refuse(StatusCode::BAD_REQUEST, error, CHANNEL),
    };
    let customer_id = customer_for(
        &tenant,
        ChannelKind::Webhook,
        &message.customer.id,
        message.customer.verified_email.as_deref(),
    );
    match endpoints
        .receive(
            ChannelKind::Webhook,
            &tenant,
            &message.customer.id,
            &message.message_id,
            InboundPayload {
                customer_id,
                text: message.text,
                mail: None,
            },
        )
        .await
    {
        Ok(Received::New(stored)) => {
            endpoints.relay.spawn_handling(stored, None);
            (
                StatusCode::ACCEPTED,
                Json(json!({ "status": "accepted", "message_id": message.message_id })),
            )
                .into_response()
        }
        Ok(Received::Duplicate(_)) => refuse(
            StatusCode::CONFLICT,
            format!(
                "message {} was received before; it is not taken twice",
                message.message_id
            ),
            CHANNEL,
        ),
        Err(response) => response,
    }
}

/// A value of WeChat's query ("" when missing: the checks then refuse it).
fn query_part<'a>(query: &'a HashMap<String, String>, name: &str) -> &'a str {
    query.get(name).map(String::as_str).unwrap_or_default()
}

/// The signature query WeChat sends with every request; the account's token when it is
/// WeChat's.
fn signed_by_wechat(
    tenant: &Tenant,
    settings: &WechatChannel,
    query: &HashMap<String, String>,
) -> Result<String, Box<Response>> {
    let token = settings.token.read().map_err(|error| {
        tracing::error!(tenant = %tenant.id, error = %format!("{error:#}"), "the WeChat token cannot be read");
        Box::new(not_ready("wechat"))
    })?;
    let part = |name: &str| query_part(query, name);
    wechat::check_timestamp(part("timestamp"), now_secs())
        .map_err(|error| Box::new(wechat_refusal(error)))?;
    let expected = wechat::signature(&[&token, part("timestamp"), part("nonce")]);
    if !wechat::signature_matches(&expected, part("signature")) {
        return Err(Box::new(wechat_refusal(WechatError::Signature)));
    }
    Ok(token)
}

fn wechat_settings(endpoints: &Endpoints, tenant_id: &str) -> Option<(Arc<Tenant>, WechatChannel)> {
    let tenant = endpoints.tenant(tenant_id)?;
    let settings = tenant.channels.wechat.clone()?;
    Some((tenant, settings))
}

fn wechat_refusal(error: WechatError) -> Response {
    let status = match error {
        WechatError::Signature | WechatError::Stale | WechatError::WrongAccount => {
            StatusCode::UNAUTHORIZED
        }
        WechatError::Xml(_) | WechatError::Crypto(_) => StatusCode::BAD_REQUEST,
    };
    refuse(status, error, "wechat")
}

/// URL verification: the echo string back when the signature is the account's.
async fn wechat_verify(
    State(endpoints): State<Arc<Endpoints>>,
    Path(tenant_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some((tenant, settings)) = wechat_settings(&endpoints, &tenant_id) else {
        return refuse(StatusCode::NOT_FOUND, NO_SUCH_CHANNEL, "wechat");
    };
    match signed_by_wechat(&tenant, &settings, &query) {
        Ok(_) => query_part(&query, "echostr").to_owned().into_response(),
        Err(refusal) => *refusal,
    }
}

async fn wechat_message(
    State(endpoints): State<Arc<Endpoints>>,
    Path(tenant_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some((tenant, settings)) = wechat_settings(&endpoints, &tenant_id) else {
        return refuse(StatusCode::NOT_FOUND, NO_SUCH_CHANNEL, "wechat");
    };
    let token = match signed_by_wechat(&tenant, &settings, &query) {
        Ok(token) => token,
        Err(refusal) => return *refusal,
    };
    let safe_mode = match read_safe_mode(&settings) {
        Ok(mode) => mode,
        Err(error) => {
            tracing::error!(tenant = %tenant.id, error = %format!("{error:#}"), "the WeChat EncodingAESKey cannot be used");
            return not_ready("wechat");
        }
    };
    let message = match open_message(&token, safe_mode.as_ref(), &query, &body) {
        Ok(message) => message,
        Err(error) => return wechat_refusal(error),
    };
    let (Some(open_id), Some(account)) = (message.get("FromUserName"), message.get("ToUserName"))
    else {
        return wechat_refusal(WechatError::Xml(
            "FromUserName and ToUserName are required".into(),
        ));
    };
    // Only text is read; pictures, voice and events get WeChat's "nothing to reply".
    let (Some("text"), Some(content), Some(msg_id)) = (
        message.get("MsgType"),
        message.get("Content"),
        message.get("MsgId"),
    ) else {
        return WECHAT_NOTHING_NOW.into_response();
    };
    if open_id.is_empty() || open_id.len() > 64 || content.trim().is_empty() {
        return wechat_refusal(WechatError::Xml("an empty sender or message".into()));
    }
    if content.len() > endpoints.max_message_bytes {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the message is too long",
            "wechat",
        );
    }
    let customer_id = customer_for(&tenant, ChannelKind::Wechat, open_id, None);
    let stored = match endpoints
        .receive(
            ChannelKind::Wechat,
            &tenant,
            open_id,
            msg_id,
            InboundPayload {
                customer_id,
                text: content.to_owned(),
                mail: None,
            },
        )
        .await
    {
        // WeChat resends a message it got no answer to: the first is being answered.
        Ok(Received::Duplicate(_)) => return WECHAT_NOTHING_NOW.into_response(),
        Ok(Received::New(stored)) => stored,
        Err(response) => return response,
    };
    let (waiting, answer) = tokio::sync::oneshot::channel();
    endpoints.relay.spawn_handling(stored, Some(waiting));
    // The passive reply when the answer is ready within WeChat's 5 s; otherwise
    // "success" now and a customer-service message when it is.
    let Ok(Ok(answer)) = tokio::time::timeout(wechat::PASSIVE_REPLY_WITHIN, answer).await else {
        return WECHAT_NOTHING_NOW.into_response();
    };
    let Some(reply) = answer.reply else {
        return WECHAT_NOTHING_NOW.into_response();
    };
    if let Err(error) = endpoints.relay.store.delivered(&reply).await {
        tracing::warn!(%error, "a passive reply was not recorded as delivered");
    }
    let now = now_secs();
    let xml = wechat::text_reply_xml(open_id, account, now, &answer.text);
    let xml = match &safe_mode {
        Some(mode) => mode.wrap_reply(&token, &xml, now, &format!("{:010}", rand::random::<u32>())),
        None => xml,
    };
    ([("content-type", "application/xml")], xml).into_response()
}

fn read_safe_mode(settings: &WechatChannel) -> anyhow::Result<Option<SafeMode>> {
    settings
        .encoding_aes_key
        .as_ref()
        .map(|key| SafeMode::new(&key.read()?, &settings.app_id))
        .transpose()
}

/// The message's fields: as sent in plain mode, decrypted and checked in safe mode (the
/// only mode accepted once the account has an EncodingAESKey).
fn open_message(
    token: &str,
    safe_mode: Option<&SafeMode>,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<XmlFields, WechatError> {
    let outer = XmlFields::parse(body)?;
    let Some(mode) = safe_mode else {
        return Ok(outer);
    };
    let (Some("aes"), Some(encrypted)) = (
        query.get("encrypt_type").map(String::as_str),
        outer.get("Encrypt"),
    ) else {
        return Err(WechatError::Crypto(
            "safe mode requires an encrypted message",
        ));
    };
    let part = |name: &str| query_part(query, name);
    let expected = wechat::signature(&[token, part("timestamp"), part("nonce"), encrypted]);
    if !wechat::signature_matches(&expected, part("msg_signature")) {
        return Err(WechatError::Signature);
    }
    XmlFields::parse(mode.decrypt(encrypted)?.as_bytes())
}
