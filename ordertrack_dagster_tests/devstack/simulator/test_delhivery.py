"""The Delhivery express paths (B2C and fallback) of the simulator."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from ordertrack_dagster.devstack.simulator import SimulatorAdmin
from ordertrack_dagster_tests.devstack.simulator.wire import (
    B2C,
    DAY,
    DELHIVERY_TIME,
    FALLBACK,
    delhivery,
    fallback,
    sample,
    ship,
)


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
