//! Email, both ways, without any I/O: reading a customer's mail (who sent it, the thread
//! it continues, its new text without quoted history or signature, its attachments
//! listed), telling automatic mail apart (auto-replies, bounces and lists are never
//! answered, RFC 3834), and writing a reply that threads under the customer's message.
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use mail_parser::decoders::html::html_to_text;
use mail_parser::{Address, HeaderValue as Parsed, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Message ids kept of a long `References` chain: its root and its most recent ones.
const MAX_REFERENCES: usize = 20;

/// What a reply needs to thread under the customer's message; stored with the message
/// and with each reply queued to it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailThread {
    /// Where replies go: the customer's Reply-To, else From.
    pub reply_to: String,
    pub subject: String,
    /// The customer's message answered (without angle brackets).
    pub message_id: String,
    /// The chain before it, oldest first.
    pub references: Vec<String>,
}

/// A customer's mail, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMail {
    /// The From address, lowercased: who the customer is.
    pub sender: String,
    /// Its Message-ID (one derived from its content when it has none, so that a resent
    /// copy is still recognised).
    pub message_id: String,
    /// The messages it answers (In-Reply-To and References), most recent first: where
    /// the thread it continues is looked for.
    pub answers: Vec<String>,
    /// The text to understand: new text only, its subject first when it starts a thread,
    /// its attachments listed, at most the gateway's limit.
    pub text: String,
    pub thread: MailThread,
    /// Why it must never be answered, when it is automatic.
    pub automatic: Option<&'static str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MailError {
    #[error("the message is not a readable email")]
    Unreadable,
    #[error("the message has no From address")]
    NoSender,
}

/// Reads a mail delivered with `envelope_sender` (empty for the null sender `<>`).
pub fn read(
    raw: &[u8],
    envelope_sender: &str,
    max_text_bytes: usize,
) -> Result<InboundMail, MailError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(MailError::Unreadable)?;
    let sender = first_address(message.from())
        .ok_or(MailError::NoSender)?
        .to_lowercase();
    let reply_to = first_address(message.reply_to())
        .map(str::to_lowercase)
        .unwrap_or_else(|| sender.clone());
    let message_id = match message.message_id() {
        Some(id) if valid_id(id) => id.to_owned(),
        _ => format!(
            "{}@content.kefu.invalid",
            &hex::encode(Sha256::digest(raw))[..32]
        ),
    };
    let mut references = ids(message.references());
    for id in ids(message.in_reply_to()) {
        if !references.contains(&id) {
            references.push(id);
        }
    }
    if references.len() > MAX_REFERENCES {
        references.drain(1..references.len() - (MAX_REFERENCES - 1));
    }
    let subject = message.subject().unwrap_or("").trim().to_owned();
    let body = match message.text_bodies().next().map(|part| &part.body) {
        Some(PartType::Text(text)) => new_text(text),
        Some(PartType::Html(html)) => new_text(&html_to_text(&without_blockquotes(html))),
        _ => String::new(),
    };
    let attachments: Vec<String> = message
        .attachments()
        .map(|part| {
            let kind = part.content_type().map_or_else(
                || "application/octet-stream".to_owned(),
                |ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("octet-stream")),
            );
            format!(
                "[attachment not read: {} ({kind}, {} KB)]",
                part.attachment_name().unwrap_or("unnamed"),
                part.len().div_ceil(1024)
            )
        })
        .collect();
    let starts_thread = references.is_empty();
    let text = understood_text(&subject, &body, starts_thread, &attachments, max_text_bytes);
    let automatic = automatic(&message, envelope_sender, &sender);
    let mut answers = references.clone();
    answers.reverse();
    Ok(InboundMail {
        sender,
        thread: MailThread {
            reply_to,
            subject,
            message_id: message_id.clone(),
            references,
        },
        message_id,
        answers,
        text,
        automatic,
    })
}

fn first_address<'a>(address: Option<&'a Address<'_>>) -> Option<&'a str> {
    address?
        .first()?
        .address()
        .map(str::trim)
        .filter(|address| valid_address(address))
}

/// A message id worth keeping: printable, without brackets or spaces, of sane length.
fn valid_id(id: &str) -> bool {
    (3..=250).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '<' && c != '>')
}

/// An address replies may go to: local@domain, printable, of sane length.
pub fn valid_address(address: &str) -> bool {
    address.len() <= 254
        && address
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"\\".contains(c))
}

fn ids(value: &Parsed<'_>) -> Vec<String> {
    value
        .as_text_list()
        .unwrap_or_default()
        .iter()
        .map(|id| id.trim().to_owned())
        .filter(|id| valid_id(id))
        .collect()
}

/// Why a mail is automatic (and never answered), after RFC 3834 and common practice.
fn automatic(
    message: &mail_parser::Message<'_>,
    envelope_sender: &str,
    sender: &str,
) -> Option<&'static str> {
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|value| value.trim().to_ascii_lowercase())
    };
    if envelope_sender.is_empty() {
        return Some("a bounce or notification (null sender)");
    }
    if header("Auto-Submitted").is_some_and(|value| !value.starts_with("no")) {
        return Some("Auto-Submitted");
    }
    if header("Precedence")
        .is_some_and(|value| ["bulk", "junk", "list", "auto_reply"].contains(&value.as_str()))
    {
        return Some("Precedence");
    }
    if header("List-Id").is_some() || header("List-Unsubscribe").is_some() {
        return Some("a mailing list");
    }
    if header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || header("X-Auto-Response-Suppress")
            .is_some_and(|value| value.contains("all") || value.contains("autoreply"))
    {
        return Some("an auto-reply");
    }
    if message.is_content_type("multipart", "report") {
        return Some("a delivery or read report");
    }
    let local = sender.split('@').next().unwrap_or("");
    if local.eq_ignore_ascii_case("mailer-daemon") || local.eq_ignore_ascii_case("postmaster") {
        return Some("a mail system's notice");
    }
    None
}

/// The customer's new words: quoted history (`>` lines, "On … wrote:", "-----Original
/// Message-----", a client's reply header) and the signature (`-- `, "Sent from my
/// iPhone") cut off.
pub fn new_text(body: &str) -> String {
    let lines: Vec<&str> = body.lines().map(|line| line.trim_end()).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if ends_new_text(trimmed, lines.get(index + 1..).unwrap_or_default()) {
            // "On Mon, 1 Dec 2026, Ana <a@b>" may wrap before "wrote:".
            if trimmed.ends_with("wrote:")
                && !trimmed.starts_with("On ")
                && kept
                    .last()
                    .is_some_and(|last| last.trim().starts_with("On "))
            {
                kept.pop();
            }
            break;
        }
        if trimmed.starts_with('>') {
            continue;
        }
        kept.push(line);
    }
    let mut text = String::new();
    let mut blank_run = 0;
    for line in kept {
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        text.push_str(line);
        text.push('\n');
    }
    text.trim().to_owned()
}

/// HTML without its `<blockquote>` elements: where mail clients put the quoted history
/// (after an "On … wrote:" line that the text then ends at).
fn without_blockquotes(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut kept = String::with_capacity(html.len());
    let (mut depth, mut at) = (0usize, 0);
    while let Some(offset) = lower[at..].find('<') {
        let tag = at + offset;
        let rest = &lower[tag..];
        let named = |name: &str| {
            rest.strip_prefix(name)
                .is_some_and(|after| after.starts_with([' ', '>', '\t', '\n', '\r', '/']))
        };
        let (opens, closes) = (named("<blockquote"), named("</blockquote"));
        if depth == 0 {
            kept.push_str(&html[at..tag]);
        }
        let end = rest.find('>').map_or(html.len(), |close| tag + close + 1);
        if opens {
            depth += 1;
        } else if closes {
            depth = depth.saturating_sub(1);
        } else if depth == 0 {
            kept.push_str(&html[tag..end]);
        }
        at = end;
    }
    if depth == 0 {
        kept.push_str(&html[at..]);
    }
    kept
}

fn ends_new_text(line: &str, rest: &[&str]) -> bool {
    const MARKERS: [&str; 5] = [
        "-----Original Message-----",
        "----- Original Message -----",
        "-------- Original message --------",
        "原始邮件",
        "________________________________",
    ];
    // `line` is trimmed: the signature delimiter "-- " is left as "--".
    if line == "--" || MARKERS.iter().any(|marker| line.contains(marker)) {
        return true;
    }
    const SIGNED_BY_DEVICE: [&str; 5] = [
        "Sent from my ",
        "Get Outlook for ",
        "发自我的",
        "来自我的",
        "Sent from Mail for ",
    ];
    if SIGNED_BY_DEVICE.iter().any(|start| line.starts_with(start)) && line.chars().count() < 60 {
        return true;
    }
    if (line.ends_with("wrote:") || line.ends_with("写道：") || line.ends_with("写道:"))
        && line.chars().count() < 200
    {
        return true;
    }
    // A client's reply header: "From: …" then "Sent:"/"Date:" within a few lines.
    let starts = |line: &str, names: &[&str]| names.iter().any(|name| line.starts_with(name));
    starts(line, &["From:", "发件人:", "发件人："])
        && rest.iter().take(3).any(|next| {
            starts(
                next.trim(),
                &[
                    "Sent:",
                    "Date:",
                    "发送时间:",
                    "发送时间：",
                    "时间:",
                    "日期:",
                ],
            )
        })
}

fn understood_text(
    subject: &str,
    body: &str,
    starts_thread: bool,
    attachments: &[String],
    max_bytes: usize,
) -> String {
    let subject = strip_reply_prefixes(subject);
    let mut text = if body.is_empty() {
        subject.to_owned()
    } else if starts_thread && !subject.is_empty() && !body.starts_with(subject) {
        format!("{subject}\n\n{body}")
    } else {
        body.to_owned()
    };
    let listed = attachments.join("\n");
    let room = max_bytes.saturating_sub(if listed.is_empty() {
        0
    } else {
        listed.len() + 2
    });
    truncate(&mut text, room);
    if !listed.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&listed);
        truncate(&mut text, max_bytes);
    }
    text
}

/// Cuts `text` to at most `max` bytes at a character boundary, marking the cut.
fn truncate(text: &mut String, max: usize) {
    const MARK: &str = " …";
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if max >= MARK.len() {
        text.push_str(MARK);
    }
}

fn strip_reply_prefixes(subject: &str) -> &str {
    let mut subject = subject.trim();
    loop {
        let lower = subject.to_lowercase();
        let cut = [
            "re:",
            "fw:",
            "fwd:",
            "aw:",
            "回复:",
            "回复：",
            "答复:",
            "答复：",
            "转发:",
        ]
        .iter()
        .find(|prefix| lower.starts_with(*prefix))
        .map(|prefix| {
            // Same length in the lowercased text: the prefixes are ASCII or CJK.
            prefix.len()
        });
        match cut {
            Some(len) if subject.is_char_boundary(len) => subject = subject[len..].trim_start(),
            _ => return subject,
        }
    }
}

/// A reply to send: who it is from, the thread it answers, its own id.
pub struct Reply<'a> {
    pub from: &'a str,
    pub thread: &'a MailThread,
    /// Our Message-ID (without angle brackets), the same on every attempt.
    pub message_id: &'a str,
    pub text: &'a str,
    /// Written by the bot: marked `Auto-Submitted: auto-replied` so that the customer's
    /// own auto-responder does not answer it (RFC 3834); an agent's reply is not.
    pub automatic: bool,
}

/// The reply as a mail: To the customer, `Re:` the subject, In-Reply-To and References
/// threading it, a text and an HTML part.
pub fn compose(reply: &Reply<'_>) -> Result<lettre::Message, String> {
    let from: Mailbox = reply
        .from
        .parse()
        .map_err(|_| "the tenant's from address is not a valid mailbox".to_owned())?;
    let to: Mailbox = reply
        .thread
        .reply_to
        .parse()
        .map_err(|_| "the customer's address is not a valid mailbox".to_owned())?;
    let subject = match strip_reply_prefixes(&reply.thread.subject) {
        "" => "Re: your message".to_owned(),
        subject => format!("Re: {subject}"),
    };
    let mut chain = reply.thread.references.clone();
    chain.push(reply.thread.message_id.clone());
    if chain.len() > MAX_REFERENCES {
        chain.drain(1..chain.len() - (MAX_REFERENCES - 1));
    }
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<{}>", reply.message_id)))
        .in_reply_to(format!("<{}>", reply.thread.message_id))
        .references(
            chain
                .iter()
                .map(|id| format!("<{id}>"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    if reply.automatic {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".into(),
        ));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            reply.text.to_owned(),
            html(reply.text),
        ))
        .map_err(|error| format!("the reply could not be written: {error}"))
}

/// The text as HTML: escaped, paragraphs and line breaks kept.
fn html(text: &str) -> String {
    let escape = |line: &str| {
        line.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .filter(|paragraph| !paragraph.trim().is_empty())
        .map(|paragraph| {
            let lines: Vec<String> = paragraph.lines().map(escape).collect();
            format!("<p>{}</p>", lines.join("<br>\n"))
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n{}\n</body></html>\n",
        paragraphs.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(headers: &str, body: &str) -> Vec<u8> {
        format!("{headers}\r\n\r\n{body}")
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes()
    }

    #[test]
    fn a_first_mail_starts_a_thread_with_its_subject() {
        let raw = mail(
            "From: Ana Li <Ana@Example.COM>\nTo: support@shop.example\nSubject: Refund for order 1234\nMessage-ID: <abc@example.com>",
            "Hello,\n\nI returned the camera two weeks ago and have no refund yet.\n\n-- \nAna Li\nExample Ltd",
        );
        let mail = read(&raw, "ana@example.com", 4096).unwrap();
        assert_eq!(mail.sender, "ana@example.com");
        assert_eq!(mail.message_id, "abc@example.com");
        assert!(mail.answers.is_empty());
        assert_eq!(
            mail.text,
            "Refund for order 1234\n\nHello,\n\nI returned the camera two weeks ago and have no refund yet."
        );
        assert_eq!(mail.automatic, None);
        assert_eq!(mail.thread.reply_to, "ana@example.com");
    }

    #[test]
    fn a_reply_is_read_without_its_quoted_history() {
        let raw = mail(
            "From: ana@example.com\nTo: support@shop.example\nSubject: Re: Refund for order 1234\nMessage-ID: <def@example.com>\nIn-Reply-To: <kefu-1@shop.example>\nReferences: <abc@example.com> <kefu-1@shop.example>",
            "Still nothing, please check again.\n\nOn Mon, 7 Dec 2026 at 10:00, Shop Support <support@shop.example>\nwrote:\n> We are looking into it.\n> Shop",
        );
        let mail = read(&raw, "ana@example.com", 4096).unwrap();
        assert_eq!(mail.text, "Still nothing, please check again.");
        assert_eq!(mail.answers, ["kefu-1@shop.example", "abc@example.com"]);
        assert_eq!(
            mail.thread.references,
            ["abc@example.com", "kefu-1@shop.example"]
        );
    }

    #[test]
    fn quoted_history_and_signatures_of_common_clients_are_cut() {
        for (body, expected) in [
            (
                "Thanks!\n\n-----Original Message-----\nFrom: x\nSent: y\n\nold",
                "Thanks!",
            ),
            (
                "好的，谢谢\n\n------------------ 原始邮件 ------------------\n发件人: x",
                "好的，谢谢",
            ),
            (
                "收到\n\n在 2026年12月7日 10:00，客服 <s@shop.example> 写道：\n> 旧内容",
                "收到",
            ),
            (
                "Fine\nFrom: Support <s@shop.example>\nSent: Monday\nTo: me\n\nold",
                "Fine",
            ),
            ("Broken again\n\nSent from my iPhone", "Broken again"),
            ("坏了\n\n发自我的iPhone", "坏了"),
            ("A -- B stays\nkept", "A -- B stays\nkept"),
            ("inline\n> quoted\nanswer", "inline\nanswer"),
        ] {
            assert_eq!(new_text(body), expected, "{body:?}");
        }
    }

    #[test]
    fn gb18030_html_only_mail_is_read_as_text() {
        let (html, _, _) = encoding_rs::GB18030
            .encode("<html><body><p>我的订单还没到，已经十天了。</p></body></html>");
        let mut raw = mail(
            "From: =?GB18030?B?1cXI/Q==?= <zhang@example.cn>\nTo: support@shop.example\nSubject: =?GB18030?B?tqm1pc7KzOI=?=\nMessage-ID: <gb@example.cn>\nContent-Type: text/html; charset=GB18030\nContent-Transfer-Encoding: 8bit",
            "",
        );
        raw.extend_from_slice(&html);
        let mail = read(&raw, "zhang@example.cn", 4096).unwrap();
        assert_eq!(mail.thread.subject, "订单问题");
        assert!(
            mail.text.contains("我的订单还没到，已经十天了。"),
            "{}",
            mail.text
        );
        assert!(mail.text.starts_with("订单问题"), "{}", mail.text);
    }

    #[test]
    fn quoted_html_is_dropped_before_it_becomes_text() {
        assert_eq!(
            without_blockquotes("<p>Yes</p><div>On Mon, Shop wrote:</div><BLOCKQUOTE type=cite>old<blockquote>older</blockquote>old</blockquote><p>Thanks</p>"),
            "<p>Yes</p><div>On Mon, Shop wrote:</div><p>Thanks</p>"
        );
        assert_eq!(
            without_blockquotes("<blockquoted>x</blockquoted> a < b"),
            "<blockquoted>x</blockquoted> a < b"
        );
        assert_eq!(without_blockquotes("<blockquote>unclosed"), "");
    }

    #[test]
    fn attachments_are_listed_not_read() {
        let raw = mail(
            "From: ana@example.com\nSubject: Broken screen\nMessage-ID: <att@example.com>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"",
            "--b1\nContent-Type: text/plain; charset=utf-8\n\nThe screen arrived cracked.\n--b1\nContent-Type: image/jpeg; name=\"photo.jpg\"\nContent-Disposition: attachment; filename=\"photo.jpg\"\nContent-Transfer-Encoding: base64\n\n/9j/4AAQSkZJRgABAQ==\n--b1--\n",
        );
        let mail = read(&raw, "ana@example.com", 4096).unwrap();
        assert_eq!(
            mail.text,
            "Broken screen\n\nThe screen arrived cracked.\n\n[attachment not read: photo.jpg (image/jpeg, 1 KB)]"
        );
    }

    #[test]
    fn automatic_mail_is_recognised() {
        let plain = "From: a@example.com\nSubject: x\nMessage-ID: <m@example.com>";
        for (extra, sender, why) in [
            ("", "", "null sender"),
            (
                "\nAuto-Submitted: auto-replied",
                "a@example.com",
                "Auto-Submitted",
            ),
            ("\nPrecedence: bulk", "a@example.com", "Precedence"),
            (
                "\nList-Id: <news.example.com>",
                "a@example.com",
                "mailing list",
            ),
            ("\nX-Autoreply: yes", "a@example.com", "auto-reply"),
        ] {
            let raw = mail(&format!("{plain}{extra}"), "Out of office");
            let found = read(&raw, sender, 4096).unwrap().automatic;
            assert!(
                found.is_some_and(|found| found.contains(why)),
                "{extra:?}: {found:?}"
            );
        }
        let human = mail(&format!("{plain}\nAuto-Submitted: no"), "Hi");
        assert_eq!(read(&human, "a@example.com", 4096).unwrap().automatic, None);
        let bounce = mail(
            "From: MAILER-DAEMON@mx.example.com\nSubject: Undelivered\nMessage-ID: <b@mx>",
            "gone",
        );
        assert!(read(&bounce, "x@example.com", 4096)
            .unwrap()
            .automatic
            .is_some());
    }

    #[test]
    fn bad_mail_is_refused_and_long_mail_is_cut_to_the_limit() {
        assert_eq!(
            read(&mail("Subject: no sender", "hi"), "a@b.c", 4096).unwrap_err(),
            MailError::NoSender
        );
        let long = mail(
            "From: a@example.com\nIn-Reply-To: <x@y>",
            &"长文本".repeat(2000),
        );
        let mail = read(&long, "a@example.com", 100).unwrap();
        assert!(
            mail.text.len() <= 100 && mail.text.ends_with('…'),
            "{}",
            mail.text
        );
        assert!(mail.message_id.ends_with("@content.kefu.invalid"));
        assert_eq!(
            read(&long, "a@example.com", 100).unwrap().message_id,
            mail.message_id
        );
    }

    #[test]
    fn a_reply_threads_under_the_customer_message() {
        let thread = MailThread {
            reply_to: "ana@example.com".into(),
            subject: "Re: Refund <1234>".into(),
            message_id: "def@example.com".into(),
            references: vec!["abc@example.com".into(), "kefu-1@shop.example".into()],
        };
        let message = compose(&Reply {
            from: "Shop Support <support@shop.example>",
            thread: &thread,
            message_id: "kefu-2@shop.example",
            text: "Your refund left today.\n\nShop <Support>",
            automatic: true,
        })
        .unwrap();
        let raw = message.formatted();
        let parsed = MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("Re: Refund <1234>"));
        assert_eq!(parsed.message_id(), Some("kefu-2@shop.example"));
        assert_eq!(ids(parsed.in_reply_to()), ["def@example.com"]);
        assert_eq!(
            ids(parsed.references()),
            ["abc@example.com", "kefu-1@shop.example", "def@example.com"]
        );
        assert_eq!(
            parsed.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        // Lines end in CRLF on the wire.
        assert_eq!(
            parsed.body_text(0).unwrap().trim().replace("\r\n", "\n"),
            "Your refund left today.\n\nShop <Support>"
        );
        assert!(parsed
            .body_html(0)
            .unwrap()
            .contains("Shop &lt;Support&gt;"));
        assert_eq!(first_address(parsed.to()), Some("ana@example.com"));
    }
}
