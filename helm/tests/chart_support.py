"""Rendering helpers for the kefu chart tests (the services themselves: stack.py).

The chart is rendered offline with the Helm v4 SDK that the helm-python-sdk wheel
bundles (no helm binary, no cluster).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from stack import REPO

CHART = REPO / "helm" / "kefu"
PRODUCTION_VALUES = CHART / "values-production.yaml"
RELEASE = "kefu"
NAMESPACE = "kefu"

# TLS value sets beside the default and production ones (values-production.yaml turns on
# mutual TLS with cert-manager): public TLS on the gateway only, and mutual TLS with one
# Secret for every service. Public TLS on the gateway goes without the channel service,
# which calls the gateway by its in-cluster name (the chart refuses the two together).
GATEWAY_TLS_VALUES = {"tls": {"gateway": {"enabled": True, "existingSecret": "kefu-public-tls"}},
                      "services": {"channels": {"enabled": False}}}
SHARED_MTLS_VALUES = {"tls": {"internal": {"enabled": True, "existingSecret": "kefu-internal-tls"}}}
TLS_DIR = "/etc/kefu/tls"
HEALTH_PROBE = "/usr/local/bin/grpc_health_probe"

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


@dataclass
class Rendered:
    """One rendering of the chart: its objects and its NOTES.txt."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def kind_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.objects:
            counts[o["kind"]] = counts.get(o["kind"], 0) + 1
        return dict(sorted(counts.items()))


def load_values_file(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> Rendered:
    """Render the chart as `helm template` would, with `values` over the defaults."""
    with helm.Chart.load(str(CHART)) as chart:
        merged = chart.merge_values(copy.deepcopy(values) if values else None)
        manifests = chart.render(copy.deepcopy(values) if values else None,
                                 name=name, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(values=merged, objects=objects, notes=notes)


def component_of(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def enabled_services(r: Rendered) -> set[str]:
    """The services the values deploy (services.<name>.enabled)."""
    return {name for name, svc in r.values["services"].items() if svc["enabled"]}


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels_by_component(r: Rendered) -> dict[str, dict[str, str]]:
    return {component_of(d): d["spec"]["template"]["metadata"]["labels"]
            for d in r.of_kind("Deployment")}


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmap_env(r: Rendered, deployment: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets through envFrom (later ConfigMaps win)."""
    env: dict[str, str] = {}
    for source in container_of(deployment).get("envFrom", []):
        env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
    return env


@dataclass
class HealthCheck:
    """What one probe or healthcheck checks: a health name on a port, and how it connects."""

    port: int
    service: str
    tls: bool = False
    verify: bool = True  # with TLS: verify the server's certificate
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    host: str = "127.0.0.1"


def health_probe_check(args: list[str]) -> HealthCheck:
    """The check grpc_health_probe makes with these arguments (every flag the chart and
    the compose file use; any other is an error)."""
    flags: dict[str, str] = {}
    for arg in args:
        name, _, value = arg.lstrip("-").partition("=")
        assert arg.startswith("-") and name in {"addr", "service", "connect-timeout", "rpc-timeout", "tls",
                                                "tls-no-verify", "tls-ca-cert", "tls-client-cert",
                                                "tls-client-key"}, f"unexpected grpc_health_probe argument {arg}"
        flags[name] = value
    host, _, port = flags["addr"].rpartition(":")
    check = HealthCheck(port=int(port), service=flags.get("service", ""), tls="tls" in flags,
                        verify="tls-no-verify" not in flags, ca=flags.get("tls-ca-cert"),
                        client_cert=flags.get("tls-client-cert"), client_key=flags.get("tls-client-key"), host=host)
    assert check.tls or not ({"tls-no-verify", "tls-ca-cert", "tls-client-cert", "tls-client-key"} & flags.keys()), \
        "TLS flags without -tls are ignored by grpc_health_probe"
    assert (check.client_cert is None) == (check.client_key is None)
    return check


def probe_check(container: dict[str, Any], probe: str) -> HealthCheck:
    """What a container's startupProbe / livenessProbe / readinessProbe checks: the
    kubelet's own gRPC probe (plaintext only) or grpc_health_probe from the image."""
    action = container[probe]
    assert sum(k in action for k in ("grpc", "exec", "httpGet", "tcpSocket")) == 1, probe
    if "grpc" in action:
        return HealthCheck(port=action["grpc"]["port"], service=action["grpc"].get("service", ""))
    command = action["exec"]["command"]
    assert command[0] == HEALTH_PROBE, f"{probe} runs {command[0]}"
    return health_probe_check(command[1:])


def tls_mount(deployment: dict[str, Any]) -> str | None:
    """The Secret mounted at TLS_DIR, if any."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container_of(deployment).get("volumeMounts", []):
        if mount["mountPath"] == TLS_DIR:
            assert mount.get("readOnly") is True
            return volumes[mount["name"]]["secret"]["secretName"]
    return None
