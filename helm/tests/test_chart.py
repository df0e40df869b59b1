"""Invariants of the kefu Helm chart, rendered with the default values, with
values-production.yaml and with the TLS value sets of chart_support, validated against
the Kubernetes 1.29 schemas."""

from __future__ import annotations

import copy
import filecmp
import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_support import (
    CHART,
    GATEWAY_TLS_VALUES,
    HEALTH_PROBE,
    NAMESPACE,
    PRODUCTION_VALUES,
    SHARED_MTLS_VALUES,
    STANDARD_LABELS,
    TLS_DIR,
    Rendered,
    component_of,
    configmap_env,
    container_of,
    enabled_services,
    load_values_file,
    pod_labels_by_component,
    probe_check,
    render,
    selector_matches,
    tls_mount,
)
from deploy_support import parse_dockerfile
from stack import (
    CALLS,
    CHANNELS_HTTP_PORT,
    CHANNELS_SMTP_PORT,
    LIVENESS_SERVICE,
    NEEDS_DATABASE,
    NEEDS_MODELS,
    NEEDS_REDIS,
    NEEDS_TENANTS,
    PEER_URL_SETTING,
    REPO,
    SERVICES,
    SETTINGS,
    WEB_PORT,
)

KUBERNETES_VERSION = "1.29.0"
# The services some service calls (from the Rust sources): each gets a headless Service.
CALLED = set().union(*CALLS.values())
# The routes of the channel service's HTTP port, which outside channels call.
CHANNEL_ROUTES = REPO / "services/channels/src/http.rs"
# Prometheus Operator and cert-manager kinds: no schema in kubernetes-validate; checked
# structurally below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}


def container_port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return ports[name]


def port_names(svc: str, r: Rendered) -> set[str]:
    """The named ports of a service's container and Service: the gateway adds the pages',
    the channel service the channels' endpoints."""
    return ({"grpc", "metrics"} | ({"web"} if svc == "gateway" and r.values["web"]["enabled"] else set())
            | ({"channels-http"} if svc == "channels" else set()))


def container_port_names(svc: str, r: Rendered) -> set[str]:
    """The named ports of a service's container: those of its Service, and the channel
    service's SMTP listener, which has a Service of its own."""
    smtp = svc == "channels" and r.values["channels"]["smtp"]["enabled"]
    return port_names(svc, r) | ({"smtp"} if smtp else set())


def named_port(svc: str, name: str) -> int:
    """The port a service's port of that name has with the default values."""
    return {"web": WEB_PORT, "channels-http": CHANNELS_HTTP_PORT, "smtp": CHANNELS_SMTP_PORT}.get(name) or SERVICES[svc][name]


def calls_in(r: Rendered) -> dict[str, set[str]]:
    """The call graph of the Rust sources among the services this render deploys."""
    enabled = enabled_services(r)
    return {caller: CALLS[caller] & enabled for caller in enabled}


def called_in(r: Rendered) -> set[str]:
    return set().union(*calls_in(r).values())


def peer_urls(env: dict[str, str]) -> dict[str, str]:
    """callee -> URL, from the KEFU_<SERVICE>_URL settings of a container."""
    return {m.group(1).lower(): url for key, url in env.items() if (m := PEER_URL_SETTING.fullmatch(key))}


def is_headless(service: dict[str, Any]) -> bool:
    return service["spec"].get("clusterIP") == "None"


def is_smtp(service: dict[str, Any]) -> bool:
    return [p["name"] for p in service["spec"]["ports"]] == ["smtp"]


def regular_services(r: Rendered) -> list[dict[str, Any]]:
    """One per service, for its users and metrics (not the callers' headless ones, nor
    the channel service's SMTP Service)."""
    return [s for s in r.of_kind("Service") if not is_headless(s) and not is_smtp(s)]


def container_env(r: Rendered, deployment: dict[str, Any]) -> dict[str, str]:
    """A container's literal environment: its ConfigMaps, then its own `env` values."""
    env = configmap_env(r, deployment)
    env.update({v["name"]: v["value"] for v in container_of(deployment).get("env", []) if "value" in v})
    return env


# --------------------------------------------------------------------------- lint, schemas


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES, GATEWAY_TLS_VALUES, SHARED_MTLS_VALUES],
                         ids=["default", "production", "gateway_tls", "shared_mtls"])
def test_helm_lint_strict(values: Path | dict[str, Any] | None) -> None:
    if isinstance(values, Path):
        values = load_values_file(values)
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity: 1 info, 2 warning, 3 error; --strict fails on warnings too
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_every_manifest_is_valid_kubernetes_1_29(rendered: Rendered) -> None:
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 6 * len(enabled_services(rendered))  # six kinds of object per service


def test_validation_catches_a_broken_manifest(default_render: Rendered) -> None:
    """The validator really is strict: a misspelt field is an error."""
    deployment = copy.deepcopy(default_render.of_kind("Deployment")[0])
    container_of(deployment)["livenesProbe"] = container_of(deployment).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_default_object_counts(default_render: Rendered) -> None:
    n = len(SERVICES)
    assert default_render.kind_counts() == {
        "ConfigMap": n,
        "Deployment": n,
        "HorizontalPodAutoscaler": n,
        "NetworkPolicy": n,
        "PodDisruptionBudget": n,
        "Service": n + len(CALLED) + 1,  # a headless one per called service, and SMTP
        "ServiceAccount": 1,
    }


def test_production_object_counts(production_render: Rendered) -> None:
    n = len(SERVICES)
    assert production_render.kind_counts() == {
        "Certificate": n,
        "ConfigMap": n,
        "Deployment": n,
        "HorizontalPodAutoscaler": n,
        "Ingress": 3,  # the gateway's gRPC, its pages, the channels' endpoints
        "NetworkPolicy": n,
        "PodDisruptionBudget": n,
        "PrometheusRule": 1,
        "Service": n + len(CALLED) + 1,
        "ServiceAccount": 1,
        "ServiceMonitor": 1,
    }


# --------------------------------------------------------------------------- labels


def test_standard_labels_on_every_object_and_pod(rendered: Rendered) -> None:
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "kefu"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kefu-0.1.0"
    for deployment in rendered.of_kind("Deployment"):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(k in pod_labels for k in STANDARD_LABELS)


# --------------------------------------------------------------------------- workloads


def test_one_deployment_per_service(rendered: Rendered) -> None:
    deployments = rendered.of_kind("Deployment")
    assert sorted(component_of(d) for d in deployments) == sorted(enabled_services(rendered))
    for d in deployments:
        svc = component_of(d)
        assert d["metadata"]["name"] == f"kefu-{svc}"
        container = container_of(d)
        assert container["name"] == svc
        assert container["image"].rsplit("/", 1)[-1].startswith(f"kefu-{svc}:")
        assert container_port(container, "grpc") == SERVICES[svc]["grpc"]
        assert container_port(container, "metrics") == SERVICES[svc]["metrics"]
        assert {p["name"] for p in container["ports"]} == container_port_names(svc, rendered)
        for name in container_port_names(svc, rendered) - {"grpc", "metrics"}:
            assert container_port(container, name) == named_port(svc, name)
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector_matches(selector, d["spec"]["template"]["metadata"]["labels"])
        # the selector tells the services apart
        others = [o for o in deployments if o is not d]
        assert not any(selector_matches(selector, o["spec"]["template"]["metadata"]["labels"])
                       for o in others)


def test_each_deployment_has_a_service_selecting_its_pods(rendered: Rendered) -> None:
    pods = pod_labels_by_component(rendered)
    services = regular_services(rendered)
    assert len(services) == len(enabled_services(rendered))
    for d in rendered.of_kind("Deployment"):
        svc = component_of(d)
        service = rendered.get("Service", d["metadata"]["name"])
        selected = [c for c, labels in pods.items() if selector_matches(service["spec"]["selector"], labels)]
        assert selected == [svc]
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert set(ports) == port_names(svc, rendered)
        container = container_of(d)
        for name in ports:
            target = ports[name]["targetPort"]
            assert target == name or target == container_port(container, name)
            assert ports[name]["port"] == named_port(svc, name)
        assert service["spec"]["type"] in ("ClusterIP", "LoadBalancer", "NodePort")


def test_every_called_service_has_a_headless_service(rendered: Rendered) -> None:
    """The clients resolve the callee's name and balance over the addresses, so a called
    service needs a name that answers with its pods: a headless Service (no virtual IP)
    selecting exactly the pods its regular Service selects, on the gRPC port, listing
    only ready pods. No other service gets one, and the regular Services stay. The
    gateway is called too, by the channel service, where that is deployed."""
    called = called_in(rendered)
    assert called and ("gateway" in called) == ("channels" in enabled_services(rendered))
    pods = pod_labels_by_component(rendered)
    headless = {s["metadata"]["name"]: s for s in rendered.of_kind("Service") if is_headless(s)}
    assert set(headless) == {f"kefu-{svc}-headless" for svc in called}
    for svc in called:
        service = headless[f"kefu-{svc}-headless"]
        regular = rendered.get("Service", f"kefu-{svc}")
        assert not is_headless(regular) and regular["spec"]["type"] != "ExternalName"
        spec = service["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP"
        assert spec["publishNotReadyAddresses"] is False
        assert spec["selector"] == regular["spec"]["selector"]
        assert [c for c, labels in pods.items() if selector_matches(spec["selector"], labels)] == [svc]
        assert component_of(service) == svc
        (port,) = spec["ports"]
        container = container_of(rendered.get("Deployment", f"kefu-{svc}"))
        assert port["name"] == "grpc" and port["port"] == SERVICES[svc]["grpc"]
        assert port["targetPort"] in ("grpc", container_port(container, "grpc"))
        assert port.get("protocol", "TCP") == "TCP"


def test_every_peer_url_names_a_headless_service_serving_it(rendered: Rendered) -> None:
    """Every KEFU_<NAME>_URL a rendered container gets names, with the scheme of the
    mode, a headless Service of this render that exposes the URL's port and selects the
    pods of service <name>, whose gRPC port that is; and the NetworkPolicies let the
    caller reach those pods on it (they select pods, whichever Service was dialled). A
    service the values leave out keeps its callers' URL, naming no Service (its calls
    fail as they would with the URL left out; under tls.internal an http:// default
    would stop the caller from starting)."""
    pods = pod_labels_by_component(rendered)
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    scheme = "https" if rendered.values["tls"]["internal"]["enabled"] else "http"
    seen = set()
    for d in rendered.of_kind("Deployment"):
        caller = component_of(d)
        for callee, url in peer_urls(container_env(rendered, d)).items():
            assert callee in CALLS[caller], (caller, callee)
            parts = urlsplit(url)
            assert parts.scheme == scheme and parts.path in ("", "/"), url
            if callee not in enabled_services(rendered):
                assert parts.hostname not in services, url
                continue
            service = services.get(parts.hostname)
            assert service is not None, f"{caller}: {url} names no Service of the release"
            assert is_headless(service), f"{caller}: {url} names a Service with a virtual IP"
            ports = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
            assert len(ports) == 1, f"{caller}: {parts.hostname} does not expose port {parts.port}"
            selected = [c for c, labels in pods.items() if selector_matches(service["spec"]["selector"], labels)]
            assert selected == [callee], (url, selected)
            target = ports[0]["targetPort"]
            container = container_of(rendered.get("Deployment", f"kefu-{callee}"))
            assert container_port(container, "grpc") == parts.port
            assert target in ("grpc", parts.port), url
            assert egress_allowed(rendered, caller, parts.port, pods[callee], CLUSTER_NAMESPACE_LABELS), url
            assert ingress_allowed(rendered, callee, parts.port, pods[caller], CLUSTER_NAMESPACE_LABELS), url
            seen.add((caller, callee))
    assert seen == {(caller, callee) for caller, callees in calls_in(rendered).items() for callee in callees}


def test_headless_service_names_fit_a_dns_label() -> None:
    """A Service name is a DNS label of at most 63 characters: the longest full name
    whose headless names fit renders, one character more is refused with the way out."""
    longest = 63 - len(max((f"-{svc}-headless" for svc in CALLED), key=len))
    fits = render({"fullnameOverride": "k" * longest})
    names = [o["metadata"]["name"] for o in fits.objects]
    assert max(len(n) for n in names) == 63
    assert all(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", s["metadata"]["name"])
               for s in fits.of_kind("Service"))
    with pytest.raises(helm.HelmError, match=f"fullnameOverride.*at most {longest} characters"):
        render({"fullnameOverride": "k" * (longest + 1)})


def test_each_deployment_has_an_hpa_targeting_it(rendered: Rendered) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in rendered.of_kind("HorizontalPodAutoscaler")}
    assert len(hpas) == len(enabled_services(rendered))
    for d in rendered.of_kind("Deployment"):
        name = d["metadata"]["name"]
        svc_values = rendered.values["services"][component_of(d)]["autoscaling"]
        hpa = hpas[name]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] == svc_values["minReplicas"]
        assert hpa["spec"]["maxReplicas"] == svc_values["maxReplicas"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
        assert targets["cpu"] == {"type": "Utilization",
                                  "averageUtilization": svc_values["targetCPUUtilizationPercentage"]}
        assert targets["memory"] == {"type": "Utilization",
                                     "averageUtilization": svc_values["targetMemoryUtilizationPercentage"]}
        assert (hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
                == svc_values["scaleDownStabilizationWindowSeconds"])
        # the HPA owns the replica count
        assert "replicas" not in d["spec"]
        # utilization is relative to requests: every container must request cpu and memory
        requests = container_of(d)["resources"]["requests"]
        assert "cpu" in requests and "memory" in requests


def test_without_autoscaling_the_deployment_sets_replicas() -> None:
    r = render({"services": {"ticket": {"autoscaling": {"enabled": False}, "replicas": 3}}})
    assert r.get("Deployment", "kefu-ticket")["spec"]["replicas"] == 3
    assert "kefu-ticket" not in {h["metadata"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")}
    assert len(r.of_kind("HorizontalPodAutoscaler")) == len(SERVICES) - 1


def test_a_service_can_be_scheduled_apart_from_the_others() -> None:
    vnni = {"feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI": "true"}
    spot = [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]
    r = render({"nodeSelector": {"pool": "kefu"}, "tolerations": spot,
                "services": {"router": {"nodeSelector": vnni}}})
    for d in r.of_kind("Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == (vnni if component_of(d) == "router" else {"pool": "kefu"})
        # what the service does not set stays chart-wide
        assert pod["tolerations"] == spot
        assert "affinity" not in pod


def test_grpc_liveness_readiness_and_startup_probes(rendered: Rendered) -> None:
    for d in rendered.of_kind("Deployment"):
        svc = component_of(d)
        container = container_of(d)
        grpc_port = container_port(container, "grpc")
        checks = {probe: probe_check(container, probe) for probe in ("livenessProbe", "readinessProbe", "startupProbe")}
        for probe, check in checks.items():
            assert check.port == grpc_port and check.host == "127.0.0.1", (svc, probe)
        # readiness follows the service's dependencies; liveness and start-up only that
        # the process runs, so an outage of a shared store restarts no pod
        assert checks["readinessProbe"].service == SERVICES[svc]["health"]
        assert checks["livenessProbe"].service == LIVENESS_SERVICE
        assert checks["startupProbe"].service == LIVENESS_SERVICE


def test_probes_speak_the_protocol_of_the_port(rendered: Rendered) -> None:
    """The kubelet's gRPC probe speaks only plaintext: a TLS port is probed with the
    image's grpc_health_probe over TLS, with the pod's own client certificate where the
    server demands one, so that every probe rendered can pass."""
    dockerfile = parse_dockerfile()
    for d in rendered.of_kind("Deployment"):
        svc = component_of(d)
        container = container_of(d)
        env = configmap_env(rendered, d)
        # the image carries the probe binary (deploy/Dockerfile)
        assert any(HEALTH_PROBE in i.args for stage in dockerfile.image_chain(svc) for i in stage.all("COPY"))
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            check = probe_check(container, probe)
            assert check.tls == ("KEFU_TLS_CERT" in env), (svc, probe)
            if not check.tls:
                assert "grpc" in container[probe]  # the kubelet's own, no exec where it is not needed
                continue
            # it dials its own pod over loopback: the handshake, not the name, is in question
            assert not check.verify
            if "KEFU_TLS_CLIENT_CA" in env:
                assert (check.client_cert, check.client_key) == (env["KEFU_TLS_CERT"], env["KEFU_TLS_KEY"])
            else:
                assert check.client_cert is None
            # an exec probe must end within the probe's timeout
            assert container[probe]["timeoutSeconds"] >= 2


def test_no_container_can_run_as_root(rendered: Rendered) -> None:
    for d in rendered.of_kind("Deployment"):
        pod = d["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert run_as_non_root is True, d["metadata"]["name"]
            assert run_as_user is not None and run_as_user != 0
            assert run_as_user == 10001
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert not sc["capabilities"].get("add")
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        # the read-only root still has a writable /tmp
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == rendered.of_kind("ServiceAccount")[0]["metadata"]["name"]
        assert pod["enableServiceLinks"] is False


def test_pod_disruption_budget_per_service(rendered: Rendered) -> None:
    pods = pod_labels_by_component(rendered)
    pdbs = rendered.of_kind("PodDisruptionBudget")
    assert len(pdbs) == len(enabled_services(rendered))
    covered = []
    for pdb in pdbs:
        selected = [c for c, labels in pods.items()
                    if selector_matches(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert len(selected) == 1
        covered.extend(selected)
        svc = selected[0]
        min_replicas = rendered.values["services"][svc]["autoscaling"]["minReplicas"]
        spec = pdb["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec)
        # a budget that can never be met would block every node drain
        if isinstance(spec.get("minAvailable"), int):
            assert spec["minAvailable"] < min_replicas, svc
        if isinstance(spec.get("maxUnavailable"), int):
            assert spec["maxUnavailable"] >= 1
    assert sorted(covered) == sorted(enabled_services(rendered))


# --------------------------------------------------------------------------- configuration


def test_each_service_gets_exactly_the_env_it_needs(rendered: Rendered) -> None:
    for d in rendered.of_kind("Deployment"):
        svc = component_of(d)
        env = configmap_env(rendered, d)
        assert env["KEFU_GRPC_PORT"] == str(SERVICES[svc]["grpc"])
        assert env["KEFU_METRICS_PORT"] == str(SERVICES[svc]["metrics"])
        assert env["KEFU_BIND_HOST"] == "0.0.0.0"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317")
        urls = {k for k in env if k.endswith("_URL") and k != "KEFU_PUBLIC_GATEWAY_URL"}
        assert urls == {f"KEFU_{callee.upper()}_URL" for callee in CALLS[svc]}
        scheme = "https" if rendered.values["tls"]["internal"]["enabled"] else "http"
        for callee in CALLS[svc]:
            assert env[f"KEFU_{callee.upper()}_URL"] == f"{scheme}://kefu-{callee}-headless:{SERVICES[callee]['grpc']}"
        assert ("KEFU_MODELS_DIR" in env) == (svc in NEEDS_MODELS)
        assert ("KEFU_TENANTS_DIR" in env) == (svc in NEEDS_TENANTS)
        assert env.get("KEFU_CHANNELS_HTTP_PORT") == (str(CHANNELS_HTTP_PORT) if svc == "channels" else None)
        assert env.get("KEFU_CHANNELS_SMTP_PORT") == (str(CHANNELS_SMTP_PORT) if svc == "channels" else None)
        # secrets never sit in a ConfigMap
        assert "DATABASE_URL" not in env and "REDIS_URL" not in env


def test_production_takes_credentials_from_the_existing_secret(production_render: Rendered) -> None:
    assert production_render.of_kind("Secret") == []
    for d in production_render.of_kind("Deployment"):
        svc = component_of(d)
        env = {e["name"]: e for e in container_of(d).get("env", [])}
        assert ("DATABASE_URL" in env) == (svc in NEEDS_DATABASE), svc
        assert ("REDIS_URL" in env) == (svc in NEEDS_REDIS), svc
        for name in ("DATABASE_URL", "REDIS_URL"):
            if name in env:
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "kefu-credentials", "key": name}


def test_chart_secret_when_urls_are_given() -> None:
    r = render({"secrets": {"databaseUrl": "postgres://kefu:pw@db:5432/kefu",
                            "redisUrl": "redis://cache:6379/0"}})
    secret = r.get("Secret", "kefu-secrets")
    assert secret["stringData"] == {"DATABASE_URL": "postgres://kefu:pw@db:5432/kefu",
                                    "REDIS_URL": "redis://cache:6379/0"}
    for d in r.of_kind("Deployment"):
        svc = component_of(d)
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container_of(d).get("env", [])}
        expected = set()
        if svc in NEEDS_DATABASE:
            expected.add("DATABASE_URL")
        if svc in NEEDS_REDIS:
            expected.add("REDIS_URL")
        assert set(env) == expected
        assert all(ref["name"] == "kefu-secrets" for ref in env.values())
        # pods restart when the credentials change
        assert "checksum/secret" in d["spec"]["template"]["metadata"]["annotations"]


def test_the_chart_sets_only_settings_the_binaries_read(rendered: Rendered) -> None:
    """Every variable in a ConfigMap is one a kefu binary declares (stack.SETTINGS)."""
    for cm in rendered.of_kind("ConfigMap"):
        invented = set(cm["data"]) - SETTINGS
        assert not invented, f"{cm['metadata']['name']}: {invented} are read by no kefu binary"


@pytest.mark.parametrize("service, variable, ref", [
    ("gateway", "SHOP_CUSTOMER_SECRET", {"secretName": "shop-customer-hmac", "key": "secret"}),
    ("channels", "DEMO_WEBHOOK_SECRET", {"secretName": "demo-channels", "key": "webhook-secret"}),
], ids=["customer_hmac_secret_env", "channels-secret"])
def test_a_service_gets_variables_from_named_secrets(service: str, variable: str, ref: dict[str, str]) -> None:
    """e.g. the secret a tenant names in customer_hmac_secret_env, for the gateway only,
    or one its [channels] name (`secret = { env = "DEMO_WEBHOOK_SECRET" }`), for the
    channel service only."""
    r = render({"services": {service: {"secretEnv": {variable: ref}}}})
    for d in r.of_kind("Deployment"):
        env = {e["name"]: e for e in container_of(d).get("env", [])}
        if component_of(d) != service:
            assert variable not in env
            continue
        assert env[variable] == {"name": variable, "valueFrom": {
            "secretKeyRef": {"name": ref["secretName"], "key": ref["key"]}}}
    # the value lives in the named Secret only: the chart makes none and the ConfigMap has no copy
    assert r.of_kind("Secret") == []
    assert variable not in r.get("ConfigMap", f"kefu-{service}")["data"]


def test_default_install_has_no_database_and_warns(default_render: Rendered) -> None:
    assert default_render.of_kind("Secret") == []
    for d in default_render.of_kind("Deployment"):
        assert "env" not in container_of(d)
    assert "WARNING: no DATABASE_URL" in default_render.notes


def test_config_change_rolls_the_pods(default_render: Rendered) -> None:
    r = render({"config": {"rustLog": "debug"}})
    for d in default_render.of_kind("Deployment"):
        name = d["metadata"]["name"]
        before = d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        after = r.get("Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert before != after


def test_other_release_names_keep_urls_consistent() -> None:
    r = render(name="support", namespace="cs")
    gateway = r.get("Deployment", "support-kefu-gateway")
    assert configmap_env(r, gateway)["KEFU_ORCHESTRATOR_URL"] == "http://support-kefu-orchestrator-headless:50052"
    assert {s["metadata"]["name"] for s in r.of_kind("Service")} == (
        {f"support-kefu-{s}" for s in SERVICES} | {f"support-kefu-{s}-headless" for s in CALLED}
        | {"support-kefu-channels-smtp"})


# --------------------------------------------------------------------------- network policies

CLUSTER_NAMESPACE_LABELS = {"kubernetes.io/metadata.name": NAMESPACE}
MONITORING_NAMESPACE_LABELS = {"kubernetes.io/metadata.name": "monitoring"}
INGRESS_NGINX = ({"kubernetes.io/metadata.name": "ingress-nginx"}, {"app.kubernetes.io/name": "ingress-nginx"})


def label_selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, "matchExpressions are not evaluated by this test"
    return selector_matches(selector.get("matchLabels", {}), labels)


def peer_selects(peer: dict[str, Any], pod_labels: dict[str, str] | None,
                 namespace_labels: dict[str, str] | None) -> bool:
    """Whether a NetworkPolicy peer admits a pod (pod_labels None: a host outside the cluster)."""
    if "ipBlock" in peer:
        return pod_labels is None
    if pod_labels is None:
        return False
    if "namespaceSelector" in peer:
        if not label_selector_matches(peer["namespaceSelector"], namespace_labels or {}):
            return False
    elif namespace_labels != CLUSTER_NAMESPACE_LABELS:
        return False  # a bare podSelector only selects pods of the policy's namespace
    return label_selector_matches(peer.get("podSelector"), pod_labels)


def rule_admits(rule: dict[str, Any], peers_key: str, port: int, pod_labels: dict[str, str] | None,
                namespace_labels: dict[str, str] | None) -> bool:
    ports = rule.get("ports")
    assert ports, "a rule without ports opens every port"
    if not any(p["port"] == port for p in ports):
        return False
    peers = rule.get(peers_key)
    if not peers:
        return True
    return any(peer_selects(peer, pod_labels, namespace_labels) for peer in peers)


def policy_for(r: Rendered, component: str) -> dict[str, Any]:
    pods = pod_labels_by_component(r)
    found = [p for p in r.of_kind("NetworkPolicy")
             if label_selector_matches(p["spec"]["podSelector"], pods[component])]
    assert len(found) == 1, component
    return found[0]


def ingress_allowed(r: Rendered, target: str, port: int, pod_labels: dict[str, str] | None,
                    namespace_labels: dict[str, str] | None) -> bool:
    spec = policy_for(r, target)["spec"]
    assert "Ingress" in spec["policyTypes"]
    return any(rule_admits(rule, "from", port, pod_labels, namespace_labels) for rule in spec.get("ingress", []))


def egress_allowed(r: Rendered, source: str, port: int, pod_labels: dict[str, str] | None,
                   namespace_labels: dict[str, str] | None) -> bool:
    spec = policy_for(r, source)["spec"]
    assert "Egress" in spec["policyTypes"]
    return any(rule_admits(rule, "to", port, pod_labels, namespace_labels) for rule in spec.get("egress", []))


def test_grpc_reachability_is_exactly_the_call_graph(rendered: Rendered) -> None:
    pods = pod_labels_by_component(rendered)
    for caller in enabled_services(rendered):
        for callee in enabled_services(rendered):
            port = SERVICES[callee]["grpc"]
            allowed = (egress_allowed(rendered, caller, port, pods[callee], CLUSTER_NAMESPACE_LABELS)
                       and ingress_allowed(rendered, callee, port, pods[caller], CLUSTER_NAMESPACE_LABELS))
            assert allowed == (callee in CALLS[caller]), f"{caller} -> {callee}"


def test_only_the_public_ports_are_reachable_from_outside(default_render: Rendered,
                                                          production_render: Rendered) -> None:
    """The gateway's gRPC port and pages, and the channel service's HTTP endpoints."""
    stranger = {"app": "something-else"}
    public = {"gateway": (SERVICES["gateway"]["grpc"], WEB_PORT), "channels": (CHANNELS_HTTP_PORT,)}
    for svc, ports in SERVICES.items():
        for r in (default_render, production_render):
            from_other_namespace = ingress_allowed(r, svc, ports["grpc"], stranger, {"kubernetes.io/metadata.name": "x"})
            from_internet = ingress_allowed(r, svc, ports["grpc"], None, None)
            if svc != "gateway":
                assert not from_other_namespace and not from_internet, svc
            # only the gateway has pages, only the channel service the channels' endpoints
            for owner, port in (("gateway", WEB_PORT), ("channels", CHANNELS_HTTP_PORT),
                                ("channels", CHANNELS_SMTP_PORT)):
                if svc != owner:
                    assert not ingress_allowed(r, svc, port, None, None), (svc, port)
    for svc, ports in public.items():
        for port in ports:
            # default: any source (the gateway is the public entry point, the channels'
            # servers call the channel service)
            assert ingress_allowed(default_render, svc, port, None, None), (svc, port)
            # production: only the ingress controller reaches them
            ns_labels, pod_labels = INGRESS_NGINX
            assert ingress_allowed(production_render, svc, port, pod_labels, ns_labels), (svc, port)
            assert not ingress_allowed(production_render, svc, port, None, None), (svc, port)
            assert not ingress_allowed(production_render, svc, port, {"app": "x"}, CLUSTER_NAMESPACE_LABELS)


def test_mail_servers_reach_the_smtp_listener_through_its_own_service(default_render: Rendered,
                                                                     production_render: Rendered) -> None:
    """Port 25 of the SMTP Service reaches the channel pods' listener, from anywhere (the
    senders' mail servers) unless networkPolicy.smtpFrom says otherwise."""
    for r in (default_render, production_render):
        service = r.get("Service", "kefu-channels-smtp")
        (port,) = service["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (25, "smtp")
        pods = pod_labels_by_component(r)
        assert [c for c, labels in pods.items() if selector_matches(service["spec"]["selector"], labels)] == ["channels"]
        assert ingress_allowed(r, "channels", CHANNELS_SMTP_PORT, None, None)
    assert "kefu-channels-smtp" in production_render.notes
    restricted = render({"networkPolicy": {"smtpFrom": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}})
    assert not ingress_allowed(restricted, "channels", CHANNELS_SMTP_PORT, {"app": "x"}, CLUSTER_NAMESPACE_LABELS)
    exposed = render({"channels": {"smtp": {"service": {"type": "LoadBalancer", "port": 25,
                                                        "annotations": {"example.com/lb": "mail"}}}}})
    smtp = exposed.get("Service", "kefu-channels-smtp")
    assert smtp["spec"]["type"] == "LoadBalancer"
    assert smtp["metadata"]["annotations"] == {"example.com/lb": "mail"}
    off = render({"channels": {"smtp": {"enabled": False}}})
    assert "kefu-channels-smtp" not in {s["metadata"]["name"] for s in off.of_kind("Service")}
    assert "smtp" not in {p["name"] for p in container_of(off.get("Deployment", "kefu-channels"))["ports"]}
    assert not ingress_allowed(off, "channels", CHANNELS_SMTP_PORT, None, None)
    assert "kefu-channels-smtp" not in off.notes


def test_the_smtp_listener_offers_starttls_with_the_named_certificate() -> None:
    """The Secret is mounted into the channel pods only, and the listener's settings name
    its files (the variables the binary reads)."""
    r = render({"channels": {"smtp": {"tls": {"existingSecret": "kefu-mx-tls"}}}})
    for d in r.of_kind("Deployment"):
        svc = component_of(d)
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["name"]: m for m in container_of(d).get("volumeMounts", [])}
        env = container_env(r, d)
        if svc != "channels":
            assert "smtp-tls" not in volumes and "KEFU_CHANNELS_SMTP_TLS_CERT" not in env, svc
            continue
        assert volumes["smtp-tls"]["secret"]["secretName"] == "kefu-mx-tls"
        mount = mounts["smtp-tls"]
        assert mount["readOnly"] is True
        assert env["KEFU_CHANNELS_SMTP_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
        assert env["KEFU_CHANNELS_SMTP_TLS_KEY"] == f"{mount['mountPath']}/tls.key"
        assert {"KEFU_CHANNELS_SMTP_TLS_CERT", "KEFU_CHANNELS_SMTP_TLS_KEY"} <= SETTINGS
    plain = render({})
    channels = plain.get("Deployment", "kefu-channels")
    assert "KEFU_CHANNELS_SMTP_TLS_CERT" not in container_env(plain, channels)


def test_metrics_ports_open_to_the_monitoring_namespace_only(rendered: Rendered) -> None:
    scraper = {"app.kubernetes.io/name": "prometheus"}
    pods = pod_labels_by_component(rendered)
    for svc in enabled_services(rendered):
        ports = SERVICES[svc]
        assert ingress_allowed(rendered, svc, ports["metrics"], scraper, MONITORING_NAMESPACE_LABELS)
        assert not ingress_allowed(rendered, svc, ports["metrics"], None, None)
        assert not ingress_allowed(rendered, svc, ports["metrics"], pods["gateway"], CLUSTER_NAMESPACE_LABELS)
        # and the monitoring namespace cannot call the internal gRPC APIs
        if svc != "gateway":
            assert not ingress_allowed(rendered, svc, ports["grpc"], scraper, MONITORING_NAMESPACE_LABELS)


def test_egress_limited_to_dns_callees_database_redis_otlp_and_channels(rendered: Rendered) -> None:
    np_values = rendered.values["networkPolicy"]
    database_port = np_values["database"]["port"]
    redis_port = np_values["redis"]["port"]
    otlp_port = np_values["otlp"]["port"]
    kube_dns = ({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
    for svc, callees in calls_in(rendered).items():
        spec = policy_for(rendered, svc)["spec"]
        ports_opened = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        expected = {53, otlp_port} | {SERVICES[c]["grpc"] for c in callees}
        if svc in NEEDS_DATABASE:
            expected.add(database_port)
        if svc in NEEDS_REDIS:
            expected.add(redis_port)
        if svc == "channels":  # replies out to the tenants' webhook URLs and WeChat's API
            expected |= set(np_values["channelDelivery"]["ports"])
        assert ports_opened == expected, svc
        assert egress_allowed(rendered, svc, 53, *kube_dns)
        dns_protocols = {p.get("protocol", "TCP") for rule in spec["egress"] for p in rule["ports"] if p["port"] == 53}
        assert dns_protocols == {"UDP", "TCP"}
        # DNS only to the cluster DNS pods, not to any pod
        assert not egress_allowed(rendered, svc, 53, {"app": "x"}, {"kubernetes.io/metadata.name": "x"})


def test_production_egress_goes_only_to_the_named_destinations(production_render: Rendered) -> None:
    elsewhere = ({"app": "x"}, {"kubernetes.io/metadata.name": "x"})
    collector = ({"app.kubernetes.io/name": "jaeger"}, {"kubernetes.io/metadata.name": "observability"})
    for svc in SERVICES:
        for port in (5432, 6379, 4317):
            assert not egress_allowed(production_render, svc, port, *elsewhere), (svc, port)
        assert egress_allowed(production_render, svc, 4317, *collector)
        # PostgreSQL and Redis sit outside the cluster, in the ipBlocks of values-production.yaml
        assert egress_allowed(production_render, svc, 5432, None, None) == (svc in NEEDS_DATABASE)
        assert egress_allowed(production_render, svc, 6379, None, None) == (svc in NEEDS_REDIS)
        # replies leave the cluster from the channel service only, and never to its pods
        for port in (443, 80):
            assert egress_allowed(production_render, svc, port, None, None) == (svc == "channels"), (svc, port)
            assert not egress_allowed(production_render, svc, port, *elsewhere), (svc, port)


def test_production_keeps_channel_deliveries_off_private_addresses(production_values: dict[str, Any]) -> None:
    """A tenant's deliver_url is the tenant's to choose: in production it cannot point the
    channel service at the cluster's or the company's private addresses."""
    (rule,) = production_values["networkPolicy"]["channelDelivery"]["to"]
    block = rule["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["except"])
    stores = [r["ipBlock"]["cidr"] for key in ("database", "redis") for r in production_values["networkPolicy"][key]["to"]]
    assert stores and all(any(ipaddress.ip_network(s).subnet_of(ipaddress.ip_network(e)) for e in block["except"])
                          for s in stores)


def test_network_policies_can_be_turned_off() -> None:
    assert render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy") == []


# --------------------------------------------------------------------------- TLS


def test_tls_mounts_and_settings_follow_the_mode(rendered: Rendered) -> None:
    """Plaintext, public TLS on the gateway only, or mutual TLS between all services: who
    mounts which Secret, who serves TLS, who demands client certificates, who calls
    over https:// (every call edge of the Rust sources) and verifies with the CA."""
    tls = rendered.values["tls"]
    internal = tls["internal"]["enabled"]
    for d in rendered.of_kind("Deployment"):
        svc = component_of(d)
        env = configmap_env(rendered, d)
        secret = tls_mount(d)
        if internal:
            assert secret == (tls["internal"]["existingSecret"] or f"kefu-{svc}-mtls"), svc
        elif svc == "gateway" and tls["gateway"]["enabled"]:
            assert secret == tls["gateway"]["existingSecret"]
        else:
            assert secret is None, svc
        tls_env = {k: v for k, v in env.items() if k.startswith("KEFU_TLS_")}
        if secret is None:
            assert tls_env == {}, svc
            continue
        expected = {"KEFU_TLS_CERT": f"{TLS_DIR}/tls.crt", "KEFU_TLS_KEY": f"{TLS_DIR}/tls.key"}
        if internal and svc != "gateway":  # the gateway's port is public: no client certificates
            expected["KEFU_TLS_CLIENT_CA"] = f"{TLS_DIR}/ca.crt"
        if internal and CALLS[svc]:
            expected["KEFU_TLS_CA"] = f"{TLS_DIR}/ca.crt"
        assert tls_env == expected, svc
        for callee, url in peer_urls(env).items():
            assert urlsplit(url).scheme == ("https" if internal else "http"), (svc, callee)
        assert set(peer_urls(env)) == CALLS[svc]


def test_internal_certificates_carry_the_names_the_callers_dial(production_render: Rendered,
                                                                 production_values: dict[str, Any]) -> None:
    """cert-manager makes one certificate per service, for the Service name in every
    caller's URL (the Rust client verifies the URL's host name), usable as server and as
    client, issued by the configured CA issuer into the Secret the pod mounts."""
    certificates = {c["spec"]["secretName"]: c for c in production_render.of_kind("Certificate")}
    issuer = production_values["tls"]["internal"]["certManager"]["issuerRef"]
    dialled: dict[str, set[str]] = {svc: set() for svc in SERVICES}
    for d in production_render.of_kind("Deployment"):
        for callee, url in peer_urls(configmap_env(production_render, d)).items():
            dialled[callee].add(urlsplit(url).hostname)
    assert all(dialled[c] for callees in CALLS.values() for c in callees)
    for d in production_render.of_kind("Deployment"):
        svc = component_of(d)
        certificate = certificates[tls_mount(d)]
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        assert component_of(certificate) == svc
        spec = certificate["spec"]
        assert dialled[svc] <= set(spec["dnsNames"]), svc
        hosts = [f"kefu-{svc}"] + ([f"kefu-{svc}-headless"] if svc in CALLED else [])
        assert set(spec["dnsNames"]) == {f"{host}{suffix}" for host in hosts
                                         for suffix in ("", f".{NAMESPACE}", f".{NAMESPACE}.svc",
                                                        f".{NAMESPACE}.svc.cluster.local")}, svc
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["issuerRef"] == {"group": "cert-manager.io", **issuer}
        assert spec["privateKey"]["rotationPolicy"] == "Always"
    assert len(certificates) == len(SERVICES)


def test_no_secret_serves_two_purposes(rendered: Rendered) -> None:
    """The ingress's public certificate and the internal ones never share a Secret."""
    ingress_secrets = {t["secretName"] for i in rendered.of_kind("Ingress") for t in i["spec"].get("tls", [])}
    internal = {tls_mount(d) for d in rendered.of_kind("Deployment")} - {None}
    assert not ingress_secrets & internal
    made = [c["spec"]["secretName"] for c in rendered.of_kind("Certificate")]
    assert len(made) == len(set(made))


IMPOSSIBLE_TLS = {
    "public and internal TLS at once": ({"tls": {"gateway": {"enabled": True, "existingSecret": "pub"},
                                                  "internal": {"enabled": True}}}, "cannot both be enabled"),
    "gateway TLS without a Secret": ({"tls": {"gateway": {"enabled": True}}}, "tls.gateway.existingSecret"),
    "cert-manager and a shared Secret": ({"tls": {"internal": {
        "enabled": True, "existingSecret": "one", "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}},
        "leave tls.internal.existingSecret empty"),
    "cert-manager without an issuer": ({"tls": {"internal": {"enabled": True, "certManager": {"enabled": True}}}},
                                       "issuerRef.name"),
    # the channel service calls the gateway by its headless name: a public certificate lacks it
    "public TLS on the gateway with the channel service": (
        {"tls": {"gateway": {"enabled": True, "existingSecret": "pub"}}}, "services.channels.enabled=false"),
}


@pytest.mark.parametrize("overrides, message", list(IMPOSSIBLE_TLS.values()), ids=list(IMPOSSIBLE_TLS))
def test_tls_settings_that_cannot_work_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(overrides)


# --------------------------------------------------------------------------- ingress, monitoring


def test_ingress_routes_grpc_over_tls_to_the_gateway(production_render: Rendered,
                                                     production_values: dict[str, Any]) -> None:
    ingress = production_render.get("Ingress", "kefu-gateway")
    # production's gateway serves its internal certificate: the ingress re-encrypts
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    host = production_values["ingress"]["host"]
    assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": production_values["ingress"]["tls"]["secretName"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == host
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    gateway_service = production_render.get("Service", backend["name"])
    assert component_of(gateway_service) == "gateway"
    assert backend["port"] == {"name": "grpc"}


@pytest.mark.parametrize("tls_values, protocol", [({}, "GRPC"), (GATEWAY_TLS_VALUES, "GRPCS"),
                                                   (SHARED_MTLS_VALUES, "GRPCS")],
                         ids=["plaintext", "gateway-tls", "internal-tls"])
def test_backend_protocol_follows_the_ports_and_cannot_be_overridden(tls_values: dict[str, Any],
                                                                      protocol: str) -> None:
    r = render({**tls_values, "ingress": {
        "enabled": True, "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "HTTP",
                                         "cert-manager.io/cluster-issuer": "letsencrypt"}}})
    grpc = r.get("Ingress", "kefu-gateway")["metadata"]["annotations"]
    web = r.get("Ingress", "kefu-gateway-web")["metadata"]["annotations"]
    assert grpc["nginx.ingress.kubernetes.io/backend-protocol"] == protocol
    # the pages and the channels' endpoints are plain HTTP
    http = [web] + [i["metadata"]["annotations"] for i in r.of_kind("Ingress") if component_of(i) == "channels"]
    assert len(http) == 1 + ("channels" in enabled_services(r))
    # one certificate for the host, requested once (by the gRPC Ingress)
    assert grpc["cert-manager.io/cluster-issuer"] == "letsencrypt"
    for annotations in http:
        assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTP"
        assert not any(k.startswith("cert-manager.io/") for k in annotations)


WEB_ROUTE = re.compile(r'\.route\(\s*"([^"]+)"')


def test_the_pages_are_routed_on_the_ingress_host(production_render: Rendered,
                                                  production_values: dict[str, Any]) -> None:
    """Every route of the pages (services/gateway/src/web.rs) and every asset the pages
    load (web/src/**/*.html) goes to the web port; the rest of the host stays gRPC."""
    web = production_render.get("Ingress", "kefu-gateway-web")
    grpc = production_render.get("Ingress", "kefu-gateway")
    assert web["spec"]["tls"] == grpc["spec"]["tls"]
    (rule,) = web["spec"]["rules"]
    assert rule["host"] == production_values["ingress"]["host"]
    paths = rule["http"]["paths"]
    assert all(p["backend"]["service"] == {"name": "kefu-gateway", "port": {"name": "web"}} for p in paths)

    def routed(path: str) -> bool:
        return any(path == p["path"] if p["pathType"] == "Exact"
                   else path == p["path"] or path.startswith(p["path"].rstrip("/") + "/") for p in paths)

    routes = WEB_ROUTE.findall((REPO / "services/gateway/src/web.rs").read_text(encoding="utf-8"))
    assert "/chat" in routes and "/config.json" in routes
    fixed = [r for r in routes if "{" not in r]
    assert all(routed(r) for r in fixed), fixed
    assets = {m for page in (REPO / "web" / "src").rglob("*.html")
              for m in re.findall(r'(?:src|href)="(/[^"]*)"', page.read_text(encoding="utf-8"))}
    assert assets and all(routed(a) for a in assets), assets
    # gRPC methods are not
    assert not routed("/kefu.v1.ConversationService/SendMessage")
    # the pages call the gateway on their own origin
    gateway_env = configmap_env(production_render, production_render.get("Deployment", "kefu-gateway"))
    assert gateway_env["KEFU_PUBLIC_GATEWAY_URL"] == f"https://{production_values['ingress']['host']}"
    assert gateway_env["KEFU_WEB_PORT"] == str(WEB_PORT)


def test_web_settings_and_turning_the_pages_off() -> None:
    r = render({"web": {"origins": ["https://shop.example.com", "https://help.example.com"],
                        "publicGatewayUrl": "https://grpc.example.com"}, "ingress": {"enabled": True}})
    env = configmap_env(r, r.get("Deployment", "kefu-gateway"))
    assert env["KEFU_WEB_ORIGINS"] == "https://shop.example.com,https://help.example.com"
    assert env["KEFU_PUBLIC_GATEWAY_URL"] == "https://grpc.example.com"
    for d in r.of_kind("Deployment"):  # the gateway's settings only
        if component_of(d) != "gateway":
            assert not {"KEFU_WEB_PORT", "KEFU_WEB_ORIGINS"} & configmap_env(r, d).keys()

    off = render({"web": {"enabled": False}, "ingress": {"enabled": True}})
    gateway = off.get("Deployment", "kefu-gateway")
    assert configmap_env(off, gateway)["KEFU_WEB_PORT"] == "0"
    assert "web" not in {p["name"] for p in container_of(gateway)["ports"]}
    assert "web" not in {p["name"] for p in off.get("Service", "kefu-gateway")["spec"]["ports"]}
    assert sorted(i["metadata"]["name"] for i in off.of_kind("Ingress")) == ["kefu-channels", "kefu-gateway"]
    assert not ingress_allowed(off, "gateway", WEB_PORT, None, None)


def routed_by(ingress: dict[str, Any], path: str) -> bool:
    (rule,) = ingress["spec"]["rules"]
    return any(path == p["path"] if p["pathType"] == "Exact"
               else path == p["path"] or path.startswith(p["path"].rstrip("/") + "/")
               for p in rule["http"]["paths"])


def test_the_channel_endpoints_are_routed_on_the_ingress_host(production_render: Rendered,
                                                              production_values: dict[str, Any]) -> None:
    """Every route of the channel service's HTTP port (services/channels/src/http.rs) goes
    to it, plain HTTP, on the gateway's host and certificate; nothing else does."""
    channels = production_render.get("Ingress", "kefu-channels")
    grpc = production_render.get("Ingress", "kefu-gateway")
    assert component_of(channels) == "channels"
    assert channels["spec"]["tls"] == grpc["spec"]["tls"]
    assert channels["spec"]["ingressClassName"] == grpc["spec"]["ingressClassName"]
    (rule,) = channels["spec"]["rules"]
    assert rule["host"] == production_values["ingress"]["host"]
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend == {"name": "kefu-channels", "port": {"name": "channels-http"}}
        service = production_render.get("Service", backend["name"])
        assert "channels-http" in {p["name"] for p in service["spec"]["ports"]}
    routes = WEB_ROUTE.findall(CHANNEL_ROUTES.read_text(encoding="utf-8"))
    assert sorted(routes) == ["/webhooks/{tenant}", "/wechat/{tenant}"]
    for route in routes:
        assert routed_by(channels, route.replace("{tenant}", "demo")), route
    # longer prefixes than the gateway's "/": nginx sends these paths to the channel service
    assert all(len(p["path"]) > 1 for p in rule["http"]["paths"])
    assert not routed_by(channels, "/kefu.v1.ConversationService/SendMessage")
    assert not routed_by(channels, "/chat")
    assert "Outside channels" in production_render.notes
    assert f"POST https://{rule['host']}/webhooks/<tenant>" in production_render.notes
    assert f"https://{rule['host']}/wechat/<tenant>" in production_render.notes


@pytest.mark.parametrize("switches, paths", [
    ({"webhooks": True, "wechat": False}, ["/webhooks"]),
    ({"webhooks": False, "wechat": True}, ["/wechat"]),
    ({"webhooks": False, "wechat": False}, []),
], ids=["webhooks-only", "wechat-only", "none"])
def test_each_channel_route_can_be_switched_off(switches: dict[str, bool], paths: list[str]) -> None:
    r = render({"ingress": {"enabled": True}, "channels": {"ingress": switches}})
    ingresses = [i for i in r.of_kind("Ingress") if component_of(i) == "channels"]
    assert [p["path"] for i in ingresses for p in i["spec"]["rules"][0]["http"]["paths"]] == paths
    assert len(ingresses) == (1 if paths else 0)  # no Ingress without a path
    # the endpoints stay up inside the cluster either way
    assert "channels-http" in {p["name"] for p in r.get("Service", "kefu-channels")["spec"]["ports"]}


def test_without_the_channel_service_nothing_of_it_is_rendered() -> None:
    r = render({"ingress": {"enabled": True}, "services": {"channels": {"enabled": False}}})
    assert not [o for o in r.objects if component_of(o) == "channels"]
    # no caller is left for the gateway's headless Service
    assert "kefu-gateway-headless" not in {s["metadata"]["name"] for s in r.of_kind("Service")}
    assert "port-forward svc/kefu-channels" not in r.notes and "Outside channels" not in r.notes


def test_service_monitor_scrapes_every_service(production_render: Rendered) -> None:
    (sm,) = production_render.of_kind("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = sm["spec"]["selector"]
    scraped = []
    for service in production_render.of_kind("Service"):
        labels = service["metadata"]["labels"]
        if not selector_matches(selector["matchLabels"], labels):
            continue
        if all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
               if e["operator"] == "In"):
            if "metrics" in {p["name"] for p in service["spec"]["ports"]}:
                scraped.append(component_of(service))
            else:  # a headless Service carries the gRPC port only, the SMTP one SMTP only:
                # no second target per pod
                assert is_headless(service) or is_smtp(service), service["metadata"]["name"]
    assert sorted(scraped) == sorted(SERVICES)
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True  # keep service="kefu-<svc>" from the metrics
    (relabel,) = endpoint["relabelings"]
    assert relabel["targetLabel"] == "job" and relabel["replacement"] == "kefu-$1"


def monitoring_rule_files() -> list[Path]:
    return sorted((REPO / "monitoring" / "rules").glob("*.yml"))


def test_chart_rule_files_are_identical_to_monitoring_rules() -> None:
    source = monitoring_rule_files()
    copies = sorted((CHART / "files" / "rules").glob("*.yml"))
    assert source, "monitoring/rules/*.yml not found"
    assert [p.name for p in copies] == [p.name for p in source], "run helm/sync-rules.sh"
    for original, copy_ in zip(source, copies):
        assert filecmp.cmp(original, copy_, shallow=False), f"{copy_} differs: run helm/sync-rules.sh"


def test_prometheus_rule_holds_the_monitoring_rule_groups(production_render: Rendered) -> None:
    (rule,) = production_render.of_kind("PrometheusRule")
    expected_groups = []
    for path in monitoring_rule_files():
        expected_groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    assert rule["spec"]["groups"] == expected_groups
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names))
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --------------------------------------------------------------------------- values schema


def schema() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.schema.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("values_file", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_values_files_satisfy_the_schema(values_file: Path | None) -> None:
    values = load_values_file(values_file) if values_file else None
    with helm.Chart.load(str(CHART)) as chart:
        merged = chart.merge_values(values)
        chart.validate_schema(merged)
    jsonschema.Draft7Validator(schema()).validate(merged)


BAD_VALUES = {
    "replicas as a word": {"services": {"gateway": {"replicas": "two"}}},
    "unknown top-level key": {"replicaCount": 3},
    "unknown service": {"services": {"frontend": {"enabled": True}}},
    "unknown service setting": {"services": {"router": {"gpu": True}}},
    "service node selector not a string": {"services": {"router": {"nodeSelector": {"vnni": True}}}},
    "port out of range": {"services": {"ticket": {"grpcPort": 70000}}},
    "hpa target as a string": {"services": {"router": {"autoscaling": {"targetCPUUtilizationPercentage": "70%"}}}},
    "call to an unknown service": {"services": {"gateway": {"calls": ["billing"]}}},
    "root user": {"securityContext": {"runAsUser": 0}},
    "root allowed": {"podSecurityContext": {"runAsNonRoot": False}},
    "writable root filesystem": {"securityContext": {"readOnlyRootFilesystem": False}},
    "privilege escalation": {"securityContext": {"allowPrivilegeEscalation": True}},
    "ingress flag as a string": {"ingress": {"enabled": "yes"}},
    "bad log format": {"config": {"logFormat": "xml"}},
    "bad database url": {"secrets": {"databaseUrl": "mysql://db/kefu"}},
    "bad resource quantity": {"services": {"sentiment": {"resources": {"limits": {"memory": "lots"}}}}},
    "tls flag as a string": {"tls": {"internal": {"enabled": "yes"}}},
    "unknown tls setting": {"tls": {"internal": {"clientCa": "ca.pem"}}},
    "secret name with capitals": {"tls": {"gateway": {"existingSecret": "Kefu_TLS"}}},
    "issuer kind empty": {"tls": {"internal": {"certManager": {"issuerRef": {"kind": ""}}}}},
    "secret variable without a key": {"services": {"gateway": {"secretEnv": {"SHOP_SECRET": {"secretName": "s"}}}}},
    "secret variable with a bad name": {"services": {"gateway": {"secretEnv": {
        "SHOP-SECRET": {"secretName": "s", "key": "k"}}}}},
    "web port zero": {"web": {"port": 0}},
    "channels port zero": {"channels": {"httpPort": 0}},
    "channel route switch as a string": {"channels": {"ingress": {"webhooks": "yes"}}},
    "unknown channel route": {"channels": {"ingress": {"email": True}}},
    "channel delivery without a port": {"networkPolicy": {"channelDelivery": {"ports": []}}},
    "web origin with a path": {"web": {"origins": ["https://shop.example.com/chat"]}},
}


@pytest.mark.parametrize("overrides", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_schema_rejects_wrong_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError) as excinfo:
        render(overrides)
    assert "schema" in str(excinfo.value).lower() or "values" in str(excinfo.value).lower()
    with helm.Chart.load(str(CHART)) as chart:
        merged = chart.merge_values(overrides)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema()).validate(merged)


# --------------------------------------------------------------------------- NOTES.txt


def test_notes_tell_how_to_try_the_release(rendered: Rendered) -> None:
    notes = rendered.notes
    assert "port-forward svc/kefu-gateway 50051:50051 8080:8080" in notes
    tls = rendered.values["tls"]
    # grpcurl as the gateway's port speaks: plaintext, its internal CA, or a public certificate
    if tls["internal"]["enabled"]:
        secret = tls["internal"]["existingSecret"] or "kefu-gateway-mtls"
        assert f"get secret {secret} -o jsonpath='{{.data.ca\\.crt}}'" in notes
        assert "grpcurl -cacert kefu-ca.crt -authority kefu-gateway localhost:50051 list" in notes
        assert "mutual TLS" in notes
    elif tls["gateway"]["enabled"]:
        assert "grpcurl -insecure localhost:50051 list" in notes
    else:
        assert "grpcurl -plaintext localhost:50051 list" in notes
    assert "kefu.v1.ConversationService/SendMessage" in notes
    assert '{"tenant_id":"demo","customer_id":"c1","text":' in notes
    for svc in enabled_services(rendered):
        assert f"kefu-{svc}" in notes
    if "channels" in enabled_services(rendered) and not rendered.values["ingress"]["enabled"]:
        assert f"port-forward svc/kefu-channels {CHANNELS_HTTP_PORT}:{CHANNELS_HTTP_PORT}" in notes


def test_notes_use_the_ingress_when_enabled(production_render: Rendered) -> None:
    assert "grpcurl kefu.example.com:443 list" in production_render.notes
    assert "Chat: https://kefu.example.com/chat?tenant=demo" in production_render.notes
    assert "WARNING: no DATABASE_URL" not in production_render.notes
