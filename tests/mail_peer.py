"""The mail side of kefu's email channel, for tests/channels.rs: a customer's mail client
(Python's smtplib and email package, written independently of kefu's) sending to kefu's
SMTP listener, and the tenant's outbound relay (aiosmtpd) taking kefu's replies.

  mail_peer.py relay --port-file F --log L [--defer-first N]
      an SMTP server on a free port (written to F); every mail it takes is appended to L
      as a JSON line (envelope, threading headers, Auto-Submitted, text and HTML parts);
      the first N mails are answered 451 (the sender must try again)
  mail_peer.py send --port P --from A --to B [--to C ...] --subject S [--message-id ID]
      [--in-reply-to ID] [--references "ID ID"] [--text T] [--html H] [--charset C]
      [--attach NAME] [--header "Name: value"] [--null-sender] [--no-from] [--size N]
      [--starttls CA_FILE]
      prints one JSON line: {"stage": where it ended, "code": the SMTP reply code there,
      "reply": its text, "tls": the TLS version after STARTTLS (the server's certificate
      checked against CA_FILE) or null}; stage "done" with 250 when the mail was taken
  mail_peer.py burst --port P --to B --count N --prefix X --text T
      sends N mails (Message-ID <X-n@customer.example>), each again with the same
      Message-ID until it is taken, as a sending mail server does; prints {"attempts": n}
"""
import argparse
import email
import email.policy
import json
import os
import smtplib
import socket
import ssl
import sys
import threading
import time
from email.message import EmailMessage

from aiosmtpd.controller import Controller


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_mail(raw):
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return {
        "from": str(message.get("From", "")),
        "to": str(message.get("To", "")),
        "subject": str(message.get("Subject", "")),
        "message_id": str(message.get("Message-ID", "")).strip(),
        "in_reply_to": str(message.get("In-Reply-To", "")).strip(),
        "references": str(message.get("References", "")).split(),
        "auto_submitted": str(message.get("Auto-Submitted", "")),
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
    }


class Relay:
    def __init__(self, log, defer_first):
        self.log = log
        self.deferred = defer_first
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            if self.deferred > 0:
                self.deferred -= 1
                return "451 4.3.0 Try again later"
            taken = read_mail(envelope.content)
            taken["mail_from"] = envelope.mail_from
            taken["rcpt_to"] = envelope.rcpt_tos
            with open(self.log, "a", encoding="utf-8") as log:
                log.write(json.dumps(taken, ensure_ascii=False) + "\n")
        return "250 2.0.0 Taken"


def relay(args):
    port = free_port()
    controller = Controller(Relay(args.log, args.defer_first), hostname="127.0.0.1", port=port)
    controller.start()
    with open(args.port_file + ".tmp", "w") as out:
        out.write(str(port))
    os.replace(args.port_file + ".tmp", args.port_file)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


def compose(args):
    message = EmailMessage()
    if not args.no_from:
        message["From"] = args.sender
    message["To"] = ", ".join(args.to)
    message["Subject"] = args.subject
    if args.message_id:
        message["Message-ID"] = args.message_id
    if args.in_reply_to:
        message["In-Reply-To"] = args.in_reply_to
    if args.references:
        message["References"] = args.references
    for header in args.header:
        name, value = header.split(":", 1)
        message[name.strip()] = value.strip()
    if args.text is not None:
        message.set_content(args.text, charset=args.charset)
    if args.html is not None:
        if args.text is None:
            message.set_content(args.html, subtype="html", charset=args.charset)
        else:
            message.add_alternative(args.html, subtype="html", charset=args.charset)
    for name in args.attach:
        message.add_attachment(b"%PDF-1.4 not read by kefu\n" * 40, maintype="application",
                               subtype="pdf", filename=name)
    return message


def send(args):
    message = compose(args)
    envelope_sender = "" if args.null_sender else args.sender
    stage = "connect"
    result = {"tls": None}
    try:
        with smtplib.SMTP("127.0.0.1", args.port, timeout=10) as client:
            stage = "ehlo"
            client.ehlo("customer.example")
            if args.starttls:
                stage = "starttls"
                client.starttls(context=ssl.create_default_context(cafile=args.starttls))
                client.ehlo("customer.example")
                result["tls"] = client.sock.version()
                result["starttls_offered_again"] = client.has_extn("starttls")
            stage = "mail"
            options = [f"SIZE={args.size}"] if args.size else []
            code, reply = client.mail(envelope_sender, options)
            if code != 250:
                return {**result, "stage": stage, "code": code, "reply": reply.decode()}
            stage = "rcpt"
            for recipient in args.to:
                code, reply = client.rcpt(recipient)
                if code != 250:
                    return {**result, "stage": stage, "code": code, "reply": reply.decode()}
            stage = "data"
            code, reply = client.data(message.as_bytes(policy=email.policy.SMTP))
            if code != 250:
                return {**result, "stage": stage, "code": code, "reply": reply.decode()}
            return {**result, "stage": "done", "code": code, "reply": reply.decode()}
    except smtplib.SMTPResponseException as error:
        return {**result, "stage": stage, "code": error.smtp_code, "reply": error.smtp_error.decode()}
    except (OSError, smtplib.SMTPException) as error:
        return {**result, "stage": stage, "code": 0, "reply": str(error)}


def burst(args):
    attempts = 0
    for n in range(args.count):
        send_args = argparse.Namespace(
            sender=f"{args.prefix}-{n}@customer.example", to=[args.to], subject=f"Question {n}",
            message_id=f"<{args.prefix}-{n}@customer.example>", in_reply_to=None,
            references=None, header=[], text=args.text, html=None, charset="utf-8",
            attach=[], null_sender=False, no_from=False, size=None, starttls=None, port=args.port)
        while True:
            attempts += 1
            result = send(send_args)
            if result["stage"] == "done":
                break
            if 500 <= result["code"] < 600:
                sys.exit(f"kefu refused a good mail: {result}")
            time.sleep(0.3)
        time.sleep(0.15)
    return {"attempts": attempts}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("relay")
    serve.add_argument("--port-file", required=True)
    serve.add_argument("--log", required=True)
    serve.add_argument("--defer-first", type=int, default=0)
    one = commands.add_parser("send")
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--from", dest="sender", required=True)
    one.add_argument("--to", action="append", required=True)
    one.add_argument("--subject", default="")
    one.add_argument("--message-id")
    one.add_argument("--in-reply-to")
    one.add_argument("--references")
    one.add_argument("--text")
    one.add_argument("--html")
    one.add_argument("--charset", default="utf-8")
    one.add_argument("--attach", action="append", default=[])
    one.add_argument("--header", action="append", default=[])
    one.add_argument("--null-sender", action="store_true")
    one.add_argument("--no-from", action="store_true")
    one.add_argument("--size", type=int)
    one.add_argument("--starttls", metavar="CA_FILE")
    many = commands.add_parser("burst")
    many.add_argument("--port", type=int, required=True)
    many.add_argument("--to", required=True)
    many.add_argument("--count", type=int, required=True)
    many.add_argument("--prefix", required=True)
    many.add_argument("--text", required=True)
    args = parser.parse_args()
    if args.command == "relay":
        relay(args)
    elif args.command == "send":
        print(json.dumps(send(args), ensure_ascii=False))
    else:
        print(json.dumps(burst(args)))


if __name__ == "__main__":
    main()
