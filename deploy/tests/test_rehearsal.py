"""Deployment rehearsal: the six release binaries (target/release/kefu-<service>), each
started as its own process with exactly the environment its container gets from the
chart (default values, values-production.yaml) or from the compose file: the image's
ENV, then the ConfigMap / compose `environment`, then `env`. Every service must reach
SERVING, every health name its probes check must answer SERVING, and a message must
come back through the gateway.

Only what a cluster or compose provides is stood in for:
- each service's host name (kefu-ticket, ...) is a loopback address of its own,
  127.42.<deployment>.<n>: KEFU_BIND_HOST is set to it and the URLs naming the host are
  rewritten to it; ports stay as rendered. No service listens on 127.0.0.1, where the
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
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from chart_support import (
    PRODUCTION_VALUES,
    Rendered,
    component_of,
    configmap_env,
    container_of,
    load_values_file,
    render,
)
from deploy_support import Dockerfile, load_compose, parse_dockerfile
from stack import NEEDS_DATABASE, NEEDS_MODELS, NEEDS_TENANTS, REPO, SERVICES

RELEASE_DIR = REPO / "target" / "release"
MODEL = REPO / "models" / "all-MiniLM-L6-v2" / "model.safetensors"
GRPCURL = Path(sys.executable).parent / "grpcurl"
POSTGRES_ADMIN_URL = os.environ.get("KEFU_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = "redis://127.0.0.1:6379"
STORE_VARIABLES = ("DATABASE_URL", "REDIS_URL")
NOWHERE = "127.42.0.1"  # nothing listens here
SERVING_WITHIN = 120.0  # seconds; router, knowledge and sentiment load the model first
REPLY_WITHIN = 30.0
STOP_WITHIN = 10.0
MESSAGE = {"tenant_id": "demo", "customer_id": "rehearsal-1", "text": "How much does the Pro plan cost?"}
DEPLOYMENTS = {
    "default": "helm/kefu, default values",
    "production": "helm/kefu, values-production.yaml",
    "compose": "deploy/docker-compose.yml",
}


@dataclass
class Container:
    """What a deployment gives one service: its environment and the health names its
    probes (or its compose healthcheck) check."""

    env: dict[str, str]
    probed: set[str]


def from_chart(r: Rendered, dockerfile: Dockerfile) -> tuple[dict[str, Container], dict[str, str]]:
    """Containers of the rendered Deployments, and the service each Service name reaches."""
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
        probed = {container[p]["grpc"].get("service", "")
                  for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        containers[service] = Container(env, probed)
    hosts = {s["metadata"]["name"]: component_of(s) for s in r.of_kind("Service")}
    return containers, hosts


def from_compose(compose: dict[str, Any], dockerfile: Dockerfile) -> tuple[dict[str, Container], dict[str, str]]:
    """Containers of the compose services kefu-<service>; their names are the host names."""
    containers = {}
    for service in SERVICES:
        spec = compose["services"][f"kefu-{service}"]
        env = dockerfile.image_env(service) | {k: str(v) for k, v in spec["environment"].items()}
        test = spec["healthcheck"]["test"]
        probed = {arg.partition("=")[2] for arg in test if arg.startswith("-service=")} or {""}
        containers[service] = Container(env, probed)
    return containers, {f"kefu-{service}": service for service in SERVICES}


def containers_of(deployment: str, dockerfile: Dockerfile) -> tuple[dict[str, Container], dict[str, str]]:
    if deployment == "compose":
        return from_compose(load_compose(), dockerfile)
    values = load_values_file(PRODUCTION_VALUES) if deployment == "production" else None
    return from_chart(render(values), dockerfile)


def on_this_machine(env: dict[str, str], *, address: str, addresses: dict[str, str], hosts: dict[str, str],
                    stores: dict[str, str], paths: dict[str, Path]) -> dict[str, str]:
    """A container's environment with the stand-ins of the module docstring."""
    out = {}
    for key, value in env.items():
        parts = urlsplit(value)
        if key in STORE_VARIABLES:
            value = stores[key]
        elif parts.hostname:
            local = addresses[hosts[parts.hostname]] if parts.hostname in hosts else NOWHERE
            userinfo, at, hostport = parts.netloc.rpartition("@")
            value = urlunsplit(parts._replace(netloc=userinfo + at + hostport.replace(parts.hostname, local, 1)))
        else:
            for image_path, local_path in paths.items():
                if value == image_path or value.startswith(image_path + "/"):
                    value = str(local_path) + value[len(image_path):]
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


# --------------------------------------------------------------------------- processes


@dataclass
class Process:
    service: str
    address: str
    env: dict[str, str]
    probed: set[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def grpc(self) -> str:
        return f"{self.address}:{self.env['KEFU_GRPC_PORT']}"

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


def grpcurl(address: str, method: str, request: dict[str, Any], max_time: float) -> tuple[bool, str]:
    result = subprocess.run([str(GRPCURL), "-plaintext", "-connect-timeout", "1", "-max-time", str(max_time),
                             "-d", json.dumps(request), address, method],
                            capture_output=True, text=True, timeout=max_time + 5)
    return result.returncode == 0, (result.stdout if result.returncode == 0 else result.stderr).strip()


def health(address: str, service: str = "") -> str:
    ok, out = grpcurl(address, "grpc.health.v1.Health/Check", {"service": service}, 3)
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
            if health(p.grpc) == "SERVING":
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
    return parse_dockerfile()


@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_the_deployment_comes_up_and_answers(deployment: str, dockerfile: Dockerfile, stores: dict[str, str],
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    containers, hosts = containers_of(deployment, dockerfile)
    assert sorted(containers) == sorted(SERVICES)
    block = list(DEPLOYMENTS).index(deployment) + 1
    addresses = {service: f"127.42.{block}.{n}" for n, service in enumerate(SERVICES, start=1)}
    empty = tmp_path / "empty"
    empty.mkdir()
    processes = []
    for service in SERVICES:
        container = containers[service]
        data = tmp_path / service
        data.mkdir()
        paths = {"/app/data": data,
                 "/app/tenants": REPO / "tenants" if service in NEEDS_TENANTS else empty,
                 "/app/models": REPO / "models" if service in NEEDS_MODELS else empty}
        env = on_this_machine(container.env, address=addresses[service], addresses=addresses, hosts=hosts,
                              stores=stores, paths=paths)
        processes.append(Process(service, addresses[service], env, container.probed, tmp_path / f"{service}.log"))

    with running(processes, tmp_path):
        serving_after = wait_until_serving(processes, deployment)
        for p in processes:
            for name in sorted(p.probed):
                assert health(p.grpc, name) == "SERVING", failure(
                    f"{deployment}: the probe of kefu-{p.service} on health name {name!r} fails", processes)
        gateway = next(p for p in processes if p.service == "gateway")
        sent = time.monotonic()
        ok, out = grpcurl(gateway.grpc, "kefu.v1.ConversationService/SendMessage", MESSAGE, REPLY_WITHIN)
        replied_after = time.monotonic() - sent
        assert ok, failure(f"{deployment}: SendMessage failed: {out}", processes)
        answer = json.loads(out)
        assert answer.get("reply", "").strip(), failure(f"{deployment}: empty reply: {out}", processes)
    # Kubernetes and compose stop a container with SIGTERM and wait 30 s before killing it
    exits = {p.service: p.popen.returncode for p in processes}
    assert set(exits.values()) == {0}, failure(f"{deployment}: not a clean stop on SIGTERM: {exits}", processes)

    with capsys.disabled():
        print(f"\nrehearsal {deployment} ({DEPLOYMENTS[deployment]}):")
        for p in processes:
            uses = [name for name, used in (("postgres", "DATABASE_URL" in p.env),
                                            ("sqlite", "DATABASE_URL" not in p.env and p.service in NEEDS_DATABASE),
                                            ("redis", "REDIS_URL" in p.env)) if used]
            probes = ", ".join(json.dumps(name) for name in sorted(p.probed))
            print(f"  {p.service:<12} {p.grpc:<17} SERVING after {serving_after[p.service]:4.1f} s"
                  f"  probes {probes}  {' + '.join(uses)}")
        print(f"  SendMessage via the gateway: {replied_after:.2f} s, intent {answer.get('intent')!r}, "
              f"reply {answer['reply'][:60]!r}...; all stopped with exit 0 on SIGTERM")
