"""The tracking flow as partitioned assets: snapshot -> raw answers -> mapped -> MongoDB write.

One partition per flow, so ops re-run one courier's partition and analysts load one
courier's DataFrames. Each body hands its inputs to one step (`steps.py`, and for the write
`writer.write_statuses`), which returns the table and the metadata ops judge the run by.
"""

from collections.abc import Iterator
from functools import partial

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Output,
    asset,
)
from pydantic import Field

from ordertrack_dagster.couriers import COURIERS
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.security.redaction import redacted_failures
from ordertrack_dagster.tables import (
    GROUP,
    IO_MANAGER,
    OWNERS,
    RAW_COURIER_RESPONSES,
    STATUS_UPDATES,
    flow_partitions,
    latest_materialization,
    nearest_materialization,
)
from ordertrack_dagster.tracking import metadata, steps, writer
from ordertrack_dagster.tracking.selection import ChosenOrders

COURIER_RESOURCE_KEYS = frozenset(binding.resource_key for binding in COURIERS.values())
NO_REJECTED_WRITES = "no_rejected_writes"
DETECTION_DELAY = "detection_delay"


def _output(table: metadata.Table) -> Output[pd.DataFrame]:
    return Output(table.frame, metadata=table.metadata)


class SelectionConfig(Config):
    """Run config of `pending_orders`; empty (what schedules run with) selects as contract §2
    says. Naming orders re-polls just those of them now (`repoll_orders_job`)."""

    order_ids: list[str] = Field(
        default_factory=list, description="re-poll only these orders (their `order_id`)"
    )
    tracking_keys: list[str] = Field(
        default_factory=list,
        description="re-poll only these tracking keys (AWB, or LR number for B2B)",
    )

    def chosen(self) -> ChosenOrders | None:
        chosen = ChosenOrders(tuple(self.order_ids), tuple(self.tracking_keys))
        return chosen or None


#: What every tracking asset shares: its group, owners, one partition per flow, and the IO
#: manager that keeps each run's outputs.
tracking_asset = partial(
    asset,
    group_name=GROUP,
    owners=OWNERS,
    partitions_def=flow_partitions,
    io_manager_key=IO_MANAGER,
)


@tracking_asset(
    kinds={"mongodb", "pandas"},
    description="Orders due for tracking in this flow (contract §2 filter, earliest next poll "
    "first, capped).",
)
def pending_orders(
    context: AssetExecutionContext, config: SelectionConfig, mongo: MongoResource
) -> Output[pd.DataFrame]:
    flow = get_flow(context.partition_key)
    return _output(steps.select_pending(mongo.get_database(), flow, context.log, config.chosen()))


class CourierRequestConfig(Config):
    """Run config of `raw_courier_responses`; the defaults are what schedules run with."""

    force: bool = Field(
        default=False,
        description="Ignore a stored courier pause (rate limit) and ask the courier anyway; "
        "without it a run during a pause stops before sending anything.",
    )


@tracking_asset(
    required_resource_keys={"mongo", *COURIER_RESOURCE_KEYS},
    kinds={"pandas", "parquet", "s3"},
    description="What the courier answered, one row per tracking key asked; kept for every run.",
)
def raw_courier_responses(
    context: AssetExecutionContext, config: CourierRequestConfig, pending_orders: pd.DataFrame
) -> Output[pd.DataFrame]:
    flow = get_flow(context.partition_key)
    courier = getattr(context.resources, COURIERS[flow.key].resource_key)
    with redacted_failures():  # a client's error may quote its credentials
        return _output(
            steps.ask_courier(
                context.resources.mongo.get_database(),
                pending_orders,
                flow,
                courier,
                force=config.force,
                run_id=context.run_id,
                log=context.log,
            )
        )


@tracking_asset(
    kinds={"mongodb", "pandas", "parquet"},
    description="Each selected order's answer mapped onto a canonical status (contract §5), "
    "with the alerts it raised.",
)
def status_updates(
    context: AssetExecutionContext,
    pending_orders: pd.DataFrame,
    raw_courier_responses: pd.DataFrame,
    mongo: MongoResource,
) -> Output[pd.DataFrame]:
    flow = get_flow(context.partition_key)
    db = mongo.get_database()
    return _output(steps.map_answers(db, pending_orders, raw_courier_responses, flow))


@tracking_asset(
    kinds={"mongodb", "pandas"},
    check_specs=[
        AssetCheckSpec(
            NO_REJECTED_WRITES,
            asset="order_status_writes",
            description="Fails when MongoDB rejected some of the run's updates; those orders "
            "stay due and are named in the run's alert log.",
        ),
        AssetCheckSpec(
            DETECTION_DELAY,
            asset="order_status_writes",
            description="A measurement, plotted over time on this check's page: seconds from "
            "the courier's scan to our write for the status changes the run detected (p50, "
            "p95, max, and per status reached). It does not fail.",
        ),
    ],
    description="The MongoDB write (contract §6): statuses moved forward only, polls recorded, "
    "orderTracking history appended once; one row per selected order saying what happened.",
)
def order_status_writes(
    context: AssetExecutionContext, status_updates: pd.DataFrame, mongo: MongoResource
) -> Iterator[Output[pd.DataFrame] | AssetCheckResult]:
    flow = get_flow(context.partition_key)
    db, fetch_run = mongo.get_database(), _fetching_run(context)
    table = writer.write_statuses(db, status_updates, flow, fetch_run, context.log)
    yield _output(table)
    # stored (Dagster stores an output before the body goes on): a write that failed to store
    # its table is re-executed with the run's recorded decisions still there to report
    writer.discard(db, fetch_run, context.log)
    rejected = int(table.metadata["rejected_updates"])
    yield AssetCheckResult(
        check_name=NO_REJECTED_WRITES,
        passed=rejected == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"rejected": rejected},
    )
    yield AssetCheckResult(
        check_name=DETECTION_DELAY,
        passed=True,
        metadata={"flow": flow.key, **metadata.detection_delay_metadata(table.frame)},
    )


def _fetching_run(context: AssetExecutionContext) -> str:
    """The run whose fetch these answers come from (and whose recorded writes to skip): up
    the re-execution chain from this run, the nearest run that materialized
    `raw_courier_responses`. For a write materialized on its own, the same from the run of the
    partition's latest `status_updates` (its input); when that was mapped on its own too, the
    run of the last `raw_courier_responses` before it (what it mapped)."""
    instance, partition = context.instance, context.partition_key
    fetched = nearest_materialization(instance, context.run_id, RAW_COURIER_RESPONSES)
    if fetched is not None:
        return fetched.run_id
    mapped = latest_materialization(instance, STATUS_UPDATES, partition)
    if mapped is None:
        return context.run_id
    fetched = nearest_materialization(instance, mapped.run_id, RAW_COURIER_RESPONSES)
    if fetched is not None:
        return fetched.run_id
    before = latest_materialization(
        instance, RAW_COURIER_RESPONSES, partition, before=mapped.storage_id
    )
    return before.run_id if before is not None else context.run_id


TRACKING_ASSETS = [pending_orders, raw_courier_responses, status_updates, order_status_writes]
