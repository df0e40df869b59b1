"""What stack.py reads from the Rust sources (the call graph, the settings, the web
port) has the shape of the architecture: the deployments are checked against it, so it
must not be empty or odd."""

from __future__ import annotations

from stack import CALLS, SERVICES, SETTINGS, WEB_PORT


def test_every_service_is_reached_from_the_gateway() -> None:
    reached, frontier = {"gateway"}, ["gateway"]
    while frontier:
        for callee in CALLS[frontier.pop()] - reached:
            reached.add(callee)
            frontier.append(callee)
    assert reached == set(SERVICES)


def test_no_service_calls_the_gateway_or_itself() -> None:
    for service, callees in CALLS.items():
        assert "gateway" not in callees and service not in callees, service


def test_the_settings_include_what_the_deployments_set() -> None:
    assert {"KEFU_GRPC_PORT", "KEFU_METRICS_PORT", "DATABASE_URL", "RUST_LOG", "KEFU_WEB_PORT",
            "KEFU_TLS_CERT", "KEFU_TLS_KEY", "KEFU_TLS_CLIENT_CA", "KEFU_TLS_CA"} <= SETTINGS
    assert {f"KEFU_{callee.upper()}_URL" for callees in CALLS.values() for callee in callees} <= SETTINGS


def test_the_web_port_is_a_port_of_its_own() -> None:
    taken = {port for ports in SERVICES.values() for name, port in ports.items() if name != "health"}
    assert 1024 < WEB_PORT < 65536 and WEB_PORT not in taken
