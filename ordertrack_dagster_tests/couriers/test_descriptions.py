"""A courier is described once: the registry, the resources, the load-time checks and the
redaction all follow from its module's `DESCRIPTION`."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from dagster import EnvVar

import ordertrack_dagster
from ordertrack_dagster import couriers
from ordertrack_dagster.couriers import COURIERS, DESCRIPTIONS, SettingKind
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.security.redaction import declare_secret_settings, is_secret_setting
from ordertrack_dagster.security.settings import SettingsError, validate_settings
from ordertrack_dagster.security.tokens import STATE_KEY
from ordertrack_dagster.settings import SETTING_NAMES, build_resources

SETTINGS = [
    (description, setting)
    for description in DESCRIPTIONS.values()
    for setting in description.settings
]


def test_every_courier_module_is_registered_without_being_named() -> None:
    """Adding a courier is writing its module: the registry finds it, and neither the package
    nor any other part of the code location names the courier modules."""
    package = Path(couriers.__file__).parent
    modules = {
        info.name: importlib.import_module(f"{couriers.__name__}.{info.name}")
        for info in pkgutil.iter_modules([str(package)])
    }
    described = {name for name, module in modules.items() if hasattr(module, "DESCRIPTION")}
    assert {modules[name].DESCRIPTION.resource_key for name in described} == set(DESCRIPTIONS)
    code_location = Path(ordertrack_dagster.__file__).parent
    naming = {}
    for path in code_location.rglob("*.py"):
        beside = path.relative_to(code_location).parts[0] in ("devstack", "bench")
        if beside or (path.parent == package and path.stem in described):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            names = {node.module.rpartition(".")[2], *(alias.name for alias in node.names)}
            if node.module.startswith(couriers.__name__) and names & described:
                naming[str(path.relative_to(code_location))] = sorted(names & described)
    assert naming == {}


def test_every_flow_is_bound_to_the_one_courier_that_describes_it() -> None:
    assert list(COURIERS) == list(FLOWS)
    for flow, binding in COURIERS.items():
        [description] = [d for d in DESCRIPTIONS.values() if flow in d.interpreters]
        assert binding.resource_key == description.resource_key
        assert binding.interpret is description.interpreters[flow]


def test_each_courier_resource_reads_the_settings_its_description_names() -> None:
    resources = build_resources({})
    for key, description in DESCRIPTIONS.items():
        resource = resources[key]
        assert isinstance(resource, description.resource_class)
        for setting in description.settings:
            assert getattr(resource, setting.field) == EnvVar(setting.name)


@pytest.mark.parametrize(
    ("description", "setting"),
    SETTINGS,
    ids=[setting.name for _, setting in SETTINGS],
)
def test_each_courier_setting_is_checked_at_load_by_its_kind(description, setting) -> None:
    with pytest.raises(SettingsError, match=setting.name):
        validate_settings({setting.name: "value\nX-Injected: 1"}, SETTING_NAMES)
    prod = {"ENV": "PROD", STATE_KEY: Fernet.generate_key().decode()}
    plain_url = {**prod, setting.name: "http://courier.example/api"}
    if setting.kind is SettingKind.URL:
        with pytest.raises(SettingsError, match=f"{setting.name} uses http://"):
            validate_settings(plain_url, SETTING_NAMES)
    else:
        assert validate_settings(plain_url, SETTING_NAMES) == []
    assert (setting.name in SETTING_NAMES.secrets) is (setting.kind is SettingKind.SECRET)


def test_a_declared_secret_setting_is_redacted_whatever_its_name() -> None:
    """A courier's secret need not be called a token or a password to be redacted."""
    name = "EXAMPLE_COURIER_API_KEY"
    assert not is_secret_setting(name)
    declare_secret_settings([name])
    assert is_secret_setting(name)
