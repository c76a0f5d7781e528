"""The Velocity API of the simulator."""

from __future__ import annotations

import httpx

from ordertrack_dagster.devstack.simulator import SimulatorAdmin
from ordertrack_dagster_tests.devstack.simulator.wire import (
    DAY,
    sample,
    ship,
    velocity_login,
    velocity_track,
)


def test_velocity_login_and_tracking(admin: SimulatorAdmin, client: httpx.Client) -> None:
    admin.register_shipments(
        [
            ship("velocity", "PD6786164", offset_s=5 * DAY),
            ship("velocity", "PD6786171", "stuck", offset_s=3 * DAY),
        ]
    )
    login = velocity_login(client)
    assert login.status_code == 200 and set(login.json()) == {"token", "expires_at"}
    token = login.json()["token"]
    answer = velocity_track(client, token, "PD6786164", "PD6786171", "UNKNOWN")
    assert answer.status_code == 200
    live = sample("velocity_order_tracking.json")["result"]["PD6786164"]["tracking_data"]
    result = answer.json()["result"]
    assert list(result) == ["PD6786164", "PD6786171"]
    tracking = result["PD6786164"]["tracking_data"]
    assert set(tracking) == set(live)
    assert set(tracking["shipment_track"][0]) == set(live["shipment_track"][0])
    assert all(
        set(a) == {"date", "activity", "location"} for a in tracking["shipment_track_activities"]
    )
    assert tracking["track_status"] is None and tracking["shipment_status"] == "delivered"
    assert tracking["shipment_track_activities"][0]["activity"] == "DELIVERED"
    assert result["PD6786171"]["tracking_data"]["shipment_status"] == "in_transit"

    assert velocity_track(client, f"Bearer {token}", "PD6786164").status_code == 401
    newer = velocity_login(client).json()["token"]
    assert velocity_track(client, token, "PD6786164").status_code == 401  # revoked
    assert velocity_track(client, newer, "PD6786164").status_code == 200
    assert velocity_track(client, newer, *(f"A{i}" for i in range(46))).status_code == 400


def test_velocity_five_failed_logins_lock_the_account(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    for _ in range(4):
        assert velocity_login(client, "wrong").status_code == 401
    assert velocity_login(client).status_code == 200  # a success resets the count
    for _ in range(5):
        assert velocity_login(client, "wrong").status_code == 401
    locked = velocity_login(client)
    assert locked.status_code == 401 and "locked" in locked.json()["message"].lower()
    assert admin.stats()["couriers"]["velocity"]["failed_logins"] == 10
