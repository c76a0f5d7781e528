"""S3: a client that honours AWS_ENDPOINT_URL, and the Parquet history IO manager.

Every run's output is kept (analysts read the history); a small pointer per partition names
the latest object, which is what Dagster loads for a downstream asset.
"""

import io
import json
from datetime import UTC, datetime
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

PARQUET_ENGINE = "pyarrow"


def history_key(prefix: str, asset: str, flow: str, run_id: str, when: datetime) -> str:
    """`<prefix>/<asset>/flow=<flow>/date=<YYYY-MM-DD>/<run_id>.parquet` (Hive-style parts)."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return f"{base}{asset}/flow={flow}/date={when:%Y-%m-%d}/{run_id}.parquet"


def latest_pointer_key(prefix: str, asset: str, flow: str) -> str:
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return f"{base}{asset}/flow={flow}/_latest.json"


def dataframe_to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine=PARQUET_ENGINE, index=False)
    return buffer.getvalue()


class ParquetHistoryIOManager(ConfigurableIOManager):
    """Stores partitioned DataFrame assets as Parquet on S3, one object per run."""

    s3: S3Resource
    bucket: str = Field(description="AWS_S3_BUCKET")
    prefix: str = Field(default="ordertrack", description="key prefix inside the bucket")

    def _asset_name(self, context: OutputContext | InputContext) -> str:
        return "/".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: pd.DataFrame) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{self._asset_name(context)} must be a DataFrame, got {type(obj)}")
        flow = context.partition_key
        asset = self._asset_name(context)
        now = datetime.now(UTC)
        key = history_key(self.prefix, asset, flow, context.run_id, now)
        body = dataframe_to_parquet(obj)
        client = self.s3.get_client()
        client.put_object(Bucket=self.bucket, Key=key, Body=body)
        pointer = {
            "key": key,
            "run_id": context.run_id,
            "rows": len(obj),
            "written_at": now.isoformat(),
        }
        client.put_object(
            Bucket=self.bucket,
            Key=latest_pointer_key(self.prefix, asset, flow),
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
        flow = context.partition_key
        asset = self._asset_name(context)
        client = self.s3.get_client()
        pointer = json.loads(
            client.get_object(Bucket=self.bucket, Key=latest_pointer_key(self.prefix, asset, flow))[
                "Body"
            ].read()
        )
        return read_parquet_object(client, self.bucket, pointer["key"])


def read_parquet_object(client: Any, bucket: str, key: str) -> pd.DataFrame:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body), engine=PARQUET_ENGINE)
