"""The code location: `dagster ... -m ordertrack_dagster.definitions` loads `defs`."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from ordertrack_dagster.analytics.assets import HistoryResource, sql_model_assets
from ordertrack_dagster.couriers.delhivery import DelhiveryResource
from ordertrack_dagster.couriers.delhivery_b2b import DelhiveryB2BResource
from ordertrack_dagster.couriers.shiprocket import ShiprocketResource
from ordertrack_dagster.couriers.velocity import VelocityResource
from ordertrack_dagster.effects.assets import EFFECT_ASSETS
from ordertrack_dagster.effects.crm import CrmResource
from ordertrack_dagster.effects.settings import EffectsSettings
from ordertrack_dagster.effects.smtp import SmtpResource
from ordertrack_dagster.orchestration import CHECKS, JOBS, SCHEDULES, SENSORS
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.s3 import OrdertrackS3Resource, ParquetHistoryIOManager
from ordertrack_dagster.resources.slack import DEFAULT_SLACK_API_URL, OrdertrackSlackResource
from ordertrack_dagster.tracking.assets import TRACKING_ASSETS


def _optional(name: str, default: str | None = None) -> str | None:
    """An optional setting read at load time (EnvVar has no default)."""
    return os.environ.get(name, "").strip() or default


def _optional_secret(name: str) -> EnvVar | None:
    """An optional secret: resolved at run time, so the UI shows its name, never its value."""
    return EnvVar(name) if _optional(name) else None


def _flag(name: str, default: bool) -> bool:
    value = _optional(name)
    return default if value is None else value.lower() not in {"false", "0", "no", "off"}


s3 = OrdertrackS3Resource(
    region_name=_optional("AWS_REGION", "ap-south-1"),
    endpoint_url=_optional("AWS_ENDPOINT_URL"),
    aws_access_key_id=_optional("AWS_ACCESS_KEY_ID"),
    aws_secret_access_key=_optional_secret("AWS_SECRET_ACCESS_KEY"),
)

mongo = MongoResource(uri=EnvVar("MONGODB_URI"), database=EnvVar("MONGODB_DB"))

resources = {
    "mongo": mongo,
    "s3": s3,
    # MongoDB carries the hand-off between the tracking steps; S3 gets the history when up
    "parquet_io_manager": ParquetHistoryIOManager(
        s3=s3, mongo=mongo, bucket=EnvVar("AWS_S3_BUCKET")
    ),
    "history": HistoryResource(s3=s3, bucket=EnvVar("AWS_S3_BUCKET")),
    "slack": OrdertrackSlackResource(
        token=EnvVar("SLACK_TOKEN"), base_url=_optional("SLACK_API_URL", DEFAULT_SLACK_API_URL)
    ),
    "delhivery": DelhiveryResource(
        url=EnvVar("DELHIVERY_URL"),
        fallback_url=EnvVar("DELHIVERY_FALLBACK_URL"),
        token=EnvVar("DELHIVERY_AUTH_TOKEN_B2C"),
    ),
    "delhivery_b2b": DelhiveryB2BResource(
        url=EnvVar("DELHIVERY_B2B_URL"),
        username=EnvVar("DELHIVERY_B2B_USERNAME"),
        password=EnvVar("DELHIVERY_B2B_PASSWORD"),
    ),
    "shiprocket": ShiprocketResource(
        url=EnvVar("SHIPROCKET_URL"),
        email=EnvVar("SHIPROCKET_EMAIL"),
        password=EnvVar("SHIPROCKET_PASSWORD"),
    ),
    "velocity": VelocityResource(
        url=EnvVar("VELOCITY_URL"),
        username=EnvVar("VELOCITY_USERNAME"),
        password=EnvVar("VELOCITY_PASSWORD"),
    ),
    # Side effects: every setting optional, so a missing one fails only its own delivery
    # (kept and retried), never the run's status writes.
    "effects": EffectsSettings(
        bucket=_optional("AWS_S3_BUCKET"),
        booking_cancelled_channel=_optional("BOOKING_CANCELED_CHANNEL_ID"),
        lost_destroy_channel=_optional("LOST_DESTROY_SLACK_CHANNEL_ID"),
        b2b_delivered_channel=_optional("DELIVERED_B2B_SLACK_CHANNEL_ID"),
        alerts_channel=_optional("TRACKING_ALERTS_SLACK_CHANNEL"),
        query_channel=_optional("TRACKING_QUERY_SLACK_CHANNEL"),
        webserver_url=_optional("DAGSTER_WEBSERVER_URL"),
    ),
    "crm": CrmResource(
        webhook_url=_optional("CRM_WEBHOOK_URL"),
        auth_url=_optional("CRM_AUTH_URL"),
        client_id=_optional("CRM_CLIENT_ID"),
        client_secret=_optional_secret("CRM_CLIENT_SECRET"),
        webhook_secret=_optional_secret("CRM_WEBHOOK_SECRET"),
    ),
    "smtp": SmtpResource(
        host=_optional("SMTP_HOST"),
        port=int(_optional("SMTP_PORT", "587") or 587),
        sender=_optional("EMAIL_SENDER"),
        password=_optional_secret("EMAIL_PASSWORD"),
        recipients=_optional("EMAIL_RECIPIENTS", "") or "",
        starttls=_flag("SMTP_STARTTLS", default=True),
    ),
}

defs = Definitions(
    assets=[*TRACKING_ASSETS, *EFFECT_ASSETS, *sql_model_assets()],
    asset_checks=[*CHECKS],
    jobs=[*JOBS],
    schedules=[*SCHEDULES],
    sensors=[*SENSORS],
    resources=resources,
    # The steps of a flow run one after the other; one process per run starts in a fraction
    # of the time a process per step takes, and keeps a run's MongoDB pool warm.
    executor=in_process_executor,
)
