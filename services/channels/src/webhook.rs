//! Signed webhooks, the generic bridge (Slack, Telegram, WhatsApp, WeCom, SMS, a phone
//! system): the rules of the protocol, readable and tested without a server. Both ways a
//! request carries `X-Kefu-Timestamp` (Unix seconds) and `X-Kefu-Signature: v1=<hex>`,
//! the HMAC-SHA256 of `<timestamp>.<body>` under the tenant's secret. The payloads are
//! described by `docs/channels/webhook-inbound.schema.json` and
//! `docs/channels/webhook-outbound.schema.json`.
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-kefu-timestamp";
pub const SIGNATURE_HEADER: &str = "x-kefu-signature";
/// A request signed longer ago (or further ahead) than this is stale: a replay.
pub const REPLAY_WINDOW_SECS: i64 = 300;
const SIGNATURE_VERSION: &str = "v1=";
/// Ids and addresses are bounded like every id kefu takes.
const MAX_ID_CHARS: usize = 128;

/// Why a signed request is refused (401), in words a bridge's developer can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Kefu-Timestamp or X-Kefu-Signature header")]
    Missing,
    #[error("X-Kefu-Timestamp must be Unix seconds")]
    BadTimestamp,
    #[error("the request is signed more than {REPLAY_WINDOW_SECS} s from now: sign it when sending (check the clock)")]
    Stale,
    #[error("X-Kefu-Signature does not match: expected v1=hex(HMAC-SHA256(secret, \"<timestamp>.<body>\"))")]
    Mismatch,
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Kefu-Signature` value of `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, &timestamp.to_string(), body).finalize();
    format!("{SIGNATURE_VERSION}{}", hex::encode(digest.into_bytes()))
}

/// Checks a request's signature headers against its body at `now` (Unix seconds).
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now - sent).abs() > REPLAY_WINDOW_SECS {
        return Err(SignatureError::Stale);
    }
    let given = signature
        .trim()
        .strip_prefix(SIGNATURE_VERSION)
        .and_then(|hex_digest| hex::decode(hex_digest).ok())
        .ok_or(SignatureError::Mismatch)?;
    // Constant time: the comparison tells nothing about the expected digest.
    mac(secret, timestamp.trim(), body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// A customer's message from the bridge.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InboundMessage {
    /// The bridge's id of the message: a resent message with the same id is not taken twice.
    pub message_id: String,
    pub customer: Customer,
    pub text: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// The tenant's id of the customer.
    pub id: String,
    /// An email address the bridge has verified is the customer's (optional).
    #[serde(default)]
    pub verified_email: Option<String>,
}

/// Reads and checks an inbound body; the error says what is wrong (400).
pub fn parse_inbound(body: &[u8], max_text_bytes: usize) -> Result<InboundMessage, String> {
    let message: InboundMessage = serde_json::from_slice(body)
        .map_err(|error| format!("the body is not an inbound message: {error}"))?;
    check_id(&message.message_id, "message_id")?;
    check_id(&message.customer.id, "customer.id")?;
    if let Some(email) = &message.customer.verified_email {
        check_id(email, "customer.verified_email")?;
        if !looks_like_email(email) {
            return Err("customer.verified_email must be an email address".into());
        }
    }
    if message.text.trim().is_empty() {
        return Err("text must not be empty".into());
    }
    if message.text.len() > max_text_bytes {
        return Err(format!("text is longer than {max_text_bytes} bytes"));
    }
    Ok(message)
}

fn check_id(value: &str, field: &str) -> Result<(), String> {
    if value.trim().is_empty()
        || value.chars().count() > MAX_ID_CHARS
        || value.chars().any(char::is_control)
    {
        return Err(format!(
            "{field} must be 1-{MAX_ID_CHARS} printable characters"
        ));
    }
    Ok(())
}

fn looks_like_email(value: &str) -> bool {
    match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// A reply POSTed to the tenant's `deliver_url`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboundReply {
    /// Always "reply".
    pub event: String,
    /// kefu's id of this delivery: the same on every retry of it.
    pub delivery_id: String,
    pub tenant_id: String,
    /// The customer as the bridge named them (`customer.id` of their messages).
    pub customer_id: String,
    pub session_id: String,
    /// "bot" or "agent".
    pub role: String,
    /// The agent who wrote an agent's reply; empty for the bot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_id: String,
    pub text: String,
    /// The bridge's message_id this answers; empty for an agent's reply.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub in_reply_to: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_signed_body_verifies_and_any_change_does_not() {
        let body = br#"{"message_id":"m1","customer":{"id":"c1"},"text":"hi"}"#;
        let signature = sign("s3cret", NOW, body);
        let stamp = NOW.to_string();
        assert_eq!(
            verify("s3cret", Some(&stamp), Some(&signature), body, NOW + 10),
            Ok(())
        );
        let check = |secret, stamp: &str, signature: &str, body: &[u8], now| {
            verify(secret, Some(stamp), Some(signature), body, now)
        };
        assert_eq!(
            check("other", &stamp, &signature, body, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check("s3cret", &stamp, &signature, b"{}", NOW),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is signed: moving it to dodge the window breaks the signature.
        let moved = (NOW + 1).to_string();
        assert_eq!(
            check("s3cret", &moved, &signature, body, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(
                "s3cret",
                &stamp,
                &signature,
                body,
                NOW + REPLAY_WINDOW_SECS + 1
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check("s3cret", "yesterday", &signature, body, NOW),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            check("s3cret", &stamp, &signature[3..], body, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", None, Some(&signature), body, NOW),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_signature_is_the_documented_hmac() {
        // Python's hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            sign("s3cret", NOW, b"{}"),
            "v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }

    #[test]
    fn inbound_bodies_are_checked_field_by_field() {
        let ok = parse_inbound(
            br#"{"message_id":"m1","customer":{"id":"c1","verified_email":"a@b.cn"},"text":"hi"}"#,
            4096,
        )
        .unwrap();
        assert_eq!(ok.customer.verified_email.as_deref(), Some("a@b.cn"));
        for (body, expected) in [
            (
                &br#"{"message_id":"m1","customer":{"id":"c1"},"text":"  "}"#[..],
                "text must not be empty",
            ),
            (
                br#"{"message_id":"","customer":{"id":"c1"},"text":"hi"}"#,
                "message_id must be",
            ),
            (
                br#"{"message_id":"m","customer":{"id":"c1","verified_email":"nope"},"text":"hi"}"#,
                "email address",
            ),
            (
                br#"{"message_id":"m","customer":{"id":"c1"},"text":"hi","extra":1}"#,
                "unknown field",
            ),
            (br#"not json"#, "not an inbound message"),
            (
                br#"{"message_id":"m","customer":{"id":"c1"},"text":"0123456789"}"#,
                "longer than 8 bytes",
            ),
        ] {
            let error = parse_inbound(body, 8).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
