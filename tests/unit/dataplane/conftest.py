"""Fixtures of the data-plane unit tests (helpers live in dataplane_helpers.py)."""

from __future__ import annotations

import pytest
from dataplane_testing import ThrowawayCA


@pytest.fixture(scope="session")
def ca() -> ThrowawayCA:
    return ThrowawayCA("trustd.local")
