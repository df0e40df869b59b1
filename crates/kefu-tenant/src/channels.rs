//! `[channels]` of a tenant: the outside channels its customers write on (signed
//! webhooks, a WeChat Official Account, a support mailbox) and where kefu delivers their
//! replies. Secrets
//! are named, never written here: `{ env = "NAME" }` or `{ file = "/path" }`.
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Deserializer};

/// Where a secret is read from when it is needed (so a rotated file or a restarted pod
/// with a new variable takes effect without editing the tenant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    /// The secret's value, trimmed of surrounding whitespace (a file's final newline).
    pub fn read(&self) -> anyhow::Result<String> {
        let value = match self {
            Self::Env(name) => std::env::var(name)
                .with_context(|| format!("the environment variable {name} is not set"))?,
            Self::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the secret file {}", path.display()))?,
        };
        let value = value.trim().to_owned();
        anyhow::ensure!(!value.is_empty(), "the secret in {self} is empty");
        Ok(value)
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            // Matched to be refused; its value is never looked at.
            #[allow(dead_code)]
            Inline(String),
            Reference {
                env: Option<String>,
                file: Option<PathBuf>,
            },
        }
        use serde::de::Error;
        match Written::deserialize(deserializer)? {
            Written::Inline(_) => Err(D::Error::custom(
                "secrets are never written inline: name where to read it, { env = \"NAME\" } or { file = \"/path\" }",
            )),
            Written::Reference {
                env: Some(name),
                file: None,
            } if !name.trim().is_empty() => Ok(Self::Env(name)),
            Written::Reference {
                env: None,
                file: Some(path),
            } if !path.as_os_str().is_empty() => Ok(Self::File(path)),
            Written::Reference { .. } => Err(D::Error::custom(
                "a secret names exactly one of env = \"NAME\" or file = \"/path\"",
            )),
        }
    }
}

/// `[channels]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    /// The customer-app key the channel service presents to the gateway; needed when the
    /// tenant has customer-app keys (otherwise its customer calls are open).
    #[serde(default)]
    pub gateway_key: Option<SecretRef>,
    /// A customer who proves the same email address on several channels is one
    /// customer (`email:<address>`); otherwise each channel's sender is its own.
    #[serde(default)]
    pub same_customer_by_verified_email: bool,
    #[serde(default)]
    pub webhook: Option<WebhookChannel>,
    #[serde(default)]
    pub wechat: Option<WechatChannel>,
    #[serde(default)]
    pub email: Option<EmailChannel>,
}

/// `[channels.webhook]`: JSON in, signed with the tenant's secret; replies out as JSON
/// to the tenant's URL, signed the same way.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannel {
    /// The shared secret of the HMAC-SHA256 signatures, both ways.
    pub secret: SecretRef,
    /// Where replies are POSTed (http or https).
    pub deliver_url: String,
}

/// `[channels.wechat]`: a WeChat Official Account (公众号) whose server URL points at kefu.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatChannel {
    /// The account's AppID (it ends every encrypted message).
    pub app_id: String,
    /// The Token set in the account's server configuration (signatures).
    pub token: SecretRef,
    /// The EncodingAESKey (43 characters) for safe mode; without it only plain mode is
    /// accepted.
    #[serde(default)]
    pub encoding_aes_key: Option<SecretRef>,
    /// The AppSecret, for the access token of customer-service messages.
    pub app_secret: SecretRef,
    /// WeChat's API (default https://api.weixin.qq.com).
    #[serde(default = "default_wechat_api")]
    pub api_base_url: String,
}

/// `[channels.email]`: mail to the support address reaches kefu's SMTP listener (the
/// domain's MX, or a forwarding rule of the mail provider); replies leave through the
/// tenant's SMTP relay from that address.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChannel {
    /// The support address kefu accepts mail for, e.g. `support@shop.example`.
    pub address: String,
    /// The From of replies (`Shop Support <support@shop.example>`); the address alone
    /// when not set.
    #[serde(default)]
    pub from: Option<String>,
    pub relay: SmtpRelay,
}

/// Where replies are handed over for delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpRelay {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `starttls` (the default: refuse a relay that does not offer it), `tls` (TLS from
    /// the first byte, usually port 465) or `none` (a relay on the same host or network).
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretRef>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

fn default_smtp_port() -> u16 {
    587
}

impl EmailChannel {
    /// The From of replies.
    pub fn from(&self) -> &str {
        self.from.as_deref().unwrap_or(&self.address)
    }

    /// The domain of the support address: our Message-IDs end with it.
    pub fn domain(&self) -> &str {
        self.address
            .rsplit_once('@')
            .map_or("", |(_, domain)| domain)
    }
}

fn default_wechat_api() -> String {
    "https://api.weixin.qq.com".into()
}

impl Channels {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if let Some(webhook) = &self.webhook {
            anyhow::ensure!(
                is_http_url(&webhook.deliver_url),
                "[channels.webhook] deliver_url must be an http:// or https:// URL"
            );
        }
        if let Some(wechat) = &self.wechat {
            anyhow::ensure!(
                !wechat.app_id.trim().is_empty() && wechat.app_id.len() <= 64,
                "[channels.wechat] app_id must be the account's AppID"
            );
            anyhow::ensure!(
                is_http_url(&wechat.api_base_url),
                "[channels.wechat] api_base_url must be an http:// or https:// URL"
            );
        }
        if let Some(email) = &self.email {
            anyhow::ensure!(
                is_mail_address(&email.address),
                "[channels.email] address must be a plain address such as support@shop.example"
            );
            anyhow::ensure!(
                !email.relay.host.trim().is_empty(),
                "[channels.email] relay.host is the SMTP relay replies leave through"
            );
            anyhow::ensure!(
                email.relay.username.is_some() == email.relay.password.is_some(),
                "[channels.email] relay.username and relay.password go together"
            );
        }
        Ok(())
    }
}

fn is_mail_address(address: &str) -> bool {
    address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !address.contains(|c: char| c.is_whitespace() || "<>\",;:".contains(c))
            && !domain.contains('@')
    })
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Channels> {
        let channels: Channels = crate::from_toml(text)?;
        channels.validate()?;
        Ok(channels)
    }

    #[test]
    fn secrets_are_references_never_values() {
        let channels = parse(
            "[webhook]\nsecret = { env = \"HOOK\" }\ndeliver_url = \"http://127.0.0.1:9/x\"\n",
        )
        .unwrap();
        assert_eq!(
            channels.webhook.unwrap().secret,
            SecretRef::Env("HOOK".into())
        );
        let inline = parse("[webhook]\nsecret = \"s3cret\"\ndeliver_url = \"http://h/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(inline.contains("never written inline"), "{inline}");
        assert!(
            !inline.contains("s3cret"),
            "the error repeats the secret: {inline}"
        );
        let both = parse(
            "[webhook]\nsecret = { env = \"A\", file = \"/b\" }\ndeliver_url = \"http://h/x\"\n",
        )
        .unwrap_err();
        assert!(both.to_string().contains("exactly one"), "{both}");
        let bad_url = parse("[webhook]\nsecret = { file = \"/s\" }\ndeliver_url = \"ftp://h\"\n")
            .unwrap_err();
        assert!(bad_url.to_string().contains("deliver_url"), "{bad_url}");
    }

    #[test]
    fn an_email_channel_needs_an_address_and_a_relay() {
        let channels = parse(
            "[email]\naddress = \"support@shop.example\"\nrelay = { host = \"smtp.shop.example\" }\n",
        )
        .unwrap();
        let email = channels.email.unwrap();
        assert_eq!(email.from(), "support@shop.example");
        assert_eq!(email.domain(), "shop.example");
        assert_eq!(
            (email.relay.port, email.relay.tls),
            (587, SmtpTls::Starttls)
        );
        for (section, complaint) in [
            ("address = \"support\"\nrelay = { host = \"h\" }", "address"),
            ("address = \"a@b@c.d\"\nrelay = { host = \"h\" }", "address"),
            (
                "address = \"a@shop.example\"\nrelay = { host = \"\" }",
                "relay.host",
            ),
            (
                "address = \"a@shop.example\"\nrelay = { host = \"h\", username = \"u\" }",
                "go together",
            ),
            (
                "address = \"a@shop.example\"\nrelay = { host = \"h\", tls = \"maybe\" }",
                "tls",
            ),
        ] {
            let error = parse(&format!("[email]\n{section}\n")).unwrap_err();
            assert!(
                format!("{error:#}").contains(complaint),
                "{section}: {error:#}"
            );
        }
    }

    #[test]
    fn a_secret_is_read_when_needed_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(SecretRef::File(path.clone()).read().unwrap(), "abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(SecretRef::File(path).read().is_err());
        let missing = SecretRef::Env("KEFU_TEST_NO_SUCH_VARIABLE".into())
            .read()
            .unwrap_err();
        assert!(missing.to_string().contains("KEFU_TEST_NO_SUCH_VARIABLE"));
    }
}
