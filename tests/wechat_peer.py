"""WeChat's side of an Official Account, for tests/channels.rs: the platform that signs,
encrypts and posts a follower's messages to the account's server URL, and the message
API (access token, customer-service messages) the server calls back. The crypto is
wechatpy's, written independently of kefu's.

  wechat_peer.py api --app-id ID --app-secret S --port-file F --log L
      serves /cgi-bin/token and /cgi-bin/message/custom/send on a free port (written to F);
      every accepted customer-service message is appended to L as a JSON line
  wechat_peer.py verify --url U --token T
  wechat_peer.py send --url U --token T --aes-key K --app-id ID --openid O --msg-id N --text X
      [--plain] [--bad-signature] [--stale]
      prints one JSON line: {"status": <HTTP status>, "body": <raw body>, "reply": <text of
      the passive reply, decrypted and its signature checked> or null}
"""
import argparse
import hashlib
import http.server
import json
import os
import random
import string
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree

from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import to_text


def signature(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def nonce():
    return "".join(random.choice(string.digits) for _ in range(10))


def serve_api(args):
    token = "ACCESS-TOKEN-" + nonce()
    lock = threading.Lock()

    class Api(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def answer(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path != "/cgi-bin/token":
                return self.answer({"errcode": 40000, "errmsg": "no such api"})
            if query.get("appid") != args.app_id or query.get("secret") != args.app_secret:
                return self.answer({"errcode": 40013, "errmsg": "invalid appid or secret"})
            self.answer({"access_token": token, "expires_in": 7200})

        def do_POST(self):
            url = urllib.parse.urlparse(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if url.path != "/cgi-bin/message/custom/send":
                return self.answer({"errcode": 40000, "errmsg": "no such api"})
            if query.get("access_token") != token:
                return self.answer({"errcode": 40001, "errmsg": "invalid credential"})
            message = json.loads(body)
            if message.get("msgtype") != "text" or not message.get("touser"):
                return self.answer({"errcode": 40008, "errmsg": "invalid message type"})
            with lock, open(args.log, "a", encoding="utf-8") as log:
                log.write(json.dumps(message, ensure_ascii=False) + "\n")
            self.answer({"errcode": 0, "errmsg": "ok"})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


def verify(args):
    timestamp, once = str(int(time.time())), nonce()
    echo = "echo-" + nonce()
    query = urllib.parse.urlencode(
        {"signature": signature(args.token, timestamp, once), "timestamp": timestamp, "nonce": once, "echostr": echo}
    )
    status, body = call(args.url + "?" + query, None)
    print(json.dumps({"status": status, "echoed": body == echo}))


def call(url, data):
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "text/xml")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        # Nobody answered (the server is down or restarting): status 0, as WeChat would retry.
        return 0, str(getattr(error, "reason", error))


def send(args):
    timestamp = str(int(time.time()) - (3600 if args.stale else 0))
    once = nonce()
    inner = (
        "<xml><ToUserName><![CDATA[gh_kefu]]></ToUserName>"
        f"<FromUserName><![CDATA[{args.openid}]]></FromUserName>"
        f"<CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{args.text}]]></Content><MsgId>{args.msg_id}</MsgId></xml>"
    )
    query = {
        "signature": signature(args.token, timestamp, once),
        "timestamp": timestamp,
        "nonce": once,
        "openid": args.openid,
    }
    crypto = WeChatCrypto(args.token, args.aes_key, args.app_id)
    if args.plain:
        body = inner
    else:
        sealed = parse_message_fields(crypto.encrypt_message(inner, once, timestamp))
        query["encrypt_type"] = "aes"
        query["msg_signature"] = sealed["MsgSignature"]
        body = f"<xml><ToUserName><![CDATA[gh_kefu]]></ToUserName><Encrypt><![CDATA[{sealed['Encrypt']}]]></Encrypt></xml>"
    if args.bad_signature:
        query["signature"] = "0" * 40
    status, text = call(args.url + "?" + urllib.parse.urlencode(query), body.encode())
    reply = None
    if status == 200 and text not in ("", "success"):
        if args.plain:
            reply = parse_message(text).content
        else:
            fields = parse_message_fields(text)
            # wechatpy checks the reply's signature and account while decrypting.
            opened = crypto.decrypt_message(text, fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"])
            message = parse_message(opened)
            assert message.source == "gh_kefu" and message.target == args.openid, opened
            reply = message.content
    print(json.dumps({"status": status, "body": text if reply is None else "", "reply": reply}, ensure_ascii=False))


def parse_message_fields(text):
    return {child.tag: to_text(child.text) for child in ElementTree.fromstring(text)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api")
    api.add_argument("--app-id", required=True)
    api.add_argument("--app-secret", required=True)
    api.add_argument("--port-file", required=True)
    api.add_argument("--log", required=True)
    check = commands.add_parser("verify")
    check.add_argument("--url", required=True)
    check.add_argument("--token", required=True)
    post = commands.add_parser("send")
    for name in ("--url", "--token", "--aes-key", "--app-id", "--openid", "--msg-id", "--text"):
        post.add_argument(name, required=True)
    for flag in ("--plain", "--bad-signature", "--stale"):
        post.add_argument(flag, action="store_true")
    args = parser.parse_args()
    {"api": serve_api, "verify": verify, "send": send}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
