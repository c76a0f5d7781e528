"""Side effects of a flow run (SPEC §7) as partitioned assets downstream of the MongoDB write.

`effects_outbox` drains the write path's markers into the durable outbox; each sending asset
then delivers its own kind from there, so any of them can be re-run alone and nothing is
sent twice. A service that is down never touches the status writes (they are upstream and
done): the asset records the failure in its metadata, its log and its checks, leaves the
delivery in the outbox, and a later run sends it.
"""

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from bson import Binary
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field
from pymongo.database import Database
from slack_sdk import WebClient

from ordertrack_dagster import tables
from ordertrack_dagster.couriers.state import CourierState
from ordertrack_dagster.effects.crm import CrmResource
from ordertrack_dagster.effects.messages import crm_payload, dead_letter_text, status_alert_text
from ordertrack_dagster.effects.outbox import (
    DeliveryDeferred,
    DeliveryError,
    DeliveryReport,
    Outbox,
    Report,
    Sender,
)
from ordertrack_dagster.effects.reports import (
    ALERT_LINK_DAYS,
    QUERY_LINK_DAYS,
    RunSummary,
    alert_lines,
    alert_log_text,
    alert_summary,
    jsonl,
    log_key,
    query_log_document,
    query_log_text,
    render_email,
)
from ordertrack_dagster.effects.senders import post_slack, put_and_presign
from ordertrack_dagster.effects.settings import EffectsSettings
from ordertrack_dagster.effects.smtp import SmtpResource
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.markers import Event
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.slack import OrdertrackSlackResource
from ordertrack_dagster.run_summary import summarise, summary_per_status

NO_DEAD_LETTERS = "no_dead_letters"
NO_FAILING_DELIVERIES = "no_failing_deliveries"
STATUS_EVENTS = (
    Event.SLACK_CANCELLED.value,
    Event.SLACK_LOST_DESTROY.value,
    Event.SLACK_B2B_SAME_DAY_DELIVERY.value,
)
ALL_KINDS = tuple(event.value for event in Event) + tuple(report.value for report in Report)


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


def _outbox(context: AssetExecutionContext, db: Database, effects: EffectsSettings) -> Outbox:
    return Outbox(db, effects.retry_policy(), owner=context.run_id)


def _notify_dead_letters(
    context: AssetExecutionContext,
    outbox: Outbox,
    slack: WebClient,
    effects: EffectsSettings,
    flow_key: str,
    kinds: Sequence[str],
) -> None:
    """Tell the alerts channel once per dead letter; if Slack fails, the next run tells it."""
    dead = outbox.unalerted_dead(flow_key, kinds)
    if not dead:
        return
    for doc in dead:
        context.log.error(f"gave up on {doc['_id']}: {doc.get('last_error')}")
    text = dead_letter_text(flow_key, dead, outbox.policy.give_up_after_hours)
    try:
        post_slack(slack, effects.alerts_channel, text)
    except (DeliveryError, DeliveryDeferred) as error:
        context.log.warning(f"dead-letter notice not posted, next run tries again: {error}")
        return
    outbox.mark_dead_alerted(dead)


def _deliver(
    context: AssetExecutionContext,
    config: DeliveryConfig,
    outbox: Outbox,
    slack: WebClient,
    effects: EffectsSettings,
    kinds: Sequence[str],
    send: Sender,
    metadata: dict[str, Any] | None = None,
) -> MaterializeResult:
    """Send this flow's due deliveries of `kinds` and report them; shared by every effect."""
    flow = get_flow(context.partition_key)
    now = datetime.now(UTC)
    if config.retry_dead_letters:
        requeued = outbox.requeue_dead(flow.key, kinds, now)
        context.log.info(f"re-queued {requeued} dead letter(s)")
    report: DeliveryReport = outbox.deliver(outbox.claim(flow.key, kinds, now), send)
    for error in report.errors:
        context.log.error(f"{flow.key}: delivery failed: {error}")
    if report.stopped:
        context.log.warning(
            f"{flow.key}: sending stopped ({report.stopped}); "
            f"{report.not_attempted} delivery(ies) left for the next run"
        )
    _notify_dead_letters(context, outbox, slack, effects, flow.key, kinds)
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
            "queue_sent": counts["sent"],
            "errors": MetadataValue.json(report.errors),
            **(metadata or {}),
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


@dataclass(frozen=True)
class _SourceRun:
    """The run whose outputs an effect reports: this run, unless the effect is re-run alone."""

    run_id: str
    materialized_at: float | None
    metadata: dict[str, Any]


def _source_run(context: AssetExecutionContext, key: AssetKey) -> _SourceRun:
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
    ).records
    record = records[0] if records else None
    materialization = record.asset_materialization if record else None
    if record is None or materialization is None:
        return _SourceRun(context.run_id, None, {})
    return _SourceRun(
        record.run_id,
        record.timestamp,
        {name: value.value for name, value in materialization.metadata.items()},
    )


@asset(
    group_name=tables.GROUP,
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
    drained, rejected = outbox.drain_markers(flow.key, datetime.now(UTC))
    for problem in rejected:
        context.log.error(f"outbox write rejected, the marker stays for the next run: {problem}")
    return MaterializeResult(
        metadata={
            "flow": flow.key,
            "drained": sum(drained.values()),
            "drained_per_event": MetadataValue.json(dict(sorted(drained.items()))),
            "rejected": len(rejected),
            "queue": MetadataValue.json(outbox.counts(flow.key, ALL_KINDS)),
        }
    )


@asset(
    group_name=tables.GROUP,
    partitions_def=tables.flow_partitions,
    deps=[effects_outbox],
    check_specs=_checks("crm_rto_webhooks"),
    kinds={"mongodb"},
    description="CRM cancel-order webhook for each order's first entry into rto / rto in transit "
    "(SPEC §7), from the outbox: retried with backoff, never sent twice.",
)
def crm_rto_webhooks(
    context: AssetExecutionContext,
    config: DeliveryConfig,
    mongo: MongoResource,
    crm: CrmResource,
    slack: OrdertrackSlackResource,
    effects: EffectsSettings,
) -> MaterializeResult:
    db = mongo.get_database()
    with crm.open(CourierState(db)) as client:
        return _deliver(
            context,
            config,
            _outbox(context, db, effects),
            slack.get_client(),
            effects,
            [Event.CRM_RTO.value],
            lambda doc: client.send_rto(crm_payload(doc), doc["idempotency_key"]),
        )


@asset(
    group_name=tables.GROUP,
    partitions_def=tables.flow_partitions,
    deps=[effects_outbox],
    check_specs=_checks("slack_status_alerts"),
    kinds={"mongodb", "slack"},
    description="Slack messages for booking_cancelled, lost/destroy and same-day B2B deliveries "
    "(SPEC §7), once per order and transition, from the outbox.",
)
def slack_status_alerts(
    context: AssetExecutionContext,
    config: DeliveryConfig,
    mongo: MongoResource,
    slack: OrdertrackSlackResource,
    effects: EffectsSettings,
) -> MaterializeResult:
    client = slack.get_client()
    return _deliver(
        context,
        config,
        _outbox(context, mongo.get_database(), effects),
        client,
        effects,
        STATUS_EVENTS,
        lambda doc: post_slack(client, effects.status_channel(doc["kind"]), status_alert_text(doc)),
    )


@asset(
    group_name=tables.GROUP,
    partitions_def=tables.flow_partitions,
    check_specs=_checks("tracking_alert_log"),
    kinds={"s3", "slack"},
    description="The run's alerts (rate limits, API and token failures, missing AWBs, unmapped "
    "statuses, reference mismatches, refused moves) as JSON lines on S3, with a grouped "
    "summary and a 6-day link in Slack.",
)
def tracking_alert_log(
    context: AssetExecutionContext,
    config: DeliveryConfig,
    status_updates: pd.DataFrame,
    order_status_writes: pd.DataFrame,
    mongo: MongoResource,
    s3: S3Resource,
    slack: OrdertrackSlackResource,
    effects: EffectsSettings,
) -> MaterializeResult:
    flow = get_flow(context.partition_key)
    source = _source_run(context, tables.ORDER_STATUS_WRITES)
    now = datetime.now(UTC)
    lines = alert_lines(flow.key, source.run_id, status_updates, order_status_writes, now)
    summary = alert_summary(lines)
    outbox = _outbox(context, mongo.get_database(), effects)
    if lines:
        content = {
            "key": log_key(effects.prefix, "alert_logs", flow.key, source.run_id, now, "jsonl"),
            "body": Binary(gzip.compress(jsonl(lines))),
            "summary": summary,
        }
        outbox.enqueue_report(Report.ALERT_LOG, flow.key, source.run_id, content, now)
    s3_client, slack_client = s3.get_client(), slack.get_client()

    def send(doc: dict[str, Any]) -> int:
        content = doc["content"]
        body = gzip.decompress(content["body"])
        url = put_and_presign(
            s3_client, effects.bucket, content["key"], body, "application/x-ndjson", ALERT_LINK_DAYS
        )
        text = alert_log_text(doc["flow"], doc["run_id"], content["summary"], url)
        return post_slack(slack_client, effects.alerts_channel, text)

    return _deliver(
        context,
        config,
        outbox,
        slack_client,
        effects,
        [Report.ALERT_LOG.value],
        send,
        {"alerts": len(lines), "alerts_by_kind": MetadataValue.json(summary["by_kind"])},
    )


@asset(
    group_name=tables.GROUP,
    partitions_def=tables.flow_partitions,
    deps=[tables.PENDING_ORDERS, tables.ORDER_STATUS_WRITES],
    check_specs=_checks("tracking_query_log"),
    kinds={"s3", "slack"},
    description="The run's selection (MongoDB filter, sort, cap, orders selected) as JSON on S3, "
    "with a 3-day link in Slack.",
)
def tracking_query_log(
    context: AssetExecutionContext,
    config: DeliveryConfig,
    mongo: MongoResource,
    s3: S3Resource,
    slack: OrdertrackSlackResource,
    effects: EffectsSettings,
) -> MaterializeResult:
    flow = get_flow(context.partition_key)
    source = _source_run(context, tables.PENDING_ORDERS)
    now = datetime.now(UTC)
    outbox = _outbox(context, mongo.get_database(), effects)
    if source.metadata:
        document = query_log_document(flow.key, source.run_id, source.metadata)
        content = {
            "key": log_key(effects.prefix, "query_logs", flow.key, source.run_id, now, "json"),
            "body": json.dumps(document, indent=2, ensure_ascii=False),
            "selected": document["selected"],
        }
        outbox.enqueue_report(Report.QUERY_LOG, flow.key, source.run_id, content, now)
    s3_client, slack_client = s3.get_client(), slack.get_client()

    def send(doc: dict[str, Any]) -> int:
        content = doc["content"]
        body = content["body"].encode()
        url = put_and_presign(
            s3_client, effects.bucket, content["key"], body, "application/json", QUERY_LINK_DAYS
        )
        text = query_log_text(doc["flow"], doc["run_id"], content["selected"], url)
        return post_slack(slack_client, effects.query_channel, text)

    return _deliver(context, config, outbox, slack_client, effects, [Report.QUERY_LOG.value], send)


@asset(
    group_name=tables.GROUP,
    partitions_def=tables.flow_partitions,
    check_specs=_checks("tracking_email_summary"),
    kinds={"email"},
    description="The run's summary (selected, polled, updated per status, no change, unmapped, "
    "failed, rate-limited, duration) emailed as HTML with a plain-text part.",
)
def tracking_email_summary(
    context: AssetExecutionContext,
    config: DeliveryConfig,
    status_updates: pd.DataFrame,
    order_status_writes: pd.DataFrame,
    mongo: MongoResource,
    smtp: SmtpResource,
    slack: OrdertrackSlackResource,
    effects: EffectsSettings,
) -> MaterializeResult:
    flow = get_flow(context.partition_key)
    source = _source_run(context, tables.ORDER_STATUS_WRITES)
    run = context.instance.get_run_record_by_id(source.run_id)
    duration = (
        source.materialized_at - run.start_time
        if run and run.start_time and source.materialized_at
        else None
    )
    summary = RunSummary(
        flow_key=flow.key,
        run_id=source.run_id,
        figures=summarise(status_updates, order_status_writes),
        per_status=summary_per_status(order_status_writes),
        duration_seconds=duration,
        run_url=effects.run_url(source.run_id),
    )
    now = datetime.now(UTC)
    outbox = _outbox(context, mongo.get_database(), effects)
    outbox.enqueue_report(Report.EMAIL_SUMMARY, flow.key, source.run_id, render_email(summary), now)

    def send(doc: dict[str, Any]) -> None:
        smtp.send(**doc["content"])

    return _deliver(
        context,
        config,
        outbox,
        slack.get_client(),
        effects,
        [Report.EMAIL_SUMMARY.value],
        send,
        {"recipients": len(smtp.recipient_list())},
    )


EFFECT_ASSETS = [
    effects_outbox,
    crm_rto_webhooks,
    slack_status_alerts,
    tracking_alert_log,
    tracking_query_log,
    tracking_email_summary,
]
