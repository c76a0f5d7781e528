"""The embedded stack: every server starts, answers like the real one, stops without a trace."""

from __future__ import annotations

import os
import re
import smtplib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import boto3
import httpx
import pytest
from pymongo import MongoClient
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from ordertrack_dagster.devstack import stack as stack_module
from ordertrack_dagster.devstack.mailbox import read_mailbox
from ordertrack_dagster.devstack.seed import (
    MARKETPLACES,
    STATUSES,
    seed_demo_orders,
    seed_reference_data,
    spread_orders,
)
from ordertrack_dagster.devstack.stack import EmbeddedStack, StackError
from ordertrack_dagster.effects.crm import SIGNATURE_HEADER, TIMESTAMP_HEADER, encode_body, sign
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.statuses import FINAL, Canonical
from ordertrack_dagster.tracking.selection import (
    DEFAULT_TRACKING_STATUS,
    SelectionPolicy,
    build_query,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVICES_WITHOUT_SIMULATOR = ("mongodb", "s3", "smtp", "slack", "crm")


@pytest.fixture(scope="module")
def local() -> Iterator[EmbeddedStack]:
    """A stack of its own (no simulator), so outages and faults here disturb no other test."""
    with EmbeddedStack(services=SERVICES_WITHOUT_SIMULATOR) as stack:
        yield stack


@pytest.fixture
def slack(local: EmbeddedStack) -> WebClient:
    return WebClient(local.env["SLACK_TOKEN"], base_url=local.env["SLACK_API_URL"])


def _signed(env: dict[str, str], token: str, key: str, body: bytes) -> dict[str, str]:
    """Headers of a webhook call the CRM stand-in accepts (it verifies the signature)."""
    now = int(time.time())
    return {
        "Authorization": f"Bearer {token}",
        "Idempotency-Key": key,
        TIMESTAMP_HEADER: str(now),
        SIGNATURE_HEADER: sign(env["CRM_WEBHOOK_SECRET"], now, key, body),
    }


def _crm_token(env: dict[str, str]) -> str:
    response = httpx.post(
        env["CRM_AUTH_URL"],
        json={
            "client_id": env["CRM_CLIENT_ID"],
            "client_secret": env["CRM_CLIENT_SECRET"],
            "grant_type": "client_credentials",
        },
    )
    response.raise_for_status()
    assert response.json()["token_type"] == "Bearer"
    return str(response.json()["access_token"])


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_stack_stops_every_process_and_its_workdir() -> None:
    with EmbeddedStack(services=("mongodb", "slack")) as stack:
        pids = [stack.pid(service) for service in stack.services]
        workdir = stack.workdir
        assert set(stack.env) >= {"MONGODB_URI", "SLACK_API_URL", "ENV"}
        assert "AWS_ENDPOINT_URL" not in stack.env
    assert all(_gone(pid) for pid in pids)
    assert not workdir.exists()


def test_stack_stops_its_processes_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), EmbeddedStack(services=("crm",)) as stack:
        pid = stack.pid("crm")
        raise RuntimeError("boom")
    assert _gone(pid)


def test_a_service_that_cannot_start_is_reported_with_its_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The stand-in is handed a port someone else holds; a connect would reach the holder,
        # so the check must notice that the process itself died.
        monkeypatch.setattr(stack_module, "free_port", lambda: port)
        with pytest.raises(StackError, match=r"(?s)slack exited.*address already in use"):
            EmbeddedStack(services=("slack",), start_timeout=10).start()


def test_unknown_services_are_refused() -> None:
    with pytest.raises(ValueError, match="postgres"):
        EmbeddedStack(services=("mongodb", "postgres"))  # type: ignore[arg-type]


def test_mongodb_answers(local: EmbeddedStack) -> None:
    with MongoClient(local.env["MONGODB_URI"]) as client:
        assert client.admin.command("ping")["ok"] == 1
        db = client[local.env["MONGODB_DB"]]
        db.smoke.insert_one({"order_id": "2237"})
        assert db.smoke.find_one({"order_id": "2237"}) is not None
        db.smoke.drop()


def test_s3_bucket_is_reachable_through_the_environment(
    local: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in local.env.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", region_name=local.env["AWS_REGION"])  # endpoint from the env
    bucket = local.env["AWS_S3_BUCKET"]
    s3.put_object(Bucket=bucket, Key="alerts/smoke.jsonl", Body=b'{"alert": 1}\n')
    assert s3.get_object(Bucket=bucket, Key="alerts/smoke.jsonl")["Body"].read() == (
        b'{"alert": 1}\n'
    )
    link = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "alerts/smoke.jsonl"}, ExpiresIn=3600
    )
    assert httpx.get(link).content == b'{"alert": 1}\n'


def test_smtp_mail_lands_in_the_mailbox(local: EmbeddedStack) -> None:
    message = EmailMessage()
    message["From"] = local.env["EMAIL_SENDER"]
    message["To"] = local.env["EMAIL_RECIPIENTS"]
    message["Subject"] = "Tracking summary: shiprocket"
    message.set_content("plain")
    message.add_alternative("<table><tr><td>42</td></tr></table>", subtype="html")
    recipients = local.env["EMAIL_RECIPIENTS"].split(",")
    with smtplib.SMTP(local.env["SMTP_HOST"], int(local.env["SMTP_PORT"]), timeout=10) as smtp:
        smtp.send_message(message, to_addrs=recipients)
    with smtplib.SMTP(local.env["SMTP_HOST"], int(local.env["SMTP_PORT"]), timeout=10) as smtp:
        smtp.login(local.env["EMAIL_SENDER"], "any password: none is configured")
        smtp.sendmail(local.env["EMAIL_SENDER"], recipients[:1], b"Subject: second\r\n\r\nhi")

    received = [m for m in local.mailbox() if m["Subject"] in {message["Subject"], "second"}]
    assert [m["Subject"] for m in received] == [message["Subject"], "second"]
    first = received[0]
    assert first["X-Envelope-From"] == local.env["EMAIL_SENDER"]
    assert first["X-Envelope-To"] == ", ".join(recipients)
    html = first.get_body(preferencelist=("html",))
    assert html is not None and "<td>42</td>" in html.get_content()
    assert read_mailbox(local.mailbox_dir)[-1]["Subject"] == "second"


def test_slack_records_posted_messages(local: EmbeddedStack, slack: WebClient) -> None:
    channel = local.env["LOST_DESTROY_SLACK_CHANNEL_ID"]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*2237* lost"}}]
    assert slack.auth_test()["ok"]
    answer = slack.chat_postMessage(channel=channel, text="Order 2237 lost", blocks=blocks)
    assert answer["ok"] and answer["channel"] == channel and answer["message"]["text"]

    recorded = local.slack_messages(channel)[-1]
    assert (recorded["text"], recorded["blocks"], recorded["ts"]) == (
        "Order 2237 lost",
        blocks,
        answer["ts"],
    )
    # A form post, as older clients send, is read the same way.
    form = httpx.post(
        f"{local.env['SLACK_API_URL']}chat.postMessage",
        data={"channel": channel, "text": "form post", "token": local.env["SLACK_TOKEN"]},
    )
    assert form.json()["ok"] and local.slack_messages(channel)[-1]["text"] == "form post"


def test_slack_refuses_bad_or_missing_tokens(local: EmbeddedStack) -> None:
    with pytest.raises(SlackApiError) as refused:
        WebClient("xoxb-wrong", base_url=local.env["SLACK_API_URL"]).chat_postMessage(
            channel="C0X", text="x"
        )
    assert refused.value.response["error"] == "invalid_auth"
    anonymous = httpx.post(
        f"{local.env['SLACK_API_URL']}chat.postMessage", json={"channel": "C0X", "text": "x"}
    )
    assert anonymous.json() == {"ok": False, "error": "not_authed"}


def test_slack_faults(local: EmbeddedStack, slack: WebClient) -> None:
    channel = local.env["BOOKING_CANCELED_CHANNEL_ID"]
    before = len(local.slack_messages())
    local.inject_fault("slack", "ratelimited", retry_after=7)
    with pytest.raises(SlackApiError) as limited:
        slack.chat_postMessage(channel=channel, text="limited")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "7"

    local.inject_fault("slack", "500")
    with pytest.raises(SlackApiError) as failed:
        slack.chat_postMessage(channel=channel, text="failed")
    assert failed.value.response.status_code == 500

    local.inject_fault("slack", "down")
    with pytest.raises(Exception):  # noqa: B017 - the connection dies mid-answer
        slack.chat_postMessage(channel=channel, text="dropped")

    assert slack.chat_postMessage(channel=channel, text="after the faults")["ok"]
    assert [m["text"] for m in local.slack_messages()[before:]] == ["after the faults"]


def test_crm_token_and_idempotent_webhook(local: EmbeddedStack) -> None:
    env = local.env
    wrong = httpx.post(
        env["CRM_AUTH_URL"],
        json={"client_id": "x", "client_secret": "y", "grant_type": "client_credentials"},
    )
    assert wrong.status_code == 401
    issued = local.crm_tokens_issued()
    token = _crm_token(env)
    assert local.crm_tokens_issued() == issued + 1

    body = {"phone_number": "9876543210", "order_id": "2237", "status": "rto"}
    assert httpx.post(env["CRM_WEBHOOK_URL"], json=body).status_code == 401
    raw = encode_body(body)
    headers = _signed(env, token, "rto:2237", raw)
    first = httpx.post(env["CRM_WEBHOOK_URL"], content=raw, headers=headers)
    again = httpx.post(env["CRM_WEBHOOK_URL"], content=raw, headers=headers)
    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})

    calls = [w for w in local.crm_webhooks() if w["idempotency_key"] == "rto:2237"]
    assert [w["status"] for w in calls] == ["accepted", "duplicate"]
    assert calls[0]["body"] == body and calls[0]["signature"] == headers[SIGNATURE_HEADER]


def test_crm_faults(local: EmbeddedStack) -> None:
    env = local.env
    headers = _signed(env, _crm_token(env), "rto:SHP-1", b"{}")
    local.inject_fault("crm", "500")
    assert httpx.post(env["CRM_WEBHOOK_URL"], json={}, headers=headers).status_code == 500
    local.inject_fault("crm", "down")
    # the connection drops mid-answer: a close or, with the request body unread, a reset
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(env["CRM_WEBHOOK_URL"], json={}, headers=headers)
    local.inject_fault("crm", "timeout", seconds=1.5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(env["CRM_WEBHOOK_URL"], json={}, headers=headers, timeout=0.5)
    # The slow CRM still accepts the timed-out call, so the client's retry is a duplicate.
    deadline = time.monotonic() + 5
    while not any(w["idempotency_key"] == "rto:SHP-1" for w in local.crm_webhooks()):
        assert time.monotonic() < deadline, "the slow call was never accepted"
        time.sleep(0.1)
    retry = httpx.post(env["CRM_WEBHOOK_URL"], json={}, headers=headers, timeout=5)
    assert retry.json() == {"status": "duplicate"}


def test_a_restarted_service_keeps_its_port_and_recordings(
    local: EmbeddedStack, slack: WebClient
) -> None:
    channel = local.env["TRACKING_ALERTS_SLACK_CHANNEL"]
    slack.chat_postMessage(channel=channel, text="before the outage")
    local.stop_service("slack")
    with pytest.raises(Exception):  # noqa: B017 - connection refused, whatever the client says
        slack.chat_postMessage(channel=channel, text="during the outage")
    local.start_service("slack")
    slack.chat_postMessage(channel=channel, text="after the outage")
    texts = [m["text"] for m in local.slack_messages(channel)]
    assert texts[-2:] == ["before the outage", "after the outage"]

    local.restart_service("s3")
    s3 = local.s3_client()
    s3.put_object(Bucket=local.bucket, Key="after-restart", Body=b"ok")  # bucket re-created


def test_reset_recordings(local: EmbeddedStack, slack: WebClient) -> None:
    slack.chat_postMessage(channel="C0RESET", text="x")
    local.reset_recordings()
    assert local.slack_messages() == [] and local.crm_webhooks() == [] and local.mailbox() == []


def test_reference_data(local: EmbeddedStack) -> None:
    with MongoClient(local.env["MONGODB_URI"]) as client:
        db = client["t_reference"]
        reference = seed_reference_data(db)
        assert seed_reference_data(db).statuses == reference.statuses  # safe to re-run
        assert db.status.count_documents({}) == len(STATUSES)
        client.drop_database("t_reference")
    tracked = {int(part) for part in DEFAULT_TRACKING_STATUS.split(",")}
    ids = {name: doc["status_id"] for name, doc in reference.statuses.items()}
    assert set(Canonical) <= set(ids)
    assert {ids[status] for status in Canonical if status not in FINAL} <= tracked
    assert not {ids[status] for status in FINAL} & tracked
    assert ids["booked"] == 4 and ids["manifested"] in tracked
    assert set(reference.marketplaces) == set(MARKETPLACES)


def test_seeded_orders_are_selected_by_exactly_their_flow(local: EmbeddedStack) -> None:
    counts = {"delhivery_b2c": 60, "delhivery_b2b": 8, "shiprocket": 25, "velocity": 20}
    counts["delhivery_fallback"] = 12
    now = datetime.now(UTC)
    with MongoClient(local.env["MONGODB_URI"], tz_aware=True) as client:
        db = client["t_seed"]
        result = seed_demo_orders(db, None, counts, now, rng_seed=3)
        policy = SelectionPolicy.from_env()
        for flow_key, flow in FLOWS.items():
            selected = db.orders.find(build_query(flow, policy, now).filter, {"order_id": 1})
            assert sorted(o["order_id"] for o in selected) == sorted(result.order_ids[flow_key])
        orders = list(db.orders.find())
        client.drop_database("t_seed")
    assert result.noise == 6 and len(orders) == sum(counts.values()) + result.noise
    assert any((now - o["isBooked"]["timestamp"]).days > 31 for o in orders)  # never selected
    by_courier = {o["awb_number"]: o["bookingCourier"] for o in orders}
    for awb, courier in by_courier.items():
        if re.search("velocity", courier, re.I):
            assert re.fullmatch(r"[A-Z]{2}\d{7}", awb)
        elif re.search("shiprocket", courier, re.I):
            assert re.fullmatch(r"\d{12,15}", awb)
    assert all(o.get("delhivery_lr_number") for o in orders if "B2B" in o["bookingCourier"])


def test_spread_orders_covers_every_flow() -> None:
    assert spread_orders(1_000) == {
        "delhivery_b2c": 570,  # what the paced fallback flow does not take
        "shiprocket": 200,
        "velocity": 150,
        "delhivery_fallback": 30,
        "delhivery_b2b": 50,
    }
    assert set(spread_orders(7)) == set(FLOWS) and sum(spread_orders(7).values()) == 7


# -- with the courier simulator ------------------------------------------------------------


def test_full_stack_environment_names(stack: EmbeddedStack) -> None:
    """The session stack (conftest) supplies the whole contract §8 environment."""
    expected = {
        "MONGODB_URI MONGODB_DB AWS_ENDPOINT_URL AWS_S3_BUCKET AWS_REGION AWS_ACCESS_KEY_ID "
        "AWS_SECRET_ACCESS_KEY SLACK_TOKEN SLACK_API_URL TRACKING_ALERTS_SLACK_CHANNEL "
        "TRACKING_QUERY_SLACK_CHANNEL LOST_DESTROY_SLACK_CHANNEL_ID BOOKING_CANCELED_CHANNEL_ID "
        "DELIVERED_B2B_SLACK_CHANNEL_ID SMTP_HOST SMTP_PORT SMTP_STARTTLS EMAIL_SENDER "
        "EMAIL_PASSWORD EMAIL_RECIPIENTS CRM_AUTH_URL CRM_WEBHOOK_URL CRM_CLIENT_ID "
        "CRM_CLIENT_SECRET ENV DELHIVERY_URL DELHIVERY_FALLBACK_URL DELHIVERY_B2B_URL "
        "DELHIVERY_AUTH_TOKEN_B2C SHIPROCKET_URL VELOCITY_URL"
    }
    assert set(" ".join(expected).split()) <= set(stack.env)
    assert stack.env["AWS_REGION"] == "ap-south-1" and stack.env["ENV"] == "DEV"


def test_seeded_shipments_are_registered_with_the_simulator(stack: EmbeddedStack) -> None:
    with MongoClient(stack.env["MONGODB_URI"]) as client:
        db = client["t_seed_simulator"]
        counts = dict.fromkeys(FLOWS, 4)
        result = seed_demo_orders(db, stack.simulator, counts, datetime.now(UTC), noise=0)
        orders = {o["order_id"]: o for o in db.orders.find()}
        client.drop_database("t_seed_simulator")
    assert result.shipments_registered == len(orders) == 4 * len(FLOWS)
    for flow, order_ids in result.order_ids.items():
        for order_id in order_ids:
            order = orders[order_id]
            key = order.get("delhivery_lr_number") or order["awb_number"]
            assert stack.simulator.shipment(flow, key)["order_id"] == order_id

    waybills = [orders[order_id]["awb_number"] for order_id in result.order_ids["delhivery_b2c"]]
    answer = httpx.get(
        stack.env["DELHIVERY_URL"],
        params={"waybill": ",".join(waybills)},
        headers={"Authorization": f"Token {stack.env['DELHIVERY_AUTH_TOKEN_B2C']}"},
    )
    answered = {s["Shipment"]["AWB"] for s in answer.json().get("ShipmentData", [])}
    assert answered and answered <= set(waybills)
