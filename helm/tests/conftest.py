"""Fixtures for the kefu chart tests: the chart rendered once per value set."""

from __future__ import annotations

from typing import Any

import pytest

from chart_support import (
    GATEWAY_TLS_VALUES,
    PRODUCTION_VALUES,
    SHARED_MTLS_VALUES,
    Rendered,
    load_values_file,
    render,
)


@pytest.fixture(scope="session")
def production_values() -> dict[str, Any]:
    return load_values_file(PRODUCTION_VALUES)


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render()


@pytest.fixture(scope="session")
def production_render(production_values: dict[str, Any]) -> Rendered:
    return render(production_values)


@pytest.fixture(scope="session")
def gateway_tls_render() -> Rendered:
    return render(GATEWAY_TLS_VALUES)


@pytest.fixture(scope="session")
def shared_mtls_render() -> Rendered:
    return render(SHARED_MTLS_VALUES)


@pytest.fixture(scope="session", params=["default", "production", "gateway_tls", "shared_mtls"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """Every value set, for the invariants that hold whatever the values."""
    return request.getfixturevalue(f"{request.param}_render")
