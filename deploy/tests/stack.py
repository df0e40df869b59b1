"""The seven kefu services as the chart, compose and rehearsal tests know them.

Who calls whom is read from the Rust sources, not kept here: a service calls service
<name> exactly when its crate declares the setting `env = "KEFU_<NAME>_URL"`. Where a
deployment leaves one out, the service calls 127.0.0.1 inside its container and finds
nothing there, so the tests hold every deployment to this graph.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Default ports and the health name each readiness probe checks.
SERVICES = {
    "gateway": {"grpc": 50051, "metrics": 9101, "health": "kefu.v1.ConversationService"},
    "orchestrator": {"grpc": 50052, "metrics": 9102, "health": "kefu.v1.OrchestratorService"},
    "router": {"grpc": 50053, "metrics": 9103, "health": "kefu.v1.RouterService"},
    "knowledge": {"grpc": 50054, "metrics": 9104, "health": "kefu.v1.KnowledgeService"},
    "ticket": {"grpc": 50055, "metrics": 9105, "health": "kefu.v1.TicketService"},
    "sentiment": {"grpc": 50056, "metrics": 9106, "health": "kefu.v1.SentimentService"},
    "channels": {"grpc": 50057, "metrics": 9107, "health": "kefu.v1.ChannelService"},
}
NEEDS_MODELS = {"router", "knowledge", "sentiment"}
NEEDS_TENANTS = {"gateway", "router", "knowledge", "orchestrator", "channels"}

_URL_SETTING = re.compile(r'\benv\s*=\s*"KEFU_([A-Z]+)_URL"')
_LIVENESS = re.compile(r'\bLIVENESS_SERVICE\s*:\s*&str\s*=\s*"([^"]*)"')
_SETTING = re.compile(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"')
_WEB_PORT = re.compile(r'\benv\s*=\s*"KEFU_WEB_PORT"\s*,\s*default_value_t\s*=\s*(\d+)')
# A downstream service whose health a service's readiness follows, named literally.
_PROBED = re.compile(r'\bDownstreamProbe::new\(\s*"([a-z]+)"')
# The name of a peer-URL setting, KEFU_<SERVICE>_URL (not KEFU_PUBLIC_GATEWAY_URL, which
# names the gateway as browsers reach it).
PEER_URL_SETTING = re.compile(r"KEFU_([A-Z]+)_URL")


def calls_from_sources(repo: Path = REPO) -> dict[str, set[str]]:
    """Each service's callees, from the clap settings in services/<name>/src."""
    calls: dict[str, set[str]] = {}
    for service in SERVICES:
        sources = sorted((repo / "services" / service / "src").rglob("*.rs"))
        assert sources, f"no Rust sources for {service}"
        callees = {m.group(1).lower() for path in sources
                   for m in _URL_SETTING.finditer(path.read_text(encoding="utf-8"))}
        unknown = callees - SERVICES.keys()
        assert not unknown, f"{service} has a URL setting for unknown services {unknown}"
        calls[service] = callees
    return calls


def _services_whose_sources_match(pattern: re.Pattern[str], repo: Path = REPO) -> set[str]:
    return {service for service in SERVICES
            if any(pattern.search(path.read_text(encoding="utf-8"))
                   for path in (repo / "services" / service / "src").rglob("*.rs"))}


# A service uses the database when it connects to one, Redis when it connects to one
# (through the shared cache, or directly for the gateway's rate limits).
NEEDS_DATABASE = _services_whose_sources_match(re.compile(r"\bDatabase::connect\("))
NEEDS_REDIS = _services_whose_sources_match(re.compile(r"\bRedis::(from_args|connect)\("))


def liveness_service_from_sources(repo: Path = REPO) -> str:
    """The health name that stays SERVING while the process runs (kefu-runtime)."""
    found = _LIVENESS.findall((repo / "crates/kefu-runtime/src/health.rs").read_text(encoding="utf-8"))
    assert len(found) == 1, "LIVENESS_SERVICE not found in crates/kefu-runtime/src/health.rs"
    return found[0]


def settings_from_sources(repo: Path = REPO) -> set[str]:
    """Every environment variable a kefu binary reads: the clap settings of the services
    and crates, and RUST_LOG (read by the log filter)."""
    sources = [path for folder in ("services", "crates", "src") for path in sorted((repo / folder).rglob("*.rs"))]
    return {m.group(1) for path in sources for m in _SETTING.finditer(path.read_text(encoding="utf-8"))} | {"RUST_LOG"}


def web_port_from_sources(repo: Path = REPO) -> int:
    """The gateway's default port of the chat and console pages."""
    found = _WEB_PORT.findall((repo / "services/gateway/src/config.rs").read_text(encoding="utf-8"))
    assert len(found) == 1, "KEFU_WEB_PORT's default not found in services/gateway/src/config.rs"
    return int(found[0])


def channels_port_from_sources(variable: str, repo: Path = REPO) -> int:
    """A default port of the channel service: `variable`'s in its configuration."""
    pattern = re.compile(rf'\benv\s*=\s*"{variable}"\s*,\s*default_value_t\s*=\s*(\d+)')
    found = pattern.findall((repo / "services/channels/src/config.rs").read_text(encoding="utf-8"))
    assert len(found) == 1, f"{variable}'s default not found in services/channels/src/config.rs"
    return int(found[0])


def probed_from_sources(repo: Path = REPO) -> dict[str, set[str]]:
    """The callees whose health each service's readiness follows, where its source names
    them literally (`DownstreamProbe::new("gateway", ...)`); a loop over names is not seen."""
    return {service: {m.group(1) for path in sorted((repo / "services" / service / "src").rglob("*.rs"))
                      for m in _PROBED.finditer(path.read_text(encoding="utf-8"))}
            for service in SERVICES}


CALLS = calls_from_sources()
LIVENESS_SERVICE = liveness_service_from_sources()
SETTINGS = settings_from_sources()
WEB_PORT = web_port_from_sources()
# The endpoints outside channels call (webhooks, WeChat), and mail.
CHANNELS_HTTP_PORT = channels_port_from_sources("KEFU_CHANNELS_HTTP_PORT")
CHANNELS_SMTP_PORT = channels_port_from_sources("KEFU_CHANNELS_SMTP_PORT")
PROBED = probed_from_sources()
