"""Effects under failure, against the stack's servers: a crash between write and send,
outages, a slow CRM, repeated failures and Slack's rate limit."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from ordertrack_dagster.devstack.mailbox import read_mailbox
from ordertrack_dagster.devstack.seed import seed_reference_data
from ordertrack_dagster.devstack.stack import SLACK_CHANNELS
from ordertrack_dagster.effects.crm import CrmResource
from ordertrack_dagster.effects.outbox import OUTBOX_COLLECTION
from ordertrack_dagster.effects.smtp import SmtpResource
from ordertrack_dagster.markers import OUTBOX_FIELD
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster_tests.effects.support import (
    EFFECTS,
    FLOW,
    Runner,
    checks,
    delivery_config,
    fetch,
    link,
    mentioning,
    metadata,
    outbox,
    webhooks_for,
    write_markers,
)
from ordertrack_dagster_tests.helpers import orders_by_id, seed_orders

pytestmark = pytest.mark.slow

OUTBOX_AND_CRM = ("effects_outbox", "crm_rto_webhooks")
OUTBOX_AND_SLACK = ("effects_outbox", "slack_status_alerts")


def test_markers_of_a_crashed_run_are_delivered_once_by_the_next_run(
    stack, stack_env, db, instance
):
    lost, cancelled, rto = write_markers(
        db,
        [Canonical.LOST, Canonical.BOOKING_CANCELLED, Canonical.RTO],
        order_ids=["<!channel> & <@U1>"],
    )
    assert db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 3
    runner = Runner(instance)
    assert runner.run().success  # the next run of the flow
    assert runner.run(*OUTBOX_AND_CRM, "slack_status_alerts").success  # effects re-run alone
    [webhook] = webhooks_for(stack, [rto["order_id"]])
    assert webhook["body"]["order_source"] == "WooCommerce"
    assert webhook["body"]["tracking_status"] == "rto"
    lost_channel = stack.slack_messages(SLACK_CHANNELS["LOST_DESTROY_SLACK_CHANNEL_ID"])
    [message] = mentioning(lost_channel, lost["awb_number"])
    assert "*Order:* &lt;!channel&gt; &amp; &lt;@U1&gt;\n" in message["text"]
    cancelled_channel = stack.slack_messages(SLACK_CHANNELS["BOOKING_CANCELED_CHANNEL_ID"])
    assert len(mentioning(cancelled_channel, cancelled["order_id"])) == 1
    assert db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 0


def test_outages_leave_status_writes_alone_and_lose_nothing(stack, stack_env, db, instance):
    """Slack, the CRM and the mail relay down, and S3 refusing the logs, for a whole run."""
    seeded = seed_orders(
        db, stack.simulator, FLOW, ["cancelled", "rto_initiated", "unmapped"], status="in transit"
    )
    order_ids = [order.order_id for order in seeded]
    runner = Runner(instance)
    mails_before = len(stack.mailbox())
    for service in ("slack", "crm", "smtp"):
        stack.stop_service(service)
    try:
        down = runner.run(effects=runner.settings(bucket="ordertrack-no-such-bucket"))
    finally:
        for service in ("slack", "crm", "smtp"):
            stack.start_service(service)
    assert down.success
    names = {doc["status_id"]: name for name, doc in seed_reference_data(db).statuses.items()}
    written = {key: names[doc["order_status"]] for key, doc in orders_by_id(db, seeded).items()}
    assert [written[order_id] for order_id in order_ids] == [
        "booking_cancelled",
        "rto in transit",
        "in transit",
    ]
    for asset, error in [
        ("crm_rto_webhooks", "CRM token request failed"),
        ("slack_status_alerts", "Slack unreachable"),
        ("tracking_alert_log", "NoSuchBucket"),
        ("tracking_query_log", "NoSuchBucket"),
        ("tracking_email_summary", "SMTP"),
    ]:
        reported = metadata(down, asset)
        assert (reported["failed"], reported["sent"]) == (1, 0), asset
        assert error in reported["errors"][0], asset
        assert not checks(down, asset)["no_failing_deliveries"].passed
        assert checks(down, asset)["no_dead_letters"].passed
    kept = list(outbox(db).values())
    assert len(kept) == 5 and {doc["state"] for doc in kept} == {"pending"}
    assert all(doc["failures"] == 1 and doc["attempts"][0]["error"] for doc in kept)
    assert webhooks_for(stack, order_ids) == []
    assert mentioning(stack.slack_messages(), *order_ids, down.run_id) == []

    up = runner.run()  # the next run of the flow, everything back
    assert up.success
    assert len(webhooks_for(stack, order_ids)) == 1
    assert len(mentioning(stack.slack_messages(), order_ids[0])) == 1
    for channel in ("TRACKING_ALERTS_SLACK_CHANNEL", "TRACKING_QUERY_SLACK_CHANNEL"):
        [post] = mentioning(stack.slack_messages(SLACK_CHANNELS[channel]), down.run_id)
        assert down.run_id.encode() in fetch(link(post["text"]))
    assert len(stack.mailbox()) - mails_before == 2  # the delayed summary and the new one
    assert {doc["state"] for doc in outbox(db).values()} == {"sent"}
    assert all(checks(up, asset)["no_failing_deliveries"].passed for asset in EFFECTS[1:])


def test_a_timed_out_webhook_is_retried_with_the_same_key(stack, stack_env, db, instance):
    [rto] = write_markers(db, [Canonical.RTO_IN_TRANSIT])
    runner = Runner(instance)
    slow_crm = CrmResource(
        webhook_url=stack_env["CRM_WEBHOOK_URL"],
        auth_url=stack_env["CRM_AUTH_URL"],
        client_id=stack_env["CRM_CLIENT_ID"],
        client_secret=stack_env["CRM_CLIENT_SECRET"],
        webhook_secret=stack_env["CRM_WEBHOOK_SECRET"],
        timeout_seconds=1.0,
    )
    stack.inject_fault("crm", "timeout", seconds=2)
    first = runner.run(*OUTBOX_AND_CRM, crm=slow_crm)
    assert metadata(first, "crm_rto_webhooks")["errors"] == ["CRM webhook timed out after 1 s"]
    time.sleep(1.5)  # the slow CRM finishes and accepts the first call
    assert metadata(runner.run("crm_rto_webhooks"), "crm_rto_webhooks")["sent"] == 1
    calls = webhooks_for(stack, [rto["order_id"]])
    assert sorted(call["status"] for call in calls) == ["accepted", "duplicate"]
    assert len({call["idempotency_key"] for call in calls}) == 1


def test_repeated_failures_become_a_dead_letter_that_ops_can_requeue(
    stack, stack_env, db, instance
):
    [rto] = write_markers(db, [Canonical.RTO])
    runner = Runner(instance, effects={"retry_base_seconds": 0.0, "give_up_after_hours": 1 / 3600})
    stack.inject_fault("crm", "500", count=2)
    first = runner.run(*OUTBOX_AND_CRM)
    assert metadata(first, "crm_rto_webhooks")["errors"] == ["CRM webhook answered HTTP 500"]
    assert checks(first, "crm_rto_webhooks")["no_dead_letters"].passed

    time.sleep(1.1)  # failing for longer than the give-up time (one second here)
    second = runner.run("crm_rto_webhooks")
    assert metadata(second, "crm_rto_webhooks")["became_dead"] == 1
    assert not checks(second, "crm_rto_webhooks")["no_dead_letters"].passed
    alerts = stack.slack_messages(SLACK_CHANNELS["TRACKING_ALERTS_SLACK_CHANNEL"])
    [notice] = mentioning(alerts, rto["order_id"])
    assert "gave up after failing for 0.000277778 hours" in notice["text"]
    assert "CRM webhook answered HTTP 500" in notice["text"]

    third = runner.run("crm_rto_webhooks")  # dead letters are not retried, nor re-announced
    assert metadata(third, "crm_rto_webhooks")["queue_dead"] == 1
    assert len(mentioning(stack.slack_messages(), rto["order_id"])) == 1
    assert webhooks_for(stack, [rto["order_id"]]) == []

    config = delivery_config("crm_rto_webhooks", retry_dead_letters=True)
    requeued = runner.run("crm_rto_webhooks", run_config=config)
    assert metadata(requeued, "crm_rto_webhooks")["sent"] == 1
    assert checks(requeued, "crm_rto_webhooks")["no_dead_letters"].passed
    assert len(webhooks_for(stack, [rto["order_id"]])) == 1


def test_a_webhook_retry_past_the_crms_key_horizon_is_a_dead_letter_not_a_call(
    stack, stack_env, db, instance
):
    """CRM-KEY-HORIZON: the CRM forgets an idempotency key CRM_IDEMPOTENCY_HOURS after the
    first call (one minute here); a retry due before it but run after it (the runs stopped
    for a day) is not sent, since it could cancel the order twice: ops get a dead letter.
    The horizon passes by moving the first call back, not by waiting: a loaded machine's
    slow run must not count as the horizon passing."""
    [rto] = write_markers(db, [Canonical.RTO])
    runner = Runner(instance, effects={"retry_base_seconds": 0.0, "crm_idempotency_hours": 1 / 60})
    stack.inject_fault("crm", "500", count=1)
    first = runner.run(*OUTBOX_AND_CRM)
    assert metadata(first, "crm_rto_webhooks")["errors"] == ["CRM webhook answered HTTP 500"]
    assert checks(first, "crm_rto_webhooks")["no_dead_letters"].passed
    [doc] = outbox(db).values()
    assert doc["state"] == "pending" and doc["first_claimed_at"] <= doc["next_attempt_at"]

    # the run after the horizon: the first call moves a minute back
    db[OUTBOX_COLLECTION].update_one(
        {"_id": doc["_id"]},
        {"$set": {"first_claimed_at": doc["first_claimed_at"] - timedelta(minutes=1)}},
    )
    late = runner.run("crm_rto_webhooks")
    assert metadata(late, "crm_rto_webhooks")["became_dead"] == 1
    assert metadata(late, "crm_rto_webhooks")["sent"] == 0
    assert not checks(late, "crm_rto_webhooks")["no_dead_letters"].passed
    assert webhooks_for(stack, [rto["order_id"]]) == []  # no second call reached the CRM
    [doc] = outbox(db).values()
    assert (doc["state"], doc["attempts"][-1]["outcome"]) == ("dead", "expired")
    alerts = stack.slack_messages(SLACK_CHANNELS["TRACKING_ALERTS_SLACK_CHANNEL"])
    [notice] = mentioning(alerts, rto["order_id"])
    assert "forgets the idempotency key" in notice["text"]
    assert "after failing for 0.0166667 hours" in notice["text"]  # the horizon, not 72 h

    config = delivery_config("crm_rto_webhooks", retry_dead_letters=True)  # ops checked the CRM
    assert (
        metadata(runner.run("crm_rto_webhooks", run_config=config), "crm_rto_webhooks")["sent"] == 1
    )
    assert [call["status"] for call in webhooks_for(stack, [rto["order_id"]])] == ["accepted"]


def test_slack_rate_limit_is_waited_out(stack, stack_env, db, instance):
    [lost] = write_markers(db, [Canonical.DESTROY])
    runner = Runner(instance)
    asked_at = datetime.now(UTC)
    stack.inject_fault("slack", "ratelimited", retry_after=600)
    limited = runner.run(*OUTBOX_AND_SLACK)
    assert metadata(limited, "slack_status_alerts")["rate_limited"] == 1
    [doc] = outbox(db).values()
    assert (doc["state"], doc["failures"]) == ("pending", 0)
    assert doc["next_attempt_at"] >= asked_at + timedelta(seconds=600)  # Slack's word

    early = runner.run("slack_status_alerts")  # Slack said 10 minutes: nothing is sent before
    assert metadata(early, "slack_status_alerts")["sent"] == 0
    # the ten minutes pass (the clock moved, not waited out)
    db[OUTBOX_COLLECTION].update_one(
        {"_id": doc["_id"]}, {"$set": {"next_attempt_at": datetime.now(UTC)}}
    )
    assert metadata(runner.run("slack_status_alerts"), "slack_status_alerts")["sent"] == 1
    assert len(mentioning(stack.slack_messages(), lost["awb_number"])) == 1


def test_a_partly_refused_summary_is_retried_to_the_refused_recipient_alone(
    stack, stack_env, db, instance, refusing_mailbox
):
    """SMTP-PARTIAL: the relay refuses one recipient of two. The summary is recorded as a
    failed attempt (not sent), the recipient it reached is kept on the outbox record, and
    the retry goes to the refused recipient alone: nobody gets it twice."""
    directory, port, kept, refused = refusing_mailbox
    seed_orders(db, stack.simulator, FLOW, ["in_transit"])
    runner = Runner(instance)
    relay = SmtpResource(
        host="127.0.0.1",
        port=port,
        sender=stack_env["EMAIL_SENDER"],
        recipients=stack_env["EMAIL_RECIPIENTS"],
        starttls=False,
    )
    first = runner.run(smtp=relay)
    assert first.success
    reported = metadata(first, "tracking_email_summary")
    assert (reported["failed"], reported["sent"]) == (1, 0) and refused in reported["errors"][0]
    [summary] = [doc for doc in outbox(db).values() if doc["kind"] == "email_summary"]
    assert summary["state"] == "pending" and summary["delivered_to"] == [kept]
    assert [mail["X-Envelope-To"] for mail in read_mailbox(directory)] == [kept]

    mails_before = len(stack.mailbox())
    assert runner.run("tracking_email_summary").success  # the stack's relay takes everyone
    assert outbox(db)[summary["_id"]]["state"] == "sent"
    [retry] = [mail for mail in stack.mailbox()[mails_before:] if first.run_id in mail.as_string()]
    assert retry["X-Envelope-To"] == refused  # not again to the one it reached
