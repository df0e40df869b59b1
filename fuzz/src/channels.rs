//! The channel service's parsers of what arrives from outside: a bridge's webhook (its
//! JSON and signature headers) and WeChat's messages (XML, safe-mode ciphertext). None
//! may panic; what they accept must hold what the protocol promises.
use kefu_channels::webhook;
use kefu_channels::wechat::{SafeMode, XmlFields};

const SECRET: &str = "fuzz-secret";
const NOW: i64 = 1_700_000_000;
// 43 characters, as WeChat generates an EncodingAESKey.
const AES_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";

/// A webhook body, its first line taken as the signature header: only a body signed
/// with the secret verifies, and an accepted message is within its bounds.
pub fn webhook(data: &[u8]) {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[][..], data),
    };
    let header = String::from_utf8_lossy(header);
    let stamp = NOW.to_string();
    if webhook::verify(SECRET, Some(&stamp), Some(&header), body, NOW).is_ok() {
        assert_eq!(header.trim(), webhook::sign(SECRET, NOW, body));
    }
    let signed = webhook::sign(SECRET, NOW, body);
    assert!(webhook::verify(SECRET, Some(&stamp), Some(&signed), body, NOW).is_ok());
    if let Ok(message) = webhook::parse_inbound(body, 4096) {
        assert!(!message.text.trim().is_empty() && message.text.len() <= 4096);
        assert!((1..=128).contains(&message.message_id.chars().count()));
        assert!((1..=128).contains(&message.customer.id.chars().count()));
    }
}

/// WeChat's XML and safe-mode ciphertext: parsing never panics, a field read back from
/// a reply kefu writes is the text it wrote, and what kefu encrypts decrypts to itself.
pub fn wechat(data: &[u8]) {
    let _ = XmlFields::parse(data);
    let mode = SafeMode::new(AES_KEY, "wxfuzz").expect("a valid key");
    let text = String::from_utf8_lossy(data);
    let _ = mode.decrypt(&text);
    let reply = kefu_channels::wechat::text_reply_xml("o1", "gh_1", NOW, &text);
    // XML cannot carry every control character; what it can must come back whole.
    if !text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        let parsed = XmlFields::parse(reply.as_bytes()).expect("kefu's own reply parses");
        assert_eq!(parsed.get("Content"), Some(text.as_ref()));
    }
    assert_eq!(mode.decrypt(&mode.encrypt(&text)).as_deref(), Ok(text.as_ref()));
}

/// What an SMTP client sends: its first line read as a command, the rest as a mail's
/// lines after DATA and then as the mail itself. None may panic; a mail that is read
/// keeps to the gateway's limit and has an id a reply can thread under.
pub fn email(data: &[u8]) {
    use kefu_channels::{email, smtp};
    let (first, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..=at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let _ = smtp::parse_command(first);
    let mut mail = smtp::MailData::new(4096);
    for line in rest.split_inclusive(|&b| b == b'\n') {
        if mail.line(line) {
            break;
        }
    }
    if let Some(taken) = mail.finish() {
        assert!(taken.len() <= 4096);
    }
    if let Ok(read) = email::read(data, "sender@customer.example", 4096) {
        assert!(read.text.len() <= 4096, "{} bytes", read.text.len());
        assert!(!read.message_id.is_empty() && !read.message_id.contains(['<', '>', ' ']));
        assert!(email::valid_address(&read.sender));
        let _ = email::compose(&email::Reply {
            from: "Shop <support@shop.example>",
            thread: &read.thread,
            message_id: "reply@shop.example",
            text: &read.text,
            automatic: true,
        });
    }
    let text = String::from_utf8_lossy(data);
    assert!(email::new_text(&text).len() <= text.len());
}
