"""Paths the tests read, computed once here so that moving a test module does not change them."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder holding ``tests/`` and ``vadpipe/``).
REPO = Path(__file__).resolve().parents[2]
#: Data committed with the tests (``tests/data``).
TESTS_DATA = REPO / "tests" / "data"
#: The real public fixtures next to the repository (``../shared/fixtures``; absent on some machines).
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
