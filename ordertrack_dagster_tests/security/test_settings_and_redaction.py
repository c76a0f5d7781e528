"""Settings refused at load (SEC-MALFORMED-SECRET, SEC-TLS-POLICY) and the redaction step."""

import io
import logging
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from cryptography.fernet import Fernet

from ordertrack_dagster.definitions import build_definitions
from ordertrack_dagster.resources.s3 import ROW_GROUP_ROWS, dataframe_to_parquet, redacted_parquet
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.security.redaction import Redactor, redactor, remember_secret
from ordertrack_dagster.security.settings import (
    INSECURE_OVERRIDE,
    MONGODB_TLS_OVERRIDE,
    PLAIN_TOKENS_OVERRIDE,
    POSTGRES_TLS_OVERRIDE,
    UNSIGNED_WEBHOOKS_OVERRIDE,
    SettingsError,
    load_settings,
    validate_settings,
)
from ordertrack_dagster.security.tokens import STATE_KEY
from ordertrack_dagster.settings import SETTING_NAMES

TOKEN = "dlv-token-0123456789abcdef"
GOOD = {
    "DELHIVERY_URL": "https://track.delhivery.example/api/v1/packages/json/",
    "DELHIVERY_AUTH_TOKEN_B2C": TOKEN,
    "CRM_WEBHOOK_URL": "https://crm.example/webhooks/order-cancel",
    "SLACK_API_URL": "https://slack.com/api/",
    "EMAIL_PASSWORD": "mail-pass-123",
}


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("DELHIVERY_AUTH_TOKEN_B2C", TOKEN + "\n", "line break"),
        ("DELHIVERY_AUTH_TOKEN_B2C", TOKEN + "\r\nX-Injected: 1", "line break"),
        ("CRM_CLIENT_SECRET", " crm-secret-value", "whitespace"),
        ("SHIPROCKET_PASSWORD", "pass\tword", "control character"),
        ("CRM_WEBHOOK_URL", "https://crm.example/hook\n", "line break"),
        ("VELOCITY_URL", "velocity.example/api", "not an http(s) URL"),
    ],
)
def test_a_malformed_setting_is_refused_by_name_never_by_value(name, value, reason):
    with pytest.raises(SettingsError) as refused:
        validate_settings({**GOOD, name: value}, SETTING_NAMES)
    message = str(refused.value)
    assert name in message and reason in message
    assert value.strip() not in message and TOKEN not in message


def test_well_formed_settings_pass_without_warnings_outside_prod():
    assert validate_settings(GOOD, SETTING_NAMES) == []


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"DELHIVERY_URL": "http://track.delhivery.example/api"}, "DELHIVERY_URL"),
        ({"CRM_AUTH_URL": "http://crm.example/oauth/token"}, "CRM_AUTH_URL"),
        ({"SLACK_API_URL": "http://slack.example/api/"}, "SLACK_API_URL"),
        ({"SMTP_STARTTLS": "false"}, "SMTP login"),
    ],
)
def test_prod_refuses_plain_text_transport_unless_overridden(changes, named):
    prod = {**prod_settings(), **changes}
    with pytest.raises(SettingsError, match=named):
        validate_settings(prod, SETTING_NAMES)
    assert validate_settings({**prod, "ENV": "DEV"}, SETTING_NAMES) == []
    warnings = validate_settings({**prod, INSECURE_OVERRIDE: "true"}, SETTING_NAMES)
    assert len(warnings) == 1 and INSECURE_OVERRIDE in warnings[0] and named in warnings[0]


def prod_settings(**changes: str) -> dict[str, str]:
    """Settings production accepts without any override."""
    return {
        **GOOD,
        "ENV": "PROD",
        STATE_KEY: Fernet.generate_key().decode(),
        "CRM_WEBHOOK_SECRET": "crm-webhook-secret-1",
        "MONGODB_URI": "mongodb://tracker:pw@db.example:27017/?tls=true",
        **changes,
    }


def _instance_home(tmp_path, storage: dict) -> str:
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage}))
    return str(tmp_path)


def _postgres(**params: str) -> dict:
    return {"postgres": {"postgres_db": {"hostname": "pg", "db_name": "d", "params": params}}}


@pytest.mark.parametrize(
    ("changes", "named", "override"),
    [
        ({"CRM_WEBHOOK_SECRET": ""}, "CRM_WEBHOOK_SECRET", UNSIGNED_WEBHOOKS_OVERRIDE),
        ({"CRM_WEBHOOK_SECRET": ","}, "CRM_WEBHOOK_SECRET", UNSIGNED_WEBHOOKS_OVERRIDE),
        ({STATE_KEY: ""}, STATE_KEY, PLAIN_TOKENS_OVERRIDE),
        ({"MONGODB_URI": "mongodb://tracker:pw@db:27017/"}, "MONGODB_URI", MONGODB_TLS_OVERRIDE),
        (
            {"MONGODB_URI": "mongodb+srv://db.example/?tls=false"},
            "MONGODB_URI",
            MONGODB_TLS_OVERRIDE,
        ),
        (
            {"MONGODB_URI": "mongodb://db:27017/?tls=true&tlsInsecure=true"},
            "MONGODB_URI",
            MONGODB_TLS_OVERRIDE,
        ),
        ({"POSTGRES": "require"}, "sslmode is require", POSTGRES_TLS_OVERRIDE),
        ({"POSTGRES": ""}, "sslmode is unset", POSTGRES_TLS_OVERRIDE),
    ],
)
def test_prod_fails_closed_by_name_unless_overridden_and_logged(
    changes, named, override, tmp_path, caplog
):
    """SEC-PROD-FAIL-CLOSED: each unsafe production setting stops the load, naming the
    setting and the override; the override lets it load and is logged."""
    if "POSTGRES" in changes:
        sslmode = changes.pop("POSTGRES")
        storage = _postgres(**({"sslmode": sslmode} if sslmode else {}))
        changes["DAGSTER_HOME"] = _instance_home(tmp_path, storage)
    prod = prod_settings(**changes)
    with pytest.raises(SettingsError, match=named) as refused:
        validate_settings(prod, SETTING_NAMES)
    assert override in str(refused.value) and "pw@" not in str(refused.value)
    assert validate_settings({**prod, "ENV": "DEV"}, SETTING_NAMES) == []
    with caplog.at_level(logging.WARNING, logger="ordertrack"):
        load_settings({**prod, override: "true"}, SETTING_NAMES)
    assert [m for m in caplog.messages if override in m and named in m], caplog.messages


@pytest.mark.parametrize(
    "changes",
    [
        {"MONGODB_URI": "mongodb+srv://tracker:pw@cluster0.example.mongodb.net/"},
        {"MONGODB_URI": "mongodb://db:27017/?ssl=true&tlsCAFile=/etc/ssl/ca.pem"},
        {"CRM_WEBHOOK_URL": "", "CRM_WEBHOOK_SECRET": ""},
    ],
)
def test_prod_accepts_verified_tls_and_signed_webhooks_without_warnings(changes):
    assert validate_settings(prod_settings(**changes), SETTING_NAMES) == []


@pytest.mark.parametrize(
    ("params", "environment"),
    [
        ({"sslmode": "verify-full", "sslrootcert": "/ca.pem"}, {}),
        ({}, {"PGSSLMODE": "verify-full"}),
    ],
)
def test_prod_accepts_a_postgres_storage_that_verifies_its_server(tmp_path, params, environment):
    """In the instance file, or (as libpq does) from PGSSLMODE when the file names none."""
    home = _instance_home(tmp_path, _postgres(**params))
    assert validate_settings(prod_settings(DAGSTER_HOME=home, **environment), SETTING_NAMES) == []


def test_a_bad_state_key_is_refused():
    with pytest.raises(SettingsError, match=f"{STATE_KEY} is not a Fernet key"):
        validate_settings({**GOOD, STATE_KEY: "not-a-key"}, SETTING_NAMES)


def test_every_form_of_a_secret_is_redacted():
    env = {
        "DELHIVERY_AUTH_TOKEN_B2C": TOKEN + "\n",
        "MONGODB_URI": "mongodb://tracker:mongo%40pw@db:27017/",
        "SOME_TOKEN": "xy",  # too short to be worth redacting
    }
    text = f"Illegal header value b'Token {TOKEN}\\n' / {TOKEN}\n / mongo%40pw / mongo@pw / xy"
    redacted = redactor(env).text(text)
    assert TOKEN not in redacted and "mongo%40pw" not in redacted and "mongo@pw" not in redacted
    assert redacted.endswith("/ xy")


def test_learned_tokens_and_nested_values_and_frames_are_redacted():
    remember_secret("jwt-learned-at-run-time-42")
    clean = redactor({})
    assert clean.text("Bearer jwt-learned-at-run-time-42") == "Bearer ***"
    assert clean.value({"a": ["jwt-learned-at-run-time-42", 3]}) == {"a": ["***", 3]}
    frame = pd.DataFrame({"error": ["ok", "jwt-learned-at-run-time-42 refused"], "n": [1, 2]})
    assert clean.frame(frame)["error"].tolist() == ["ok", "*** refused"]
    untouched = pd.DataFrame({"error": ["ok"]})
    assert clean.frame(untouched) is untouched
    assert Redactor([]).text("anything") == "anything"


def test_the_code_location_refuses_to_load_with_a_malformed_secret():
    """SEC-MALFORMED-SECRET at load: the error names the setting, never its value."""
    with pytest.raises(SettingsError, match="DELHIVERY_AUTH_TOKEN_B2C") as refused:
        build_definitions({**GOOD, "DELHIVERY_AUTH_TOKEN_B2C": TOKEN + "\n"})
    assert TOKEN not in str(refused.value)
    assert build_definitions(GOOD).resources["effects"].retention_days == 90


def test_log_records_are_redacted_once_the_location_loaded(caplog):
    build_definitions(GOOD)
    remember_secret("learned-token-for-logs-77")
    logging.getLogger("ordertrack.test").warning("refused %s", "learned-token-for-logs-77")
    assert caplog.messages[-1] == "refused ***"


def test_ops_clear_a_stored_pause_from_the_ui_job(db, stack_env):
    """The documented way out of a pause: `clear_courier_pause_job`, no Mongo shell."""
    state = SharedState(db)
    state.pause("shiprocket", datetime.now(UTC) + timedelta(minutes=30), "429")
    state.pause("velocity", datetime.now(UTC) + timedelta(minutes=30), "429")
    defs = build_definitions(stack_env)
    job = defs.get_job_def("clear_courier_pause_job")
    config = {"ops": {"clear_courier_pause": {"config": {"scopes": ["shiprocket"]}}}}
    result = job.execute_in_process(run_config=config, resources={"mongo": defs.resources["mongo"]})
    assert result.success and result.output_for_node("clear_courier_pause") == ["shiprocket"]
    assert state.paused_until("shiprocket") is None and state.paused_until("velocity") is not None


def test_identifiers_and_json_words_survive_redaction():
    """A short secret must not corrupt what the next step reads: order ids, keys, JSON."""
    clean = Redactor(["1234", "true"])
    frame = pd.DataFrame(
        {
            "order_oid": ["65a1234bc0000000000000aa"],
            "tracking_key": ["AWB12345"],
            "raw": ['{"ok": true, "AWB": "AWB12345"}'],
            "error": ["token 1234 refused"],
        }
    )
    redacted = clean.frame(frame)
    assert redacted["order_oid"].tolist() == ["65a1234bc0000000000000aa"]
    assert redacted["tracking_key"].tolist() == ["AWB12345"]
    assert redacted["raw"].tolist() == ['{"ok": true, "AWB": "AWB***5"}']
    assert redacted["error"].tolist() == ["token *** refused"]


@pytest.mark.parametrize(
    ("value", "why"), [("0", "above 0"), ("-1", "above 0"), ("a day", "number")]
)
def test_the_crm_key_horizon_must_be_a_positive_number(value, why):
    """0 would dead-letter every webhook before its first call; a word would fail later."""
    with pytest.raises(SettingsError, match=f"CRM_IDEMPOTENCY_HOURS .*{why}"):
        validate_settings({**GOOD, "CRM_IDEMPOTENCY_HOURS": value}, SETTING_NAMES)
    assert validate_settings({**GOOD, "CRM_IDEMPOTENCY_HOURS": "24"}, SETTING_NAMES) == []


def test_a_parquet_object_is_redacted_whichever_row_group_holds_the_secret():
    """Searched a row group at a time (the whole table read back was a run's peak memory): a
    secret echoed in the last row group is still masked, and a clean object leaves as is."""
    remember_secret("jwt-echoed-in-the-last-row-group-7")
    rows = 2 * ROW_GROUP_ROWS + 1
    answers = ['{"status": "ok"}'] * rows
    clean_body = dataframe_to_parquet(pd.DataFrame({"tracking_key": range(rows), "raw": answers}))
    assert redacted_parquet(clean_body) is clean_body
    answers[-1] = '{"echo": "Bearer jwt-echoed-in-the-last-row-group-7"}'
    body = dataframe_to_parquet(pd.DataFrame({"tracking_key": range(rows), "raw": answers}))
    assert pq.ParquetFile(io.BytesIO(body)).num_row_groups == 3
    redacted = pd.read_parquet(io.BytesIO(redacted_parquet(body)))
    assert redacted["raw"].iloc[-1] == '{"echo": "Bearer ***"}'
    assert redacted["raw"].iloc[:-1].eq('{"status": "ok"}').all()
