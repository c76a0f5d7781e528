"""What a courier module exports: one `CourierDescription`, from which the registry, the
settings map and the load-time checks and redaction lists are derived, so adding or
changing a courier is done in its own module (docs/architecture.md, "Adding a courier").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from dagster import ConfigurableResource

from ordertrack_dagster.records import Interpretation, OrderContext

Interpreter = Callable[[Any, OrderContext, datetime], Interpretation]


class SettingKind(StrEnum):
    """What a setting holds, which decides how it is checked and whether it is redacted."""

    URL = "url"  # an http(s) URL; https required with ENV=PROD
    IDENTITY = "identity"  # travels in headers or login bodies: checked, not redacted
    SECRET = "secret"  # checked and redacted from everything that leaves the process


@dataclass(frozen=True)
class CourierSetting:
    """One contract §8 setting of a courier and the resource field it fills."""

    field: str
    name: str
    kind: SettingKind


@dataclass(frozen=True)
class CourierDescription:
    """One courier API: the resource that asks it, the settings it reads, and the pure
    reader of each flow it serves (the flows' numbers, budget scope included, stay in the
    one flows table, `flows.py`)."""

    resource_key: str
    resource_class: type[ConfigurableResource]
    settings: tuple[CourierSetting, ...]
    interpreters: Mapping[str, Interpreter]

    def setting_names(self, kind: SettingKind) -> tuple[str, ...]:
        return tuple(setting.name for setting in self.settings if setting.kind is kind)

    def resource(self, value_of: Callable[[str], Any], **overrides: Any) -> Any:
        """The resource with each field set to `value_of(<its setting's name>)` (an `EnvVar`
        in the code location, a value to ask the courier outside a run), or overridden."""
        values = {setting.field: value_of(setting.name) for setting in self.settings}
        return self.resource_class(**(values | overrides))


def login_settings(prefix: str, identity: str = "USERNAME") -> tuple[CourierSetting, ...]:
    """The settings of a courier that logs in: `<prefix>_URL`, its account and password."""
    return (
        CourierSetting("url", f"{prefix}_URL", SettingKind.URL),
        CourierSetting("username", f"{prefix}_{identity}", SettingKind.IDENTITY),
        CourierSetting("password", f"{prefix}_PASSWORD", SettingKind.SECRET),
    )
