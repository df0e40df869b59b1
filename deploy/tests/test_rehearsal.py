"""Deployment rehearsal: the seven release binaries (target/release/kefu-<service>), each
started as its own process with exactly the environment its container gets from the
chart (default values, values-production.yaml with mutual TLS, public TLS on the gateway
only, which goes without the channel service) or from the compose file: the image's ENV,
then the ConfigMap / compose `environment`, then `env`. Every service deployed must reach
SERVING, every probe must pass as rendered (the kubelet's gRPC probe, or
grpc_health_probe's flags over TLS), a message must come back through the gateway, the
channel service's HTTP endpoints must answer a channel (plain HTTP on the port the
deployment gives them), and the gateway's pages must tell browsers where it is and,
where they call the gateway itself, work there: Chromium opens the chat page and the bot
answers the price question, with no web origin configured beyond what the deployment
renders. Under
TLS the gateway must answer a client that verifies it with the CA and has no client
certificate, and a service demanding client certificates must refuse such a client.

Only what a cluster or compose provides is stood in for:
- a service's host names (its Service names: kefu-ticket, and kefu-ticket-headless,
  which the callers' URLs name) become one loopback address of its own,
  127.42.<deployment>.<n>: KEFU_BIND_HOST is set to it and the URLs naming those hosts
  are rewritten to it; ports stay as rendered. No service listens on 127.0.0.1, where the
  binaries' defaults point, so a URL a deployment leaves out reaches none of them.
- DATABASE_URL and REDIS_URL (the production Secret's keys, the compose file's stores)
  become a fresh PostgreSQL database on 127.0.0.1:5432 (KEFU_TEST_POSTGRES_URL names
  another server), dropped afterwards, and Redis on 127.0.0.1:6379 under a prefix of
  this run (KEFU_REDIS_PREFIX, added), whose keys are deleted afterwards. The default
  values set neither: those services keep SQLite in /app/data, as their pods would.
- any other host (the trace collector) becomes a loopback address nothing listens on:
  span export fails as in a collector outage, which must not matter.
- the image's /app/tenants and /app/models are the repository's tenants/ and models/
  for the services whose image holds them (test_dockerfile checks which), empty
  directories for the others; /app/data (an emptyDir or tmpfs) is a fresh directory.
- each TLS Secret a pod mounts (cert-manager's, or one the values name) is a directory
  with tls.crt, tls.key and ca.crt from a CA made for the run: a certificate carries the
  dnsNames of its cert-manager Certificate (else the Service names of the pods mounting
  it), server and client usage, and the stand-in addresses of those pods, since the
  URLs the Rust clients verify now name those addresses.
- the addresses browsers use (KEFU_PUBLIC_GATEWAY_URL, KEFU_WEB_ORIGINS) stay as they are.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chart_support import (
    GATEWAY_TLS_VALUES,
    PRODUCTION_VALUES,
    TLS_DIR,
    HealthCheck,
    Rendered,
    component_of,
    configmap_env,
    container_of,
    enabled_services,
    health_probe_check,
    load_values_file,
    probe_check,
    render,
    tls_mount,
)
from deploy_support import Dockerfile, load_compose, parse_dockerfile
from stack import NEEDS_DATABASE, NEEDS_MODELS, NEEDS_TENANTS, REPO, SERVICES

RELEASE_DIR = REPO / "target" / "release"
MODEL = REPO / "models" / "all-MiniLM-L6-v2" / "model.safetensors"
GRPCURL = Path(sys.executable).parent / "grpcurl"
CHAT_PAGE = REPO / "web" / "tests" / "chat.mjs"
CHROMIUM = Path("/usr/bin/chromium")
POSTGRES_ADMIN_URL = os.environ.get("KEFU_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = "redis://127.0.0.1:6379"
STORE_VARIABLES = ("DATABASE_URL", "REDIS_URL")
BROWSER_ADDRESSES = ("KEFU_PUBLIC_GATEWAY_URL", "KEFU_WEB_ORIGINS")
NOWHERE = "127.42.0.1"  # nothing listens here
SERVING_WITHIN = 120.0  # seconds; router, knowledge and sentiment load the model first
REPLY_WITHIN = 30.0
STOP_WITHIN = 10.0
MESSAGE = {"tenant_id": "demo", "customer_id": "rehearsal-1", "text": "How much does the Pro plan cost?"}
AGENT_KEY = "x-api-key: demo-agent-key"  # the demo tenant's published agent key (tenants/demo)
DEPLOYMENTS = {
    "default": "helm/kefu, default values",
    "production": "helm/kefu, values-production.yaml: mutual TLS",
    "gateway-tls": "helm/kefu, public TLS on the gateway",
    "compose": "deploy/docker-compose.yml",
}


@dataclass
class Container:
    """What a deployment gives one service: its environment, what its probes (or its
    compose healthcheck) check, and the TLS Secrets it mounts (mount path -> name)."""

    env: dict[str, str]
    checks: list[HealthCheck]
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass
class Deployment:
    services: set[str]  # the services it deploys
    containers: dict[str, Container]
    hosts: dict[str, str]  # host name -> the service it reaches
    certificate_names: dict[str, list[str]] = field(default_factory=dict)  # Secret -> dnsNames


def from_chart(r: Rendered, dockerfile: Dockerfile) -> Deployment:
    """Containers of the rendered Deployments, the service each Service name reaches,
    and the names of the certificates cert-manager would issue."""
    containers = {}
    for deployment in r.of_kind("Deployment"):
        service = component_of(deployment)
        container = container_of(deployment)
        env = dockerfile.image_env(service) | configmap_env(r, deployment)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            # the rehearsal has test values for the stores only
            assert var["name"] in STORE_VARIABLES, f"{service}: no test value for {var['name']} ({ref})"
            env[var["name"]] = f"secret {ref['name']}/{ref['key']}"
        checks = [probe_check(container, p) for p in ("startupProbe", "livenessProbe", "readinessProbe")]
        secret = tls_mount(deployment)
        containers[service] = Container(env, checks, {TLS_DIR: secret} if secret else {})
    hosts = {s["metadata"]["name"]: component_of(s) for s in r.of_kind("Service")}
    names = {c["spec"]["secretName"]: c["spec"]["dnsNames"] for c in r.of_kind("Certificate")}
    return Deployment(enabled_services(r), containers, hosts, names)


def from_compose(compose: dict[str, Any], dockerfile: Dockerfile) -> Deployment:
    """Containers of the compose services kefu-<service>; their names are the host names."""
    containers = {}
    for service in SERVICES:
        spec = compose["services"][f"kefu-{service}"]
        env = dockerfile.image_env(service) | {k: str(v) for k, v in spec["environment"].items()}
        test = spec["healthcheck"]["test"]
        assert test[:2] == ["CMD", "grpc_health_probe"]
        containers[service] = Container(env, [health_probe_check(test[2:])])
    return Deployment(set(SERVICES), containers, {f"kefu-{service}": service for service in SERVICES})


def deployment_of(deployment: str, dockerfile: Dockerfile) -> Deployment:
    if deployment == "compose":
        return from_compose(load_compose(), dockerfile)
    values = {"default": None, "production": load_values_file(PRODUCTION_VALUES),
              "gateway-tls": GATEWAY_TLS_VALUES}[deployment]
    return from_chart(render(values), dockerfile)


def local_path(value: str, paths: dict[str, Path]) -> str:
    """A path inside the container as the stand-in on this machine (others unchanged)."""
    for image_path, local in paths.items():
        if value == image_path or value.startswith(image_path + "/"):
            return str(local) + value[len(image_path):]
    return value


def on_this_machine(env: dict[str, str], *, address: str, addresses: dict[str, str], hosts: dict[str, str],
                    stores: dict[str, str], paths: dict[str, Path]) -> dict[str, str]:
    """A container's environment with the stand-ins of the module docstring."""
    out = {}
    for key, value in env.items():
        parts = urlsplit(value)
        if key in STORE_VARIABLES:
            value = stores[key]
        elif key in BROWSER_ADDRESSES:
            pass
        elif parts.hostname:
            local = addresses[hosts[parts.hostname]] if parts.hostname in hosts else NOWHERE
            userinfo, at, hostport = parts.netloc.rpartition("@")
            value = urlunsplit(parts._replace(netloc=userinfo + at + hostport.replace(parts.hostname, local, 1)))
        else:
            value = local_path(value, paths)
        out[key] = value
    assert out.get("KEFU_BIND_HOST") == "0.0.0.0", "the container listens on every interface"
    out["KEFU_BIND_HOST"] = address
    if "REDIS_URL" in out:
        out["KEFU_REDIS_PREFIX"] = stores["KEFU_REDIS_PREFIX"]
    return out


# --------------------------------------------------------------------------- stores


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr.strip()}"
    return result.stdout


@pytest.fixture
def stores() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and a Redis key prefix, removed afterwards. A missing
    server fails the test, as in the Rust tests: nothing here skips silently."""
    run_id = uuid.uuid4().hex[:12]
    database = f"kefu_rehearsal_{run_id}"
    run(["psql", POSTGRES_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {database}"])
    prefix = f"kefu-rehearsal-{run_id}:"
    run(["redis-cli", "-u", REDIS_URL, "ping"])
    try:
        yield {"DATABASE_URL": f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{database}",
               "REDIS_URL": REDIS_URL, "KEFU_REDIS_PREFIX": prefix}
    finally:
        run(["psql", POSTGRES_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc",
             f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"])
        keys = run(["redis-cli", "-u", REDIS_URL, "--scan", "--pattern", f"{prefix}*"]).split()
        if keys:
            run(["redis-cli", "-u", REDIS_URL, "del", *keys])


# --------------------------------------------------------------------------- certificates


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class RunCa:
    """A CA for one run, standing in for cert-manager's CA issuer."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> RunCa:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kefu rehearsal CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, directory: Path, dns_names: list[str], addresses: list[str]) -> Path:
        """A Secret as cert-manager writes it: tls.crt, tls.key (PKCS#8) and ca.crt."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        directory.mkdir(parents=True)
        (directory / "tls.crt").write_bytes(_pem(cert))
        (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
        (directory / "ca.crt").write_bytes(_pem(self.cert))
        return directory


def tls_secrets(deployment: Deployment, addresses: dict[str, str], root: Path) -> dict[str, Path]:
    """Every TLS Secret the pods mount, as a directory issued by a CA of this run."""
    ca = RunCa.create()
    mounted_by: dict[str, list[str]] = {}
    for service, container in deployment.containers.items():
        for secret in container.secrets.values():
            mounted_by.setdefault(secret, []).append(service)
    hosts_of = {service: [h for h, s in deployment.hosts.items() if s == service] for service in SERVICES}
    return {secret: ca.issue(root / secret,
                             deployment.certificate_names.get(secret) or [h for s in services for h in hosts_of[s]],
                             [addresses[s] for s in services])
            for secret, services in mounted_by.items()}


# --------------------------------------------------------------------------- processes


@dataclass
class Process:
    service: str
    address: str
    env: dict[str, str]
    checks: list[HealthCheck]
    paths: dict[str, Path]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def grpc(self) -> str:
        return f"{self.address}:{self.env['KEFU_GRPC_PORT']}"

    @property
    def without_certificate(self) -> list[str]:
        """grpcurl's flags for this service's port as a client without a certificate (a
        customer of the gateway): plaintext, or TLS verified for the address with the CA
        (every Secret of the run holds the run's ca.crt)."""
        if "KEFU_TLS_CERT" not in self.env:
            return ["-plaintext"]
        return ["-cacert", str(Path(self.env["KEFU_TLS_CERT"]).with_name("ca.crt"))]

    @property
    def connect(self) -> list[str]:
        """grpcurl's flags as a fellow kefu service connects: with its certificate under TLS."""
        if "KEFU_TLS_CERT" not in self.env:
            return ["-plaintext"]
        return [*self.without_certificate, "-cert", self.env["KEFU_TLS_CERT"], "-key", self.env["KEFU_TLS_KEY"]]

    def probe(self, check: HealthCheck) -> tuple[str, list[str]]:
        """Address and grpcurl flags doing what the probe does, from inside the pod."""
        assert check.host == "127.0.0.1", "a probe dials its own pod"
        if not check.tls:
            return f"{self.address}:{check.port}", ["-plaintext"]
        assert check.ca or not check.verify, "verifying with the system's roots: no private CA is among them"
        flags = ["-insecure"] if not check.verify else ["-cacert", local_path(check.ca, self.paths)]
        if check.client_cert:
            flags += ["-cert", local_path(check.client_cert, self.paths),
                      "-key", local_path(check.client_key, self.paths)]
        return f"{self.address}:{check.port}", flags

    def log_tail(self, lines: int = 25) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n".join(f"    {line[:600]}" for line in text)


@contextmanager
def running(processes: list[Process], workdir: Path) -> Iterator[None]:
    """Starts every process; stops them all on the way out, whatever happened."""
    try:
        for p in processes:
            with p.log.open("wb") as log:
                p.popen = subprocess.Popen([str(RELEASE_DIR / f"kefu-{p.service}")], env=p.env, cwd=workdir,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        yield
    finally:
        started = [p.popen for p in processes if p.popen is not None]
        for popen in started:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WITHIN
        for popen in started:
            try:
                popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def grpcurl(address: str, method: str, request: dict[str, Any], max_time: float,
            connect: list[str], headers: tuple[str, ...] = ()) -> tuple[bool, str]:
    result = subprocess.run([str(GRPCURL), *connect, "-connect-timeout", "1", "-max-time", str(max_time),
                             *(f for h in headers for f in ("-H", h)), "-d", json.dumps(request), address, method],
                            capture_output=True, text=True, timeout=max_time + 5)
    return result.returncode == 0, (result.stdout if result.returncode == 0 else result.stderr).strip()


def health(address: str, connect: list[str], service: str = "") -> str:
    ok, out = grpcurl(address, "grpc.health.v1.Health/Check", {"service": service}, 3, connect)
    return json.loads(out).get("status", "UNKNOWN") if ok else out.splitlines()[-1]


def failure(what: str, processes: list[Process]) -> str:
    logs = "\n".join(f"  {p.service} ({p.grpc}, {'running' if p.popen.poll() is None else f'exit {p.popen.returncode}'}):"
                     f"\n{p.log_tail()}" for p in processes)
    return f"{what}\n{logs}"


def wait_until_serving(processes: list[Process], deployment: str) -> dict[str, float]:
    """Seconds from the start until each service's overall status was SERVING."""
    start = time.monotonic()
    serving_after: dict[str, float] = {}
    while waiting := [p for p in processes if p.service not in serving_after]:
        for p in waiting:
            assert p.popen.poll() is None, failure(f"{deployment}: kefu-{p.service} exited", processes)
            if health(p.grpc, p.connect) == "SERVING":
                serving_after[p.service] = time.monotonic() - start
        if time.monotonic() - start > SERVING_WITHIN:
            late = [p.service for p in processes if p.service not in serving_after]
            pytest.fail(failure(f"{deployment}: {late} not SERVING within {SERVING_WITHIN:.0f} s", processes))
        time.sleep(0.5)
    return serving_after


# --------------------------------------------------------------------------- the rehearsal


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    missing = [f"kefu-{s}" for s in SERVICES if not (RELEASE_DIR / f"kefu-{s}").is_file()]
    assert not missing, f"{missing} not in {RELEASE_DIR}: run `make build`"
    assert MODEL.is_file(), f"{MODEL} is missing: run `make models`"
    assert GRPCURL.is_file(), f"{GRPCURL} is missing: run `make tools`"
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: run `make web-tools`"
    assert (REPO / "web" / "node_modules" / "playwright-core").is_dir(), "web/node_modules is missing: run `make web`"
    return parse_dockerfile()


def pages(gateway: Process) -> str:
    return f"http://{gateway.address}:{gateway.env['KEFU_WEB_PORT']}"


def web_config(gateway: Process) -> dict[str, Any]:
    """What the gateway's pages learn from /config.json."""
    with urllib.request.urlopen(f"{pages(gateway)}/config.json", timeout=5) as response:
        return json.load(response)


def post_as_a_channel(channels: Process, path: str) -> int:
    """The HTTP status the channel service answers an unsigned POST with."""
    url = f"http://{channels.address}:{channels.env['KEFU_CHANNELS_HTTP_PORT']}{path}"
    request = urllib.request.Request(url, data=b'{"customer_id":"c1","text":"hello"}', method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def mail_to_nobody(channels: Process) -> tuple[int, int]:
    """What the channel service's SMTP listener (where the rendered environment puts it)
    answers EHLO and a recipient that is no tenant's support address."""
    port = int(channels.env["KEFU_CHANNELS_SMTP_PORT"])
    with smtplib.SMTP(channels.address, port, timeout=5) as client:
        ehlo, _ = client.ehlo("rehearsal.example")
        client.mail("someone@example.com")
        rcpt, _ = client.rcpt("nobody@no-such-tenant.example")
        return ehlo, rcpt


def demo_webhook_status() -> int:
    """Without a signature: 401 where the demo tenant has a [channels.webhook], else 404
    (no such channel), which the channel service also answers for unknown tenants."""
    tenant = tomllib.loads((REPO / "tenants" / "demo" / "tenant.toml").read_text(encoding="utf-8"))
    return 401 if "webhook" in tenant.get("channels", {}) else 404


def ask_in_the_browser(gateway: Process) -> tuple[bool, str]:
    """Chromium on the chat page asks the price; the bot's answer as JSON, or why not.
    A TLS gateway's certificate comes from the run's CA, which Chromium does not know."""
    trust = ["--trust-any-certificate"] if "KEFU_TLS_CERT" in gateway.env else []
    result = subprocess.run(["node", str(CHAT_PAGE), pages(gateway), *trust], capture_output=True, text=True,
                            timeout=90, cwd=REPO / "web")
    return result.returncode == 0, (result.stdout if result.returncode == 0 else result.stderr).strip()


@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_the_deployment_comes_up_and_answers(deployment: str, dockerfile: Dockerfile, stores: dict[str, str],
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rendered = deployment_of(deployment, dockerfile)
    assert sorted(rendered.containers) == sorted(rendered.services)
    # the chart refuses the channel service with public TLS on the gateway
    assert rendered.services == set(SERVICES) - ({"channels"} if deployment == "gateway-tls" else set())
    block = list(DEPLOYMENTS).index(deployment) + 1
    addresses = {service: f"127.42.{block}.{n}" for n, service in enumerate(SERVICES, start=1)}
    secrets = tls_secrets(rendered, addresses, tmp_path / "secrets")
    empty = tmp_path / "empty"
    empty.mkdir()
    processes = []
    for service in (s for s in SERVICES if s in rendered.services):
        container = rendered.containers[service]
        data = tmp_path / service
        data.mkdir()
        paths = {"/app/data": data,
                 "/app/tenants": REPO / "tenants" if service in NEEDS_TENANTS else empty,
                 "/app/models": REPO / "models" if service in NEEDS_MODELS else empty}
        paths |= {mount: secrets[secret] for mount, secret in container.secrets.items()}
        env = on_this_machine(container.env, address=addresses[service], addresses=addresses,
                              hosts=rendered.hosts, stores=stores, paths=paths)
        processes.append(Process(service, addresses[service], env, container.checks, paths,
                                 tmp_path / f"{service}.log"))
    gateway = next(p for p in processes if p.service == "gateway")
    channels = next((p for p in processes if p.service == "channels"), None)
    customer = gateway.without_certificate

    with running(processes, tmp_path):
        serving_after = wait_until_serving(processes, deployment)
        for p in processes:
            for check in p.checks:
                address, flags = p.probe(check)
                assert health(address, flags, check.service) == "SERVING", failure(
                    f"{deployment}: the probe of kefu-{p.service} on health name {check.service!r} fails "
                    f"({' '.join(flags)})", processes)
        sent = time.monotonic()
        ok, out = grpcurl(gateway.grpc, "kefu.v1.ConversationService/SendMessage", MESSAGE, REPLY_WITHIN, customer)
        replied_after = time.monotonic() - sent
        assert ok, failure(f"{deployment}: SendMessage failed: {out}", processes)
        answer = json.loads(out)
        assert answer.get("reply", "").strip(), failure(f"{deployment}: empty reply: {out}", processes)
        # mutual TLS: every service but the public gateway refuses a caller without a
        # client certificate (or without TLS)
        refusing = [p for p in processes if "KEFU_TLS_CLIENT_CA" in p.env]
        if any("KEFU_TLS_CA" in p.env for p in processes):
            assert {p.service for p in refusing} == rendered.services - {"gateway"}
        for p in refusing:
            for stranger in (p.without_certificate, ["-plaintext"]):
                assert health(p.grpc, stranger) != "SERVING", failure(
                    f"{deployment}: kefu-{p.service} answers {' '.join(stranger)}", processes)
        # a channel reaches the channel service's endpoints: plain HTTP, whatever the gRPC
        # ports speak; an unsigned webhook is refused, an unknown tenant has no channel;
        # and the gateway reaches the channel service for an agent (the session came
        # through no channel, so it has no deliveries)
        if channels is not None:
            ok, out = grpcurl(gateway.grpc, "kefu.v1.ChannelService/ListDeliveries",
                              {"tenant_id": "demo", "session_id": answer["sessionId"]}, REPLY_WITHIN, customer,
                              headers=(AGENT_KEY,))
            assert ok, failure(f"{deployment}: ListDeliveries through the gateway failed: {out}", processes)
            assert not json.loads(out).get("deliveries"), out
            expected = demo_webhook_status()
            for path, status in (("/webhooks/demo", expected), ("/webhooks/no-such-tenant", 404),
                                 ("/wechat/no-such-tenant", 404)):
                got = post_as_a_channel(channels, path)
                assert got == status, failure(f"{deployment}: POST {path} answered {got}, not {status}", processes)
            smtp = mail_to_nobody(channels)
            assert smtp == (250, 550), failure(f"{deployment}: SMTP answered EHLO, RCPT with {smtp}", processes)
            endpoints = (f"POST /webhooks/demo unsigned: {expected}, SMTP EHLO 250 and RCPT to no tenant 550, "
                         "ListDeliveries via the gateway: OK")
        else:
            endpoints = "no channel service"
        # the pages tell browsers where the gateway is: as configured, else on the pages'
        # host at the gRPC port (whose scheme, for a TLS port, is the gateway's business)
        public_url = web_config(gateway)["gatewayUrl"]
        if gateway.env.get("KEFU_PUBLIC_GATEWAY_URL"):
            assert public_url == gateway.env["KEFU_PUBLIC_GATEWAY_URL"]
        else:
            assert urlsplit(public_url).netloc == gateway.grpc, public_url
            assert "KEFU_TLS_CERT" in gateway.env or public_url == f"http://{gateway.grpc}", public_url
        # Chromium on the pages, where they call the gateway itself (a public URL names an
        # ingress, which is not stood in for)
        if gateway.env.get("KEFU_PUBLIC_GATEWAY_URL"):
            browser = "no browser check (the pages call the ingress)"
        else:
            ok, out = ask_in_the_browser(gateway)
            assert ok, failure(f"{deployment}: the chat page in Chromium: {out}", processes)
            browser = f"the chat page in Chromium answered with {json.loads(out)['sources']}"
    # Kubernetes and compose stop a container with SIGTERM and wait 30 s before killing it
    exits = {p.service: p.popen.returncode for p in processes}
    assert set(exits.values()) == {0}, failure(f"{deployment}: not a clean stop on SIGTERM: {exits}", processes)

    with capsys.disabled():
        print(f"\nrehearsal {deployment} ({DEPLOYMENTS[deployment]}):")
        for p in processes:
            uses = [name for name, used in (("postgres", "DATABASE_URL" in p.env),
                                            ("sqlite", "DATABASE_URL" not in p.env and p.service in NEEDS_DATABASE),
                                            ("redis", "REDIS_URL" in p.env)) if used]
            uses += [mode for mode, on in (("tls", "KEFU_TLS_CERT" in p.env),
                                           ("client certs required", "KEFU_TLS_CLIENT_CA" in p.env),
                                           ("https calls", "KEFU_TLS_CA" in p.env)) if on]
            probes = ", ".join(sorted({json.dumps(c.service) + (" tls" if c.tls else "") for c in p.checks}))
            print(f"  {p.service:<12} {p.grpc:<17} SERVING after {serving_after[p.service]:4.1f} s"
                  f"  probes {probes}  {' + '.join(uses)}")
        print(f"  SendMessage via the gateway ({' '.join(customer[:1])}): {replied_after:.2f} s, "
              f"intent {answer.get('intent')!r}, reply {answer['reply'][:60]!r}...; "
              f"{len(refusing)} services refused callers without a client certificate; "
              f"channel endpoints: {endpoints}; "
              f"pages point at {public_url}; {browser}; all stopped with exit 0 on SIGTERM")
