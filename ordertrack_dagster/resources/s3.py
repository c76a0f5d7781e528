"""S3: a client that honours AWS_ENDPOINT_URL, and the Parquet history IO manager.

Every run's output is kept (analysts read the history); a small pointer per partition names
the latest object, which is what Dagster loads for a downstream asset.
"""

import io
import json
import threading
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ordertrack_dagster.security.redaction import redactor

PARQUET_ENGINE = "pyarrow"
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


class OrdertrackS3Resource(S3Resource):
    """dagster-aws's S3 resource, with one boto3 client per process and configuration.

    Building a boto3 client costs about 0.3 s; the IO manager and the effects ask for one per
    output and input, so a run would otherwise spend seconds constructing clients.
    """

    def get_client(self) -> Any:
        key = self.model_dump_json()
        with _clients_lock:
            if key not in _clients:
                _clients[key] = super().get_client()
            return _clients[key]


def _base(prefix: str) -> str:
    return f"{prefix.strip('/')}/" if prefix.strip("/") else ""


def history_day_prefix(prefix: str, asset: str, flow: str, day: date) -> str:
    """`<prefix>/<asset>/flow=<flow>/date=<YYYY-MM-DD>/`: one day of one flow's history.

    Readers list this prefix per day, so reading a week never lists the whole bucket.
    """
    return f"{_base(prefix)}{asset}/flow={flow}/date={day:%Y-%m-%d}/"


def history_key(prefix: str, asset: str, flow: str, run_id: str, when: datetime) -> str:
    """`<prefix>/<asset>/flow=<flow>/date=<YYYY-MM-DD>/<run_id>.parquet` (Hive-style parts)."""
    return f"{history_day_prefix(prefix, asset, flow, when)}{run_id}.parquet"


def latest_pointer_key(prefix: str, asset: str, flow: str) -> str:
    return f"{_base(prefix)}{asset}/flow={flow}/_latest.json"


def table_key(prefix: str, asset: str) -> str:
    """`<prefix>/<asset path>.parquet`: an unpartitioned asset (an analytics model) is one
    object, replaced by each materialization."""
    return f"{_base(prefix)}{asset}.parquet"


def dataframe_to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine=PARQUET_ENGINE, index=False)
    return buffer.getvalue()


class ParquetHistoryIOManager(ConfigurableIOManager):
    """Stores DataFrame assets as Parquet on S3: one object per run for a partitioned asset
    (its history), one replaced object for an unpartitioned one."""

    s3: S3Resource
    bucket: str = Field(description="AWS_S3_BUCKET")
    prefix: str = Field(default="ordertrack", description="key prefix inside the bucket")

    def _asset_name(self, context: OutputContext | InputContext) -> str:
        return "/".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: pd.DataFrame) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{self._asset_name(context)} must be a DataFrame, got {type(obj)}")
        asset = self._asset_name(context)
        now = datetime.now(UTC)
        partitioned = context.has_asset_partitions
        key = (
            history_key(self.prefix, asset, context.asset_partition_key, context.run_id, now)
            if partitioned
            else table_key(self.prefix, asset)
        )
        body = dataframe_to_parquet(redactor().frame(obj))  # a courier may echo a credential
        client = self.s3.get_client()
        client.put_object(Bucket=self.bucket, Key=key, Body=body)
        if partitioned:
            pointer = {
                "key": key,
                "run_id": context.run_id,
                "rows": len(obj),
                "written_at": now.isoformat(),
            }
            client.put_object(
                Bucket=self.bucket,
                Key=latest_pointer_key(self.prefix, asset, context.asset_partition_key),
                Body=json.dumps(pointer).encode(),
            )
        context.add_output_metadata(
            {
                "uri": MetadataValue.path(f"s3://{self.bucket}/{key}"),
                "rows": len(obj),
                "bytes": len(body),
                "columns": ", ".join(map(str, obj.columns)),
            }
        )

    def load_input(self, context: InputContext) -> pd.DataFrame:
        asset = self._asset_name(context)
        client = self.s3.get_client()
        if not context.has_asset_partitions:
            return read_parquet_object(client, self.bucket, table_key(self.prefix, asset))
        pointer_key = latest_pointer_key(self.prefix, asset, context.asset_partition_key)
        pointer = json.loads(client.get_object(Bucket=self.bucket, Key=pointer_key)["Body"].read())
        return read_parquet_object(client, self.bucket, pointer["key"])


def read_parquet_object(client: Any, bucket: str, key: str) -> pd.DataFrame:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body), engine=PARQUET_ENGINE)
