"""The scenario suite's quick subset, run by pytest (and so by CI)."""

from __future__ import annotations

import os

import pytest

from tests.scenarios.run import SCENARIOS

# Quick variants that still take more than about 5 s on the 2-core machine.
SLOW = {
    "churn",
    "crash-recovery",
    "disk-full",
    "fan-in",
    "fan-out",
    "hostile-announce",
    "hostile-flood",
    "hostile-lan",
    "soak",
    "swarm",
    "swarm-corrupt",
    "swarm-flash",
    "swarm-leave",
}


@pytest.mark.skipif(os.geteuid() != 0, reason="scenarios need root (namespaces, tc, tmpfs)")
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow if n in SLOW else ()) for n in sorted(SCENARIOS)],
)
@pytest.mark.timeout(300)
def test_quick_scenario(name: str) -> None:
    quick, _full = SCENARIOS[name]
    outcome = quick()
    assert outcome.passed == outcome.runs, outcome
