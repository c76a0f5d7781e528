"""The CRM client, Slack and S3 senders and the SMTP resource against the stack's servers."""

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.fernet import Fernet
from slack_sdk import WebClient

from ordertrack_dagster.devstack.mailbox import read_mailbox
from ordertrack_dagster.effects.crm import (
    PREVIOUS_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOKEN_NAME,
    CrmResource,
    encode_body,
    sign,
    signature_headers,
)
from ordertrack_dagster.effects.delivery import DeliveryDeferred, DeliveryError
from ordertrack_dagster.effects.senders import post_slack, put_and_presign
from ordertrack_dagster.effects.smtp import RecipientsRefused, SmtpResource
from ordertrack_dagster.resources.state import STATE_COLLECTION, CachedToken, SharedState
from ordertrack_dagster.security.tokens import TokenCipher
from ordertrack_dagster_tests.effects.support import fetch

PAYLOAD = {"order_id": "OT-1", "status": "rto", "note": "₹ & <b>"}


def crm(env, **changes):
    settings = {
        "webhook_url": env["CRM_WEBHOOK_URL"],
        "auth_url": env["CRM_AUTH_URL"],
        "client_id": env["CRM_CLIENT_ID"],
        "client_secret": env["CRM_CLIENT_SECRET"],
        "webhook_secret": env["CRM_WEBHOOK_SECRET"],  # the stand-in verifies signatures
    }
    return CrmResource(**{**settings, **changes})


def calls(stack, key):
    return [w for w in stack.crm_webhooks() if w["idempotency_key"] == key]


def test_crm_token_is_cached_across_runs_and_the_body_signed(stack, stack_env, db):
    key = f"k-{uuid.uuid4()}"
    before = stack.crm_tokens_issued()
    for _ in range(2):  # two runs
        with crm(stack_env).open(SharedState(db)) as client:
            assert client.send_rto({**PAYLOAD, "run": 1}, key) == 200
    assert stack.crm_tokens_issued() - before == 1
    first, second = calls(stack, key)  # both verified by the stand-in
    assert (first["status"], second["status"]) == ("accepted", "duplicate")


def test_the_crm_refuses_unsigned_forged_and_replayed_webhooks(stack, stack_env, db):
    """SEC-HMAC-REPLAY: the signature covers time, key and body; an old one is refused."""
    with crm(stack_env).open(SharedState(db)) as client:
        token = client._access_token(refresh=False)
    body = encode_body(PAYLOAD)
    secret = stack_env["CRM_WEBHOOK_SECRET"]
    refusals_before = len(stack.crm_refusals())

    def post(timestamp: int, key: str, signature: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        if signature is not None:
            headers |= {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature}
        return httpx.post(stack_env["CRM_WEBHOOK_URL"], content=body, headers=headers)

    now, key = int(time.time()), f"k-{uuid.uuid4()}"
    assert post(now, key, None).status_code == 403
    assert post(now, key, sign("forged", now, key, body)).status_code == 403
    assert post(now, "other", sign(secret, now, key, body)).status_code == 403  # key swapped
    old = now - 600
    assert post(old, key, sign(secret, old, key, body)).status_code == 403  # a replay
    assert stack.crm_refusals()[refusals_before:] == [
        "missing_signature",
        "invalid_signature",
        "invalid_signature",
        "stale_signature",
    ]
    assert post(now, key, sign(secret, now, key, body)).status_code == 200


@pytest.mark.parametrize(
    ("secrets", "accepted"),
    [
        ("{new},{current}", True),  # we switched first: the CRM still knows only the old
        ("{current},{old}", True),  # the CRM switched first: it knows only the new
        ("{new}", False),  # a secret the CRM does not know is refused
    ],
)
def test_two_webhook_secrets_during_a_rotation(stack, stack_env, db, secrets, accepted):
    """SEC-HMAC-ROTATION: `CRM_WEBHOOK_SECRET=new,previous` signs with the new secret in
    X-Signature and the previous one in X-Signature-Previous, so the stand-in CRM (which
    verifies as docs/security.md shows) accepts the call on either side of the switch."""
    current = stack_env["CRM_WEBHOOK_SECRET"]  # the only secret the stand-in knows
    secret = secrets.format(new="rotated-secret-2", current=current, old="retired-secret-0")
    key = f"k-{uuid.uuid4()}"
    refusals_before = len(stack.crm_refusals())
    with crm(stack_env, webhook_secret=secret).open(SharedState(db)) as client:
        if accepted:
            assert client.send_rto(PAYLOAD, key) == 200
        else:
            with pytest.raises(DeliveryError, match="HTTP 403"):
                client.send_rto(PAYLOAD, key)
    assert [call["status"] for call in calls(stack, key)] == (["accepted"] if accepted else [])
    assert stack.crm_refusals()[refusals_before:] == ([] if accepted else ["invalid_signature"])


def test_the_signature_headers_sign_with_the_new_secret_first():
    body = encode_body(PAYLOAD)
    headers = signature_headers("new-secret-1, old-secret-0", 1_700_000_000, "k", body)
    assert headers[SIGNATURE_HEADER] == sign("new-secret-1", 1_700_000_000, "k", body)
    assert headers[PREVIOUS_SIGNATURE_HEADER] == sign("old-secret-0", 1_700_000_000, "k", body)
    assert PREVIOUS_SIGNATURE_HEADER not in signature_headers("new-secret-1", 1, "k", body)


def test_a_revoked_crm_token_is_replaced_once(stack, stack_env, db):
    state = SharedState(db)
    state.save_token(TOKEN_NAME, CachedToken("revoked", datetime.now(UTC) + timedelta(hours=1)))
    key = f"k-{uuid.uuid4()}"
    with crm(stack_env).open(state) as client:
        assert client.send_rto(PAYLOAD, key) == 200
    assert [call["status"] for call in calls(stack, key)] == ["accepted"]
    assert state.cached_token(TOKEN_NAME).token != "revoked"


def test_crm_refusals_are_delivery_errors(stack, stack_env, db):
    with crm(stack_env, client_secret="wrong").open() as client:
        with pytest.raises(DeliveryError, match="token request refused: HTTP 401") as refused:
            client.send_rto(PAYLOAD, "k")
        with pytest.raises(DeliveryError) as again:  # the run does not ask again
            client.send_rto(PAYLOAD, "k")
    assert again.value is refused.value
    unset = pytest.raises(DeliveryError, match="CRM_WEBHOOK_URL is not set")
    with crm(stack_env, webhook_url=None).open() as client, unset:
        client.send_rto(PAYLOAD, "k")
    stack.inject_fault("crm", "500")
    failing = pytest.raises(DeliveryError, match="HTTP 500")
    with crm(stack_env).open(SharedState(db)) as client, failing as failed:
        client.send_rto(PAYLOAD, f"k-{uuid.uuid4()}")
    assert failed.value.transient and failed.value.http_status == 500


@pytest.fixture
def slack(stack_env):
    return WebClient(stack_env["SLACK_TOKEN"], base_url=stack_env["SLACK_API_URL"])


def test_slack_rate_limit_defers_until_retry_after(stack, stack_env, slack):
    stack.inject_fault("slack", "ratelimited", retry_after=30)
    with pytest.raises(DeliveryDeferred) as deferred:
        post_slack(slack, stack_env["TRACKING_ALERTS_SLACK_CHANNEL"], "hello")
    wait = (deferred.value.retry_at - datetime.now(UTC)).total_seconds()
    assert 25 < wait <= 30 and deferred.value.http_status == 429


def test_slack_failures_are_delivery_errors(stack, stack_env, slack):
    with pytest.raises(DeliveryError, match="no Slack channel") as unset:
        post_slack(slack, None, "hello")
    assert not unset.value.transient
    stack.inject_fault("slack", "500")
    with pytest.raises(DeliveryError, match="HTTP 500") as failed:
        post_slack(slack, "C0X", "hello")
    assert failed.value.transient
    with pytest.raises(DeliveryError, match="invalid_auth") as refused:
        post_slack(WebClient("xoxb-wrong", base_url=stack_env["SLACK_API_URL"]), "C0X", "hi")
    assert refused.value.transient  # a bad token concerns every message


def test_s3_upload_returns_a_link_that_opens(stack, stack_env):
    key = f"ordertrack/test/{uuid.uuid4()}.json"
    url = put_and_presign(stack.s3_client(), stack.bucket, key, b'{"a": 1}', "application/json", 3)
    assert fetch(url) == b'{"a": 1}'
    assert "X-Amz-Expires=259200" in url
    with pytest.raises(DeliveryError, match="NoSuchBucket"):
        put_and_presign(stack.s3_client(), "no-such-bucket", key, b"x", "text/plain", 3)


def smtp(env, **changes):
    settings = {
        "host": env["SMTP_HOST"],
        "port": int(env["SMTP_PORT"]),
        "sender": env["EMAIL_SENDER"],
        "recipients": env["EMAIL_RECIPIENTS"],
        "starttls": False,
    }
    return SmtpResource(**{**settings, **changes})


def test_email_has_text_and_html_parts_and_logs_in_with_a_password(stack, stack_env):
    subject = f"summary {uuid.uuid4()}"
    smtp(stack_env, password="mail-password").send(subject, "plain body\n", "<p>html body</p>")
    [mail] = [m for m in stack.mailbox() if m["Subject"] == subject]
    assert mail["X-Envelope-To"] == "ops@ordertrack.test, logistics@ordertrack.test"
    assert mail.get_body(("plain",)).get_content().strip() == "plain body"
    assert mail.get_body(("html",)).get_content().strip() == "<p>html body</p>"
    assert "mail-password" not in mail.as_string()


def test_smtp_failures_are_delivery_errors(stack_env):
    with pytest.raises(DeliveryError, match="STARTTLS"):  # the local relay has no TLS
        smtp(stack_env, starttls=True).send("s", "t", "<p>h</p>")
    with pytest.raises(DeliveryError, match="EMAIL_RECIPIENTS"):
        smtp(stack_env, recipients=" , ").send("s", "t", "<p>h</p>")


def test_a_refused_recipient_is_a_failure_and_the_retry_goes_to_it_alone(
    stack_env, refusing_mailbox
):
    """SMTP-PARTIAL: one recipient of two refused. The send fails naming it (it used to
    count as sent); the accepted one is reported, so the retry skips it and gets no copy
    twice; with every recipient refused it fails too."""
    directory, port, kept, refused = refusing_mailbox
    relay = smtp(stack_env, port=port, host="127.0.0.1")
    with pytest.raises(RecipientsRefused, match=refused) as partial:
        relay.send("summary", "t", "<p>h</p>")
    assert partial.value.accepted == [kept] and not partial.value.transient
    [mail] = read_mailbox(directory)
    assert mail["X-Envelope-To"] == kept
    with pytest.raises(RecipientsRefused, match=refused) as again:
        relay.send("summary", "t", "<p>h</p>", skip=partial.value.accepted)
    assert again.value.accepted == []
    assert len(read_mailbox(directory)) == 1  # the accepted recipient got it once
    with pytest.raises(DeliveryError, match=refused):
        smtp(stack_env, port=port, host="127.0.0.1", recipients=refused).send("s", "t", "<p/>")


def test_a_malformed_crm_token_is_refused_and_never_echoed(stack, stack_env, db):
    """SEC-HEADER-INJECTION: httpx refuses the header and quotes it; our error does not."""
    bad = "crm-access-token-4f1c\r\nX-Injected: yes"
    state = SharedState(db)
    state.save_token(TOKEN_NAME, CachedToken(bad, datetime.now(UTC) + timedelta(hours=1)))
    key = f"k-{uuid.uuid4()}"
    with crm(stack_env).open(state) as client, pytest.raises(DeliveryError) as failed:
        client.send_rto(PAYLOAD, key)
    assert "could not be formed" in str(failed.value)
    assert "crm-access-token-4f1c" not in str(failed.value) and calls(stack, key) == []


def test_tokens_are_sealed_at_rest_when_a_key_is_set(db):
    """At rest: the stored token is Fernet text; without the key it reads as absent."""
    key = Fernet.generate_key().decode()
    sealed = SharedState(db, TokenCipher(key))
    expires = datetime.now(UTC) + timedelta(hours=1)
    sealed.save_token("velocity:ops", CachedToken("velocity-jwt-secret-value", expires))
    stored = db[STATE_COLLECTION].find_one({"_id": "token:velocity:ops"})
    assert stored["token"].startswith("fernet:") and "velocity-jwt" not in stored["token"]
    assert sealed.cached_token("velocity:ops").token == "velocity-jwt-secret-value"
    rotated = TokenCipher(f"{Fernet.generate_key().decode()},{key}")  # new key first
    assert SharedState(db, rotated).cached_token("velocity:ops").token.startswith("velocity")
    assert SharedState(db, TokenCipher(None)).cached_token("velocity:ops") is None
    assert (
        SharedState(db, TokenCipher(Fernet.generate_key().decode())).cached_token("velocity:ops")
        is None
    )
