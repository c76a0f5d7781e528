"""Contract §8 settings -> resources, written once: `build_resources(env)` for the code location
and the tests, `courier_resource` for code that asks a courier outside a run.

Required settings and secrets become `EnvVar`s, resolved when a run starts (the UI shows their
names, never their values); optional settings are read from `env` at once (EnvVar has no
default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import EnvVar

from ordertrack_dagster.analytics import HistoryResource
from ordertrack_dagster.couriers import DESCRIPTIONS, SettingKind
from ordertrack_dagster.effects import CrmResource, EffectsSettings, SmtpResource
from ordertrack_dagster.markers import SLACK_CHANNEL_SETTINGS
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.s3 import OrdertrackS3Resource, ParquetHistoryIOManager
from ordertrack_dagster.resources.slack import DEFAULT_SLACK_API_URL, OrdertrackSlackResource
from ordertrack_dagster.security.settings import (
    PLATFORM_SETTINGS,
    SettingNames,
    flag,
    load_settings,
)


def _courier_setting_names(kind: SettingKind) -> tuple[str, ...]:
    return tuple(
        name for description in DESCRIPTIONS.values() for name in description.setting_names(kind)
    )


#: Every setting checked at load: each courier's, from its description, and the platform's.
SETTING_NAMES = (
    SettingNames(
        secrets=_courier_setting_names(SettingKind.SECRET),
        tls_urls=_courier_setting_names(SettingKind.URL),
        identities=_courier_setting_names(SettingKind.IDENTITY),
    )
    | PLATFORM_SETTINGS
)


def courier_resource(resource_key: str, env: Mapping[str, str], **overrides: str) -> Any:
    """A courier resource with its settings' values from `env` (fields overridden, e.g. a
    wrong password), for asking a courier outside a run."""
    return DESCRIPTIONS[resource_key].resource(env.__getitem__, **overrides)


def _optional(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    return env.get(name, "").strip() or default


def _optional_secret(env: Mapping[str, str], name: str) -> EnvVar | None:
    """An optional secret: resolved at run time, so the UI shows its name, never its value."""
    return EnvVar(name) if _optional(env, name) else None


def _status_channels(env: Mapping[str, str]) -> dict[str, str]:
    """Each Slack status event's channel, from the setting its declaration names."""
    return {
        event.value: channel
        for event, setting in SLACK_CHANNEL_SETTINGS.items()
        if (channel := _optional(env, setting))
    }


def build_resources(env: Mapping[str, str]) -> dict[str, Any]:
    """Every resource of the code location, configured from the settings in `env`, which
    are checked first (`docs/security.md`): a malformed secret stops the load, by name."""
    load_settings(env, SETTING_NAMES)
    s3 = OrdertrackS3Resource(
        region_name=_optional(env, "AWS_REGION", "ap-south-1"),
        endpoint_url=_optional(env, "AWS_ENDPOINT_URL"),
        aws_access_key_id=_optional(env, "AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_optional_secret(env, "AWS_SECRET_ACCESS_KEY"),
    )
    couriers = {key: description.resource(EnvVar) for key, description in DESCRIPTIONS.items()}
    mongo = MongoResource(uri=EnvVar("MONGODB_URI"), database=EnvVar("MONGODB_DB"))
    return {
        "mongo": mongo,
        "s3": s3,
        # MongoDB carries the hand-off between the tracking steps; S3 gets the history when up
        "parquet_io_manager": ParquetHistoryIOManager(
            s3=s3, mongo=mongo, bucket=EnvVar("AWS_S3_BUCKET")
        ),
        "history": HistoryResource(s3=s3, bucket=EnvVar("AWS_S3_BUCKET")),
        "slack": OrdertrackSlackResource(
            token=EnvVar("SLACK_TOKEN"),
            base_url=_optional(env, "SLACK_API_URL", DEFAULT_SLACK_API_URL),
        ),
        **couriers,
        # Side effects: every setting optional, so a missing one fails only its own delivery
        # (kept and retried), never the run's status writes.
        "effects": EffectsSettings(
            bucket=_optional(env, "AWS_S3_BUCKET"),
            status_channels=_status_channels(env),
            alerts_channel=_optional(env, "TRACKING_ALERTS_SLACK_CHANNEL"),
            query_channel=_optional(env, "TRACKING_QUERY_SLACK_CHANNEL"),
            webserver_url=_optional(env, "DAGSTER_WEBSERVER_URL"),
            retention_days=int(_optional(env, "ORDERTRACK_RETENTION_DAYS", "90") or 90),
            crm_idempotency_hours=float(_optional(env, "CRM_IDEMPOTENCY_HOURS", "24") or 24),
        ),
        "crm": CrmResource(
            webhook_url=_optional(env, "CRM_WEBHOOK_URL"),
            auth_url=_optional(env, "CRM_AUTH_URL"),
            client_id=_optional(env, "CRM_CLIENT_ID"),
            client_secret=_optional_secret(env, "CRM_CLIENT_SECRET"),
            webhook_secret=_optional_secret(env, "CRM_WEBHOOK_SECRET"),
        ),
        "smtp": SmtpResource(
            host=_optional(env, "SMTP_HOST"),
            port=int(_optional(env, "SMTP_PORT", "587") or 587),
            sender=_optional(env, "EMAIL_SENDER"),
            password=_optional_secret(env, "EMAIL_PASSWORD"),
            recipients=_optional(env, "EMAIL_RECIPIENTS", "") or "",
            starttls=flag(env, "SMTP_STARTTLS", default=True),
        ),
    }
