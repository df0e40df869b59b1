//! The SMTP listener: the part of RFC 5321 a receiving server needs (EHLO/HELO, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, VRFY, HELP, QUIT; SIZE, 8BITMIME,
//! PIPELINING and SMTPUTF8 advertised; STARTTLS, RFC 3207, when it has a certificate). A mail is acknowledged with 250 only once the
//! `Postmaster` has stored it, so a sending server that hears anything else (451 while
//! the store is down, or no answer because kefu died) keeps it and tries again. Bad
//! input is refused with the reply code and enhanced status a mail server expects.
use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Longest command line (RFC 5321 4.5.3.1.4: 512 octets; room for extensions).
const MAX_COMMAND_LINE: usize = 2048;
const MAX_RECIPIENTS: usize = 100;
/// Bad commands a client may send before it is disconnected.
const MAX_ERRORS: u32 = 10;
/// How long the server waits for a command, and for each line of a mail (RFC 5321 4.5.3.2).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DATA_LINE_TIMEOUT: Duration = Duration::from_secs(180);

/// An SMTP reply: a code and its text (an enhanced status code first, RFC 3463).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }

    /// The reply as sent: one line per text line, all but the last with `-`.
    pub fn wire(&self) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut wire = String::new();
        for (index, line) in lines.iter().enumerate() {
            let separator = if index + 1 == lines.len() { ' ' } else { '-' };
            wire.push_str(&format!("{}{separator}{line}\r\n", self.code));
        }
        if lines.is_empty() {
            wire = format!("{}\r\n", self.code);
        }
        wire
    }
}

/// A command of the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// The reverse path (empty for the null sender) and the size the client declares.
    Mail {
        from: String,
        size: Option<u64>,
    },
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
}

/// Reads one command line (without its line ending).
pub fn parse_command(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2 Commands are ASCII or UTF-8"))?
        .trim_end_matches(['\r', '\n']);
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Reply::new(500, "5.5.2 Control characters in the command"));
    }
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let verb = verb.to_ascii_uppercase();
    let needs_domain = |name: &str| {
        if rest.is_empty() {
            Err(Reply::new(501, format!("5.5.4 {name} needs your domain")))
        } else {
            Ok(rest.to_owned())
        }
    };
    match verb.as_str() {
        "EHLO" => needs_domain("EHLO").map(Command::Ehlo),
        "HELO" => needs_domain("HELO").map(Command::Helo),
        "MAIL" => {
            let (path, parameters) = path_after(rest, "FROM:")?;
            let mut size = None;
            for parameter in parameters.split_whitespace() {
                let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
                match name.to_ascii_uppercase().as_str() {
                    "SIZE" => {
                        size =
                            Some(value.parse().map_err(|_| {
                                Reply::new(501, "5.5.4 SIZE takes a number of octets")
                            })?)
                    }
                    "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH" => {}
                    _ => return Err(Reply::new(555, "5.5.4 Unsupported MAIL parameter")),
                }
            }
            Ok(Command::Mail { from: path, size })
        }
        "RCPT" => {
            let (path, _) = path_after(rest, "TO:")?;
            if path.is_empty() {
                return Err(Reply::new(501, "5.1.3 RCPT needs an address"));
            }
            Ok(Command::Rcpt(path))
        }
        "DATA" => Ok(Command::Data),
        "RSET" => Ok(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => Ok(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" if rest.is_empty() => Ok(Command::StartTls),
        "STARTTLS" => Err(Reply::new(501, "5.5.4 STARTTLS takes no parameters")),
        "AUTH" | "BDAT" | "ETRN" | "EXPN" | "TURN" => {
            Err(Reply::new(502, "5.5.1 Not offered here"))
        }
        _ => Err(Reply::new(500, "5.5.2 Command not recognised")),
    }
}

/// The address in `<...>` after `FROM:` or `TO:`, and the parameters after it.
fn path_after<'a>(rest: &'a str, keyword: &str) -> Result<(String, &'a str), Reply> {
    let syntax = || Reply::new(501, format!("5.5.4 Syntax: {keyword}<address>"));
    let head = rest.get(..keyword.len()).ok_or_else(syntax)?;
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(syntax());
    }
    let rest = rest[keyword.len()..].trim_start();
    let (path, parameters) = match rest.strip_prefix('<') {
        Some(inner) => inner.split_once('>').ok_or_else(syntax)?,
        None => rest.split_once(' ').unwrap_or((rest, "")),
    };
    // A source route (<@relay:user@domain>) is ignored, as RFC 5321 allows.
    let address = path.rsplit_once(':').map_or(path, |(_, address)| address);
    if address.len() > 254 || (!address.is_empty() && !crate::email::valid_address(address)) {
        return Err(Reply::new(553, "5.1.3 Not a valid address"));
    }
    Ok((address.to_owned(), parameters.trim()))
}

/// A mail's lines as they arrive after DATA: dot-unstuffed, counted against the limit.
#[derive(Debug)]
pub struct MailData {
    limit: usize,
    bytes: Vec<u8>,
    too_large: bool,
}

impl MailData {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            bytes: Vec::new(),
            too_large: false,
        }
    }

    /// Takes one line (with its line ending); true at the lone `.` that ends the mail.
    pub fn line(&mut self, line: &[u8]) -> bool {
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if content == b"." {
            return true;
        }
        let content = content.strip_prefix(b".").unwrap_or(content);
        if self.too_large || self.bytes.len() + content.len() + 2 > self.limit {
            self.too_large = true;
            self.bytes = Vec::new();
            return false;
        }
        self.bytes.extend_from_slice(content);
        self.bytes.extend_from_slice(b"\r\n");
        false
    }

    /// The mail, or None when it went over the limit.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.too_large).then_some(self.bytes)
    }
}

/// The envelope of a mail and what it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path; empty for the null sender (bounces).
    pub sender: String,
    pub recipients: Vec<String>,
}

/// Who decides which addresses are served and stores what arrives.
pub trait Postmaster: Send + Sync + 'static {
    /// Whether mail for `address` is taken here (a 550 reply otherwise).
    fn accepts(&self, address: &str) -> Result<(), Reply>;
    /// Stores a mail; 250 only once it is safe, 4xx to have the sender try again.
    fn deliver(&self, envelope: Envelope, mail: Vec<u8>) -> impl Future<Output = Reply> + Send;
}

/// The listener's limits, name and certificate.
#[derive(Clone)]
pub struct Limits {
    /// The name in the greeting and EHLO.
    pub hostname: String,
    /// Largest mail, in octets (SIZE).
    pub max_mail_bytes: usize,
    /// Sessions at once; more are told 421 and try later.
    pub max_sessions: usize,
    /// STARTTLS is offered with this certificate; None: plaintext only.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// How a session ended.
enum Ending {
    Closed,
    /// The client asked for TLS and was told to go ahead.
    StartTls,
}

/// Serves SMTP on `listener` until `shutdown`.
pub async fn serve<P: Postmaster>(
    listener: TcpListener,
    postmaster: Arc<P>,
    limits: Limits,
    shutdown: kefu_runtime::Shutdown,
) {
    let sessions = Arc::new(Semaphore::new(limits.max_sessions));
    let limits = Arc::new(limits);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "an SMTP connection was not accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.wait() => return,
        };
        let postmaster = postmaster.clone();
        let limits = limits.clone();
        let permit = sessions.clone().try_acquire_owned();
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            let Ok(_permit) = permit else {
                let _ = send(
                    &mut stream,
                    Reply::new(421, "4.3.2 Too busy; try again later"),
                )
                .await;
                return;
            };
            if let Err(error) = serve_connection(stream, &*postmaster, &limits).await {
                tracing::debug!(%error, "an SMTP session ended early");
            }
        });
    }
}

/// A connection: plaintext, and on STARTTLS the same session again over TLS. What the
/// client sent after STARTTLS before the handshake is dropped with the plaintext buffer
/// (RFC 3207 4.2: nothing from before TLS is trusted after it).
async fn serve_connection<P: Postmaster>(
    mut stream: BufReader<tokio::net::TcpStream>,
    postmaster: &P,
    limits: &Limits,
) -> Result<(), SessionEnd> {
    let Ending::StartTls = session(&mut stream, postmaster, limits, false).await? else {
        return Ok(());
    };
    let acceptor = limits
        .tls
        .as_ref()
        .expect("STARTTLS is only accepted when offered");
    let tls = tokio::time::timeout(COMMAND_TIMEOUT, acceptor.accept(stream.into_inner()))
        .await
        .map_err(|_| SessionEnd::Timeout)??;
    session(&mut BufReader::new(tls), postmaster, limits, true).await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("the client went quiet")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads a line of at most `max` octets: None when the client hung up, Err(()) for a
/// longer line (skipped to its end).
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    wait: Duration,
) -> Result<Option<Result<Vec<u8>, ()>>, SessionEnd> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = tokio::time::timeout(wait, reader.fill_buf())
            .await
            .map_err(|_| SessionEnd::Timeout)??;
        if available.is_empty() {
            // The client hung up, perhaps mid-line: nothing more will come.
            return Ok(None);
        }
        let (taken, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        if line.len() + taken > max {
            too_long = true;
            line.clear();
        } else if !too_long {
            line.extend_from_slice(&available[..taken]);
        }
        reader.consume(taken);
        if done {
            return Ok(Some(if too_long { Err(()) } else { Ok(line) }));
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, reply: Reply) -> Result<(), SessionEnd> {
    writer.write_all(reply.wire().as_bytes()).await?;
    writer.flush().await?;
    Ok(())
}

/// One session on `stream`: from the greeting (none after STARTTLS, where the client
/// starts again with EHLO) until QUIT, the client's hang-up or its STARTTLS.
async fn session<S, P>(
    stream: &mut BufReader<S>,
    postmaster: &P,
    limits: &Limits,
    in_tls: bool,
) -> Result<Ending, SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Postmaster,
{
    if !in_tls {
        send(
            stream,
            Reply::new(220, format!("{} kefu ESMTP ready", limits.hostname)),
        )
        .await?;
    }
    let offer_tls = limits.tls.is_some() && !in_tls;
    let mut greeted = false;
    let mut envelope: Option<Envelope> = None;
    let mut errors = 0;
    loop {
        let line = match read_line(stream, MAX_COMMAND_LINE, COMMAND_TIMEOUT).await {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(()))) => {
                errors += 1;
                send(stream, Reply::new(500, "5.5.6 Command line too long")).await?;
                continue;
            }
            Ok(None) => return Ok(Ending::Closed),
            Err(SessionEnd::Timeout) => {
                let _ = send(stream, Reply::new(421, "4.4.2 Idle too long; closing")).await;
                return Err(SessionEnd::Timeout);
            }
            Err(error) => return Err(error),
        };
        let reply = match parse_command(&line) {
            Err(refusal) => Err(refusal),
            Ok(Command::Ehlo(_)) => {
                greeted = true;
                envelope = None;
                Ok(Reply::new(
                    250,
                    format!(
                        "{}\nSIZE {}\n8BITMIME\nPIPELINING\nSMTPUTF8\nENHANCEDSTATUSCODES{}",
                        limits.hostname,
                        limits.max_mail_bytes,
                        if offer_tls { "\nSTARTTLS" } else { "" }
                    ),
                ))
            }
            Ok(Command::StartTls) if in_tls => {
                Err(Reply::new(503, "5.5.1 TLS is already active"))
            }
            Ok(Command::StartTls) if !offer_tls => Err(Reply::new(502, "5.5.1 Not offered here")),
            Ok(Command::StartTls) => {
                send(stream, Reply::new(220, "2.0.0 Ready to start TLS")).await?;
                return Ok(Ending::StartTls);
            }
            Ok(Command::Helo(_)) => {
                greeted = true;
                envelope = None;
                Ok(Reply::new(250, limits.hostname.clone()))
            }
            Ok(Command::Mail { .. }) if !greeted => {
                Err(Reply::new(503, "5.5.1 Say EHLO first"))
            }
            Ok(Command::Mail { .. }) if envelope.is_some() => {
                Err(Reply::new(503, "5.5.1 A mail is already under way; RSET first"))
            }
            Ok(Command::Mail { size: Some(size), .. })
                if size > limits.max_mail_bytes as u64 =>
            {
                Err(Reply::new(
                    552,
                    format!(
                        "5.3.4 Mail larger than the {} octets taken here",
                        limits.max_mail_bytes
                    ),
                ))
            }
            Ok(Command::Mail { from, .. }) => {
                envelope = Some(Envelope {
                    sender: from,
                    recipients: Vec::new(),
                });
                Ok(Reply::new(250, "2.1.0 Sender OK"))
            }
            Ok(Command::Rcpt(address)) => match envelope.as_mut() {
                None => Err(Reply::new(503, "5.5.1 MAIL first")),
                Some(envelope) if envelope.recipients.len() >= MAX_RECIPIENTS => {
                    Err(Reply::new(452, "4.5.3 Too many recipients"))
                }
                Some(envelope) => postmaster.accepts(&address).map(|()| {
                    envelope.recipients.push(address);
                    Reply::new(250, "2.1.5 Recipient OK")
                }),
            },
            Ok(Command::Data) => match envelope.take() {
                Some(taken) if !taken.recipients.is_empty() => {
                    send(
                        stream,
                        Reply::new(354, "End the mail with <CRLF>.<CRLF>"),
                    )
                    .await?;
                    let mut data = MailData::new(limits.max_mail_bytes);
                    loop {
                        match read_line(
                            stream,
                            limits.max_mail_bytes + 3,
                            DATA_LINE_TIMEOUT,
                        )
                        .await?
                        {
                            Some(Ok(line)) => {
                                if data.line(&line) {
                                    break;
                                }
                            }
                            // A line longer than the whole limit: the mail is too large.
                            Some(Err(())) => {
                                data.line(&vec![b'x'; limits.max_mail_bytes + 1]);
                            }
                            None => return Ok(Ending::Closed),
                        }
                    }
                    match data.finish() {
                        Some(mail) => Ok(postmaster.deliver(taken, mail).await),
                        None => Err(Reply::new(
                            552,
                            format!(
                                "5.3.4 Mail larger than the {} octets taken here",
                                limits.max_mail_bytes
                            ),
                        )),
                    }
                }
                other => {
                    envelope = other;
                    Err(Reply::new(503, "5.5.1 RCPT first"))
                }
            },
            Ok(Command::Rset) => {
                envelope = None;
                Ok(Reply::new(250, "2.0.0 Reset"))
            }
            Ok(Command::Noop) => Ok(Reply::new(250, "2.0.0 OK")),
            Ok(Command::Vrfy) => Ok(Reply::new(
                252,
                "2.5.2 Not verified; send the mail and it will be taken or refused",
            )),
            Ok(Command::Help) => Ok(Reply::new(
                214,
                "2.0.0 kefu takes mail for its tenants' support addresses: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT",
            )),
            Ok(Command::Quit) => {
                send(stream, Reply::new(221, "2.0.0 Bye")).await?;
                return Ok(Ending::Closed);
            }
        };
        match reply {
            Ok(reply) => send(stream, reply).await?,
            Err(refusal) => {
                errors += 1;
                if errors > MAX_ERRORS {
                    send(stream, Reply::new(421, "4.7.0 Too many errors; closing")).await?;
                    return Ok(Ending::Closed);
                }
                send(stream, refusal).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_as_rfc_5321_writes_them() {
        assert_eq!(
            parse_command(b"MAIL FROM:<Ana@Example.com> SIZE=1200 BODY=8BITMIME\r\n"),
            Ok(Command::Mail {
                from: "Ana@Example.com".into(),
                size: Some(1200)
            })
        );
        assert_eq!(
            parse_command(b"mail from: <>\r\n"),
            Ok(Command::Mail {
                from: String::new(),
                size: None
            })
        );
        assert_eq!(
            parse_command(b"RCPT TO:<@relay.example:support@shop.example>\r\n"),
            Ok(Command::Rcpt("support@shop.example".into()))
        );
        assert_eq!(
            parse_command(b"ehlo client.example\r\n"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse_command(b"StartTLS\r\n"), Ok(Command::StartTls));
        for (line, code) in [
            (&b"EHLO\r\n"[..], 501),
            (b"MAIL TO:<a@b.c>\r\n", 501),
            (b"MAIL FROM:<a@b.c> SIZE=big\r\n", 501),
            (b"MAIL FROM:<a@b.c> XFORWARD=1\r\n", 555),
            (b"RCPT TO:<>\r\n", 501),
            (b"RCPT TO:<not an address>\r\n", 553),
            (b"STARTTLS now\r\n", 501),
            (b"AUTH PLAIN\r\n", 502),
            (b"HACK\r\n", 500),
            (b"NOOP\x00\r\n", 500),
            (b"\xff\xfe\r\n", 500),
        ] {
            assert_eq!(
                parse_command(line).map_err(|reply| reply.code),
                Err(code),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn mail_data_is_dot_unstuffed_and_bounded() {
        let mut data = MailData::new(64);
        for line in [
            &b"Subject: x\r\n"[..],
            b"\r\n",
            b"..leading dot\n",
            b".\r\n",
        ] {
            if data.line(line) {
                break;
            }
        }
        assert_eq!(
            data.finish().unwrap(),
            b"Subject: x\r\n\r\n.leading dot\r\n"
        );
        let mut data = MailData::new(16);
        assert!(!data.line(b"0123456789abcdef0123\r\n"));
        assert!(!data.line(b"short\r\n"));
        assert!(data.line(b".\r\n"));
        assert_eq!(data.finish(), None);
    }

    #[test]
    fn multi_line_replies_use_dashes_until_the_last() {
        assert_eq!(
            Reply::new(250, "a\nb\nc").wire(),
            "250-a\r\n250-b\r\n250 c\r\n"
        );
        assert_eq!(Reply::new(221, "2.0.0 Bye").wire(), "221 2.0.0 Bye\r\n");
    }
}
