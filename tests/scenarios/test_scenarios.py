"""The scenario suite's quick subset, run by pytest (and so by CI)."""

from __future__ import annotations

import os

import pytest

from tests.scenarios.run import SCENARIOS


@pytest.mark.skipif(os.geteuid() != 0, reason="scenarios need root (namespaces, tc, tmpfs)")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.timeout(300)
def test_quick_scenario(name: str) -> None:
    quick, _full = SCENARIOS[name]
    outcome = quick()
    assert outcome.passed == outcome.runs, outcome
