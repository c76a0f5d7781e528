"""The Shiprocket API of the simulator."""

from __future__ import annotations

import httpx

from ordertrack_dagster.devstack.simulator import SimulatorAdmin
from ordertrack_dagster_tests.devstack.simulator.wire import (
    DAY,
    PLAIN_TIME,
    SHIPROCKET_TRACK,
    sample,
    ship,
    shiprocket_token,
    shiprocket_track,
)


def test_shiprocket_login_and_tracking(admin: SimulatorAdmin, client: httpx.Client) -> None:
    admin.register_shipments(
        [
            ship("shiprocket", "141123221084922", offset_s=5 * DAY),
            ship("shiprocket", "788830567028", "no_scans"),
        ]
    )
    wrong = client.post(
        "/shiprocket/v1/external/auth/login", json={"email": "x@example.com", "password": "no"}
    )
    assert wrong.status_code == 401
    token = shiprocket_token(client)
    answer = shiprocket_track(client, token, "141123221084922", "788830567028", "UNKNOWN")
    assert answer.status_code == 200
    body, live = answer.json(), sample("shiprocket_track_awbs.json")
    assert list(body) == ["141123221084922", "788830567028"]
    assert body["788830567028"] == live["788830567028"]

    tracking, live_tracking = (
        body["141123221084922"]["tracking_data"],
        live["141123221084922"]["tracking_data"],
    )
    assert set(tracking) == set(live_tracking)
    assert set(tracking["shipment_track"][0]) == set(live_tracking["shipment_track"][0])
    activities = tracking["shipment_track_activities"]
    assert all(set(a) == set(live_tracking["shipment_track_activities"][0]) for a in activities)
    dates = [a["date"] for a in activities]
    assert dates == sorted(dates, reverse=True) and all(PLAIN_TIME.match(d) for d in dates)
    assert tracking["shipment_track"][0]["current_status"] == "Delivered"
    assert (tracking["track_status"], tracking["shipment_status"]) == (1, 7)
    assert activities[0]["sr-status-label"] == "DELIVERED" and activities[0]["status"] == "DLVD"

    assert shiprocket_track(client, "bad", "141123221084922").status_code == 401
    no_bearer = {"Authorization": token}
    assert client.post(SHIPROCKET_TRACK, json={"awbs": []}, headers=no_bearer).status_code == 401
    too_many = shiprocket_track(client, token, *(str(i) for i in range(51)))
    assert too_many.status_code == 400
