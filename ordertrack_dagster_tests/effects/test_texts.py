"""What the effects say: Slack texts, the CRM payload, alert lines and the email (pure)."""

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64

from ordertrack_dagster.effects.crm import encode_body
from ordertrack_dagster.effects.messages import (
    crm_payload,
    dead_letter_text,
    describe_delivery,
    slack_escape,
    status_alert_text,
)
from ordertrack_dagster.effects.reports import (
    RunSummary,
    alert_lines,
    alert_log_text,
    alert_summary,
    classify_alert,
    log_key,
    query_log_document,
    render_email,
)
from ordertrack_dagster.markers import SLACK_CHANNEL_SETTINGS, Event
from ordertrack_dagster.resources.s3 import history_key

NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)


def event(kind, flow="delhivery_b2c", **fields):
    return {
        "kind": kind,
        "flow": flow,
        "order_id": "2237",
        "tracking_key": "1490123",
        "status": "lost",
        **fields,
    }


def test_slack_escaping_covers_the_three_control_characters():
    assert slack_escape("<!here> & <@U1|x>") == "&lt;!here&gt; &amp; &lt;@U1|x&gt;"


def test_status_alert_names_order_awb_courier_and_status_escaped():
    text = status_alert_text(event("slack_lost_destroy", order_id="<!channel>", status="destroy"))
    assert text.splitlines() == [
        ":rotating_light: Shipment destroy",
        "*Order:* &lt;!channel&gt;",
        "*AWB:* 1490123",
        "*Courier:* Delhivery B2C",
        "*Status:* destroy",
    ]


def test_b2b_alerts_name_the_lr_number():
    text = status_alert_text(
        event("slack_b2b_same_day_delivery", flow="delhivery_b2b", status="delivered")
    )
    assert "*LR:* 1490123" in text and "*Courier:* Delhivery B2B" in text


@pytest.mark.parametrize("slack_event", list(SLACK_CHANNEL_SETTINGS))
def test_every_declared_slack_event_has_its_title(slack_event):
    assert status_alert_text(event(slack_event.value)).splitlines()[0].startswith(":")


@pytest.mark.parametrize("declared", list(Event))
def test_every_declared_event_has_a_name_in_dead_letter_notices(declared):
    assert not describe_delivery(event(declared.value)).startswith(declared.value)


def test_crm_payload_has_the_spec_fields():
    doc = event(
        "crm_rto",
        status="rto in transit",
        order={"phone": "98", "marketplace": "Shopify", "total_amt": 10.5},
    )
    assert crm_payload(doc) == {
        "phone_number": "98",
        "order_id": "2237",
        "order_source": "Shopify",
        "order_value": 10.5,
        "status": "rto",
        "tracking_status": "rto in transit",
    }


def test_dead_letter_notice_lists_what_gave_up_and_why():
    docs = [event("crm_rto", last_error="HTTP <500>")] * 25
    text = dead_letter_text("velocity", docs, 72)
    assert "*Velocity: 25 side effect(s) gave up after failing for 72 hours*" in text
    assert "• CRM RTO webhook for order 2237: HTTP &lt;500&gt;" in text
    assert text.endswith("… and 5 more")


@pytest.mark.parametrize(
    "outcome, action, message, kind",
    [
        ("mapped", "refused", "refused move 'rto' -> 'in transit'", "refused_move"),
        ("unmapped", "poll_recorded", "unmapped status", "unmapped_status"),
        ("reference_mismatch", "poll_recorded", "reference X", "reference_mismatch"),
        ("not_found", "untouched", "asked but not answered", "missing_awb"),
        ("deferred", "untouched", "rate limited (HTTP 429) until ...", "rate_limited"),
        ("failed", "untouched", "login failed: locked", "token_failure"),
        ("failed", "untouched", "HTTP 401: credentials refused", "token_failure"),
        ("failed", "untouched", "odd tracking key '': not asked", "odd_tracking_key"),
        ("failed", "untouched", "HTTP 500", "api_failure"),
        ("not_found", "rejected", "MongoDB rejected the update (error code 121)", "rejected_write"),
        ("mapped", "rejected", "MongoDB rejected the update (error code 2)", "rejected_write"),
        ("failed", "untouched", "shared tracking key: 1 is shared by ...", "shared_tracking_key"),
        ("mapped", "status_changed", "status 'x' is missing", "other"),
    ],
)
def test_alerts_are_classified_by_outcome_and_action(outcome, action, message, kind):
    assert classify_alert(outcome, action, message) == kind


def frames():
    updates = pd.DataFrame(
        {
            "order_oid": ["a", "b", "c"],
            "alert": ["unmapped status 'UD'/'X'", None, "asked but not answered"],
        }
    )
    writes = pd.DataFrame(
        {
            "order_oid": ["a", "b", "c"],
            "order_id": ["1", "2", "3"],
            "tracking_key": ["A", "B", "C"],
            "outcome": ["unmapped", "mapped", "not_found"],
            "action": ["poll_recorded", "refused", "untouched"],
            "alert": ["unmapped status 'UD'/'X'", "refused move", "asked but not answered"],
        }
    )
    return updates, writes


def test_alert_lines_list_each_alert_once_with_its_source():
    lines = alert_lines("delhivery_b2c", "r1", *frames(), NOW)
    assert [(line["order_id"], line["source"], line["kind"]) for line in lines] == [
        ("1", "mapping", "unmapped_status"),
        ("2", "write", "refused_move"),
        ("3", "mapping", "missing_awb"),
    ]
    assert lines[0]["run_id"] == "r1" and lines[0]["time"] == NOW.isoformat()


def test_alert_summary_groups_by_kind_with_examples():
    lines = alert_lines("delhivery_b2c", "r1", *frames(), NOW) * 2
    summary = alert_summary(lines)
    assert summary["total"] == 6
    assert list(summary["by_kind"].items()) == [
        ("missing_awb", 2),
        ("unmapped_status", 2),
        ("refused_move", 2),
    ]
    assert summary["examples"]["unmapped_status"] == ["unmapped status 'UD'/'X'"]
    text = alert_log_text("delhivery_b2c", "r1", summary, 7, "https://s3/x?a=1&b=2")
    assert f"{summary['total']} new in run `r1` (7 in all)" in text
    assert "• unmapped status: 2 (e.g. unmapped status 'UD'/'X')" in text
    assert text.endswith("<https://s3/x?a=1&amp;b=2|Alert log (JSON lines, link valid 6 days)>")
    assert alert_log_text("delhivery_b2c", "r2", alert_summary([]), 7, "https://s3/y") is None


def test_log_keys_are_partitioned_like_the_history():
    key = log_key("ordertrack", "alert_logs", "velocity", "r1", NOW, "jsonl")
    assert key == "ordertrack/alert_logs/flow=velocity/date=2024-09-22/r1.jsonl"


def test_query_log_keeps_filter_sort_cap_and_count():
    metadata = {"selected": 3, "cap": 480, "filter": {"$and": []}, "sort": [["a", 1]], "x": 1}
    assert query_log_document("delhivery_b2b", "r1", metadata) == {
        "flow": "delhivery_b2b",
        "run_id": "r1",
        "selected": 3,
        "cap": 480,
        "filter": {"$and": []},
        "sort": [["a", 1]],
    }


def test_email_escapes_html_and_links_the_run_only_when_known():
    summary = RunSummary(
        flow_key="shiprocket",
        run_id="r<1>",
        figures={"selected": 4, "updated": 1, "failed": 2},
        per_status={"rto in transit": 1},
        duration_seconds=None,
        run_url=None,
    )
    email = render_email(summary)
    assert email["subject"] == "ordertrack Shiprocket: 1 updated, 2 failed of 4 selected"
    assert "<code>r&lt;1&gt;</code>" in email["html"]
    assert "<th align='left'>Updated to rto in transit</th>" in email["html"]
    assert "Duration" in email["text"] and "unknown" in email["text"]
    assert "Alerts" in email["text"] and "0 (0 new)" in email["text"]
    assert "href" not in email["html"] and "Run:" not in email["text"]


@pytest.mark.parametrize(
    ("stored", "sent"),
    [
        (Decimal128("1499.00"), 1499),
        (Decimal128("2599.50"), 2599.5),
        (Int64(799), 799),
        ("1,299.00", 1299),
        (" 99.9 ", 99.9),
        ("N/A", None),
        (float("nan"), None),
        (Decimal128("Infinity"), None),
        ({"amount": 5}, None),
        (True, None),
        (None, None),
    ],
)
def test_any_bson_amount_encodes_into_the_crm_webhook(stored, sent):
    """Our own data, any shape: a Decimal128 total_amt used to fail every RTO webhook."""
    doc = {"order_id": Int64(1234), "status": "rto", "order": {"total_amt": stored}}
    payload = crm_payload(doc)
    assert payload["order_value"] == sent and payload["order_id"] == "1234"
    assert json.loads(encode_body(payload))["order_value"] == sent


@pytest.mark.parametrize("order", [None, "not a document", [], {"phone": Int64(98765)}])
def test_missing_or_odd_sub_documents_still_make_a_payload_and_a_message(order):
    doc = {"kind": "slack_lost_destroy", "flow": "delhivery_b2c", "order_id": None, "order": order}
    payload = crm_payload(doc)
    assert payload["phone_number"] in (None, "98765")
    assert encode_body(payload)
    assert "*Order:* None" in status_alert_text(doc)


@pytest.mark.parametrize("bad", ["../velocity", "a/b", "..", "", "r1\n", "%2e%2e"])
def test_a_flow_or_run_id_that_would_leave_its_folder_is_refused_in_every_key(bad):
    """SEC-S3-KEYS: a flow or run id is one path segment of a key, never `../` or `/`."""
    for key in (
        lambda: log_key("ordertrack", "alert_logs", bad, "r1", NOW, "jsonl"),
        lambda: log_key("ordertrack", "alert_logs", "velocity", bad, NOW, "jsonl"),
        lambda: history_key("ordertrack", "raw", bad, "r1", NOW),
        lambda: history_key("ordertrack", "raw", "velocity", bad, NOW),
    ):
        with pytest.raises(ValueError, match="not a safe S3 key part"):
            key()
