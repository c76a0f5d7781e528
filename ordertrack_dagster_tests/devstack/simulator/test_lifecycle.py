"""Life cycles: every scenario's end in each courier's raw status, movement on the compressed
clock, forced steps, determinism, and tokens that live on the wall clock meanwhile."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ordertrack_dagster.devstack.simulator import SCENARIOS, SimulatorAdmin, SimulatorSettings
from ordertrack_dagster_tests.devstack.simulator.wire import (
    DAY,
    RAW_COURIERS,
    SETTINGS,
    VELOCITY,
    answer_times,
    b2b_login,
    b2b_track,
    delhivery,
    event_time,
    fallback,
    raw_status,
    ship,
    shiprocket_token,
    shiprocket_track,
    velocity_login,
    velocity_track,
)

FINAL_RAW = {
    "forward": ("DL/Delivered", "DELIVERED", ("Delivered", 7), "delivered"),
    "failed_attempt": ("DL/Delivered", "DELIVERED", ("Delivered", 7), "delivered"),
    "rto": ("DL/RTO", "RTO_DELIVERED", ("RTO Delivered", 10), "rto_delivered"),
    "lost": ("LT/LOST", "LOST", ("Lost", 12), "lost"),
    "cancelled": (
        "UD/Not Picked",
        "For LR K-cancelled, Shipment has been cancelled by the client.",
        ("Canceled", 8),
        "cancelled",
    ),
    "destroyed": ("LT/Destroyed", "DESTROYED", ("Destroyed", 24), "destroyed"),
    "stuck": ("UD/In Transit", "IN_TRANSIT", ("In Transit", 18), "in_transit"),
    "unmapped": ("UD/Misrouted", "MISROUTED", ("Weird Status", 39), "misrouted"),
    "no_scans": ("UD/Manifested", "MANIFESTED", 0, "pickup_scheduled"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_ends_in_each_couriers_raw_status(
    admin: SimulatorAdmin, client: httpx.Client, scenario: str
) -> None:
    key = f"K-{scenario}"
    admin.register_shipments([ship(c, key, scenario, offset_s=60 * DAY) for c in RAW_COURIERS])
    seen = tuple(raw_status(client, courier, key) for courier in RAW_COURIERS)
    assert seen == FINAL_RAW[scenario]


def test_shipments_move_through_their_life_cycle_as_time_passes(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    admin.register_shipments([ship("velocity", "V-RTO", "rto")])
    admin.update_settings(time_scale=500_000.0)  # about 139 simulated hours per second
    token = velocity_login(client).json()["token"]
    seen: list[str] = []
    deadline = time.monotonic() + 8
    while (not seen or seen[-1] != "rto_delivered") and time.monotonic() < deadline:
        answer = velocity_track(client, token, "V-RTO").json()["result"]["V-RTO"]["tracking_data"]
        if not seen or seen[-1] != answer["shipment_status"]:
            seen.append(answer["shipment_status"])
        time.sleep(0.01)
    admin.update_settings(time_scale=0.0)
    journey = iter(
        ["pickup_scheduled", "picked_up", "in_transit", "out_for_delivery", "ndr_raised"]
        + ["out_for_delivery", "ndr_raised", "rto_initiated", "rto_in_transit", "rto_delivered"]
    )
    assert len(seen) >= 5 and all(status in journey for status in seen)  # in life-cycle order
    final = velocity_track(client, token, "V-RTO").json()["result"]["V-RTO"]["tracking_data"]
    activities = [a["activity"] for a in final["shipment_track_activities"]]
    assert activities[0] == "RTO DELIVERED" and activities[-1] == "PICKUP SCHEDULED"
    assert activities.count("OUT FOR DELIVERY") == 2


def test_answers_never_carry_a_time_later_than_now(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    """At the default speed every scan, status and date of every courier lies in the past,
    also right after the life cycles jump ahead."""
    admin.update_settings(time_scale=SimulatorSettings().time_scale)
    offsets = (0.0, 0.5 * DAY, 2 * DAY, 60 * DAY)
    keys = [f"T-{scenario}-{i}" for scenario in sorted(SCENARIOS) for i in range(len(offsets))]
    admin.register_shipments(
        ship(courier, key, key.split("-")[1], offset_s=offsets[int(key[-1])])
        for courier in RAW_COURIERS
        for key in keys
    )
    admin.force_step("shiprocket", keys[0], "out_for_delivery")

    def every_answer() -> list[Any]:
        jwt = b2b_login(client).json()["data"]["jwt"]
        velocity = velocity_login(client).json()["token"]
        answers = [
            delhivery(client, *keys).json(),
            shiprocket_track(client, shiprocket_token(client), *keys).json(),
            velocity_track(client, velocity, *keys).json(),
        ]
        answers += [b2b_track(client, jwt, key).json() for key in keys]
        return answers + [fallback(client, key).json() for key in keys[:8]]

    for advance in (0.0, 3 * DAY):
        admin.advance_clock(advance)
        answers = every_answer()
        now = datetime.now(UTC)
        times = list(answer_times(answers))
        assert len(times) > 500 and max(times) <= now


def test_life_cycles_are_compressed_onto_the_wall_clock(admin: SimulatorAdmin) -> None:
    """A step shows at origin + starts / time_scale: offset_s and clock jumps move the origin
    back by simulated seconds / time_scale, and neither reaches into the future."""
    admin.update_settings(time_scale=3600.0)
    before = datetime.now(UTC)
    admin.register_shipments([ship("velocity", "V-NEW"), ship("velocity", "V-FAR", offset_s=DAY)])
    after = datetime.now(UTC)
    slack = timedelta(milliseconds=1)
    assert before - slack <= event_time(admin, "velocity", "V-NEW", 0) <= after + slack
    far = event_time(admin, "velocity", "V-FAR", 0)  # one simulated day back: 24 real seconds
    assert before - timedelta(seconds=24) - slack <= far <= after - timedelta(seconds=24) + slack

    admin.advance_clock(2 * DAY)
    moved = event_time(admin, "velocity", "V-FAR", 0)
    assert abs(far - moved - timedelta(seconds=48)) < slack
    state = admin.shipment("velocity", "V-NEW")
    assert len(state["events"]) > 1 and state["step"] != "manifested"
    assert datetime.fromisoformat(state["events"][-1]["at"]) <= datetime.now(UTC)
    with pytest.raises(httpx.HTTPStatusError) as backwards:
        admin.advance_clock(-DAY)
    assert backwards.value.response.status_code == 400


def test_forced_steps_hold_append_and_resume(admin: SimulatorAdmin, client: httpx.Client) -> None:
    admin.register_shipments([ship("delhivery_b2c", "W-F"), ship("shiprocket", "S-F")])
    state = admin.force_step("delhivery_b2c", "W-F", "out_for_delivery")
    assert state["step"] == "out_for_delivery" and state["pinned"] is True
    assert state["raw_status"] == "UD/Dispatched"
    admin.advance_clock(30 * DAY)
    status = delhivery(client, "W-F").json()["ShipmentData"][0]["Shipment"]["Status"]
    assert (status["StatusType"], status["Status"]) == ("UD", "Dispatched")

    # A step off the scenario's path is appended after the current one.
    state = admin.force_step("delhivery_b2c", "W-F", "lost")
    assert state["path"][-2:] == ["out_for_delivery", "lost"] and state["step"] == "lost"
    scans = delhivery(client, "W-F").json()["ShipmentData"][0]["Shipment"]["Scans"]
    assert [s["ScanDetail"]["Scan"] for s in scans][-2:] == ["Dispatched", "LOST"]
    times = [s["ScanDetail"]["ScanDateTime"] for s in scans]
    assert times == sorted(times)

    # Without hold, the shipment carries on from the forced step.
    admin.force_step("shiprocket", "S-F", "reached_destination", hold=False)
    assert raw_status(client, "shiprocket", "S-F") == ("Reached at Destination Hub", 38)
    admin.advance_clock(5 * DAY)
    assert raw_status(client, "shiprocket", "S-F") == ("Delivered", 7)

    with pytest.raises(httpx.HTTPStatusError) as unknown_step:
        admin.force_step("shiprocket", "S-F", "teleported")
    assert unknown_step.value.response.status_code == 400
    with pytest.raises(httpx.HTTPStatusError) as unknown_shipment:
        admin.force_step("shiprocket", "NOPE", "lost")
    assert unknown_shipment.value.response.status_code == 404


def test_life_cycles_are_deterministic_for_a_seed(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    booked = datetime.fromisoformat(admin.health()["now"]) - timedelta(days=2)
    shipment = ship("delhivery_b2c", "W-SEED", "rto", booked_at=booked.isoformat())
    admin.register_shipments([shipment])
    first = delhivery(client, "W-SEED").json()
    admin.reset()
    admin.register_shipments([shipment])
    assert delhivery(client, "W-SEED").json() == first
    admin.update_settings(seed=SETTINGS.seed + 1)
    assert delhivery(client, "W-SEED").json() != first


def test_tokens_live_on_the_wall_clock(admin: SimulatorAdmin, client: httpx.Client) -> None:
    """Tokens outlive a run of seconds at any speed and any jump of the life cycles, and expire
    after their lifetime in real seconds."""
    admin.register_shipments([ship(c, "TOK") for c in ("delhivery_b2b", "shiprocket", "velocity")])

    def log_in() -> tuple[str, str, str]:
        velocity = velocity_login(client).json()
        expires_at = datetime.fromisoformat(velocity["expires_at"]) - datetime.now(UTC)
        assert expires_at <= timedelta(seconds=VELOCITY.token_ttl_s)
        return b2b_login(client).json()["data"]["jwt"], shiprocket_token(client), velocity["token"]

    def track(jwt: str, shiprocket: str, velocity: str) -> list[httpx.Response]:
        return [
            b2b_track(client, jwt, "TOK"),
            shiprocket_track(client, shiprocket, "TOK"),
            velocity_track(client, velocity, "TOK"),
        ]

    admin.update_settings(time_scale=500_000.0)  # 2.5 s: about 14 simulated days
    tokens = log_in()
    time.sleep(2.5)
    admin.advance_clock(30 * DAY)
    assert [answer.status_code for answer in track(*tokens)] == [200, 200, 200]

    short = {"token_ttl_s": 0.5}
    admin.update_settings(
        couriers={name: short for name in ("delhivery_b2b", "shiprocket", "velocity")}
    )
    tokens = log_in()
    assert [answer.status_code for answer in track(*tokens)] == [200, 200, 200]
    time.sleep(0.6)
    expired = track(*tokens)
    assert [answer.status_code for answer in expired] == [401, 401, 401]
    assert expired[1].json()["message"] == "Token has expired"
