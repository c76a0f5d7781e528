"""The code location uses Dagster's public API only, read from the source.

Dagster renames and removes its private modules and attributes in any release without notice;
code that reaches into them breaks on an upgrade, often silently (an IO manager loading the
wrong run). A private module is any `dagster*` module path with a part starting with `_`; a
private attribute is a `_name` read on anything but `self` or `cls`, or through `getattr`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ordertrack_dagster

PACKAGE = Path(ordertrack_dagster.__file__).parent

#: Private attributes read on objects that are not Dagster's, with why they are allowed.
NOT_DAGSTER = {
    # pymongo's UpdateOne keeps its filter private and has no public reader; the rejected
    # operation is named by its `_id` in the alert.
    ("resources/mongo.py", "op._filter"),
    # the enum protocol: a member that carries more than its value (an event's declaration)
    # is built by `__new__`, which sets the member's `_value_` (Python's enum HOWTO)
    ("markers.py", "event._value_"),
}


def _private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0].startswith("dagster") and any(
        part.startswith("_") and not part.startswith("__") for part in parts
    )


def _private_name(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """Every private Dagster import and every private attribute read on a foreign object."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _private_module(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _private_module(node.module):
                found.append(node.module)
            elif node.module.startswith("dagster"):
                found += [
                    f"{node.module}.{alias.name}"
                    for alias in node.names
                    if _private_name(alias.name)
                ]
        elif isinstance(node, ast.Attribute) and _private_name(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(ast.unparse(node))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private_name(node.args[1].value)
        ):
            found.append(ast.unparse(node))
    return found


def test_the_package_uses_no_private_dagster_api() -> None:
    offending = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE))
        uses = [use for use in private_uses(path.read_text()) if (relative, use) not in NOT_DAGSTER]
        if uses:
            offending[relative] = uses
    assert offending == {}


def test_the_check_sees_each_kind_of_private_use() -> None:
    source = """
import dagster._core.events
from dagster._utils.schedules import cron_string_iterator
from dagster import _check
from dagster_aws.s3._io_manager import thing
run_id = context.upstream_output._run_id
instance = getattr(context, "_instance", None)
mine = self._cache, cls._registry, context.__class__
"""
    assert sorted(private_uses(source)) == sorted(
        [
            "dagster._core.events",
            "dagster._utils.schedules",
            "dagster._check",
            "dagster_aws.s3._io_manager",
            "context.upstream_output._run_id",
            "getattr(context, '_instance', None)",
        ]
    )
