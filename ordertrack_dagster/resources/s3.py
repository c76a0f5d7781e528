"""S3: a client that honours AWS_ENDPOINT_URL, and the Parquet history IO manager.

Every run's output is kept (analysts read the history). A partitioned (tracking) output is
kept in MongoDB first and read from there by the steps of the same run, then copied to S3
(`history_queue.py`), so an S3 outage delays the history and never the tracking. A small
pointer per partition names the latest object published.
"""

import io
import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

import boto3
import pandas as pd
import pyarrow.parquet as pq
from botocore.config import Config as BotoConfig
from dagster import (
    AssetRecordsFilter,
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ordertrack_dagster.resources.history_queue import HistoryQueue
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.security.redaction import redactor

PARQUET_ENGINE = "pyarrow"
ROW_GROUP_ROWS = 5_000
#: The run tag naming the run whose outputs a run's inputs from outside it load (a flow's
#: effects run reports the tracking run that triggered it), instead of the latest.
SOURCE_RUN_TAG = "ordertrack/tracking_run"
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

    def get_quick_client(self) -> Any:
        """A client that gives up within seconds (short time-outs, one retry): for work that
        S3 must not hold up, which keeps what it could not upload for later."""
        key = "quick:" + self.model_dump_json()
        with _clients_lock:
            if key not in _clients:
                _clients[key] = boto3.session.Session(profile_name=self.profile_name).client(
                    "s3",
                    region_name=self.region_name,
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id=self.aws_access_key_id,
                    aws_secret_access_key=self.aws_secret_access_key,
                    aws_session_token=self.aws_session_token,
                    config=BotoConfig(
                        connect_timeout=3,
                        read_timeout=15,
                        retries={"max_attempts": 2, "mode": "standard"},
                    ),
                )
            return _clients[key]


#: A flow or run id as one segment of a key: letters, digits, `_`, `-` (a Dagster run id is a
#: UUID, a flow a partition key), so no value can climb out of its folder (`../`, `/`).
_KEY_PART = re.compile(r"[A-Za-z0-9_-]+")


def key_part(value: str) -> str:
    """`value` if it is safe as one segment of an S3 key; ValueError otherwise."""
    if not _KEY_PART.fullmatch(value):
        raise ValueError(f"{value[:60]!r} is not a safe S3 key part (letters, digits, _ and -)")
    return value


def _base(prefix: str) -> str:
    return f"{prefix.strip('/')}/" if prefix.strip("/") else ""


def history_day_prefix(prefix: str, asset: str, flow: str, day: date) -> str:
    """`<prefix>/<asset>/flow=<flow>/date=<YYYY-MM-DD>/`: one day of one flow's history.

    Readers list this prefix per day, so reading a week never lists the whole bucket.
    """
    return f"{_base(prefix)}{asset}/flow={key_part(flow)}/date={day:%Y-%m-%d}/"


def history_key(prefix: str, asset: str, flow: str, run_id: str, when: datetime) -> str:
    """`<prefix>/<asset>/flow=<flow>/date=<YYYY-MM-DD>/<run_id>.parquet` (Hive-style parts)."""
    return f"{history_day_prefix(prefix, asset, flow, when)}{key_part(run_id)}.parquet"


def latest_pointer_key(prefix: str, asset: str, flow: str) -> str:
    return f"{_base(prefix)}{asset}/flow={flow}/_latest.json"


def table_key(prefix: str, asset: str) -> str:
    """`<prefix>/<asset path>.parquet`: an unpartitioned asset (an analytics model) is one
    object, replaced by each materialization."""
    return f"{_base(prefix)}{asset}.parquet"


def dataframe_to_parquet(frame: pd.DataFrame) -> bytes:
    """Row groups of `ROW_GROUP_ROWS`: a reader decodes one at a time, where one row group of
    a whole fetch's answers grew its buffers to nearly three times their size."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine=PARQUET_ENGINE, index=False, row_group_size=ROW_GROUP_ROWS)
    return buffer.getvalue()


class ParquetHistoryIOManager(ConfigurableIOManager):
    """Stores DataFrame assets as Parquet: one object per run for a partitioned asset (its
    history: MongoDB first, then S3), one replaced S3 object for an unpartitioned one."""

    s3: OrdertrackS3Resource
    mongo: MongoResource
    bucket: str = Field(description="AWS_S3_BUCKET")
    prefix: str = Field(default="ordertrack", description="key prefix inside the bucket")

    def _asset_name(self, context: OutputContext | InputContext) -> str:
        return "/".join(context.asset_key.path)

    def _queue(self) -> HistoryQueue:
        return HistoryQueue(self.mongo.get_database())

    def handle_output(self, context: OutputContext, obj: pd.DataFrame) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{self._asset_name(context)} must be a DataFrame, got {type(obj)}")
        asset = self._asset_name(context)
        now = datetime.now(UTC)
        # Kept exact for the next step (our own database); redacted on the way to S3.
        body = dataframe_to_parquet(obj)
        metadata: dict[str, Any] = {
            "rows": len(obj),
            "bytes": len(body),
            "columns": ", ".join(map(str, obj.columns)),
        }
        if context.has_asset_partitions:
            flow = context.asset_partition_key
            key = history_key(self.prefix, asset, flow, context.run_id, now)
            queue = self._queue()
            queue.ensure_indexes()
            oid = queue.store(asset, flow, context.run_id, key, body, len(obj), now)
            published = queue.publish(asset, flow, self._upload, now, in_hand={oid: body})
            if published.error:
                context.log.warning(
                    f"S3 history of {asset} not written now ({published.error}); "
                    f"{published.pending} object(s) kept in MongoDB for a later run"
                )
            metadata |= {"s3_published": published.published, "s3_queued": published.pending}
        else:
            key = table_key(self.prefix, asset)
            self.s3.get_client().put_object(
                Bucket=self.bucket, Key=key, Body=redacted_parquet(body)
            )
        context.add_output_metadata({"uri": MetadataValue.path(f"s3://{self.bucket}/{key}")})
        context.add_output_metadata(metadata)

    def _upload(self, key: str, body: bytes, header: dict[str, Any]) -> None:
        client = self.s3.get_quick_client()
        client.put_object(Bucket=self.bucket, Key=key, Body=redacted_parquet(body))
        pointer = {
            "key": key,
            "run_id": header["run_id"],
            "rows": header["rows"],
            "written_at": header["created_at"].isoformat(),
        }
        client.put_object(
            Bucket=self.bucket,
            Key=latest_pointer_key(self.prefix, header["asset"], header["flow"]),
            Body=json.dumps(pointer).encode(),
        )

    def load_input(self, context: InputContext) -> pd.DataFrame:
        asset = self._asset_name(context)
        if not context.has_asset_partitions:
            client = self.s3.get_client()
            return read_parquet_object(client, self.bucket, table_key(self.prefix, asset))
        flow, queue = context.asset_partition_key, self._queue()
        run_id = _producing_run(context, partial(queue.holds, asset, flow))
        body = queue.load(asset, flow, run_id)
        return pd.read_parquet(io.BytesIO(body), engine=PARQUET_ENGINE)


def redacted_parquet(body: bytes) -> bytes:
    """The Parquet object without any secret a courier may have echoed (it leaves the process
    here); the same bytes when there is none. Searched a row group at a time: a second copy of
    the whole table was the run's peak memory."""
    scan = redactor()
    row_groups = pq.ParquetFile(io.BytesIO(body))
    groups = (row_groups.read_row_group(i).to_pandas() for i in range(row_groups.num_row_groups))
    if not any(scan.columns_to_redact(group) for group in groups):
        return body
    return dataframe_to_parquet(
        scan.frame(pd.read_parquet(io.BytesIO(body), engine=PARQUET_ENGINE))
    )


def _producing_run(context: InputContext, kept: Callable[[str], bool]) -> str | None:
    """The run whose output this input is: the upstream step's run (this run, or the run a
    re-execution comes from), whose output is `kept`; for an asset not in this run, the run
    its `SOURCE_RUN_TAG` names, else its latest materialization; None (the latest stored)
    when loaded outside a run (`load_asset_value`). The tag pins every input of the run to
    one run, whatever the flow materialized since (a later tracking run of the flow).

    Only Dagster's public context is read: an upstream outside the run carries a run id that
    names no run (neither kept nor known to the instance).
    """
    upstream = context.upstream_output
    if upstream is not None and kept(upstream.run_id):
        return upstream.run_id
    if not context.has_input_name:  # Dagster's own sign of a load from outside a run
        return None
    if upstream is not None and context.instance.get_run_by_id(upstream.run_id) is not None:
        return upstream.run_id  # a run's output no longer kept: the load says so
    source = context.step_context.run_tags.get(SOURCE_RUN_TAG)
    if source:
        return source
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=context.asset_key, asset_partitions=[context.asset_partition_key]
        ),
        limit=1,
    ).records
    return records[0].run_id if records else None


def read_parquet_object(client: Any, bucket: str, key: str) -> pd.DataFrame:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body), engine=PARQUET_ENGINE)
