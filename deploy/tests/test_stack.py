"""What stack.py reads from the Rust sources (the call graph, the settings, the web
port) has the shape of the architecture: the deployments are checked against it, so it
must not be empty or odd."""

from __future__ import annotations

from stack import CALLS, CHANNELS_HTTP_PORT, CHANNELS_SMTP_PORT, PROBED, SERVICES, SETTINGS, WEB_PORT


def test_every_service_is_reached_from_the_gateway() -> None:
    reached, frontier = {"gateway"}, ["gateway"]
    while frontier:
        for callee in CALLS[frontier.pop()] - reached:
            reached.add(callee)
            frontier.append(callee)
    assert reached == set(SERVICES)


def test_only_the_channel_service_calls_the_gateway() -> None:
    """The channel service brings the channels' messages in through the gateway, like
    any client; no other service calls back into the entry point, none calls itself."""
    for service, callees in CALLS.items():
        assert service not in callees, service
        assert ("gateway" in callees) == (service == "channels"), service


def test_readiness_breaks_every_cycle_of_calls() -> None:
    """Where two services call each other (gateway and channels), the readiness of
    exactly one follows the other's health, so that start-up ordered by readiness (the
    compose file's depends_on) has a first one and no wait for each other."""
    cycles = {frozenset((a, b)) for a in CALLS for b in CALLS[a] if a in CALLS[b]}
    assert cycles == {frozenset(("gateway", "channels"))}
    for a, b in map(tuple, cycles):
        assert (b in PROBED[a]) != (a in PROBED[b]), (a, b)
    assert "gateway" in PROBED["channels"] and "channels" not in PROBED["gateway"]


def test_the_settings_include_what_the_deployments_set() -> None:
    assert {"KEFU_GRPC_PORT", "KEFU_METRICS_PORT", "DATABASE_URL", "RUST_LOG", "KEFU_WEB_PORT",
            "KEFU_TLS_CERT", "KEFU_TLS_KEY", "KEFU_TLS_CLIENT_CA", "KEFU_TLS_CA"} <= SETTINGS
    assert {f"KEFU_{callee.upper()}_URL" for callees in CALLS.values() for callee in callees} <= SETTINGS


def test_the_http_ports_are_ports_of_their_own() -> None:
    """The gateway's pages, the channel service's endpoints and its SMTP listener each on a
    port of its own (above 1024: the containers run without privileges)."""
    taken = {port for ports in SERVICES.values() for name, port in ports.items() if name != "health"}
    own = (WEB_PORT, CHANNELS_HTTP_PORT, CHANNELS_SMTP_PORT)
    for port in own:
        assert 1024 < port < 65536 and port not in taken
    assert len(set(own)) == len(own)
