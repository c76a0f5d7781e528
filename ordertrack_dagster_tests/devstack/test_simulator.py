"""The courier simulator, served by uvicorn over real TCP and spoken to with httpx."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ordertrack_dagster.devstack.simulator import (
    SCENARIOS,
    SimulatorAdmin,
    SimulatorSettings,
    lognormal_params,
    running_simulator,
    simulator_env,
)

SAMPLES = Path(__file__).parents[1] / "fixtures" / "courier_samples"
# Frozen clock, no latency: every test places its shipments and moves time itself.
SETTINGS = SimulatorSettings(latency_mean_ms=0, time_scale=0, b2b_not_found_http_200_share=0)
TOKEN = SETTINGS.delhivery_token
DAY = 86400.0
DELHIVERY_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")
PLAIN_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
ANY_TIME = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?$")
IST = timezone(timedelta(hours=5, minutes=30))
PROMISES = {"ExpectedDeliveryDate", "PromisedDeliveryDate", "etd"}  # ahead by nature

B2C = "/delhivery/api/v1/packages/json/"
FALLBACK = "/delhivery-fallback/api/v1/packages/json/"
SHIPROCKET_TRACK = "/shiprocket/v1/external/courier/track/awbs"
VELOCITY_TRACK = "/velocity/custom/api/v1/order-tracking"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_simulator(SETTINGS) as url:
        yield url


@pytest.fixture
def admin(base_url: str) -> Iterator[SimulatorAdmin]:
    with SimulatorAdmin(base_url) as admin:
        admin.reset()
        admin.update_settings(**asdict(SETTINGS))
        yield admin


@pytest.fixture
def client(base_url: str, admin: SimulatorAdmin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


def ship(courier: str, key: str, scenario: str = "forward", **extra: Any) -> dict[str, Any]:
    return {
        "courier": courier,
        "tracking_key": key,
        "order_id": f"ORD-{key}",
        "scenario": scenario,
        **extra,
    }


def delhivery(client: httpx.Client, *waybills: str, token: str = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Token {token}"}
    return client.get(B2C, params={"waybill": ",".join(waybills)}, headers=headers)


def fallback(client: httpx.Client, waybill: str) -> httpx.Response:
    return client.get(
        FALLBACK, params={"wbn": waybill}, headers={"Authorization": f"Token {TOKEN}"}
    )


def b2b_login(client: httpx.Client, password: str = SETTINGS.b2b_password) -> httpx.Response:
    body = {"username": SETTINGS.b2b_username, "password": password}
    return client.post("/delhivery-b2b/ums/login", json=body)


def b2b_track(client: httpx.Client, jwt: str, lrnum: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {jwt}"}
    return client.get("/delhivery-b2b/lrn/track", params={"lrnum": lrnum}, headers=headers)


def shiprocket_token(client: httpx.Client) -> str:
    body = {"email": SETTINGS.shiprocket_email, "password": SETTINGS.shiprocket_password}
    answer = client.post("/shiprocket/v1/external/auth/login", json=body)
    assert answer.status_code == 200
    return answer.json()["token"]


def shiprocket_track(client: httpx.Client, token: str, *awbs: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return client.post(SHIPROCKET_TRACK, json={"awbs": list(awbs)}, headers=headers)


def velocity_login(
    client: httpx.Client, password: str = SETTINGS.velocity_password
) -> httpx.Response:
    body = {"username": SETTINGS.velocity_username, "password": password}
    return client.post("/velocity/custom/api/v1/auth-token", json=body)


def velocity_track(client: httpx.Client, token: str, *awbs: str) -> httpx.Response:
    return client.post(VELOCITY_TRACK, json={"awbs": list(awbs)}, headers={"Authorization": token})


def raw_status(client: httpx.Client, courier: str, key: str) -> Any:
    """The status each courier's answer carries, read the way the product reads it."""
    if courier == "delhivery_b2c":
        status = delhivery(client, key).json()["ShipmentData"][0]["Shipment"]["Status"]
        return f"{status['StatusType']}/{status['Status']}"
    if courier == "delhivery_b2b":
        data = b2b_track(client, b2b_login(client).json()["data"]["jwt"], key).json()["data"]
        return data if isinstance(data, str) else data["status"]
    if courier == "shiprocket":
        tracking = shiprocket_track(client, shiprocket_token(client), key).json()[key]
        tracking = tracking["tracking_data"]
        if tracking["track_status"] == 0:
            return 0
        return tracking["shipment_track"][0]["current_status"], tracking["shipment_status"]
    token = velocity_login(client).json()["token"]
    return velocity_track(client, token, key).json()["result"][key]["tracking_data"][
        "shipment_status"
    ]


def answer_times(node: Any) -> Iterator[datetime]:
    """Every zone-less timestamp (India time) in an answer, promised dates left out."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name not in PROMISES:
                yield from answer_times(value)
    elif isinstance(node, list):
        for value in node:
            yield from answer_times(value)
    elif isinstance(node, str) and ANY_TIME.match(node):
        yield datetime.fromisoformat(node).replace(tzinfo=IST)


def event_time(admin: SimulatorAdmin, courier: str, key: str, index: int) -> datetime:
    return datetime.fromisoformat(admin.shipment(courier, key)["events"][index]["at"])


# -- wire formats --------------------------------------------------------------------------


def test_delhivery_b2c_answers_like_the_live_api(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    admin.register_shipments(
        [
            ship("delhivery_b2c", "W-DELIVERED", offset_s=5 * DAY),
            ship("delhivery_b2c", "W-REUSED", reference_no="SHP-999999", offset_s=DAY),
            ship("delhivery_b2c", "W-NDR", "failed_attempt"),
        ]
    )
    admin.force_step("delhivery_b2c", "W-NDR", "failed_attempt")
    answer = delhivery(client, "W-DELIVERED", "W-UNKNOWN", "W-REUSED", "W-NDR")
    assert answer.status_code == 200
    shipments = {s["Shipment"]["AWB"]: s["Shipment"] for s in answer.json()["ShipmentData"]}
    assert list(shipments) == ["W-DELIVERED", "W-REUSED", "W-NDR"]

    live = sample("delhivery_b2c_track.json")["ShipmentData"][0]["Shipment"]
    delivered = shipments["W-DELIVERED"]
    assert set(live) <= set(delivered)
    assert set(delivered["Status"]) == set(live["Status"])
    for scan in delivered["Scans"]:
        assert set(scan["ScanDetail"]) == set(live["Scans"][0]["ScanDetail"])
        assert DELHIVERY_TIME.match(scan["ScanDetail"]["ScanDateTime"])
    assert (
        delivered["Status"]["StatusType"] == "DL" and delivered["Status"]["Status"] == "Delivered"
    )
    assert delivered["DeliveryDate"] == delivered["Status"]["StatusDateTime"]
    assert DELHIVERY_TIME.match(delivered["DestRecieveDate"])
    assert delivered["ReferenceNo"] == "ORD-W-DELIVERED"
    assert shipments["W-REUSED"]["ReferenceNo"] == "SHP-999999"

    ndr = shipments["W-NDR"]["Status"]
    assert (ndr["StatusType"], ndr["Status"]) == ("UD", "Pending")
    assert ndr["StatusCode"] in {"EOD-11", "EOD-74", "EOD-6", "EOD-104"}


def test_delhivery_b2c_errors(admin: SimulatorAdmin, client: httpx.Client) -> None:
    admin.register_shipments([ship("delhivery_b2c", "W1")])
    unknown = delhivery(client, "NOPE1", "NOPE2")
    assert unknown.status_code == 200
    assert set(unknown.json()) == set(sample("delhivery_b2c_error.json"))
    assert unknown.json()["Error"] == "No such waybill or Order Id found"
    assert unknown.json()["Success"] is False

    assert delhivery(client, "W1", token="wrong").status_code == 401
    assert client.get(B2C, params={"waybill": "W1"}).status_code == 401
    assert "detail" in client.get(B2C, params={"waybill": "W1"}).json()
    assert delhivery(client, *(f"W{i}" for i in range(51))).status_code == 400


def test_delhivery_fallback_answers_and_end_states(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    now = datetime.fromisoformat(admin.health()["now"])
    admin.register_shipments(
        [
            ship("delhivery_fallback", "F-MOVING", "stuck"),
            ship("delhivery_fallback", "F-RECENT", offset_s=4 * DAY),
            ship("delhivery_fallback", "F-ENDED", offset_s=12 * DAY),
            ship("delhivery", "F-OLD", "stuck", booked_at=(now - timedelta(days=100)).isoformat()),
            ship("delhivery_b2c", "B2C-ONLY"),
        ]
    )
    for waybill in ("F-MOVING", "F-RECENT", "B2C-ONLY"):
        answer = fallback(client, waybill).json()
        assert answer["ShipmentData"][0]["Shipment"]["AWB"] == waybill
    assert "end state" in fallback(client, "F-ENDED").json()["Error"].lower()
    assert "very old" in fallback(client, "F-OLD").json()["Error"].lower()
    assert "invalid awb" in fallback(client, "NOPE").json()["Error"].lower()
    # Fallback waybills are Delhivery waybills: the bulk endpoint answers for them too.
    assert delhivery(client, "F-ENDED").json()["ShipmentData"][0]["Shipment"]["AWB"] == "F-ENDED"
    no_token = client.get(FALLBACK, params={"wbn": "F-MOVING"})
    assert no_token.status_code == 401


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
    admin.update_settings(b2b_not_found_http_200_share=1.0)
    missing = b2b_track(client, jwt, "999")
    assert missing.status_code == 200 and missing.json() == sample("delhivery_b2b_not_found.json")

    assert b2b_track(client, "not-a-token", "220110457").status_code == 401
    assert admin.stats()["couriers"]["delhivery_b2b"]["logins"] == 1


def test_delhivery_b2b_wrong_password_locks_the_user(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    admin.update_settings(b2b_lockout_s=0.5)
    assert b2b_login(client, "wrong").status_code == 401
    locked = b2b_login(client)
    assert locked.status_code == 401 and "locked" in locked.json()["error"]["message"]
    time.sleep(0.6)
    assert b2b_login(client).status_code == 200
    stats = admin.stats()["couriers"]["delhivery_b2b"]
    assert (stats["logins"], stats["failed_logins"]) == (3, 2)


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


def test_tokens_live_on_the_wall_clock(admin: SimulatorAdmin, client: httpx.Client) -> None:
    """Tokens outlive a run of seconds at any speed and any jump of the life cycles, and expire
    after their lifetime in real seconds."""
    admin.register_shipments([ship(c, "TOK") for c in ("delhivery_b2b", "shiprocket", "velocity")])

    def log_in() -> tuple[str, str, str]:
        velocity = velocity_login(client).json()
        expires_at = datetime.fromisoformat(velocity["expires_at"]) - datetime.now(UTC)
        assert expires_at <= timedelta(seconds=SETTINGS.velocity_token_ttl_s)
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

    admin.update_settings(b2b_token_ttl_s=0.5, shiprocket_token_ttl_s=0.5, velocity_token_ttl_s=0.5)
    tokens = log_in()
    assert [answer.status_code for answer in track(*tokens)] == [200, 200, 200]
    time.sleep(0.6)
    expired = track(*tokens)
    assert [answer.status_code for answer in expired] == [401, 401, 401]
    assert expired[1].json()["message"] == "Token has expired"


# -- life cycles -----------------------------------------------------------------------------

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
RAW_COURIERS = ("delhivery_b2c", "delhivery_b2b", "shiprocket", "velocity")


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


# -- faults, rate limits, load ---------------------------------------------------------------


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


def test_rate_limits_answer_like_each_courier(admin: SimulatorAdmin, client: httpx.Client) -> None:
    limits = {name: {"limit": 3, "window_s": 30} for name in RAW_COURIERS}
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


def test_fifty_concurrent_requests_are_served_in_parallel(
    admin: SimulatorAdmin, base_url: str
) -> None:
    admin.register_shipments(ship("delhivery_b2c", f"W{i}", offset_s=i * 60) for i in range(2500))
    admin.update_settings(latency_mean_ms=300, latency_p99_ms=600)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
            headers = {"Authorization": f"Token {TOKEN}"}
            batches = [",".join(f"W{i}" for i in range(b * 50, b * 50 + 50)) for b in range(50)]
            return await asyncio.gather(
                *(client.get(B2C, params={"waybill": b}, headers=headers) for b in batches)
            )

    started = time.monotonic()
    answers = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert all(len(a.json()["ShipmentData"]) == 50 for a in answers)
    assert 0.2 < elapsed < 5.0  # one at a time would take about 15 s
    stats = admin.stats()["couriers"]["delhivery_b2c"]
    assert stats["max_in_flight"] >= 40 and stats["keys_requested"] == 2500


def test_bulk_registration_of_100k_shipments_is_fast(
    admin: SimulatorAdmin, client: httpx.Client
) -> None:
    couriers = ("delhivery_b2c", "delhivery_b2b", "shiprocket", "velocity", "delhivery_fallback")
    scenarios = sorted(SCENARIOS)
    shipments = (
        ship(couriers[i % 5], f"BULK{i}", scenarios[i % len(scenarios)], offset_s=i % 500 * 3600)
        for i in range(100_000)
    )
    started = time.monotonic()
    assert admin.register_shipments(shipments) == 100_000
    assert time.monotonic() - started < 15
    assert admin.health()["shipments"] == 100_000
    started = time.monotonic()
    answer = delhivery(client, *(f"BULK{i}" for i in range(0, 250, 5)))
    assert len(answer.json()["ShipmentData"]) == 50
    assert time.monotonic() - started < 1.0


# -- settings and entry points ---------------------------------------------------------------


def test_latency_follows_the_configured_mean_and_p99() -> None:
    mu, sigma = lognormal_params(130, 530) or (0.0, 0.0)
    rng = random.Random(3)
    draws = sorted(rng.lognormvariate(mu, sigma) for _ in range(200_000))
    assert sum(draws) / len(draws) == pytest.approx(130, rel=0.03)
    assert draws[int(0.99 * len(draws))] == pytest.approx(530, rel=0.05)
    assert lognormal_params(0, 530) is None
    with pytest.raises(ValueError):
        SimulatorSettings(latency_mean_ms=200, latency_p99_ms=100)
    with pytest.raises(ValueError):
        SimulatorSettings(time_scale=-1)


def test_admin_settings_and_environment(admin: SimulatorAdmin, base_url: str) -> None:
    settings = admin.update_settings(rate_limits={"delhivery_b2c": {"limit": 75, "window_s": 30}})
    assert settings["rate_limits"]["delhivery_b2c"] == {
        "limit": 75,
        "window_s": 30,
        "enabled": True,
    }
    assert admin.settings() == settings
    for bad in ({"no_such_setting": 1}, {"time_scale": -5}, {"rate_limits": {"dhl": {}}}):
        with pytest.raises(httpx.HTTPStatusError):
            admin.update_settings(**bad)
    with pytest.raises(httpx.HTTPStatusError):
        admin.register_shipments([{"courier": "dhl", "tracking_key": "X", "order_id": "1"}])
    assert admin.health()["shipments"] == 0

    env = simulator_env(base_url + "/")
    assert env["DELHIVERY_URL"] == f"{base_url}/delhivery/api/v1/packages/json/"
    assert env["DELHIVERY_FALLBACK_URL"] == f"{base_url}/delhivery-fallback/api/v1/packages/json/"
    assert env["DELHIVERY_B2B_URL"] == f"{base_url}/delhivery-b2b"
    assert env["SHIPROCKET_URL"] == f"{base_url}/shiprocket"
    assert env["VELOCITY_URL"] == f"{base_url}/velocity"
    assert env["DELHIVERY_AUTH_TOKEN_B2C"] == TOKEN
    assert {"DELHIVERY_B2B_USERNAME", "DELHIVERY_B2B_PASSWORD", "SHIPROCKET_EMAIL"} <= set(env)
    assert {"SHIPROCKET_PASSWORD", "VELOCITY_USERNAME", "VELOCITY_PASSWORD"} <= set(env)


def test_command_line_serves_the_simulator() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ordertrack_dagster.devstack.simulator"]
    command += ["--port", str(port), "--time-scale", "60", "--latency-mean-ms", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_admin/health", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert health.json()["status"] == "ok"
        with SimulatorAdmin(f"http://127.0.0.1:{port}") as admin:
            assert admin.settings()["time_scale"] == 60
    finally:
        server.terminate()
        server.wait(10)
