"""The import rules of docs/architecture.md, read from the source: imports only go down the
documented layers, and a concern reaches another only through the contract modules or the
other's public face."""

from __future__ import annotations

import ast
from pathlib import Path

import ordertrack_dagster

PACKAGE = Path(ordertrack_dagster.__file__).parent
#: What only the couriers package itself may import; others use `ordertrack_dagster.couriers`.
COURIER_INTERNALS = ("engine", "answers", "failures", "pauses", "login", "description")


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


def _modules() -> dict[str, set[str]]:
    """Each module of the package, by its path, with what it imports of the package."""
    return {str(path.relative_to(PACKAGE)): _imports(path) for path in PACKAGE.rglob("*.py")}


def _reaching(imports: dict[str, set[str]], prefix: str) -> dict[str, list[str]]:
    return {
        path: sorted(name for name in names if name == prefix or name.startswith(prefix + "."))
        for path, names in imports.items()
        if any(name == prefix or name.startswith(prefix + ".") for name in names)
    }


def test_only_the_couriers_package_imports_its_internals() -> None:
    outside = {
        path: names for path, names in _modules().items() if not path.startswith("couriers/")
    }
    for internal in COURIER_INTERNALS:
        assert _reaching(outside, f"ordertrack_dagster.couriers.{internal}") == {}, internal


#: docs/architecture.md "Layers", top to bottom. A module imports only rows below its own; in
#: the top row and the contract row its neighbours too; the concerns of one row never import
#: each other. `devstack/` and `bench/` sit beside the code location and may import anything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("definitions", "settings"),
    ("orchestration",),
    ("tracking", "effects", "analytics"),
    ("couriers",),
    ("flows", "statuses", "records", "tables", "markers", "run_summary", "polling"),
    ("resources",),
    ("security", "killpoints"),
)
ROWS_SHARED_BY_NEIGHBOURS = (LAYERS[0], LAYERS[4])
BESIDE = ("devstack", "bench", "__init__")
ROW = {part: row for row, parts in enumerate(LAYERS) for part in parts}


def _part(name: str) -> str:
    """`couriers` for `couriers/login.py` or `ordertrack_dagster.couriers.login`."""
    parts = name.removesuffix(".py").replace("/", ".").split(".")
    if parts[0] == "ordertrack_dagster":
        parts = parts[1:]
    return parts[0] if parts else ""


def _upward_imports(imports: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each module's imports that break the layering: up a row, or across its own row."""
    broken: dict[str, list[str]] = {}
    for path, names in imports.items():
        own = _part(path)
        if own in BESIDE:
            continue
        for name in sorted(names):
            other = _part(name)
            if other in ("", own):
                continue
            if other in BESIDE:  # the code location never needs the stack or the benchmark
                broken.setdefault(path, []).append(name)
                continue
            same_row_allowed = any(own in row and other in row for row in ROWS_SHARED_BY_NEIGHBOURS)
            if ROW[other] < ROW[own] or (ROW[other] == ROW[own] and not same_row_allowed):
                broken.setdefault(path, []).append(name)
    return broken


def test_every_part_of_the_code_location_has_its_documented_layer() -> None:
    parts = {
        _part(str(path.relative_to(PACKAGE)))
        for path in PACKAGE.glob("*")
        if path.suffix == ".py" or (path / "__init__.py").exists()
    }
    assert parts - set(BESIDE) == set(ROW), "place the new module in LAYERS and the docs"


def test_imports_only_go_down_the_documented_layers() -> None:
    assert _upward_imports(_modules()) == {}


def test_the_layer_rule_sees_an_upward_import_and_one_across_a_row() -> None:
    imports = {
        "couriers/state.py": {"ordertrack_dagster.tracking.writer"},
        "effects/crm.py": {"ordertrack_dagster.analytics", "ordertrack_dagster.couriers"},
        "tables.py": {"ordertrack_dagster.flows"},
        "devstack/stack.py": {"ordertrack_dagster.definitions"},
        "flows.py": {"ordertrack_dagster.devstack.seed"},
    }
    assert _upward_imports(imports) == {
        "couriers/state.py": ["ordertrack_dagster.tracking.writer"],
        "effects/crm.py": ["ordertrack_dagster.analytics"],
        "flows.py": ["ordertrack_dagster.devstack.seed"],
    }


def test_shared_state_is_reached_through_its_store_not_the_couriers() -> None:
    """Tokens and alert flags live in the shared store (`resources/state.py`); only what is
    the couriers' own (pauses, budgets) is reached through `couriers/state.py`."""
    effects = {path: names for path, names in _modules().items() if path.startswith("effects/")}
    assert _reaching(effects, "ordertrack_dagster.couriers.state") == {}
