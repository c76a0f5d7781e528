"""The tracking tables every concern reads: their group, partitions, keys and columns, and
which run's table a step works with.

tracking/ writes them; effects/ reports them, analytics/ reads their history and
orchestration/ schedules and checks them: each takes the schema from here, never from the
assets that write them.
"""

from __future__ import annotations

from enum import StrEnum

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    EventLogRecord,
    StaticPartitionsDefinition,
)

from ordertrack_dagster.flows import FLOWS, get_flow, max_runtime_tag
from ordertrack_dagster.records import FetchRecord

GROUP = "tracking"
#: Who answers for the tracking group (the flow and its effects): shown in the UI and the catalog.
OWNERS = ["team:ops"]
IO_MANAGER = "parquet_io_manager"


class FlowPartitions(StaticPartitionsDefinition):
    """One partition per flow, whose runs carry the flow's max runtime whoever launches them.

    Dagster tags a partitioned run with its partition definition's tags: a run of
    `tracking_job` from the Launchpad or a backfill (asked of the code server) and a
    `dagster asset materialize --partition` or in-process run. Without the tag run monitoring
    applies the instance default (1,800 s), shorter than the fallback flow's fetch time box.
    """

    def get_tags_for_partition_key(self, partition_key: str) -> dict[str, str]:
        tags = super().get_tags_for_partition_key(partition_key)
        return {**tags, **max_runtime_tag(get_flow(partition_key))}


#: One partition per flow: ops re-run one courier's partition, analysts load one courier's rows.
flow_partitions = FlowPartitions(list(FLOWS))

PENDING_ORDERS = AssetKey("pending_orders")
RAW_COURIER_RESPONSES = AssetKey("raw_courier_responses")
STATUS_UPDATES = AssetKey("status_updates")
ORDER_STATUS_WRITES = AssetKey("order_status_writes")

SNAPSHOT_COLUMNS = [
    "order_oid",
    "order_id",
    "tracking_key",
    "order_status",
    "booked_at",
    "last_tracking_time",
    "bookingCourier",
    "source",
    "status_changed_at",
]
RAW_RESPONSE_COLUMNS = ["flow", "run_id", *FetchRecord.__dataclass_fields__]
UPDATE_COLUMNS = [
    "order_oid",
    "order_id",
    "tracking_key",
    "current_status_id",
    "booked_at",
    "outcome",
    "courier_status",
    "status",
    "event_time",
    "stop_tracking",
    "alert",
    "status_changed_at",
]
WRITE_COLUMNS = [
    "order_oid",
    "order_id",
    "tracking_key",
    "outcome",
    "action",
    "from_status",
    "to_status",
    "events",
    "alert",
    "event_time",
    "written_at",
]
#: Column names of each stored tracking table, by asset name.
TABLE_COLUMNS: dict[str, list[str]] = {
    PENDING_ORDERS.path[-1]: SNAPSHOT_COLUMNS,
    RAW_COURIER_RESPONSES.path[-1]: RAW_RESPONSE_COLUMNS,
    STATUS_UPDATES.path[-1]: UPDATE_COLUMNS,
    ORDER_STATUS_WRITES.path[-1]: WRITE_COLUMNS,
}


class Action(StrEnum):
    """What the write step did with one polled order (`order_status_writes.action`)."""

    STATUS_CHANGED = "status_changed"
    POLL_RECORDED = "poll_recorded"  # answer read; status left as it was
    REFUSED = "refused"  # the move would go backwards: alert, status left alone
    UNTOUCHED = "untouched"  # not found, failed or deferred: status and poll fields unchanged
    REJECTED = "rejected"  # MongoDB refused the update: alert, the order stays due


def materialization_in_run(
    instance: DagsterInstance, run_id: str, key: AssetKey, partition: str | None = None
) -> EventLogRecord | None:
    """The run's last materialization of `key` (in `partition`, when given: a run named by a
    tag may be another flow's)."""
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    return next(
        (
            record
            for record in reversed(records)
            if record.asset_key == key and partition in (None, record.partition_key)
        ),
        None,
    )


def nearest_materialization(
    instance: DagsterInstance, run_id: str | None, key: AssetKey
) -> EventLogRecord | None:
    """`key`'s materialization by the nearest run from `run_id` up its parent runs: the table
    this run's steps loaded, whether it made it or a re-execution took it from its parent."""
    while run_id is not None:
        record = materialization_in_run(instance, run_id, key)
        if record is not None:
            return record
        run = instance.get_run_by_id(run_id)
        run_id = run.parent_run_id if run is not None else None
    return None


def latest_materialization(
    instance: DagsterInstance, key: AssetKey, partition: str, before: int | None = None
) -> EventLogRecord | None:
    """The partition's latest materialization of `key` (before the storage id `before`),
    whichever run made it: only for a step whose run neither made nor inherited the table."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition], before_storage_id=before),
        limit=1,
    ).records
    return records[0] if records else None
