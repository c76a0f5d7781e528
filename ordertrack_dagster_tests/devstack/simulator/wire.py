"""Requests to the simulator as the product's clients send them, and what the tests share."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from ordertrack_dagster.devstack.simulator import SimulatorAdmin, SimulatorSettings

SAMPLES = Path(__file__).parents[2] / "fixtures" / "courier_samples"
SETTINGS = SimulatorSettings(latency_mean_ms=0, time_scale=0).changed(
    {"couriers": {"delhivery_b2b": {"not_found_http_200_share": 0}}}
)
B2B, SHIPROCKET, VELOCITY = (
    SETTINGS.couriers[name] for name in ("delhivery_b2b", "shiprocket", "velocity")
)
TOKEN = SETTINGS.couriers["delhivery_b2c"].token
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
RAW_COURIERS = ("delhivery_b2c", "delhivery_b2b", "shiprocket", "velocity")


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


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


def b2b_login(client: httpx.Client, password: str = B2B.password) -> httpx.Response:
    body = {"username": B2B.username, "password": password}
    return client.post("/delhivery-b2b/ums/login", json=body)


def b2b_track(client: httpx.Client, jwt: str, lrnum: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {jwt}"}
    return client.get("/delhivery-b2b/lrn/track", params={"lrnum": lrnum}, headers=headers)


def shiprocket_token(client: httpx.Client) -> str:
    body = {"email": SHIPROCKET.email, "password": SHIPROCKET.password}
    answer = client.post("/shiprocket/v1/external/auth/login", json=body)
    assert answer.status_code == 200
    return answer.json()["token"]


def shiprocket_track(client: httpx.Client, token: str, *awbs: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return client.post(SHIPROCKET_TRACK, json={"awbs": list(awbs)}, headers=headers)


def velocity_login(client: httpx.Client, password: str = VELOCITY.password) -> httpx.Response:
    body = {"username": VELOCITY.username, "password": password}
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
