"""deploy/docker-compose.yml: parsed against the Compose Specification (compose-spec
package, strict about unknown keys and value formats) after the same interpolation
`docker compose` does with deploy/.env, then checked for the stack's invariants."""

from __future__ import annotations

import shutil
import subprocess
from collections import deque
from typing import Any

import pytest
import yaml
from compose_spec import PyOptions

from deploy_support import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_FILE,
    InterpolationError,
    interpolate,
    interpolated_compose,
    load_compose,
    read_env_file,
)
from stack import (
    CALLS,
    CHANNELS_HTTP_PORT,
    CHANNELS_SMTP_PORT,
    NEEDS_DATABASE,
    NEEDS_REDIS,
    PEER_URL_SETTING,
    PROBED,
    REPO,
    SERVICES,
    SETTINGS,
    WEB_PORT,
)

KEFU = [f"kefu-{s}" for s in SERVICES]
INFRA = ["postgres", "redis", "jaeger", "prometheus", "grafana"]
# the container ports published on the host: the gateway's gRPC port and its pages, the
# channel service's endpoints and SMTP listener, the UIs
PUBLISHED = {"kefu-gateway": {50051, WEB_PORT}, "kefu-channels": {CHANNELS_HTTP_PORT, CHANNELS_SMTP_PORT}, "jaeger": {16686},
             "prometheus": {9090}, "grafana": {3000}}


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env_file()


@pytest.fixture(scope="module")
def interpolated(env: dict[str, str]) -> str:
    return interpolated_compose(env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_compose_file_follows_the_compose_specification(interpolated: str) -> None:
    project = PyOptions(apply_merge=True).from_yaml(interpolated)
    project.validate()  # every referenced volume and network is declared
    # and the typed models generated from the compose-spec JSON schema accept it too
    spec = project.to_spec()
    assert set(spec.services) == set(KEFU + INFRA)
    assert sorted(project.service_names()) == sorted(KEFU + INFRA)


def test_the_spec_parser_rejects_mistakes(interpolated: str) -> None:
    """The parser used above is strict: a misspelt key or a bad duration fails."""
    broken_key = interpolated.replace("    healthcheck:\n", "    healthchek:\n", 1)
    broken_duration = interpolated.replace("interval: 10s", "interval: ten seconds", 1)
    broken_condition = interpolated.replace("condition: service_healthy", "condition: healthy", 1)
    for text in (broken_key, broken_duration, broken_condition):
        assert text != interpolated
        with pytest.raises(ValueError):
            PyOptions(apply_merge=True).from_yaml(text)


def test_every_variable_is_defined_in_dot_env(env: dict[str, str]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    interpolate(text, env, where=str(COMPOSE_FILE))
    with pytest.raises(InterpolationError):
        interpolate(text, {k: v for k, v in env.items() if k != "DATABASE_URL"})


def test_dot_env_holds_the_connection_settings(env: dict[str, str]) -> None:
    assert env["DATABASE_URL"] == (
        f"postgres://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}")
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env["KEFU_GATEWAY_PUBLISHED_PORT"] == "50051"


def test_every_service_built_from_the_one_dockerfile(compose: dict[str, Any], env: dict[str, str]) -> None:
    services = compose["services"]
    for svc in SERVICES:
        spec = services[f"kefu-{svc}"]
        build = spec["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert build["args"] == {"SERVICE": svc}
        assert spec["image"] == f"{env['KEFU_IMAGE_PREFIX']}{svc}:{env['KEFU_IMAGE_TAG']}"


def test_infrastructure_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        check = spec.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_kefu_healthchecks_probe_their_own_grpc_port(compose: dict[str, Any]) -> None:
    for svc, ports in SERVICES.items():
        spec = compose["services"][f"kefu-{svc}"]
        env = spec["environment"]
        assert env["KEFU_GRPC_PORT"] == str(ports["grpc"])
        assert env["KEFU_METRICS_PORT"] == str(ports["metrics"])
        test = spec["healthcheck"]["test"]
        assert test[:2] == ["CMD", "grpc_health_probe"]
        assert f"-addr=127.0.0.1:{ports['grpc']}" in test
        # readiness (the overall status): it orders start-up through depends_on, and
        # compose never restarts a container for being unhealthy
        assert not any(arg.startswith("-service") for arg in test), svc


def test_start_up_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, spec in services.items():
        for dep, cond in spec.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert "healthcheck" in services[dep]
    # callers wait for the services they call, and for their stores; of two services that
    # call each other (compose refuses a cycle), the one whose readiness follows the
    # other's health waits: the channel service for the gateway
    for svc in SERVICES:
        deps = set(services[f"kefu-{svc}"].get("depends_on", {}))
        awaited = {c for c in CALLS[svc] if svc not in CALLS[c] or c in PROBED[svc]}
        assert {f"kefu-{c}" for c in awaited} <= deps, svc
        assert not {f"kefu-{c}" for c in CALLS[svc] - awaited} & deps, svc
        if svc in NEEDS_DATABASE:
            assert "postgres" in deps, svc
        if svc in NEEDS_REDIS:
            assert "redis" in deps, svc
    assert {"prometheus"} <= set(services["grafana"]["depends_on"])


def test_dependency_graph_has_no_cycle(compose: dict[str, Any]) -> None:
    services = compose["services"]
    indegree = {name: 0 for name in services}
    for spec in services.values():
        for dep in spec.get("depends_on", {}):
            indegree[dep] += 1
    queue = deque(n for n, d in indegree.items() if d == 0)
    seen = 0
    while queue:
        name = queue.popleft()
        seen += 1
        for dep in services[name].get("depends_on", {}):
            indegree[dep] -= 1
            if indegree[dep] == 0:
                queue.append(dep)
    assert seen == len(services)


def test_only_the_gateway_and_the_uis_are_published(compose: dict[str, Any], env: dict[str, str]) -> None:
    for name, spec in compose["services"].items():
        ports = spec.get("ports", [])
        if name not in PUBLISHED:
            assert not ports, f"{name} publishes {ports}"
            continue
        published = set()
        for port in ports:
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == env["KEFU_PUBLISH_ADDR"] == "127.0.0.1"
            assert host_port.isdigit()
            published.add(int(container_port))
        assert published == PUBLISHED[name] and len(ports) == len(published), name


def test_the_gateway_serves_its_pages_to_the_published_origins(compose: dict[str, Any], env: dict[str, str]) -> None:
    e = compose["services"]["kefu-gateway"]["environment"]
    assert e["KEFU_WEB_PORT"] == str(WEB_PORT)
    web_port = env["KEFU_WEB_PUBLISHED_PORT"]
    # a browser on the host loads the pages from the published port, by address or by name
    assert e["KEFU_WEB_ORIGINS"].split(",") == [f"http://127.0.0.1:{web_port}", f"http://localhost:{web_port}"]
    assert e["KEFU_PUBLIC_GATEWAY_URL"] == ""  # the pages' host name with port 50051
    assert env["KEFU_GATEWAY_PUBLISHED_PORT"] == "50051"
    for svc in SERVICES:
        settings = set(compose["services"][f"kefu-{svc}"]["environment"])
        assert settings <= SETTINGS, f"kefu-{svc}: {settings - SETTINGS} are read by no kefu binary"
        if svc != "gateway":
            assert not {"KEFU_WEB_PORT", "KEFU_WEB_ORIGINS", "KEFU_PUBLIC_GATEWAY_URL"} & settings


def test_the_channel_endpoints_are_published(compose: dict[str, Any], env: dict[str, str]) -> None:
    """Outside channels reach the channel service's HTTP port and SMTP listener on the
    host, as they reach the gateway's (a tunnel or a proxy in front of KEFU_PUBLISH_ADDR
    for the internet)."""
    spec = compose["services"]["kefu-channels"]
    assert spec["environment"]["KEFU_CHANNELS_HTTP_PORT"] == str(CHANNELS_HTTP_PORT)
    assert spec["environment"]["KEFU_CHANNELS_SMTP_PORT"] == str(CHANNELS_SMTP_PORT)
    assert spec["ports"] == [
        f"{env['KEFU_PUBLISH_ADDR']}:{env['KEFU_CHANNELS_PUBLISHED_PORT']}:{CHANNELS_HTTP_PORT}",
        f"{env['KEFU_PUBLISH_ADDR']}:{env['KEFU_SMTP_PUBLISHED_PORT']}:{CHANNELS_SMTP_PORT}",
    ]
    assert env["KEFU_CHANNELS_PUBLISHED_PORT"] == str(CHANNELS_HTTP_PORT)
    for svc in SERVICES:
        if svc != "channels":
            environment = compose["services"][f"kefu-{svc}"]["environment"]
            assert not {"KEFU_CHANNELS_HTTP_PORT", "KEFU_CHANNELS_SMTP_PORT"} & set(environment), svc


def test_each_service_gets_the_settings_it_needs(compose: dict[str, Any], env: dict[str, str]) -> None:
    services = compose["services"]
    for svc in SERVICES:
        e = services[f"kefu-{svc}"]["environment"]
        assert e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert ("DATABASE_URL" in e) == (svc in NEEDS_DATABASE), svc
        assert ("REDIS_URL" in e) == (svc in NEEDS_REDIS), svc
        if "DATABASE_URL" in e:
            assert e["DATABASE_URL"] == env["DATABASE_URL"]
        if "REDIS_URL" in e:
            assert e["REDIS_URL"] == env["REDIS_URL"]
        urls = {k: v for k, v in e.items() if PEER_URL_SETTING.fullmatch(k)}
        assert set(urls) == {f"KEFU_{c.upper()}_URL" for c in CALLS[svc]}, svc
        for callee in CALLS[svc]:
            host = f"kefu-{callee}"
            assert host in services
            assert urls[f"KEFU_{callee.upper()}_URL"] == f"http://{host}:{SERVICES[callee]['grpc']}"
    postgres = services["postgres"]["environment"]
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])


def test_kefu_containers_are_hardened(compose: dict[str, Any]) -> None:
    for svc in SERVICES:
        spec = compose["services"][f"kefu-{svc}"]
        assert spec["read_only"] is True
        assert spec["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in spec["security_opt"]
        assert "/tmp" in spec["tmpfs"]
        # KEFU_DATA_DIR stays writable for the image's user under the read-only root
        assert "/app/data:uid=10001,gid=10001,mode=0700" in spec["tmpfs"]
        assert "user" not in spec  # the image's uid 10001 applies


def mounts(spec: dict[str, Any]) -> dict[str, str]:
    out = {}
    for volume in spec.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def test_monitoring_configuration_is_mounted_from_the_repository(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = mounts(services["prometheus"])
    grafana = mounts(services["grafana"])
    expected = [
        (prometheus, "/etc/prometheus/prometheus.yml", "monitoring/prometheus.yml"),
        (prometheus, "/etc/prometheus/rules", "monitoring/rules"),
        (grafana, "/etc/grafana/provisioning/datasources", "monitoring/grafana/provisioning/datasources"),
        (grafana, "/etc/grafana/provisioning/dashboards", "monitoring/grafana/provisioning/dashboards"),
        (grafana, "/var/lib/grafana/dashboards", "monitoring/grafana/dashboards"),
    ]
    for table, target, repo_path in expected:
        source = (DEPLOY / table[target]).resolve()
        assert source == REPO / repo_path
        assert source.exists(), f"{repo_path} is missing"
    # the dashboards provider reads the directory compose mounts
    provider_files = sorted((REPO / "monitoring/grafana/provisioning/dashboards").glob("*.y*ml"))
    paths = {p["options"]["path"] for f in provider_files
             for p in yaml.safe_load(f.read_text(encoding="utf-8"))["providers"]}
    assert paths == {"/var/lib/grafana/dashboards"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_prometheus_scrapes_every_service_where_compose_runs_it(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    for svc, ports in SERVICES.items():
        assert f"kefu-{svc}:{ports['metrics']}" in targets
        assert f"kefu-{svc}" in compose["services"]
    # the rule files are found where compose mounts them
    assert any(p.startswith("rules/") or p.startswith("/etc/prometheus/rules/") for p in config["rule_files"])


def test_grafana_datasources_point_at_compose_services(compose: dict[str, Any]) -> None:
    path = REPO / "monitoring" / "grafana" / "provisioning" / "datasources"
    urls = [ds["url"] for f in sorted(path.glob("*.y*ml"))
            for ds in yaml.safe_load(f.read_text(encoding="utf-8")).get("datasources", [])]
    assert urls
    for url in urls:
        host = url.split("://", 1)[1].split(":", 1)[0].split("/", 1)[0]
        assert host in compose["services"], url


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed",
)
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file", str(ENV_FILE),
                             "config", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
