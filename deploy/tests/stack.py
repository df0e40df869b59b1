"""The six kefu services as the chart, compose and rehearsal tests know them.

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
}
NEEDS_DATABASE = {"orchestrator", "ticket", "router", "knowledge"}
NEEDS_REDIS = {"orchestrator", "router", "knowledge"}
NEEDS_MODELS = {"router", "knowledge", "sentiment"}
NEEDS_TENANTS = {"gateway", "router", "knowledge", "orchestrator"}

_URL_SETTING = re.compile(r'\benv\s*=\s*"KEFU_([A-Z]+)_URL"')
_LIVENESS = re.compile(r'\bLIVENESS_SERVICE\s*:\s*&str\s*=\s*"([^"]*)"')


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


def liveness_service_from_sources(repo: Path = REPO) -> str:
    """The health name that stays SERVING while the process runs (kefu-runtime)."""
    found = _LIVENESS.findall((repo / "crates/kefu-runtime/src/health.rs").read_text(encoding="utf-8"))
    assert len(found) == 1, "LIVENESS_SERVICE not found in crates/kefu-runtime/src/health.rs"
    return found[0]


CALLS = calls_from_sources()
LIVENESS_SERVICE = liveness_service_from_sources()
