"""Which run's tracking table an effect reports (`declarations.source_run`), while other runs of
the flow materialize the same table: the run its tag names, else its own (made in the run or
taken over from the run a re-execution comes from), else the partition's latest.

Two runs of one flow overlap in production (ops re-run a partition beside a scheduled run): a
whole-flow run that took the latest table would queue its alert log under the other run's id,
and one run's log would never be written. Real runs against one Dagster instance; the assets
are stand-ins for the tracking table and an effect, the lookup is the product's."""

from pathlib import Path

import pytest
from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    Definitions,
    Failure,
    MaterializeResult,
    ReexecutionOptions,
    asset,
    define_asset_job,
    execute_job,
    in_process_executor,
    materialize,
    reconstructable,
)

from ordertrack_dagster.effects.declarations import source_run
from ordertrack_dagster.resources.s3 import SOURCE_RUN_TAG
from ordertrack_dagster.tables import ORDER_STATUS_WRITES, flow_partitions

FLOW = "delhivery_b2c"
#: The run tag by which a stand-in effect lets another run of the flow write before it reports.
OVERTAKEN = "test/overtaken"
#: The run tag by which a stand-in effect fails in a run that is no re-execution.
FAILS_FIRST = "test/fails_first"


@asset(key=ORDER_STATUS_WRITES, partitions_def=flow_partitions)
def order_status_writes() -> None:
    """Stands in for the write step's table."""


@asset(partitions_def=flow_partitions, deps=[ORDER_STATUS_WRITES])
def effect(context: AssetExecutionContext) -> MaterializeResult:
    """Stands in for an effect: reports which run's table it would report."""
    if context.run.tags.get(OVERTAKEN):  # another run of the flow writes meanwhile
        materialize([order_status_writes], instance=context.instance, partition_key=FLOW)
    if context.run.tags.get(FAILS_FIRST) and context.run.parent_run_id is None:
        raise Failure("the effect's first attempt fails")
    return MaterializeResult(metadata={"source": source_run(context, ORDER_STATUS_WRITES).run_id})


def whole_flow_job():
    """Both stand-ins in one job, rebuilt in a re-execution."""
    job = define_asset_job(
        "whole_flow",
        selection=[order_status_writes, effect],
        partitions_def=flow_partitions,
        executor_def=in_process_executor,
    )
    defs = Definitions(assets=[order_status_writes, effect], jobs=[job])
    return defs.resolve_job_def("whole_flow")


def _reported(instance: DagsterInstance, run_id: str) -> str:
    """The run whose table the effect reported in run `run_id`."""
    event = instance.get_latest_materialization_event(effect.key)
    assert event is not None and event.run_id == run_id
    return event.asset_materialization.metadata["source"].value


def _run(instance: DagsterInstance, assets: list, tags: dict[str, str] | None = None) -> str:
    result = materialize(assets, instance=instance, partition_key=FLOW, tags=tags)
    assert result.success
    return result.run_id


@pytest.fixture
def instance(tmp_path: Path):
    with DagsterInstance.local_temp(str(tmp_path)) as local:
        yield local


def test_a_whole_flow_run_reports_its_own_table_though_another_run_wrote_since(instance):
    run_id = _run(instance, [order_status_writes, effect], tags={OVERTAKEN: "yes"})
    [own, other] = [
        record.run_id
        for record in instance.fetch_materializations(ORDER_STATUS_WRITES, limit=2).records[::-1]
    ]
    assert own == run_id and other != run_id  # the other run's table is the latest
    assert _reported(instance, run_id) == run_id


def test_a_re_execution_reports_the_table_it_took_over_from_the_failed_run(instance):
    tags = {OVERTAKEN: "yes", FAILS_FIRST: "yes", "dagster/partition": FLOW}
    with execute_job(
        reconstructable(whole_flow_job), instance, tags=tags, raise_on_error=False
    ) as first:
        assert not first.success
    options = ReexecutionOptions.from_failure(first.run_id, instance)
    with execute_job(
        reconstructable(whole_flow_job), instance, tags=tags, reexecution_options=options
    ) as again:
        assert again.success
        assert _reported(instance, again.run_id) == first.run_id


def test_an_effects_run_reports_the_run_its_tag_names(instance):
    tracking = _run(instance, [order_status_writes])
    _run(instance, [order_status_writes])  # a later tracking run of the flow
    effects = _run(instance, [effect], tags={SOURCE_RUN_TAG: tracking})
    assert _reported(instance, effects) == tracking


def test_an_effect_re_run_alone_reports_the_latest_table(instance):
    _run(instance, [order_status_writes])
    latest = _run(instance, [order_status_writes])
    alone = _run(instance, [effect])
    assert _reported(instance, alone) == latest
