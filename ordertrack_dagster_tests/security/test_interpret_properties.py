"""Property tests: whatever a courier answers (valid, truncated, mistyped, hostile), each
reader returns one of the defined outcomes and a canonical status or none, and the mapping
step turns even a stored answer nobody could parse into a `failed` row, never an exception."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ordertrack_dagster.couriers import COURIERS
from ordertrack_dagster.records import Interpretation, OrderContext, Outcome
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tracking.mapping import interpret_answers

SAMPLES = Path(__file__).parents[1] / "fixtures" / "courier_samples"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORDER = OrderContext(order_id="2237", tracking_key="26805710004060")


def _sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


#: One key's answer, as each flow's reader receives it.
VALID = {
    "delhivery_b2c": _sample("delhivery_b2c_track.json")["ShipmentData"][0]["Shipment"],
    "delhivery_fallback": _sample("delhivery_b2c_track.json")["ShipmentData"][0]["Shipment"],
    "delhivery_b2b": _sample("delhivery_b2b_track.json"),
    "shiprocket": next(iter(_sample("shiprocket_track_awbs.json").values())),
    "velocity": next(iter(_sample("velocity_order_tracking.json")["result"].values())),
}

HOSTILE_TEXT = st.sampled_from(
    [
        "0001-01-01T00:00:00",
        "9999-12-31T23:59:59",
        "2026-13-45 25:61:61",
        "$where",
        "a.b",
        "<!channel>",
        "\u0000",
        "Delivered\r\nX-Injected: 1",
        "NaN",
        "1e308",
        "",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | HOSTILE_TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | HOSTILE_TEXT, children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """The value with some of its parts replaced, removed, retyped or cut short."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            choice = draw(st.integers(0, 5))
            if choice == 0:
                continue  # a key left out
            result[key] = draw(JSON) if choice == 1 else draw(mutated(item))
        return result
    if isinstance(value, list):
        cut = draw(st.integers(0, len(value)))
        return [draw(mutated(item)) for item in value[:cut]]
    if isinstance(value, str) and draw(st.booleans()):
        return draw(HOSTILE_TEXT)
    return value


def answers(flow: str) -> st.SearchStrategy[Any]:
    valid = VALID[flow]
    return st.one_of(st.just(valid), mutated(valid), JSON)


def _check(reading: Any) -> None:
    assert isinstance(reading, Interpretation)
    assert reading.outcome in Outcome
    assert reading.status is None or reading.status in Canonical
    assert reading.status is None or reading.outcome is Outcome.MAPPED


def _property(flow: str):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(answer=answers(flow))
    def test(answer: Any) -> None:
        _check(COURIERS[flow].interpret(answer, ORDER, NOW))

    return test


test_delhivery_b2c_reader_never_raises = _property("delhivery_b2c")
test_delhivery_fallback_reader_never_raises = _property("delhivery_fallback")
test_delhivery_b2b_reader_never_raises = _property("delhivery_b2b")
test_shiprocket_reader_never_raises = _property("shiprocket")
test_velocity_reader_never_raises = _property("velocity")


@settings(max_examples=100, deadline=None)
@given(flow=st.sampled_from(sorted(VALID)), raw=st.text(max_size=80) | st.just("[" * 5000))
def test_a_stored_answer_of_any_text_maps_to_an_outcome(flow: str, raw: str) -> None:
    orders = pd.DataFrame(
        [{"order_oid": "0" * 24, "order_id": "2237", "tracking_key": "AWB1",
          "order_status": None, "booked_at": None}]
    )  # fmt: skip
    records = pd.DataFrame(
        [{"tracking_key": "AWB1", "state": "answered", "raw": raw, "error": None}]
    )
    [row] = interpret_answers(orders, records, COURIERS[flow].interpret, NOW).itertuples()
    assert row.outcome in {outcome.value for outcome in Outcome}
    assert row.status is None or row.status in {status.value for status in Canonical}
