"""The Delhivery LTL (B2B) API of the simulator."""

from __future__ import annotations

import time

import httpx

from ordertrack_dagster.devstack.simulator import SimulatorAdmin
from ordertrack_dagster_tests.devstack.simulator.wire import DAY, b2b_login, b2b_track, sample, ship


def test_delhivery_b2b_login_and_tracking(admin: SimulatorAdmin, client: httpx.Client) -> None:
    admin.register_shipments(
        [
            ship("delhivery_b2b", "220110457", offset_s=1.5 * DAY),
            ship("delhivery_b2b", "220110499", "cancelled", offset_s=5 * DAY),
        ]
    )
    login = b2b_login(client)
    assert login.status_code == 200 and login.json()["success"] is True
    jwt = login.json()["data"]["jwt"]
    assert len(jwt.split(".")) == 3

    answer = b2b_track(client, jwt, "220110457")
    assert answer.status_code == 200
    live = sample("delhivery_b2b_track.json")
    body = answer.json()
    assert set(body) == set(live) and set(body["data"]) == set(live["data"])
    assert body["data"]["mcount"] == len(body["data"]["wbns"])
    for wbn in body["data"]["wbns"]:
        assert set(wbn) == set(live["data"]["wbns"][0])
        assert wbn["status"] == body["data"]["status"]
    assert body["data"]["status"] in {"PICKED_UP", "IN_TRANSIT", "REACH_DESTINATION", "OFD"}

    cancelled = b2b_track(client, jwt, "220110499").json()
    assert cancelled["data"] == sample("delhivery_b2b_cancelled.json")["data"]

    missing = b2b_track(client, jwt, "999")
    assert missing.status_code == 404 and missing.json() == sample("delhivery_b2b_not_found.json")
    admin.update_settings(couriers={"delhivery_b2b": {"not_found_http_200_share": 1.0}})
    missing = b2b_track(client, jwt, "999")
    assert missing.status_code == 200 and missing.json() == sample("delhivery_b2b_not_found.json")

    assert b2b_track(client, "not-a-token", "220110457").status_code == 401
    assert admin.stats()["couriers"]["delhivery_b2b"]["logins"] == 1


def test_delhivery_b2b_wrong_password_locks_the_user(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    admin.update_settings(couriers={"delhivery_b2b": {"lockout_s": 0.5}})
    assert b2b_login(client, "wrong").status_code == 401
    locked = b2b_login(client)
    assert locked.status_code == 401 and "locked" in locked.json()["error"]["message"]
    time.sleep(0.6)
    assert b2b_login(client).status_code == 200
    stats = admin.stats()["couriers"]["delhivery_b2b"]
    assert (stats["logins"], stats["failed_logins"]) == (3, 2)
