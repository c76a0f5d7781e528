"""Rate limits, answered as each courier answers them."""

from __future__ import annotations

import httpx

from ordertrack_dagster.devstack.simulator import SimulatorAdmin, simulators
from ordertrack_dagster_tests.devstack.simulator.wire import (
    b2b_login,
    delhivery,
    fallback,
    ship,
    shiprocket_token,
    shiprocket_track,
    velocity_login,
    velocity_track,
)


def test_rate_limits_answer_like_each_courier(admin: SimulatorAdmin, client: httpx.Client) -> None:
    limits = {courier.name: {"limit": 3, "window_s": 30} for courier in simulators()}
    admin.update_settings(rate_limits=limits)
    admin.register_shipments([ship("delhivery_b2c", "W1"), ship("velocity", "V1")])
    for _ in range(3):
        assert delhivery(client, "W1").status_code == 200
    blocked = fallback(client, "W1")  # the fallback endpoint shares Delhivery's quota
    assert blocked.status_code == 403 and "403 Forbidden" in blocked.text
    assert blocked.headers["content-type"].startswith("text/html")

    token = velocity_login(client).json()["token"]
    velocity_track(client, token, "V1")
    velocity_track(client, token, "V1")
    limited = velocity_track(client, token, "V1")
    assert limited.status_code == 429 and 0 < int(limited.headers["Retry-After"]) <= 30
    for _ in range(3):
        b2b_login(client)
    assert b2b_login(client).status_code == 429
    stats = admin.stats()["couriers"]
    assert stats["delhivery_b2c"]["max_window_requests"] == 4
    assert stats["delhivery_fallback"]["status_codes"] == {"403": 1}
    assert stats["velocity"]["status_codes"] == {"200": 3, "429": 1}

    admin.update_settings(rate_limits={"shiprocket": {"enabled": False}})
    token = shiprocket_token(client)
    for _ in range(6):
        assert shiprocket_track(client, token, "S").status_code == 200
    assert admin.stats()["couriers"]["shiprocket"]["max_window_requests"] == 7
