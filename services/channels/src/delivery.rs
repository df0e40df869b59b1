//! Delivering a reply on its channel: a signed POST to the tenant's webhook URL, a
//! WeChat customer-service message (客服消息) with the account's access token, fetched
//! and cached per account, or a mail through the tenant's SMTP relay. What counts as "try
//! again later" (unreachable, 5xx, 408, 429, WeChat busy or an expired token) and what as
//! a refusal is decided here.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kefu_storage::channels::ChannelMessage;
use kefu_tenant::{SmtpTls, Tenant, WechatChannel};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Tls;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use crate::relay::{ChannelKind, Failure, ReplyPayload};
use crate::{email, webhook};

/// An access token is renewed this long before WeChat says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Deliverer {
    http: reqwest::Client,
    timeout: Duration,
    /// WeChat access tokens by tenant, with when they stop being used.
    tokens: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

#[derive(Deserialize)]
struct WechatAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

/// WeChat's error codes that mean "the token is no longer good": fetch a new one.
const TOKEN_ERRORS: [i64; 3] = [40001, 40014, 42001];
/// WeChat is busy.
const BUSY: i64 = -1;

impl Deliverer {
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        // The same ring provider tonic's TLS uses; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("kefu-channels/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            timeout,
            tokens: Arc::default(),
        })
    }

    pub async fn deliver(&self, tenant: &Tenant, message: &ChannelMessage) -> Result<(), Failure> {
        let reply: ReplyPayload = serde_json::from_str(&message.payload)
            .map_err(|_| Failure::permanent("the stored reply is unreadable"))?;
        match ChannelKind::parse(&message.channel) {
            Some(ChannelKind::Webhook) => self.webhook(tenant, message, reply).await,
            Some(ChannelKind::Wechat) => {
                let wechat = tenant.channels.wechat.as_ref().ok_or_else(|| {
                    Failure::permanent("the tenant no longer has a [channels.wechat]")
                })?;
                self.wechat(&tenant.id, wechat, &message.thread, &reply.text)
                    .await
            }
            Some(ChannelKind::Email) => self.email(tenant, message, &reply).await,
            None => Err(Failure::permanent("unknown channel")),
        }
    }

    async fn email(
        &self,
        tenant: &Tenant,
        message: &ChannelMessage,
        reply: &ReplyPayload,
    ) -> Result<(), Failure> {
        let settings = tenant
            .channels
            .email
            .as_ref()
            .ok_or_else(|| Failure::permanent("the tenant no longer has a [channels.email]"))?;
        let thread = reply
            .mail
            .as_ref()
            .ok_or_else(|| Failure::permanent("the reply has no mail thread to answer"))?;
        let mail = email::compose(&email::Reply {
            from: settings.from(),
            thread,
            message_id: &format!("{}@{}", message.message_id, settings.domain()),
            text: &reply.text,
            automatic: message.role == "bot",
        })
        .map_err(Failure::permanent)?;
        let relay = &settings.relay;
        let tls = |host: &str| {
            lettre::transport::smtp::client::TlsParameters::new(host.to_owned())
                .map_err(|error| Failure::permanent(format!("SMTP relay TLS: {error}")))
        };
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&relay.host)
            .port(relay.port)
            .timeout(Some(self.timeout));
        transport = match relay.tls {
            SmtpTls::Starttls => transport.tls(Tls::Required(tls(&relay.host)?)),
            SmtpTls::Tls => transport.tls(Tls::Wrapper(tls(&relay.host)?)),
            SmtpTls::None => transport.tls(Tls::None),
        };
        if let (Some(username), Some(password)) = (&relay.username, &relay.password) {
            let password = password
                .read()
                .map_err(|error| Failure::permanent(format!("SMTP relay password: {error:#}")))?;
            transport = transport.credentials(Credentials::new(username.clone(), password));
        }
        match transport.build().send(mail).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_permanent() => Err(Failure::permanent(format!(
                "the SMTP relay refused the mail: {}",
                error
                    .status()
                    .map_or_else(String::new, |code| code.to_string())
            ))),
            Err(error) => Err(Failure::transient(format!(
                "the SMTP relay {}",
                if error.is_transient() {
                    "asked to try again later"
                } else if error.is_timeout() {
                    "timed out"
                } else if error.is_tls() {
                    "TLS failed"
                } else {
                    "could not be reached"
                }
            ))),
        }
    }

    async fn webhook(
        &self,
        tenant: &Tenant,
        message: &ChannelMessage,
        reply: ReplyPayload,
    ) -> Result<(), Failure> {
        let settings =
            tenant.channels.webhook.as_ref().ok_or_else(|| {
                Failure::permanent("the tenant no longer has a [channels.webhook]")
            })?;
        let secret = settings
            .secret
            .read()
            .map_err(|error| Failure::permanent(format!("webhook secret: {error:#}")))?;
        let body = serde_json::to_vec(&webhook::OutboundReply {
            event: "reply".into(),
            delivery_id: message.message_id.clone(),
            tenant_id: tenant.id.clone(),
            customer_id: reply.customer_id,
            session_id: message.session_id.clone(),
            role: message.role.clone(),
            agent_id: reply.agent_id,
            text: reply.text,
            in_reply_to: reply.in_reply_to,
        })
        .expect("a reply serializes");
        let timestamp = kefu_storage::now_secs();
        let response = self
            .http
            .post(&settings.deliver_url)
            .header("content-type", "application/json")
            .header(webhook::TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                webhook::SIGNATURE_HEADER,
                webhook::sign(&secret, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|error| {
                Failure::transient(format!("webhook unreachable: {}", without_url(&error)))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            Err(Failure::transient(format!("webhook answered {status}")))
        } else {
            Err(Failure::permanent(format!("webhook answered {status}")))
        }
    }

    async fn wechat(
        &self,
        tenant_id: &str,
        settings: &WechatChannel,
        open_id: &str,
        text: &str,
    ) -> Result<(), Failure> {
        let body = serde_json::json!({
            "touser": open_id,
            "msgtype": "text",
            "text": { "content": text },
        });
        // One retry with a fresh token when WeChat says the cached one is no longer good.
        for fresh in [false, true] {
            let token = self.access_token(tenant_id, settings, fresh).await?;
            let answer = self
                .wechat_call(
                    self.http
                        .post(format!(
                            "{}/cgi-bin/message/custom/send",
                            settings.api_base_url.trim_end_matches('/')
                        ))
                        .query(&[("access_token", token.as_str())])
                        .json(&body),
                )
                .await?;
            match answer.errcode {
                0 => return Ok(()),
                code if TOKEN_ERRORS.contains(&code) && !fresh => {
                    self.tokens
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(tenant_id);
                }
                code => return Err(wechat_failure("custom/send", code, &answer.errmsg)),
            }
        }
        Err(Failure::transient(
            "WeChat refused two access tokens in a row",
        ))
    }

    async fn access_token(
        &self,
        tenant_id: &str,
        settings: &WechatChannel,
        fresh: bool,
    ) -> Result<String, Failure> {
        if !fresh {
            let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((token, until)) = tokens.get(tenant_id) {
                if Instant::now() < *until {
                    return Ok(token.clone());
                }
            }
        }
        let secret = settings
            .app_secret
            .read()
            .map_err(|error| Failure::permanent(format!("WeChat app_secret: {error:#}")))?;
        let answer = self
            .wechat_call(
                self.http
                    .get(format!(
                        "{}/cgi-bin/token",
                        settings.api_base_url.trim_end_matches('/')
                    ))
                    .query(&[
                        ("grant_type", "client_credential"),
                        ("appid", settings.app_id.as_str()),
                        ("secret", secret.as_str()),
                    ]),
            )
            .await?;
        if answer.errcode != 0 || answer.access_token.is_empty() {
            return Err(wechat_failure("token", answer.errcode, &answer.errmsg));
        }
        let lifetime = Duration::from_secs(answer.expires_in.max(60)).saturating_sub(TOKEN_MARGIN);
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                tenant_id.to_owned(),
                (answer.access_token.clone(), Instant::now() + lifetime),
            );
        Ok(answer.access_token)
    }

    async fn wechat_call(&self, request: reqwest::RequestBuilder) -> Result<WechatAnswer, Failure> {
        let response = request.send().await.map_err(|error| {
            Failure::transient(format!("WeChat unreachable: {}", without_url(&error)))
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::transient(format!("WeChat answered {status}")));
        }
        response
            .json::<WechatAnswer>()
            .await
            .map_err(|_| Failure::transient("WeChat's answer is not JSON"))
    }
}

fn wechat_failure(call: &str, code: i64, message: &str) -> Failure {
    let text = format!("WeChat {call}: errcode {code}: {message}");
    if code == BUSY || TOKEN_ERRORS.contains(&code) {
        Failure::transient(text)
    } else {
        Failure::permanent(text)
    }
}

/// A request error without its URL: WeChat's carries the access token or the secret.
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_owned()
}
