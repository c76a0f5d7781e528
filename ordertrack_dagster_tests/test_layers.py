"""The import rules of docs/architecture.md, read from the source: imports only go down the
documented layers, a concern with a public face is reached only through it, and the state
every process shares is named only by its store."""

from __future__ import annotations

import ast
from pathlib import Path

import ordertrack_dagster
from ordertrack_dagster_tests.helpers import docstring_ids

PACKAGE = Path(ordertrack_dagster.__file__).parent
#: The concerns reached from outside their folder only through their package (`__init__.py`).
PUBLIC_FACES = ("couriers", "orchestration", "tracking", "effects", "analytics")
#: The one owner of the `ordertrack_state` collection and the names of its documents.
SHARED_STORE = "resources/state.py"
STATE_NAMES = ("ordertrack_state", "pause:", "budget:", "token:", "login_block:")


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


def _inner_module(name: str) -> str | None:
    """`couriers/engine` for `ordertrack_dagster.couriers.engine.CourierClient`; None for a
    name the package itself exports (`ordertrack_dagster.couriers.COURIERS`)."""
    parts = name.split(".")[1:3]
    if len(parts) < 2:
        return None
    inner = PACKAGE.joinpath(*parts)
    return "/".join(parts) if inner.with_suffix(".py").exists() or inner.is_dir() else None


def _behind_public_faces(imports: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each module's imports of a module inside another concern's public face."""
    broken: dict[str, list[str]] = {}
    for path, names in imports.items():
        own = _part(path)
        if own in BESIDE:
            continue
        for name in sorted(names):
            other = _part(name)
            if other != own and other in PUBLIC_FACES and _inner_module(name):
                broken.setdefault(path, []).append(name)
    return broken


def test_a_concern_with_a_public_face_is_imported_only_through_it() -> None:
    assert _behind_public_faces(_modules()) == {}


def test_the_public_face_rule_sees_an_inner_module_but_not_an_exported_name() -> None:
    imports = {
        "orchestration/sensors.py": {
            "ordertrack_dagster.couriers",
            "ordertrack_dagster.couriers.describe_pause",
            "ordertrack_dagster.couriers.engine",
            "ordertrack_dagster.couriers.engine.CourierClient",
        },
        "couriers/engine.py": {"ordertrack_dagster.couriers.budget"},
        "definitions.py": {
            "ordertrack_dagster.orchestration.sensors",
            "ordertrack_dagster.tracking",
            "ordertrack_dagster.tracking.TRACKING_ASSETS",
        },
        "settings.py": {"ordertrack_dagster.effects.crm.CrmResource"},
        "orchestration/checks.py": {"ordertrack_dagster.tracking.selection"},
        "effects/assets.py": {"ordertrack_dagster.effects.outbox"},
        "bench/run.py": {"ordertrack_dagster.couriers.engine", "ordertrack_dagster.tracking.steps"},
        "devstack/demo.py": {"ordertrack_dagster.tracking.streaming"},
    }
    assert _behind_public_faces(imports) == {
        "orchestration/sensors.py": [
            "ordertrack_dagster.couriers.engine",
            "ordertrack_dagster.couriers.engine.CourierClient",
        ],
        "definitions.py": ["ordertrack_dagster.orchestration.sensors"],
        "settings.py": ["ordertrack_dagster.effects.crm.CrmResource"],
        "orchestration/checks.py": ["ordertrack_dagster.tracking.selection"],
    }


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
        "couriers/engine.py": {"ordertrack_dagster.tracking.writer"},
        "effects/crm.py": {"ordertrack_dagster.analytics", "ordertrack_dagster.couriers"},
        "tables.py": {"ordertrack_dagster.flows"},
        "devstack/stack.py": {"ordertrack_dagster.definitions"},
        "flows.py": {"ordertrack_dagster.devstack.seed"},
    }
    assert _upward_imports(imports) == {
        "couriers/engine.py": ["ordertrack_dagster.tracking.writer"],
        "effects/crm.py": ["ordertrack_dagster.analytics"],
        "flows.py": ["ordertrack_dagster.devstack.seed"],
    }


def _state_names(path: Path) -> list[str]:
    """The strings of a module's code that name the shared collection or one of its
    documents (`f"pause:{scope}"` included), and its imports of the collection's name."""
    tree = ast.parse(path.read_text())
    docstrings = docstring_ids(tree)
    named = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value.startswith(STATE_NAMES)
    ]
    return named + sorted(name for name in _imports(path) if name.endswith(".STATE_COLLECTION"))


def test_only_the_shared_store_names_the_shared_state() -> None:
    """Pauses, request budgets, tokens, login blocks and alert flags are kept in
    `ordertrack_state` through `resources/state.py` alone, so no concern reads or writes
    another's documents, nor imports another's implementation to reach them."""
    naming = {
        str(path.relative_to(PACKAGE)): _state_names(path)
        for path in PACKAGE.rglob("*.py")
        if _part(str(path.relative_to(PACKAGE))) not in BESIDE
    }
    assert {path: names for path, names in naming.items() if names and path != SHARED_STORE} == {}
    assert naming[SHARED_STORE], "the rule no longer sees how the store names its documents"


def test_the_state_rule_sees_a_document_name_and_the_collection_but_not_a_docstring(
    tmp_path: Path,
) -> None:
    module = tmp_path / "sensors.py"
    module.write_text(
        '"""Reads `ordertrack_state` through the store."""\n'
        "from ordertrack_dagster.resources.state import STATE_COLLECTION\n"
        "def clear(db, scope):\n"
        '    """Deletes `pause:<scope>`."""\n'
        '    db["ordertrack_state"].delete_one({"_id": f"pause:{scope}"})\n'
    )
    assert sorted(_state_names(module)) == [
        "ordertrack_dagster.resources.state.STATE_COLLECTION",
        "ordertrack_state",
        "pause:",
    ]
