"""Contract §6 write rules against a real MongoDB-wire server (SecantusDB)."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId

from ordertrack_dagster.markers import OUTBOX_FIELD, Event
from ordertrack_dagster.polling import (
    ASKED_FIELD,
    NEXT_POLL_FIELD,
    STATUS_CHANGED_FIELD,
    next_poll_at,
)
from ordertrack_dagster.records import Outcome
from ordertrack_dagster.statuses import Canonical as C
from ordertrack_dagster.tables import Action
from ordertrack_dagster.tracking.plan import (
    MOVE_ALLOWED_FIELD,
    TRACKING_DUE_FIELD,
    TRACKING_SYNCED_FIELD,
    PolledOrder,
    StatusCatalogue,
    plan_writes,
    synced_op,
)
from ordertrack_dagster.tracking.writer import apply_plan, settle
from ordertrack_dagster_tests.faults.invariants import invariant_i

NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)
STATUS_IDS = {
    "booked": 4,
    C.PENDING: 5,
    C.IN_TRANSIT: 6,
    C.OUT_FOR_DELIVERY: 7,
    C.NDR: 8,
    C.RTO_IN_TRANSIT: 9,
    C.RTO: 11,
    C.DELIVERED: 10,
    C.LOST: 12,
    C.DESTROY: 13,
    C.BOOKING_CANCELLED: 15,
}


@pytest.fixture
def catalogue(db):
    db["status"].insert_many(
        [
            {"_id": ObjectId(), "status_id": sid, "name": str(name)}
            for name, sid in STATUS_IDS.items()
        ]
    )
    return StatusCatalogue.load(db)


def make_order(db, status=C.IN_TRANSIT, **extra):
    doc = {
        "order_id": "2237",
        "order_status": STATUS_IDS[status],
        "order_status_map": [],
        "awb_number": "26805710004060",
        "stockShipStatus": "untouched",
        **extra,
    }
    return db["orders"].insert_one(doc).inserted_id


def polled(oid, current, new=None, outcome=Outcome.MAPPED, courier_status="ud-x", **extra):
    return PolledOrder(
        order_oid=oid,
        order_id="2237",
        tracking_key="26805710004060",
        current_status_id=STATUS_IDS.get(current, current),
        booked_at=extra.pop("booked_at", NOW - timedelta(days=2)),
        outcome=outcome,
        courier_status=courier_status,
        status=new,
        event_time=extra.pop("event_time", NOW - timedelta(hours=1)),
        **extra,
    )


def write(db, catalogue, orders, flow="delhivery_b2c", now=NOW):
    plan = plan_writes(orders, catalogue, flow, now)
    return plan, apply_plan(db, plan, catalogue)


def test_status_change_writes_every_field(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT)
    plan, report = write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.OUT_FOR_DELIVERY)])
    doc = db["orders"].find_one({"_id": oid})
    assert plan.decisions[0].action == Action.STATUS_CHANGED
    assert doc["order_status"] == STATUS_IDS[C.OUT_FOR_DELIVERY]
    assert doc["order_status_map"] == [catalogue.object_ids[C.OUT_FOR_DELIVERY]]
    assert doc["tracking_timestamps"]["out_for_delivery"] == NOW
    assert doc["last_tracking_time"] == NOW
    assert doc["courier_status"] == "ud-x"
    assert doc["stockShipStatus"] == "untouched"
    assert MOVE_ALLOWED_FIELD not in doc  # the guard's field lives for the update alone
    tracking = db["orderTracking"].find_one({"orderId": oid})
    assert tracking["currentStatus"] == "out_for_delivery"
    assert tracking["History"] == [
        {"status": "out_for_delivery", "timeStamp": NOW - timedelta(hours=1)}
    ]
    assert report.rejected == []


def test_a_rejected_clear_of_the_tracking_mark_leaves_the_status_change_applied(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT)
    synced = {"$eq": [{"$type": f"${TRACKING_SYNCED_FIELD}"}, "missing"]}
    db.command("collMod", "orders", validator={"$expr": synced})  # refuses only the clear
    plan, report = write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.OUT_FOR_DELIVERY)])
    assert [(r.collection, r.key, r.code) for r in report.rejected] == [("orders", oid, 121)]
    assert report.rejected_updates == {}
    assert [d.action for d in settle(plan, report)] == [Action.STATUS_CHANGED]
    assert db["orders"].find_one({"_id": oid})["order_status"] == STATUS_IDS[C.OUT_FOR_DELIVERY]


def test_a_rejected_order_update_is_settled_as_rejected_with_its_error_code(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT)
    db.command("collMod", "orders", validator={"$expr": {"$eq": ["$order_status", 6]}})
    plan, report = write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.OUT_FOR_DELIVERY)])
    (decision,) = settle(plan, report)
    assert decision.action == Action.REJECTED
    assert decision.alert.startswith("MongoDB rejected the update (error code 121)")


def test_rerun_on_the_same_answer_changes_nothing(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT)
    write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.DELIVERED)])
    first = db["orders"].find_one({"_id": oid})
    # a re-run with the same (stale) snapshot and the same answer
    plan, report = write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.DELIVERED)], now=NOW)
    assert report.orders_modified == 0
    assert db["orders"].find_one({"_id": oid}) == first
    assert len(db["orderTracking"].find_one({"orderId": oid})["History"]) == 1
    # a re-run with a fresh snapshot records the poll only
    later = NOW + timedelta(minutes=8)
    plan, _ = write(db, catalogue, [polled(oid, C.DELIVERED, C.DELIVERED)], now=later)
    assert plan.decisions[0].action == Action.POLL_RECORDED
    doc = db["orders"].find_one({"_id": oid})
    assert doc["last_tracking_time"] == later
    assert doc["order_status_map"] == first["order_status_map"]


def test_backward_move_is_refused_with_an_alert(db, catalogue):
    oid = make_order(db, C.RTO)
    plan, _ = write(db, catalogue, [polled(oid, C.RTO, C.IN_TRANSIT)])
    assert plan.decisions[0].action == Action.REFUSED
    assert "refused" in plan.decisions[0].alert
    doc = db["orders"].find_one({"_id": oid})
    assert doc["order_status"] == STATUS_IDS[C.RTO]
    assert doc["last_tracking_time"] == NOW  # the poll itself is recorded
    # orderTracking follows the order's stored status, never the refused one
    assert db["orderTracking"].find_one({"orderId": oid})["currentStatus"] == "rto"


def test_stale_snapshot_cannot_move_an_order_backwards(db, catalogue):
    """The snapshot says in transit, but another run already delivered the order."""
    oid = make_order(db, C.DELIVERED)
    db["orderTracking"].insert_one(
        {"orderId": oid, "currentStatus": "delivered", "History": [{"status": "delivered"}]}
    )
    _, report = write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.OUT_FOR_DELIVERY)])
    doc = db["orders"].find_one({"_id": oid})
    assert doc["order_status"] == STATUS_IDS[C.DELIVERED]
    assert "out_for_delivery" not in doc.get("tracking_timestamps", {})
    assert MOVE_ALLOWED_FIELD not in doc  # refused or not, the update removes it
    tracking = db["orderTracking"].find_one({"orderId": oid})
    assert tracking["currentStatus"] == "delivered"
    assert [h["status"] for h in tracking["History"]] == ["delivered"]


def test_non_canonical_status_may_move_anywhere(db, catalogue):
    oid = make_order(db, "booked")
    plan, _ = write(db, catalogue, [polled(oid, "booked", C.PENDING)])
    assert plan.decisions[0].action == Action.STATUS_CHANGED
    assert db["orders"].find_one({"_id": oid})["order_status"] == STATUS_IDS[C.PENDING]


def test_first_time_timestamps_are_never_overwritten(db, catalogue):
    earlier = NOW - timedelta(days=3)
    oid = make_order(db, C.NDR, tracking_timestamps={"out_for_delivery": earlier})
    write(db, catalogue, [polled(oid, C.NDR, C.OUT_FOR_DELIVERY)])
    assert db["orders"].find_one({"_id": oid})["tracking_timestamps"]["out_for_delivery"] == earlier


def test_status_map_appends_only_when_different_from_the_last(db, catalogue):
    same = catalogue.object_ids[C.OUT_FOR_DELIVERY]
    oid = make_order(db, "booked", order_status_map=[same])
    write(db, catalogue, [polled(oid, "booked", C.OUT_FOR_DELIVERY)])
    assert db["orders"].find_one({"_id": oid})["order_status_map"] == [same]


def test_a_corrupt_status_map_is_left_alone(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT, order_status_map="corrupt")
    write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.DELIVERED)])
    doc = db["orders"].find_one({"_id": oid})
    assert doc["order_status_map"] == "corrupt"
    assert doc["order_status"] == STATUS_IDS[C.DELIVERED]


def test_history_keeps_other_fields_and_appends_after_existing_entries(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT)
    db["orderTracking"].insert_one(
        {
            "orderId": oid,
            "currentStatus": "in transit",
            "stockShipStatus": "keep",
            "History": [{"status": "in transit", "timeStamp": NOW - timedelta(days=1)}],
        }
    )
    write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.DELIVERED)])
    tracking = db["orderTracking"].find_one({"orderId": oid})
    assert tracking["stockShipStatus"] == "keep"
    assert [h["status"] for h in tracking["History"]] == ["in transit", "delivered"]


def test_two_concurrent_writers_append_history_once(db, catalogue):
    oids = [make_order(db, C.IN_TRANSIT, order_id=str(n)) for n in range(40)]
    orders = [polled(oid, C.IN_TRANSIT, C.DELIVERED) for oid in oids]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            write(db, catalogue, orders)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for oid in oids:
        tracking = list(db["orderTracking"].find({"orderId": oid}))
        assert len(tracking) == 1
        assert [h["status"] for h in tracking[0]["History"]] == ["delivered"]
        doc = db["orders"].find_one({"_id": oid})
        assert doc["order_status_map"] == [catalogue.object_ids[C.DELIVERED]]
        assert OUTBOX_FIELD not in doc  # delivered has no side effect on B2C


def test_two_writers_applied_out_of_order_never_leave_order_tracking_behind(db, catalogue):
    """Two runs of one order (a CLI run beside a scheduled one): the run that planned later
    writes first, then the earlier plan lands. The poll time never moves back, and
    orderTracking follows the order's stored status (invariant I)."""
    oid = make_order(db, "booked")
    earlier = plan_writes([polled(oid, "booked", C.DELIVERED)], catalogue, "shiprocket", NOW)
    later_now = NOW + timedelta(minutes=1)
    later = plan_writes([polled(oid, "booked", C.IN_TRANSIT)], catalogue, "shiprocket", later_now)
    apply_plan(db, later, catalogue)
    apply_plan(db, earlier, catalogue)
    doc = db["orders"].find_one({"_id": oid})
    assert doc["order_status"] == STATUS_IDS[C.DELIVERED]
    invariant_i(db, [oid])
    assert doc["last_tracking_time"] > later_now  # never back, and a new version
    assert TRACKING_DUE_FIELD not in doc


def test_the_mark_is_cleared_only_while_the_order_is_at_the_version_synced(db):
    """The sync read the order, brought orderTracking to it, and clears its mark: not when
    another writer moved the order on meanwhile (its next sync brings orderTracking there).
    A field the order lacks reads as None and matches, as it would in a query filter."""
    moved_on = make_order(db, last_tracking_time=NOW, **{TRACKING_DUE_FIELD: NOW})
    unversioned = make_order(db, **{TRACKING_DUE_FIELD: NOW})  # no last_tracking_time
    read = {"order_status": STATUS_IDS[C.IN_TRANSIT], TRACKING_DUE_FIELD: NOW}
    later = {"order_status": STATUS_IDS[C.DELIVERED], "last_tracking_time": NOW + timedelta(1)}
    db["orders"].update_one({"_id": moved_on}, {"$set": later})
    db["orders"].bulk_write(
        [
            synced_op(moved_on, read | {"last_tracking_time": NOW}),
            synced_op(unversioned, read | {"last_tracking_time": None}),
        ]
    )
    stays = db["orders"].find_one({"_id": moved_on})
    assert TRACKING_DUE_FIELD in stays
    assert TRACKING_SYNCED_FIELD not in stays
    cleared = db["orders"].find_one({"_id": unversioned})
    assert TRACKING_DUE_FIELD not in cleared
    assert cleared[TRACKING_SYNCED_FIELD] == STATUS_IDS[C.IN_TRANSIT]


@pytest.mark.parametrize("outcome", [Outcome.NOT_FOUND, Outcome.FAILED, Outcome.DEFERRED])
def test_unread_answers_leave_status_and_poll_untouched(db, catalogue, outcome):
    """Only the queue place (when asked, and when next due) moves, and only for an order that
    was asked (contract §2)."""
    oid = make_order(db, C.IN_TRANSIT)
    before = db["orders"].find_one({"_id": oid})
    plan, _ = write(db, catalogue, [polled(oid, C.IN_TRANSIT, None, outcome=outcome)])
    assert plan.decisions[0].action == Action.UNTOUCHED
    after = db["orders"].find_one({"_id": oid})
    asked_at = after.pop(ASKED_FIELD, None)
    next_poll = after.pop(NEXT_POLL_FIELD, None)
    backing_off_since = after.pop(STATUS_CHANGED_FIELD, None)
    assert after == before
    assert asked_at == backing_off_since == (None if outcome is Outcome.DEFERRED else NOW)
    asked_in_vain = next_poll_at(C.IN_TRANSIT, None, NOW, None)
    assert next_poll == (None if outcome is Outcome.DEFERRED else asked_in_vain)


def test_an_order_asked_in_vain_again_and_again_backs_off(db, catalogue):
    """Not found for four days in transit (a day past line haul's usual stay): asked every
    3 hours, not every 15 minutes (polling.py)."""
    oid = make_order(db, C.IN_TRANSIT)
    write(db, catalogue, [polled(oid, C.IN_TRANSIT, None, outcome=Outcome.NOT_FOUND)])
    first = db["orders"].find_one({"_id": oid})[STATUS_CHANGED_FIELD]
    days_later = NOW + timedelta(days=4)
    again = polled(oid, C.IN_TRANSIT, None, outcome=Outcome.NOT_FOUND, status_changed_at=first)
    write(db, catalogue, [again], now=days_later)
    doc = db["orders"].find_one({"_id": oid})
    assert doc[STATUS_CHANGED_FIELD] == first == NOW
    assert doc[NEXT_POLL_FIELD] == days_later + timedelta(hours=3)


@pytest.mark.parametrize(
    "outcome", [Outcome.NO_CHANGE, Outcome.UNMAPPED, Outcome.REFERENCE_MISMATCH]
)
def test_read_answers_record_the_poll_without_a_status(db, catalogue, outcome):
    oid = make_order(db, C.IN_TRANSIT)
    write(
        db, catalogue, [polled(oid, C.IN_TRANSIT, None, outcome=outcome, courier_status="ud-odd")]
    )
    doc = db["orders"].find_one({"_id": oid})
    assert doc["order_status"] == STATUS_IDS[C.IN_TRANSIT]
    assert (doc["last_tracking_time"], doc["courier_status"]) == (NOW, "ud-odd")


def test_dollar_prefixed_courier_text_is_stored_verbatim(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT)
    write(db, catalogue, [polled(oid, C.IN_TRANSIT, C.DELIVERED, courier_status="$where")])
    doc = db["orders"].find_one({"_id": oid})
    assert doc["courier_status"] == "$where"
    assert doc["order_status"] == STATUS_IDS[C.DELIVERED]


def test_stop_tracking_sets_being_tracked_false(db, catalogue):
    oid = make_order(db, C.IN_TRANSIT)
    write(
        db,
        catalogue,
        [polled(oid, C.IN_TRANSIT, None, outcome=Outcome.NO_CHANGE, stop_tracking=True)],
    )
    assert db["orders"].find_one({"_id": oid})["being_tracked"] is False


def test_rto_queues_the_crm_event_only_on_first_entry(db, catalogue):
    oid = make_order(db, C.NDR)
    plan, _ = write(db, catalogue, [polled(oid, C.NDR, C.RTO_IN_TRANSIT)])
    assert plan.decisions[0].events == (Event.CRM_RTO,)
    marker = db["orders"].find_one({"_id": oid})[OUTBOX_FIELD]
    assert marker[Event.CRM_RTO]["status"] == "rto in transit"
    # the effects step drains the marker; entering rto later must not queue it again
    db["orders"].update_one({"_id": oid}, {"$unset": {OUTBOX_FIELD: ""}})
    write(db, catalogue, [polled(oid, C.RTO_IN_TRANSIT, C.RTO)])
    doc = db["orders"].find_one({"_id": oid})
    assert doc["order_status"] == STATUS_IDS[C.RTO]
    assert doc.get(OUTBOX_FIELD, {}) == {}


def test_rto_after_an_old_return_timestamp_queues_nothing(db, catalogue):
    oid = make_order(db, C.NDR, tracking_timestamps={"rto": NOW - timedelta(days=9)})
    write(db, catalogue, [polled(oid, C.NDR, C.RTO)])
    assert db["orders"].find_one({"_id": oid}).get(OUTBOX_FIELD, {}) == {}


@pytest.mark.parametrize(
    "new, event",
    [
        (C.BOOKING_CANCELLED, Event.SLACK_CANCELLED),
        (C.LOST, Event.SLACK_LOST_DESTROY),
        (C.DESTROY, Event.SLACK_LOST_DESTROY),
    ],
)
def test_final_statuses_queue_their_slack_event(db, catalogue, new, event):
    oid = make_order(db, C.IN_TRANSIT)
    write(db, catalogue, [polled(oid, C.IN_TRANSIT, new)])
    assert event in db["orders"].find_one({"_id": oid})[OUTBOX_FIELD]


def test_same_day_b2b_delivery_queues_its_message(db, catalogue):
    booked = datetime(2024, 9, 22, 3, 0, tzinfo=UTC)
    same_day = make_order(db, C.OUT_FOR_DELIVERY)
    next_day = make_order(db, C.OUT_FOR_DELIVERY)
    write(
        db,
        catalogue,
        [
            polled(
                same_day,
                C.OUT_FOR_DELIVERY,
                C.DELIVERED,
                booked_at=booked,
                event_time=booked + timedelta(hours=9),
            ),
            polled(
                next_day,
                C.OUT_FOR_DELIVERY,
                C.DELIVERED,
                booked_at=booked,
                event_time=booked + timedelta(hours=22),
            ),
        ],
        flow="delhivery_b2b",
    )
    assert (
        Event.SLACK_B2B_SAME_DAY_DELIVERY in db["orders"].find_one({"_id": same_day})[OUTBOX_FIELD]
    )
    assert OUTBOX_FIELD not in db["orders"].find_one({"_id": next_day})


def test_many_orders_take_few_round_trips(db, catalogue):
    oids = (
        db["orders"]
        .insert_many(
            [{"order_id": str(n), "order_status": STATUS_IDS[C.IN_TRANSIT]} for n in range(500)]
        )
        .inserted_ids
    )
    orders = [
        polled(
            oid,
            C.IN_TRANSIT,
            C.DELIVERED if n % 2 else None,
            outcome=Outcome.MAPPED if n % 2 else Outcome.NO_CHANGE,
        )
        for n, oid in enumerate(oids)
    ]
    _, report = write(db, catalogue, orders)
    # one for orders, one for orderTracking, one clearing the orders' orderTracking marks
    assert report.bulk_calls == 3
    assert db["orders"].count_documents({"order_status": STATUS_IDS[C.DELIVERED]}) == 250
