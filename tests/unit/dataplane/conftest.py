"""Fixtures of the data-plane unit tests (helpers live in dataplane_helpers.py).

Every test runs on both data-plane cores (native and python)."""

from __future__ import annotations

import pytest
from dataplane_testing import CORES, ThrowawayCA, use_core


@pytest.fixture(scope="session")
def ca() -> ThrowawayCA:
    return ThrowawayCA("trustd.local")


@pytest.fixture(autouse=True, params=CORES)
def proxy_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_core(request.param, monkeypatch)
