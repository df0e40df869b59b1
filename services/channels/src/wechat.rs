//! WeChat Official Accounts (公众号), as its developer documentation specifies the
//! server side: signatures over the token, timestamp and nonce (URL verification and
//! every message), the XML of text messages and passive replies, and safe mode, where a
//! message travels AES-256-CBC encrypted under the EncodingAESKey (IV: the key's first
//! 16 bytes; plaintext: 16 random bytes, the message length as 4 big-endian bytes, the
//! message, the AppID; PKCS#7 padding to 32 bytes) and signed together with its
//! ciphertext. Pure: tested without a server.
use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use quick_xml::events::Event;
use sha1::{Digest, Sha1};

/// WeChat waits 5 s for an answer, then retries the message (three times in all).
pub const PASSIVE_REPLY_WITHIN: std::time::Duration = std::time::Duration::from_millis(4_000);
/// A message signed longer ago than this is a replay.
pub const REPLAY_WINDOW_SECS: i64 = 300;
/// WeChat's messages are small; anything larger is not from WeChat.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const PADDING_BLOCK: usize = 32;

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WechatError {
    #[error("the signature does not match")]
    Signature,
    #[error("the timestamp is missing, malformed or outside the replay window")]
    Stale,
    #[error("the XML is malformed: {0}")]
    Xml(String),
    #[error("the message cannot be decrypted: {0}")]
    Crypto(&'static str),
    #[error("the message is for another account")]
    WrongAccount,
}

/// sha1 of the sorted parts, concatenated: WeChat's signature (with the ciphertext as a
/// fourth part in safe mode).
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// Checks a signature in constant time.
pub fn signature_matches(expected: &str, given: &str) -> bool {
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
            == 0
}

/// The timestamp is WeChat's (Unix seconds) and recent.
pub fn check_timestamp(timestamp: &str, now: i64) -> Result<(), WechatError> {
    let sent: i64 = timestamp.parse().map_err(|_| WechatError::Stale)?;
    if (now - sent).abs() > REPLAY_WINDOW_SECS {
        return Err(WechatError::Stale);
    }
    Ok(())
}

/// The top-level fields of a WeChat XML message (`<xml><Name>value</Name>...</xml>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XmlFields(Vec<(String, String)>);

impl XmlFields {
    pub fn parse(xml: &[u8]) -> Result<Self, WechatError> {
        let mut reader = quick_xml::Reader::from_reader(xml);
        let mut fields = Vec::new();
        let mut depth = 0usize;
        let mut current: Option<(String, String)> = None;
        let mut saw_root = false;
        let mut buffer = Vec::new();
        loop {
            let event = reader
                .read_event_into(&mut buffer)
                .map_err(|error| WechatError::Xml(error.to_string()))?;
            match event {
                Event::Start(start) => {
                    depth += 1;
                    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                    match depth {
                        1 if name == "xml" => saw_root = true,
                        1 => return Err(WechatError::Xml("the root element is not <xml>".into())),
                        2 => current = Some((name, String::new())),
                        _ => {}
                    }
                }
                Event::End(_) => {
                    if depth == 2 {
                        fields.extend(current.take());
                    }
                    depth = depth.saturating_sub(1);
                }
                Event::Empty(empty) if depth == 1 => {
                    let name = String::from_utf8_lossy(empty.name().as_ref()).into_owned();
                    fields.push((name, String::new()));
                }
                Event::Text(text) if depth == 2 => {
                    let text = text
                        .decode()
                        .map_err(|error| WechatError::Xml(error.to_string()))?;
                    if let Some((_, value)) = current.as_mut() {
                        value.push_str(&text);
                    }
                }
                Event::GeneralRef(reference) if depth == 2 => {
                    let resolved = match reference.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => match &*reference as &[u8] {
                            b"amp" => '&',
                            b"lt" => '<',
                            b"gt" => '>',
                            b"quot" => '"',
                            b"apos" => '\'',
                            _ => return Err(WechatError::Xml("unknown entity".into())),
                        },
                    };
                    if let Some((_, value)) = current.as_mut() {
                        value.push(resolved);
                    }
                }
                Event::CData(data) if depth == 2 => {
                    let text = std::str::from_utf8(&data)
                        .map_err(|_| WechatError::Xml("CDATA is not UTF-8".into()))?;
                    if let Some((_, value)) = current.as_mut() {
                        value.push_str(text);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            buffer.clear();
        }
        if !saw_root || depth != 0 {
            return Err(WechatError::Xml(
                "expected one complete <xml> element".into(),
            ));
        }
        Ok(Self(fields))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A CDATA section holding `text` (a `]]>` inside is split across two sections).
fn cdata(text: &str) -> String {
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// A passive text reply to `to_user` from the account `from_account`.
pub fn text_reply_xml(to_user: &str, from_account: &str, created: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{created}</CreateTime><MsgType>{}</MsgType><Content>{}</Content></xml>",
        cdata(to_user),
        cdata(from_account),
        cdata("text"),
        cdata(content)
    )
}

/// Safe mode's key and the account it belongs to.
#[derive(Clone)]
pub struct SafeMode {
    key: [u8; 32],
    app_id: String,
}

impl std::fmt::Debug for SafeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeMode")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl SafeMode {
    /// From the 43-character EncodingAESKey of the account's server configuration.
    pub fn new(encoding_aes_key: &str, app_id: &str) -> anyhow::Result<Self> {
        // The key is 43 random characters: its last one may carry bits past the 32 bytes,
        // which WeChat (and Python's decoder) ignore.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let decoded = lenient
            .decode(format!("{}=", encoding_aes_key.trim()))
            .ok()
            .filter(|key| key.len() == 32)
            .ok_or_else(|| {
                anyhow::anyhow!("the EncodingAESKey must be the 43 characters WeChat generated")
            })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&decoded);
        Ok(Self {
            key,
            app_id: app_id.to_owned(),
        })
    }

    /// The message inside a base64 ciphertext, checked to be for this account.
    pub fn decrypt(&self, encrypted: &str) -> Result<String, WechatError> {
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(encrypted.trim())
            .map_err(|_| WechatError::Crypto("not base64"))?;
        if data.is_empty() || data.len() % 16 != 0 {
            return Err(WechatError::Crypto("not whole AES blocks"));
        }
        let plain = Decryptor::new(&self.key.into(), self.key[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut data)
            .map_err(|_| WechatError::Crypto("AES failed"))?;
        let pad = *plain.last().ok_or(WechatError::Crypto("empty"))? as usize;
        if pad == 0 || pad > PADDING_BLOCK || pad > plain.len() {
            return Err(WechatError::Crypto("bad padding"));
        }
        let plain = &plain[..plain.len() - pad];
        if plain.len() < 20 {
            return Err(WechatError::Crypto("too short"));
        }
        let length = u32::from_be_bytes([plain[16], plain[17], plain[18], plain[19]]) as usize;
        let rest = &plain[20..];
        if length > rest.len() {
            return Err(WechatError::Crypto("bad length"));
        }
        let (message, app_id) = rest.split_at(length);
        if app_id != self.app_id.as_bytes() {
            return Err(WechatError::WrongAccount);
        }
        String::from_utf8(message.to_vec()).map_err(|_| WechatError::Crypto("not UTF-8"))
    }

    /// `message` encrypted for WeChat, base64, behind 16 random bytes.
    pub fn encrypt(&self, message: &str) -> String {
        let mut plain = Vec::with_capacity(message.len() + 64);
        plain.extend(rand::random::<[u8; 16]>());
        plain.extend((message.len() as u32).to_be_bytes());
        plain.extend(message.as_bytes());
        plain.extend(self.app_id.as_bytes());
        let pad = PADDING_BLOCK - plain.len() % PADDING_BLOCK;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let length = plain.len();
        let cipher = Encryptor::new(&self.key.into(), self.key[..16].into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, length)
            .expect("the plaintext is padded to whole blocks");
        base64::engine::general_purpose::STANDARD.encode(cipher)
    }

    /// A passive reply in safe mode: the encrypted reply, signed with the token.
    pub fn wrap_reply(&self, token: &str, reply_xml: &str, timestamp: i64, nonce: &str) -> String {
        let encrypted = self.encrypt(reply_xml);
        let timestamp = timestamp.to_string();
        let signed = signature(&[token, &timestamp, nonce, &encrypted]);
        format!(
            "<xml><Encrypt>{}</Encrypt><MsgSignature>{}</MsgSignature><TimeStamp>{timestamp}</TimeStamp><Nonce>{}</Nonce></xml>",
            cdata(&encrypted),
            cdata(&signed),
            cdata(nonce)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An EncodingAESKey as WeChat's configuration page makes them: 43 base64 characters.
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn signatures_sort_their_parts() {
        // Python: hashlib.sha1("".join(sorted(["token", "1409304348", "xxxxxx"])).encode())
        assert_eq!(
            signature(&["token", "1409304348", "xxxxxx"]),
            signature(&["xxxxxx", "token", "1409304348"])
        );
        assert!(signature_matches(
            &signature(&["a", "b"]),
            &signature(&["b", "a"]).to_uppercase()
        ));
        assert!(!signature_matches(&signature(&["a"]), &signature(&["b"])));
    }

    #[test]
    fn safe_mode_round_trips_and_refuses_other_accounts() {
        let mode = SafeMode::new(KEY, "wx1234").unwrap();
        let sealed = mode.encrypt("<xml><Content><![CDATA[你好]]></Content></xml>");
        assert_eq!(
            mode.decrypt(&sealed).unwrap(),
            "<xml><Content><![CDATA[你好]]></Content></xml>"
        );
        let other = SafeMode::new(KEY, "wx9999").unwrap();
        assert_eq!(other.decrypt(&sealed), Err(WechatError::WrongAccount));
        assert!(mode.decrypt("not base64!").is_err());
        assert!(mode.decrypt("AAAA").is_err());
        assert!(SafeMode::new("short", "wx1234").is_err());
    }

    #[test]
    fn xml_fields_read_cdata_and_text_and_refuse_garbage() {
        let fields = XmlFields::parse(
            b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><CreateTime>1348831860</CreateTime><Content><![CDATA[a]]]]><![CDATA[>b &amp;]]></Content><MsgId>1234567890123456</MsgId><Text>x &lt; y</Text></xml>",
        )
        .unwrap();
        assert_eq!(fields.get("ToUserName"), Some("gh_1"));
        assert_eq!(fields.get("CreateTime"), Some("1348831860"));
        assert_eq!(fields.get("Content"), Some("a]]>b &amp;"));
        assert_eq!(fields.get("MsgId"), Some("1234567890123456"));
        assert_eq!(fields.get("Text"), Some("x < y"));
        for garbage in [
            &b"<xml><a>"[..],
            b"<html></html>",
            b"",
            b"<xml><a></b></xml>",
        ] {
            assert!(XmlFields::parse(garbage).is_err(), "{garbage:?}");
        }
        let reply = text_reply_xml("o1", "gh_1", 1, "x]]>y");
        let parsed = XmlFields::parse(reply.as_bytes()).unwrap();
        assert_eq!(parsed.get("Content"), Some("x]]>y"));
    }

    #[test]
    fn timestamps_outside_the_window_are_replays() {
        assert!(check_timestamp("1000", 1000 + REPLAY_WINDOW_SECS).is_ok());
        assert_eq!(
            check_timestamp("1000", 1001 + REPLAY_WINDOW_SECS),
            Err(WechatError::Stale)
        );
        assert_eq!(check_timestamp("soon", 0), Err(WechatError::Stale));
    }
}
