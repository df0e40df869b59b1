"""The call graph read from the Rust sources (stack.py) has the shape of the
architecture: the deployments are checked against it, so it must not be empty or odd."""

from __future__ import annotations

from stack import CALLS, SERVICES


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
