"""Side effects of a flow run (contract §7) as partitioned assets downstream of the MongoDB write.

`effects_outbox` drains the write path's markers into the durable outbox; each sending asset,
built from one declaration of `declarations.py`, then delivers its own kind from there, so
any of them can be re-run alone and nothing is sent twice. A service that is down never
touches the status writes (they are upstream and done): the asset records the failure in its
metadata, its log and its checks, leaves the delivery in the outbox, and a later run sends it.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field
from pymongo.database import Database

from ordertrack_dagster import tables
from ordertrack_dagster.effects.declarations import EFFECTS, Effect, EffectRun
from ordertrack_dagster.effects.delivery import DeliveryDeferred, DeliveryError, deliver
from ordertrack_dagster.effects.documents import Report
from ordertrack_dagster.effects.messages import dead_letter_text
from ordertrack_dagster.effects.outbox import Outbox
from ordertrack_dagster.effects.senders import post_slack
from ordertrack_dagster.effects.settings import EffectsSettings
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.markers import Event
from ordertrack_dagster.resources.mongo import MongoResource

NO_DEAD_LETTERS = "no_dead_letters"
NO_FAILING_DELIVERIES = "no_failing_deliveries"
ALL_KINDS = tuple(event.value for event in Event) + tuple(report.value for report in Report)
#: What every sending asset uses: the outbox, the alerts channel, the retry policy.
SENDING_RESOURCES = frozenset({"mongo", "slack", "effects"})


class DeliveryConfig(Config):
    """Run config of every sending asset."""

    retry_dead_letters: bool = Field(
        default=False,
        description="First put this flow's dead letters of this effect back in the queue, "
        "with a fresh retry budget (after the cause was fixed).",
    )


def _checks(name: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            NO_DEAD_LETTERS,
            asset=name,
            description="Fails while deliveries of this flow were given up on (dead letters).",
        ),
        AssetCheckSpec(
            NO_FAILING_DELIVERIES,
            asset=name,
            description="Warns while deliveries of this flow wait for a retry after a failure.",
        ),
    ]


def _outbox(
    context: AssetExecutionContext,
    db: Database,
    effects: EffectsSettings,
    kinds: Sequence[str] = (),
) -> Outbox:
    return Outbox(db, effects.retry_policy(kinds), owner=context.run_id)


def _notify_dead_letters(
    context: AssetExecutionContext, outbox: Outbox, flow_key: str, kinds: Sequence[str]
) -> None:
    """Tell the alerts channel once per dead letter; if Slack fails, the next run tells it."""
    dead = outbox.unalerted_dead(flow_key, kinds)
    if not dead:
        return
    for doc in dead:
        context.log.error(f"gave up on {doc['_id']}: {doc.get('last_error')}")
    text = dead_letter_text(flow_key, dead, outbox.policy.give_up_after_hours)
    resources = context.resources.original_resource_dict
    try:
        post_slack(resources["slack"].get_client(), resources["effects"].alerts_channel, text)
    except (DeliveryError, DeliveryDeferred) as error:
        context.log.warning(f"dead-letter notice not posted, next run tries again: {error}")
        return
    outbox.mark_dead_alerted(dead)


def _send(
    context: AssetExecutionContext,
    config: DeliveryConfig,
    effect: Effect,
    run: EffectRun,
    metadata: dict[str, Any],
) -> MaterializeResult:
    """Send this flow's due deliveries of the effect and report them (with `metadata`)."""
    flow, outbox, kinds = run.flow, run.outbox, effect.kinds
    if config.retry_dead_letters:
        requeued = outbox.requeue_dead(flow.key, kinds, run.now)
        context.log.info(f"re-queued {requeued} dead letter(s)")
    with effect.sender(run) as send:
        report = deliver(outbox, outbox.claim(flow.key, kinds, run.now), send)
    for error in report.errors:
        context.log.error(f"{flow.key}: delivery failed: {error}")
    if report.stopped:
        context.log.warning(
            f"{flow.key}: sending stopped ({report.stopped}); "
            f"{report.not_attempted} delivery(ies) left for the next run"
        )
    _notify_dead_letters(context, outbox, flow.key, kinds)
    counts = outbox.counts(flow.key, kinds)
    failing = report.failed > 0 or counts["retrying"] > 0
    return MaterializeResult(
        metadata={
            "flow": flow.key,
            "sent": report.sent,
            "failed": report.failed,
            "rate_limited": report.deferred,
            "not_attempted": report.not_attempted,
            "became_dead": report.became_dead,
            "queue_pending": counts["pending"],
            "queue_retrying": counts["retrying"],
            "queue_dead": counts["dead"],
            "errors": MetadataValue.json(report.errors),
            **metadata,
        },
        check_results=[
            AssetCheckResult(
                check_name=NO_DEAD_LETTERS,
                passed=counts["dead"] == 0,
                severity=AssetCheckSeverity.ERROR,
                metadata={"dead": counts["dead"]},
            ),
            AssetCheckResult(
                check_name=NO_FAILING_DELIVERIES,
                passed=not failing,
                severity=AssetCheckSeverity.WARN,
                metadata={"failed_this_run": report.failed, "retrying": counts["retrying"]},
            ),
        ],
    )


def effect_asset(effect: Effect) -> AssetsDefinition:
    """The sending asset of one effect: queue this run's report (if any), then send."""

    @asset(
        name=effect.name,
        group_name=tables.GROUP,
        owners=tables.OWNERS,
        partitions_def=tables.flow_partitions,
        deps=list(effect.deps),
        ins={name: AssetIn(name) for name in effect.reads},
        required_resource_keys=SENDING_RESOURCES | effect.resources,
        check_specs=_checks(effect.name),
        kinds=set(effect.dagster_kinds),
        description=effect.description,
    )
    def _effect(
        context: AssetExecutionContext, config: DeliveryConfig, **reads: pd.DataFrame
    ) -> MaterializeResult:
        resources = context.resources.original_resource_dict
        outbox = _outbox(
            context, resources["mongo"].get_database(), resources["effects"], effect.kinds
        )
        flow = get_flow(context.partition_key)
        run = EffectRun(context, flow, outbox, datetime.now(UTC), reads, resources)
        return _send(context, config, effect, run, effect.queue(run) if effect.queue else {})

    return _effect


@asset(
    group_name=tables.GROUP,
    owners=tables.OWNERS,
    partitions_def=tables.flow_partitions,
    deps=[tables.ORDER_STATUS_WRITES],
    kinds={"mongodb"},
    description="Drains the status writes' side-effect markers into the durable MongoDB outbox "
    "(ordertrack_outbox), one document per order and event.",
)
def effects_outbox(
    context: AssetExecutionContext, mongo: MongoResource, effects: EffectsSettings
) -> MaterializeResult:
    flow = get_flow(context.partition_key)
    outbox = _outbox(context, mongo.get_database(), effects)
    outbox.ensure_indexes()
    now = datetime.now(UTC)
    drained, rejected = outbox.drain_markers(flow.key, now)
    for problem in rejected:
        context.log.error(f"outbox write rejected, the marker stays for the next run: {problem}")
    purged = outbox.purge_delivered(flow.key, now - timedelta(days=effects.retention_days), now)
    return MaterializeResult(
        metadata={
            "flow": flow.key,
            "drained": sum(drained.values()),
            "purged_after_retention": purged,
            "drained_per_event": MetadataValue.json(dict(sorted(drained.items()))),
            "rejected": len(rejected),
            "queue": MetadataValue.json(outbox.counts(flow.key, ALL_KINDS)),
        }
    )


EFFECT_ASSETS = [effects_outbox, *(effect_asset(effect) for effect in EFFECTS)]
#: The effect assets that load no tracking table: what an effects run can do in a flow
#: whose tables were never stored (markers written by a run of another instance).
TABLELESS_EFFECTS = [
    effects_outbox.key,
    *(AssetKey(effect.name) for effect in EFFECTS if not effect.reads),
]
