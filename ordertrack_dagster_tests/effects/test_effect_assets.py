"""The side-effect assets end to end against the stack's servers: a Delhivery B2C flow run
twice, and what the CRM, Slack, the mailbox and S3 received."""

import json
import re
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult
from pymongo.database import Database

from ordertrack_dagster.devstack.stack import SLACK_CHANNELS, EmbeddedStack
from ordertrack_dagster.markers import OUTBOX_FIELD
from ordertrack_dagster.polling import SELECTION_SORT
from ordertrack_dagster.resources.mongo import mongo_client
from ordertrack_dagster_tests.effects.support import (
    EFFECTS,
    FLOW,
    Runner,
    checks,
    fetch,
    link,
    mentioning,
    metadata,
    outbox,
    run_texts,
    secrets,
    webhooks_for,
)
from ordertrack_dagster_tests.helpers import SeededOrder, seed_orders

pytestmark = pytest.mark.slow

STEPS = ["booking", "cancelled", "lost", "destroyed", "rto_initiated", "delivered", "unmapped"]
WEBSERVER = "http://dagster.test:3000"


@dataclass
class TwoRuns:
    env: dict[str, str]
    db: Database
    orders: dict[str, SeededOrder]  # by simulator step ("booking": unknown to the courier)
    runs: tuple[ExecuteInProcessResult, ExecuteInProcessResult]
    tokens_issued: int

    @property
    def order_ids(self) -> list[str]:
        return [order.order_id for order in self.orders.values()]

    def slack(self, stack: EmbeddedStack, channel_env: str) -> list[dict[str, Any]]:
        return stack.slack_messages(SLACK_CHANNELS[channel_env])

    def mails(self, stack: EmbeddedStack) -> dict[str, EmailMessage]:
        """This module's emails, by the run each reports."""
        by_text = {plain_text(mail): mail for mail in stack.mailbox()}
        return {
            run.run_id: mail
            for run in self.runs
            for text, mail in by_text.items()
            if run.run_id in text
        }


def plain_text(mail: EmailMessage) -> str:
    return mail.get_body(("plain",)).get_content().replace("\r\n", "\n")


@pytest.fixture(scope="module")
def two_runs(stack: EmbeddedStack):
    """One flow, seeded with every kind of side effect, materialized twice."""
    db_name = f"t_{uuid.uuid4().hex[:12]}"
    env = {
        **stack.env,
        "MONGODB_DB": db_name,
        "EMAIL_PASSWORD": f"mail-{uuid.uuid4().hex}",
        "DAGSTER_WEBSERVER_URL": WEBSERVER,
    }
    client = mongo_client(env["MONGODB_URI"])
    with pytest.MonkeyPatch.context() as patch, DagsterInstance.ephemeral() as instance:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("DAGSTER_HOME", raising=False)
        db = client[db_name]
        steps = [None if step == "booking" else step for step in STEPS]
        seeded = seed_orders(db, stack.simulator, FLOW, steps, status="in transit")
        tokens_before = stack.crm_tokens_issued()
        runner = Runner(instance)
        runs = (runner.run(), runner.run())
        yield TwoRuns(
            env,
            db,
            dict(zip(STEPS, seeded, strict=True)),
            runs,
            stack.crm_tokens_issued() - tokens_before,
        )
    client.drop_database(db_name)


def test_both_runs_succeed_and_every_check_passes(two_runs):
    for run in two_runs.runs:
        assert run.success
        for asset in EFFECTS[1:]:
            assert {name: c.passed for name, c in checks(run, asset).items()} == {
                "no_dead_letters": True,
                "no_failing_deliveries": True,
            }


def test_markers_are_drained_into_the_outbox(two_runs):
    first = metadata(two_runs.runs[0], "effects_outbox")
    assert first["drained_per_event"] == {
        "crm_rto": 1,
        "slack_booking_cancelled": 1,
        "slack_lost_destroy": 2,
    }
    assert metadata(two_runs.runs[1], "effects_outbox")["drained"] == 0
    assert two_runs.db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 0
    docs = outbox(two_runs.db)
    lost = two_runs.orders["lost"]
    doc = docs[f"{lost.oid}:slack_lost_destroy"]
    assert (doc["state"], doc["failures"], doc["tracking_key"]) == ("sent", 0, lost.tracking_key)
    [attempt] = doc["attempts"]
    assert attempt["outcome"] == "sent" and attempt["http_status"] == 200
    assert attempt["latency_ms"] >= 0 and attempt["error"] is None


def test_rto_webhook_is_sent_once_with_payload_and_headers(two_runs, stack):
    rto = two_runs.orders["rto_initiated"]
    [webhook] = webhooks_for(stack, two_runs.order_ids)
    assert webhook["status"] == "accepted"  # the CRM checked the Bearer token
    assert webhook["body"] == {
        "phone_number": "9876543210",
        "order_id": rto.order_id,
        "order_source": "Shopify",
        "order_value": 1499.0,
        "status": "rto",
        "tracking_status": "rto in transit",
    }
    assert webhook["idempotency_key"] == f"ordertrack-crm_rto-{rto.oid}"
    assert webhook["signature"]  # accepted: the CRM stand-in verified it
    assert two_runs.tokens_issued == 1  # the second run reused the cached token
    assert metadata(two_runs.runs[1], "crm_rto_webhooks")["sent"] == 0


def test_status_alerts_go_once_to_their_channels(two_runs, stack):
    orders = two_runs.orders
    cancelled = mentioning(
        two_runs.slack(stack, "BOOKING_CANCELED_CHANNEL_ID"), *two_runs.order_ids
    )
    lost = mentioning(two_runs.slack(stack, "LOST_DESTROY_SLACK_CHANNEL_ID"), *two_runs.order_ids)
    assert [m["text"].split("\n")[1:] for m in cancelled] == [
        [
            f"*Order:* {orders['cancelled'].order_id}",
            f"*AWB:* {orders['cancelled'].tracking_key}",
            "*Courier:* Delhivery B2C",
            "*Status:* booking_cancelled",
        ]
    ]
    assert sorted(m["text"].split("\n")[0] for m in lost) == [
        ":rotating_light: Shipment destroy",
        ":rotating_light: Shipment lost",
    ]
    assert len(mentioning(lost, orders["lost"].order_id)) == 1
    assert len(mentioning(lost, orders["destroyed"].order_id)) == 1
    quiet = (orders["delivered"].order_id, orders["unmapped"].order_id)
    assert mentioning(stack.slack_messages(), *quiet) == []


def test_alert_log_is_on_s3_and_linked_in_slack(two_runs, stack):
    first = two_runs.runs[0]
    [post] = mentioning(two_runs.slack(stack, "TRACKING_ALERTS_SLACK_CHANNEL"), first.run_id)
    assert "• missing awb: 1" in post["text"] and "• unmapped status: 1" in post["text"]
    assert "link valid 6 days" in post["text"]
    url = link(post["text"])
    assert f"alert_logs/flow%3D{FLOW}/" in url and "X-Amz-Expires=518400" in url
    lines = [json.loads(line) for line in fetch(url).decode().splitlines()]
    by_order = {line["order_id"]: line for line in lines}
    assert by_order[two_runs.orders["unmapped"].order_id]["kind"] == "unmapped_status"
    assert "Misrouted" in by_order[two_runs.orders["unmapped"].order_id]["message"]
    assert by_order[two_runs.orders["booking"].order_id]["kind"] == "missing_awb"
    assert {line["run_id"] for line in lines} == {first.run_id}
    assert metadata(first, "tracking_alert_log")["alerts_by_kind"] == {
        "missing_awb": 1,
        "unmapped_status": 1,
    }


def test_a_condition_is_announced_on_slack_once_and_logged_every_time(two_runs, stack):
    """The second run meets the same missing AWB and unmapped status with the same answers:
    its alert log lists them again, Slack is not told again, the email says none is new."""
    second = two_runs.runs[1]
    assert mentioning(two_runs.slack(stack, "TRACKING_ALERTS_SLACK_CHANNEL"), second.run_id) == []
    figures = metadata(second, "tracking_alert_log")
    assert (figures["alerts"], figures["new_alerts"]) == (2, 0)
    assert outbox(two_runs.db)[f"alert_log:{FLOW}:{second.run_id}"]["state"] == "sent"
    client, bucket = stack.s3_client(), two_runs.env["AWS_S3_BUCKET"]
    [key] = [
        item["Key"]
        for item in client.list_objects_v2(Bucket=bucket)["Contents"]
        if item["Key"].endswith(f"{second.run_id}.jsonl")
    ]
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body.decode().splitlines()) == 2  # every occurrence, as in the first run
    mails = two_runs.mails(stack)
    assert re.search(r"^Alerts +2 \(2 new\)$", plain_text(mails[two_runs.runs[0].run_id]), re.M)
    assert re.search(r"^Alerts +2 \(0 new\)$", plain_text(mails[second.run_id]), re.M)


def test_query_log_of_each_run_is_on_s3_and_linked_in_slack(two_runs, stack):
    # the second run no longer selects the orders that reached a final status
    for run, selected in zip(two_runs.runs, (len(STEPS), 3), strict=True):
        [post] = mentioning(two_runs.slack(stack, "TRACKING_QUERY_SLACK_CHANNEL"), run.run_id)
        assert f"{selected} orders selected" in post["text"]
        url = link(post["text"])
        assert "X-Amz-Expires=259200" in url  # 3 days
        query = json.loads(fetch(url))
        assert (query["flow"], query["run_id"], query["selected"]) == (FLOW, run.run_id, selected)
        assert query["sort"] == [[field, order] for field, order in SELECTION_SORT]
        assert {"bookingCourier": "/Delhivery/i"} in query["filter"]["$and"]


def test_each_run_emails_its_summary(two_runs, stack):
    mails = two_runs.mails(stack)
    assert len(mails) == 2
    first = mails[two_runs.runs[0].run_id]
    assert first["Subject"] == "ordertrack Delhivery B2C: 5 updated, 0 failed of 7 selected"
    assert first["To"] == two_runs.env["EMAIL_RECIPIENTS"].replace(",", ", ")
    assert first["From"] == two_runs.env["EMAIL_SENDER"]
    text, page = plain_text(first), first.get_body(("html",)).get_content()
    for label, value in [
        ("Selected", 7),
        ("Polled", 6),
        ("Updated", 5),
        ("Updated to booking_cancelled", 1),
        ("Updated to rto in transit", 1),
        ("No change", 1),
        ("Unmapped", 1),
        ("Not found", 1),
        ("Failed", 0),
        ("Rate-limited (deferred)", 0),
    ]:
        assert re.search(rf"^{re.escape(label)} +{value}$", text, re.MULTILINE), label
        assert f"<th align='left'>{label}</th><td align='right'>{value}</td>" in page
    assert re.search(r"^Duration +\d+\.\d s$", text, re.MULTILINE)
    run_url = f"{WEBSERVER}/runs/{two_runs.runs[0].run_id}"
    assert f"Run: {run_url}" in text and f"href='{run_url}'" in page


def test_no_secret_reaches_any_message_object_or_metadata(two_runs, stack):
    sent = [
        json.dumps(stack.slack_messages()),
        json.dumps(webhooks_for(stack, two_runs.order_ids)),
        *(mail.as_string() for mail in two_runs.mails(stack).values()),
        *(run_texts(run) for run in two_runs.runs),
    ]
    client = stack.s3_client()
    for run in two_runs.runs:
        for folder in ("alert_logs", "query_logs"):
            listed = client.list_objects_v2(Bucket=stack.bucket, Prefix=f"ordertrack/{folder}/")
            for item in listed.get("Contents", []):
                if run.run_id in item["Key"]:
                    sent.append(
                        client.get_object(Bucket=stack.bucket, Key=item["Key"])["Body"]
                        .read()
                        .decode()
                    )
    assert len(sent) == 2 + 2 + 2 + 4
    # the Slack token, the CRM client and webhook secrets, the email password, the
    # Delhivery token, and the CRM access token the runs obtained
    found = secrets(two_runs.env, two_runs.db)
    assert len(found) == 6
    for text in sent:
        for secret in found:
            assert secret not in text
