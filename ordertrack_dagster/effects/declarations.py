"""One declaration per effect: what it sends, where, and how often. `assets.py` builds one
sending asset from each. Which status changes queue a per-order event, and a Slack event's
channel setting, are declared with the event (`markers.Event`), where the write path reads them.

How often: an effect without `queue` sends what the status writes queued, once per order and
transition (drained by `effects_outbox`); one with `queue` puts one report per flow run in
the outbox first. Either way sending happens from the outbox, so an outage delays a delivery
and loses nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from bson import Binary
from dagster import (
    AssetExecutionContext,
    AssetKey,
    EventLogRecord,
    MetadataValue,
)

from ordertrack_dagster import tables
from ordertrack_dagster.effects.alert_memory import new_alerts
from ordertrack_dagster.effects.delivery import Sender
from ordertrack_dagster.effects.documents import Report
from ordertrack_dagster.effects.messages import crm_payload, status_alert_text
from ordertrack_dagster.effects.outbox import DELIVERED_TO, Outbox
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
from ordertrack_dagster.effects.smtp import RecipientsRefused
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.markers import SLACK_CHANNEL_SETTINGS, Event
from ordertrack_dagster.resources.s3 import SOURCE_RUN_TAG
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.run_summary import summarise, summary_per_status
from ordertrack_dagster.tables import (
    latest_materialization,
    materialization_in_run,
    nearest_materialization,
)


@dataclass(frozen=True)
class SourceRun:
    """The run whose outputs an effect reports (`source_run`)."""

    run_id: str
    materialized_at: float | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class EffectRun:
    """What an effect's `queue` and `sender` work with in one asset execution."""

    context: AssetExecutionContext
    flow: Flow
    outbox: Outbox
    now: datetime
    tables: dict[str, pd.DataFrame]
    resources: Mapping[str, Any]  # the configured resources, by key (not their clients)

    def source(self, key: AssetKey) -> SourceRun:
        return source_run(self.context, key)


def source_run(context: AssetExecutionContext, key: AssetKey) -> SourceRun:
    """The tracking table `key` an effect in `context` reports, in this flow's partition: the
    materialization by the run its `SOURCE_RUN_TAG` names (an effects run launched for a
    tracking run), else its own (a whole-flow run, or the failed run a re-execution took the
    table from), else the latest (an effect re-run alone). The same run whose tables the
    inputs load, so a report never mixes two runs, even while another run of the flow writes
    (a partition re-run by hand beside a scheduled run)."""
    record = _reported_materialization(context, key)
    materialization = record.asset_materialization if record else None
    if record is None or materialization is None:
        return SourceRun(context.run_id, None, {})
    return SourceRun(
        record.run_id,
        record.timestamp,
        {name: value.value for name, value in materialization.metadata.items()},
    )


def _reported_materialization(
    context: AssetExecutionContext, key: AssetKey
) -> EventLogRecord | None:
    instance, partition = context.instance, context.partition_key
    source = context.run.tags.get(SOURCE_RUN_TAG)
    if source is not None:
        return materialization_in_run(instance, source, key, partition)
    own = nearest_materialization(instance, context.run_id, key)
    return own if own is not None else latest_materialization(instance, key, partition)


#: Queues this run's report (if any); returns metadata for the asset.
Queue = Callable[[EffectRun], dict[str, Any]]
#: Opens what sending needs (a client, a connection) for the time of the sending.
OpenSender = Callable[[EffectRun], contextlib.AbstractContextManager[Sender]]


@dataclass(frozen=True)
class Effect:
    """One side effect of contract §7 and the asset that sends it."""

    name: str
    description: str
    kinds: tuple[str, ...]  # what: the outbox document kinds it sends
    dagster_kinds: frozenset[str]  # where to: the services it talks to
    resources: frozenset[str]  # beyond mongo, slack and effects, which every effect uses
    sender: OpenSender
    queue: Queue | None = None  # how often: None = per order and transition; else per run
    deps: tuple[AssetKey, ...] = ()
    reads: tuple[str, ...] = ()  # tracking tables loaded as inputs


@contextlib.contextmanager
def _crm_sender(run: EffectRun) -> Iterator[Sender]:
    with run.resources["crm"].open(SharedState(run.outbox.db)) as client:
        yield lambda doc: client.send_rto(crm_payload(doc), doc["idempotency_key"])


@contextlib.contextmanager
def _status_alert_sender(run: EffectRun) -> Iterator[Sender]:
    client, effects = run.resources["slack"].get_client(), run.resources["effects"]
    yield lambda doc: post_slack(
        client, effects.status_channel(doc["kind"]), status_alert_text(doc)
    )


def _run_alerts(run: EffectRun, run_id: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every alert line of the run, and those it announces for the first time."""
    updates, writes = run.tables["status_updates"], run.tables["order_status_writes"]
    pending = run.tables["pending_orders"]
    lines = alert_lines(run.flow.key, run_id, updates, writes, run.now, pending)
    return lines, new_alerts(run.outbox.db, lines, run_id, run.now)


def _queue_alert_log(run: EffectRun) -> dict[str, Any]:
    source = run.source(tables.ORDER_STATUS_WRITES)
    lines, fresh = _run_alerts(run, source.run_id)
    summary = alert_summary(lines)
    if lines:
        prefix = run.resources["effects"].prefix
        content = {
            "key": log_key(prefix, "alert_logs", run.flow.key, source.run_id, run.now, "jsonl"),
            "body": Binary(gzip.compress(jsonl(lines))),  # every occurrence
            "summary": alert_summary(fresh),  # what Slack is told: the new ones
            "total": len(lines),
        }
        run.outbox.enqueue_report(Report.ALERT_LOG, run.flow.key, source.run_id, content, run.now)
    return {
        "alerts": len(lines),
        "new_alerts": len(fresh),
        "alerts_by_kind": MetadataValue.json(summary["by_kind"]),
    }


def _log_link_sender(
    run: EffectRun,
    content_type: str,
    link_days: int,
    channel: str | None,
    body: Callable[[dict[str, Any]], bytes],
    text: Callable[[dict[str, Any], str], str],
) -> Sender:
    """Put a queued log on S3, then post its presigned link to a Slack channel."""
    s3_client, slack_client = run.resources["s3"].get_client(), run.resources["slack"].get_client()
    bucket = run.resources["effects"].bucket

    def send(doc: dict[str, Any]) -> int:
        content = doc["content"]
        url = put_and_presign(
            s3_client, bucket, content["key"], body(content), content_type, link_days
        )
        message = text(doc, url)
        return post_slack(slack_client, channel, message) if message else None

    return send


@contextlib.contextmanager
def _alert_log_sender(run: EffectRun) -> Iterator[Sender]:
    yield _log_link_sender(
        run,
        "application/x-ndjson",
        ALERT_LINK_DAYS,
        run.resources["effects"].alerts_channel,
        body=lambda content: gzip.decompress(content["body"]),
        text=lambda doc, url: alert_log_text(
            doc["flow"],
            doc["run_id"],
            doc["content"]["summary"],
            doc["content"].get("total", doc["content"]["summary"]["total"]),
            url,
        ),
    )


def _queue_query_log(run: EffectRun) -> dict[str, Any]:
    source = run.source(tables.PENDING_ORDERS)
    if source.metadata:
        document = query_log_document(run.flow.key, source.run_id, source.metadata)
        prefix = run.resources["effects"].prefix
        content = {
            "key": log_key(prefix, "query_logs", run.flow.key, source.run_id, run.now, "json"),
            "body": json.dumps(document, indent=2, ensure_ascii=False),
            "selected": document["selected"],
        }
        run.outbox.enqueue_report(Report.QUERY_LOG, run.flow.key, source.run_id, content, run.now)
    return {}


@contextlib.contextmanager
def _query_log_sender(run: EffectRun) -> Iterator[Sender]:
    yield _log_link_sender(
        run,
        "application/json",
        QUERY_LINK_DAYS,
        run.resources["effects"].query_channel,
        body=lambda content: content["body"].encode(),
        text=lambda doc, url: query_log_text(
            doc["flow"], doc["run_id"], doc["content"]["selected"], url
        ),
    )


def _queue_email_summary(run: EffectRun) -> dict[str, Any]:
    source = run.source(tables.ORDER_STATUS_WRITES)
    record = run.context.instance.get_run_record_by_id(source.run_id)
    duration = (
        source.materialized_at - record.start_time
        if record and record.start_time and source.materialized_at
        else None
    )
    updates, writes = run.tables["status_updates"], run.tables["order_status_writes"]
    lines, fresh = _run_alerts(run, source.run_id)
    summary = RunSummary(
        flow_key=run.flow.key,
        run_id=source.run_id,
        figures=summarise(updates, writes),
        per_status=summary_per_status(writes),
        duration_seconds=duration,
        run_url=run.resources["effects"].run_url(source.run_id),
        alerts=len(lines),
        new_alerts=len(fresh),
    )
    email = render_email(summary)
    run.outbox.enqueue_report(Report.EMAIL_SUMMARY, run.flow.key, source.run_id, email, run.now)
    return {"recipients": len(run.resources["smtp"].recipient_list())}


@contextlib.contextmanager
def _email_sender(run: EffectRun) -> Iterator[Sender]:
    smtp = run.resources["smtp"]

    def send(doc: dict[str, Any]) -> None:
        """A retry after a partial refusal goes only to those not reached yet."""
        try:
            smtp.send(**doc["content"], skip=doc.get(DELIVERED_TO, []))
        except RecipientsRefused as refused:
            run.outbox.note_delivered_to(doc["_id"], refused.accepted)
            raise

    yield send


EFFECTS = (
    Effect(
        name="crm_rto_webhooks",
        description="CRM cancel-order webhook for each order's first entry into rto / rto in "
        "transit (contract §7), from the outbox: retried with backoff, never sent twice.",
        kinds=(Event.CRM_RTO.value,),
        dagster_kinds=frozenset({"mongodb"}),
        resources=frozenset({"crm"}),
        sender=_crm_sender,
        deps=(AssetKey("effects_outbox"),),
    ),
    Effect(
        name="slack_status_alerts",
        description="Slack messages for booking_cancelled, lost/destroy and same-day B2B "
        "deliveries (contract §7), once per order and transition, from the outbox.",
        kinds=tuple(event.value for event in SLACK_CHANNEL_SETTINGS),
        dagster_kinds=frozenset({"mongodb", "slack"}),
        resources=frozenset(),
        sender=_status_alert_sender,
        deps=(AssetKey("effects_outbox"),),
    ),
    Effect(
        name="tracking_alert_log",
        description="The run's alerts (rate limits, API and token failures, missing AWBs, "
        "unmapped statuses, reference mismatches, refused moves, shared keys, orders two flows "
        "match) as JSON lines on S3, with a "
        "grouped summary and a 6-day link in Slack.",
        kinds=(Report.ALERT_LOG.value,),
        dagster_kinds=frozenset({"s3", "slack"}),
        resources=frozenset({"s3"}),
        sender=_alert_log_sender,
        queue=_queue_alert_log,
        reads=("pending_orders", "status_updates", "order_status_writes"),
    ),
    Effect(
        name="tracking_query_log",
        description="The run's selection (MongoDB filter, sort, cap, orders selected) as JSON "
        "on S3, with a 3-day link in Slack.",
        kinds=(Report.QUERY_LOG.value,),
        dagster_kinds=frozenset({"s3", "slack"}),
        resources=frozenset({"s3"}),
        sender=_query_log_sender,
        queue=_queue_query_log,
        deps=(tables.PENDING_ORDERS, tables.ORDER_STATUS_WRITES),
    ),
    Effect(
        name="tracking_email_summary",
        description="The run's summary (selected, polled, updated per status, no change, "
        "unmapped, failed, rate-limited, duration) emailed as HTML with a plain-text part.",
        kinds=(Report.EMAIL_SUMMARY.value,),
        dagster_kinds=frozenset({"email"}),
        resources=frozenset({"smtp"}),
        sender=_email_sender,
        queue=_queue_email_summary,
        reads=("pending_orders", "status_updates", "order_status_writes"),
    ),
)
