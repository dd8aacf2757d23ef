"""Every data-plane integration test runs on both cores (native and python)."""

from __future__ import annotations

import pytest
from dataplane_testing import CORES, use_core


@pytest.fixture(autouse=True, params=CORES)
def proxy_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_core(request.param, monkeypatch)
