"""Faults queued through the admin API: replaced and spoiled answers, Retry-After forms,
login faults."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from ordertrack_dagster.devstack.simulator import SimulatorAdmin
from ordertrack_dagster_tests.devstack.simulator.wire import (
    DAY,
    b2b_login,
    b2b_track,
    ship,
    shiprocket_token,
    shiprocket_track,
    velocity_login,
)


@pytest.mark.parametrize(
    ("kind", "params", "status", "content_type"),
    [
        ("http_500", {}, 500, "text/plain"),
        ("http_502", {}, 502, "text/html"),
        ("http_503", {}, 503, "text/html"),
        ("html", {}, 200, "text/html"),
        ("xml", {}, 200, "application/xml"),
        ("truncated_json", {}, 200, "application/json"),
        ("rate_limited", {"retry_after": 30}, 429, "application/json"),
        ("forbidden", {}, 403, "text/html"),
        ("token_expired", {}, 401, "application/json"),
        ("empty", {}, 200, "application/json"),
    ],
)
def test_faults_replace_the_next_answers(
    admin: SimulatorAdmin,
    client: httpx.Client,
    kind: str,
    params: dict[str, Any],
    status: int,
    content_type: str,
) -> None:
    admin.register_shipments([ship("shiprocket", "S1", offset_s=DAY)])
    token = shiprocket_token(client)
    admin.inject_fault("shiprocket", kind, count=2, **params)
    for _ in range(2):
        answer = shiprocket_track(client, token, "S1")
        assert answer.status_code == status
        assert answer.headers["content-type"].startswith(content_type)
        if kind != "token_expired" and kind != "rate_limited":
            with pytest.raises(json.JSONDecodeError):
                json.loads(answer.content)
    if kind == "rate_limited":
        assert answer.headers["Retry-After"] == "30"
    if kind == "truncated_json":
        assert answer.text.startswith('{"S1":{"tracking_data":')
    if kind == "token_expired":
        assert answer.json() == {"message": "Token expired", "status_code": 401}
    assert shiprocket_track(client, token, "S1").json()["S1"]["tracking_data"]["track_status"] == 1
    assert admin.stats()["couriers"]["shiprocket"]["status_codes"][str(status)] >= 2


def test_fault_variants_retry_after_dates_timeouts_and_logins(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    admin.register_shipments([ship("delhivery_b2b", "LR1")])
    admin.inject_fault(
        "delhivery_b2b", "rate_limited", retry_after=120, retry_after_format="http_date"
    )
    admin.inject_fault("delhivery_b2b", "rate_limited", retry_after=60, retry_after_format="unix")
    admin.inject_fault("delhivery_b2b", "timeout", seconds=1.0)
    jwt = b2b_login(client).json()["data"]["jwt"]
    http_date = b2b_track(client, jwt, "LR1")
    wait = parsedate_to_datetime(http_date.headers["Retry-After"]) - datetime.now(UTC)
    assert http_date.status_code == 429 and 100 < wait.total_seconds() <= 120
    assert http_date.json()["error"]["code"] == 429
    unix = b2b_track(client, jwt, "LR1")
    assert 50 < int(unix.headers["Retry-After"]) - time.time() <= 60
    with pytest.raises(httpx.ReadTimeout):
        client.get(
            "/delhivery-b2b/lrn/track",
            params={"lrnum": "LR1"},
            headers={"Authorization": f"Bearer {jwt}"},
            timeout=0.3,
        )
    assert b2b_track(client, jwt, "LR1").status_code == 200

    admin.inject_fault("velocity", "http_503", endpoint="login")
    assert velocity_login(client).status_code == 503
    assert velocity_login(client).status_code == 200
    with pytest.raises(httpx.HTTPStatusError):
        admin.inject_fault("delhivery_b2c", "http_500", endpoint="login")
    for bad in ({"kind": "melted"}, {"kind": "http_500", "count": "many"}):
        with pytest.raises(httpx.HTTPStatusError):
            admin.inject_fault("delhivery_b2c", **bad)
