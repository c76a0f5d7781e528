"""SEC-NO-SECRETS-ALL, SEC-MALFORMED-SECRET: all five flows, then runs with malformed
secrets and a failed run, and everything the process wrote is scanned for every secret:
S3 objects (Parquet read back), Slack, CRM requests, mail, the outbox, `ordertrack_state`,
Dagster's event log (messages, metadata, errors) and the run logs."""

import io
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from cryptography.fernet import Fernet
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from ordertrack_dagster.couriers.delhivery import DelhiveryResource
from ordertrack_dagster.effects.crm import TOKEN_NAME
from ordertrack_dagster.effects.outbox import OUTBOX_COLLECTION
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.resources.state import STATE_COLLECTION, CachedToken, SharedState
from ordertrack_dagster.security.tokens import STATE_KEY, TokenCipher
from ordertrack_dagster.settings import SETTING_NAMES
from ordertrack_dagster_tests.effects.support import Runner
from ordertrack_dagster_tests.helpers import seed_orders

STEPS = ["cancelled", "lost", "rto_initiated", "delivered", "unmapped", None]
MALFORMED_CRM_TOKEN = "crm-access-token-9d1e4c77\r\nX-Injected: 1"


def _s3_keys(stack) -> set[str]:
    client = stack.s3_client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def _s3_texts(stack, before: set[str]) -> list[str]:
    """The objects this test stored (the servers are shared with other tests, one of which
    leaks a secret on purpose to show that the scan can fail)."""
    client = stack.s3_client()
    texts = []
    for key in sorted(_s3_keys(stack) - before):
        body = client.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
        if key.endswith(".parquet"):
            texts.append(pd.read_parquet(io.BytesIO(body)).to_json(default_handler=str))
        else:
            texts.append(body.decode("utf-8", errors="replace"))
    return texts


def _event_log_texts(instance: DagsterInstance) -> list[str]:
    return [
        serialize_value(entry)
        for record in instance.get_run_records()
        for entry in instance.all_logs(record.dagster_run.run_id)
    ]


@pytest.mark.slow
def test_no_secret_leaves_the_process(stack, stack_env, db, monkeypatch, caplog, capfd):
    key = Fernet.generate_key().decode()
    env = {
        **stack_env,
        "EMAIL_PASSWORD": f"mail-pw-{uuid.uuid4().hex}",
        STATE_KEY: key,
        "FALLBACK_TRACKING_WORKERS": str(len(STEPS)),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    # only what this test sent is scanned: the servers are shared with the other tests
    stored_before = _s3_keys(stack)
    slack_before, crm_before = len(stack.slack_messages()), len(stack.crm_webhooks())
    mails_before = len(stack.mailbox())
    state = SharedState(db, TokenCipher(key))
    with DagsterInstance.ephemeral() as instance:
        for flow in FLOWS:  # the five flows, each with every kind of side effect
            seed_orders(db, stack.simulator, flow, STEPS)
            assert Runner(instance, flow=flow).run().success

        # a Delhivery token with a trailing newline (the load refuses it; the client is built
        # here as a slightly malformed setting would have been): every batch fails, by name
        seed_orders(db, stack.simulator, "delhivery_b2c", ["in_transit", "rto_initiated"])
        malformed = DelhiveryResource(
            url=env["DELHIVERY_URL"],
            fallback_url=env["DELHIVERY_FALLBACK_URL"],
            token=env["DELHIVERY_AUTH_TOKEN_B2C"] + "\n",
        )
        assert Runner(instance, flow="delhivery_b2c").run(delhivery=malformed).success

        # a CRM access token with CRLF: the webhook fails at once, becomes a dead letter and
        # its Slack notice names the error
        state.save_token(
            TOKEN_NAME, CachedToken(MALFORMED_CRM_TOKEN, datetime.now(UTC) + timedelta(hours=1))
        )
        seed_orders(db, stack.simulator, "shiprocket", ["rto_initiated"])
        one_try = Runner(instance, flow="shiprocket", effects={"max_attempts": 1})
        assert one_try.run().success

        # a failed run: the stored pause stops an unforced run before any request
        state.pause("velocity", datetime.now(UTC) + timedelta(minutes=30), "429")
        with pytest.raises(Exception, match="paused"):
            Runner(instance, flow="velocity").run()

        written = [
            *_s3_texts(stack, stored_before),
            json.dumps(stack.slack_messages()[slack_before:]),
            json.dumps(stack.crm_webhooks()[crm_before:]),
            *(mail.as_string() for mail in stack.mailbox()[mails_before:]),
            json.dumps(list(db[OUTBOX_COLLECTION].find()), default=str),
            json.dumps(list(db[STATE_COLLECTION].find()), default=str),
            *_event_log_texts(instance),
            caplog.text,
            *capfd.readouterr(),
        ]

    learned = [
        TokenCipher(key).open(doc["token"]) or ""
        for doc in db[STATE_COLLECTION].find({"token": {"$exists": True}})
    ]
    secrets = [env[name] for name in SETTING_NAMES.secrets if env.get(name)]
    secrets += [token for token in learned if len(token) >= 8]
    secrets.append(MALFORMED_CRM_TOKEN.splitlines()[0])
    assert len(learned) >= 4  # B2B, Shiprocket and Velocity logins, and the CRM's token
    assert {"DELHIVERY_AUTH_TOKEN_B2C", "CRM_CLIENT_SECRET", "SLACK_TOKEN"} <= {
        name for name in SETTING_NAMES.secrets if env.get(name)
    }
    assert any("could not be formed" in text for text in written)  # the failures are there
    leaks = [
        (secret[:6] + "…", text[max(0, text.find(secret) - 80) : text.find(secret) + 40])
        for text in written
        for secret in secrets
        if secret in text
    ]
    assert leaks == []
