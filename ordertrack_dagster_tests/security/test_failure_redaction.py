"""SEC-FAILURE-REDACTION through a real run: a courier client that prints its token and then
raises an exception quoting it. The step fails; the secret must reach no log (messages and
logged tracebacks), no stdout or stderr, no Dagster event (the failure's message and chain),
no S3 object and no Slack message. With redaction turned off the same scan must find it:
the scan can fail."""

import io
import json
import logging
import sys

import pytest
from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context
from dagster._serdes import serialize_value

from ordertrack_dagster.couriers.delhivery import DelhiveryResource
from ordertrack_dagster.orchestration import SENSORS
from ordertrack_dagster.orchestration.sensors import FAILURE_SENSOR
from ordertrack_dagster.security import redaction
from ordertrack_dagster.security.redaction import (
    RedactingStream,
    install_log_redaction,
    install_stream_redaction,
)
from ordertrack_dagster_tests.effects.support import Runner
from ordertrack_dagster_tests.helpers import seed_orders

FLOW = "delhivery_b2c"
SENSOR = next(sensor for sensor in SENSORS if sensor.name == FAILURE_SENSOR)


class LeakyDelhivery(DelhiveryResource):
    """A courier client as a careless SDK writes one: it prints its credentials, logs the
    error with its traceback, then raises with the token in the message."""

    def client(self, flow, state):
        print(f"delhivery sdk: using Authorization: Token {self.token}")
        try:
            raise ConnectionError(f"courier refused Authorization: Token {self.token}")
        except ConnectionError:
            logging.getLogger("delhivery.sdk").exception("request failed")
            raise


def _s3_texts(stack) -> list[str]:
    client = stack.s3_client()
    return [
        client.get_object(Bucket=stack.bucket, Key=item["Key"])["Body"]
        .read()
        .decode(errors="replace")
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
        for item in page.get("Contents", [])
    ]


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as entered:
        yield entered


@pytest.fixture
def redacting_streams(monkeypatch):
    """The code location's stream redaction, undone after the test."""
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    install_stream_redaction()
    assert isinstance(sys.stdout, RedactingStream)


@pytest.mark.parametrize("redacting", [True, False], ids=["redaction-on", "redaction-off"])
def test_a_secret_in_a_courier_exception_reaches_no_log_s3_or_slack(
    stack, stack_env, db, instance, caplog, capfd, monkeypatch, redacting_streams, redacting
):
    if not redacting:
        monkeypatch.setattr(redaction.Redactor, "text", lambda self, text: text)
    install_log_redaction()
    caplog.set_level(logging.DEBUG)
    handler_output = io.StringIO()  # a plain handler, as a deployment's log shipper formats
    handler = logging.StreamHandler(handler_output)
    logging.getLogger().addHandler(handler)
    token = stack_env["DELHIVERY_AUTH_TOKEN_B2C"]
    seed_orders(db, stack.simulator, FLOW, ["in_transit"])
    runner = Runner(instance, flow=FLOW)
    leaky = LeakyDelhivery(
        url=stack_env["DELHIVERY_URL"],
        fallback_url=stack_env["DELHIVERY_FALLBACK_URL"],
        token=token,
    )
    try:
        with pytest.raises(Exception, match="courier refused Authorization"):
            runner.run(delhivery=leaky)
    finally:
        logging.getLogger().removeHandler(handler)

    [record] = instance.get_run_records()
    [event] = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.RUN_FAILURE)
    with build_run_status_sensor_context(
        sensor_name=FAILURE_SENSOR,
        dagster_event=event.dagster_event,
        dagster_instance=instance,
        dagster_run=record.dagster_run,
        resources={"slack": runner.defs.resources["slack"], "effects": runner.settings()},
    ) as status_context:
        SENSOR(status_context.for_run_failure())
    alerts = [m for m in stack.slack_messages() if record.dagster_run.run_id in m["text"]]
    assert alerts and "ConnectionError" in alerts[0]["text"]  # the failure was reported

    written = {
        "event log": "\n".join(
            serialize_value(entry) for entry in instance.all_logs(record.dagster_run.run_id)
        ),
        "log records": caplog.text,
        "log handler": handler_output.getvalue(),
        "stdout, stderr": "\n".join(capfd.readouterr()),
        "S3": "\n".join(_s3_texts(stack)),
        "Slack": json.dumps(alerts),
    }
    assert "courier refused Authorization: Token" in written["event log"]
    assert "Traceback" in written["log handler"]  # the traceback was logged
    assert "delhivery sdk: using Authorization" in written["stdout, stderr"]
    leaked = sorted(where for where, text in written.items() if token in text)
    if redacting:
        assert leaked == []
    else:  # the scan can fail: without redaction it finds the token
        assert {"event log", "log handler", "stdout, stderr", "Slack"} <= set(leaked)
