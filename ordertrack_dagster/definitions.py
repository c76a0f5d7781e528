"""The code location: `dagster ... -m ordertrack_dagster.definitions` loads `defs`."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar
from dagster_aws.s3 import S3Resource

from ordertrack_dagster.couriers.delhivery import DelhiveryResource
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.s3 import ParquetHistoryIOManager
from ordertrack_dagster.resources.slack import DEFAULT_SLACK_API_URL, OrdertrackSlackResource
from ordertrack_dagster.tracking.assets import TRACKING_ASSETS


def _optional(name: str, default: str | None = None) -> str | None:
    """An optional setting read at load time (EnvVar has no default)."""
    return os.environ.get(name, "").strip() or default


s3 = S3Resource(
    region_name=_optional("AWS_REGION", "ap-south-1"),
    endpoint_url=_optional("AWS_ENDPOINT_URL"),
    aws_access_key_id=_optional("AWS_ACCESS_KEY_ID"),
    aws_secret_access_key=_optional("AWS_SECRET_ACCESS_KEY"),
)

resources = {
    "mongo": MongoResource(uri=EnvVar("MONGODB_URI"), database=EnvVar("MONGODB_DB")),
    "s3": s3,
    "parquet_io_manager": ParquetHistoryIOManager(s3=s3, bucket=EnvVar("AWS_S3_BUCKET")),
    "slack": OrdertrackSlackResource(
        token=EnvVar("SLACK_TOKEN"), base_url=_optional("SLACK_API_URL", DEFAULT_SLACK_API_URL)
    ),
    "delhivery": DelhiveryResource(
        url=EnvVar("DELHIVERY_URL"),
        fallback_url=EnvVar("DELHIVERY_FALLBACK_URL"),
        token=EnvVar("DELHIVERY_AUTH_TOKEN_B2C"),
    ),
}

defs = Definitions(assets=[*TRACKING_ASSETS], resources=resources)
