"""How the suite's tests are handed to pytest-xdist's worker processes (`make test`).

xdist's own `loadscope` sends whole modules, those with the most tests first: a module of one
long test (the benchmark's smoke run, the wheel's build) went out last and ran alone at the
end, and a module of a few long, independent tests ran them one after another on one worker
while the others idled. Here each test is a unit of work of its own, except the tests of a
module that starts servers of its own for all its tests (a module-scoped fixture): that
module stays whole, so its servers start once. The units go out in the workers' collection
order, which `in_worker_order` makes longest first, so the short tests fill the gaps at the
end instead of one long test running alone.
"""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadScopeScheduling

#: Test modules (or folders of them) whose tests share servers started for the module: the
#: local production deployment, the daemon, the fault stack, the stack without simulator, a
#: simulator of its own, the two runs the effect assets' tests read, the freshness model's run.
WHOLE_MODULES = (
    "ordertrack_dagster_tests/deploy/test_local_deployment.py",
    "ordertrack_dagster_tests/orchestration/test_daemon.py",
    "ordertrack_dagster_tests/faults/",
    "ordertrack_dagster_tests/devstack/test_stack.py",
    "ordertrack_dagster_tests/devstack/simulator/",
    "ordertrack_dagster_tests/effects/test_effect_assets.py",
    "ordertrack_dagster_tests/bench/test_freshness.py",
)

#: The longest units of work, longest first, as `--durations` measured them on two cores
#: (a test or module missing here only starts later than it could: list a new long one).
LONGEST = (
    "ordertrack_dagster_tests/test_bench_smoke.py",
    "ordertrack_dagster_tests/deploy/test_local_deployment.py",
    "ordertrack_dagster_tests/orchestration/test_daemon.py",
    "ordertrack_dagster_tests/security/test_no_secret_leaves.py",
    "ordertrack_dagster_tests/faults/test_two_runs.py",
    "ordertrack_dagster_tests/test_leak_check.py",
    "ordertrack_dagster_tests/faults/test_faults.py",
    "ordertrack_dagster_tests/test_wheel.py",
    "ordertrack_dagster_tests/test_cli_flow.py",
    "ordertrack_dagster_tests/devstack/test_commands.py",
)


def in_worker_order(items: list[pytest.Item]) -> None:
    """Sort a worker's collection: the `LONGEST` first, then the other whole-flow (`slow`)
    tests, then the rest, each group in collection order."""

    def rank(item: pytest.Item) -> tuple[int, bool]:
        listed = [n for n, prefix in enumerate(LONGEST) if item.nodeid.startswith(prefix)]
        return (listed[0] if listed else len(LONGEST), not item.get_closest_marker("slow"))

    items.sort(key=rank)


class LongestFirstScheduling(LoadScopeScheduling):
    """`loadscope` with the test as the scope, except in `WHOLE_MODULES`, and the units in
    the workers' collection order (xdist would reorder them by their number of tests)."""

    def __init__(self, config: pytest.Config, log: object = None) -> None:
        super().__init__(config, log)  # type: ignore[arg-type]
        config.option.loadscopereorder = False

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module.startswith(WHOLE_MODULES) else nodeid
