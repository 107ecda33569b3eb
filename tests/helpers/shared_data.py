"""The real public fixtures in ``../shared/fixtures`` (absent on some machines: tests skip)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.paths import SHARED_FIXTURES as FIXTURES


def shared_fixture(rel: str) -> Path:
    """Path of ``FIXTURES / rel``; skips the calling test when it is not there."""
    p = FIXTURES / rel
    if not p.exists():
        pytest.skip(f"shared fixture {rel} not available")
    return p
