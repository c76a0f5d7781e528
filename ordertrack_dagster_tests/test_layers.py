"""The import rules of docs/architecture.md, read from the source: a concern reaches another
only through the contract modules or the other's public face."""

from __future__ import annotations

import ast
from pathlib import Path

import ordertrack_dagster

PACKAGE = Path(ordertrack_dagster.__file__).parent
#: What only the couriers package itself may import; others use `ordertrack_dagster.couriers`.
COURIER_INTERNALS = ("engine", "answers", "failures", "pauses", "login")


def _imports(path: Path) -> set[str]:
    """Every `ordertrack_dagster...` module a file imports (its `from` imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("ordertrack_dagster")}


def _modules(concern: str | None = None) -> dict[str, set[str]]:
    root = PACKAGE / concern if concern else PACKAGE
    return {str(path.relative_to(PACKAGE)): _imports(path) for path in root.rglob("*.py")}


def _reaching(imports: dict[str, set[str]], prefix: str) -> dict[str, list[str]]:
    return {
        path: sorted(name for name in names if name == prefix or name.startswith(prefix + "."))
        for path, names in imports.items()
        if any(name == prefix or name.startswith(prefix + ".") for name in names)
    }


def test_effects_and_analytics_import_nothing_of_tracking() -> None:
    for concern in ("effects", "analytics"):
        assert _reaching(_modules(concern), "ordertrack_dagster.tracking") == {}, concern


def test_only_the_couriers_package_imports_its_internals() -> None:
    outside = {
        path: names for path, names in _modules().items() if not path.startswith("couriers/")
    }
    for internal in COURIER_INTERNALS:
        assert _reaching(outside, f"ordertrack_dagster.couriers.{internal}") == {}, internal


def test_contract_modules_import_no_concern() -> None:
    concerns = ("couriers", "tracking", "effects", "analytics", "orchestration", "devstack")
    for contract in (
        "flows",
        "statuses",
        "records",
        "tables",
        "markers",
        "run_summary",
        "polling",
    ):
        imports = _imports(PACKAGE / f"{contract}.py")
        for concern in concerns:
            assert _reaching({contract: imports}, f"ordertrack_dagster.{concern}") == {}
