"""The outbox state machine against a real MongoDB-wire server: drain, lease, retry, dead."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect

from ordertrack_dagster.devstack.seed import seed_reference_data
from ordertrack_dagster.effects import delivery as delivery_module
from ordertrack_dagster.effects import outbox as outbox_module
from ordertrack_dagster.effects.delivery import (
    BREAKER_THRESHOLD,
    RECORD_EVERY,
    DeliveryDeferred,
    DeliveryError,
    deliver,
)
from ordertrack_dagster.effects.documents import Report, RetryPolicy
from ordertrack_dagster.effects.outbox import Outbox
from ordertrack_dagster.markers import OUTBOX_FIELD
from ordertrack_dagster.resources.mongo import COMMANDS
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster_tests.effects.support import moved_by_write_path

NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)
POLICY = RetryPolicy(give_up_after_seconds=3600, base_seconds=60, cap_seconds=600)


def mark(db, flow, *statuses):
    """Orders moved to `statuses` by the real write path, which leaves their markers."""
    reference = seed_reference_data(db)
    in_transit = reference.statuses[Canonical.IN_TRANSIT]["status_id"]
    orders = [
        {
            "_id": ObjectId(),
            "order_id": f"OT-{index}",
            "order_status": in_transit,
            "awb_number": f"AWB{index}",
            "marketplace": reference.marketplaces["shopify"],
            "customer": {"phone": "9000000001", "name": "A"},
            "total_amt": 100.0 + index,
        }
        for index, _ in enumerate(statuses)
    ]
    return moved_by_write_path(db, flow, orders, statuses, NOW)


@pytest.fixture
def box(db):
    return Outbox(db, POLICY, owner="run-1", rng=random.Random(1))


def queue_reports(box, count):
    for index in range(count):
        box.enqueue_report(Report.QUERY_LOG, "delhivery_b2c", f"run-{index}", {"n": index}, NOW)


def test_drain_copies_this_flows_markers_and_removes_exactly_them(db, box):
    rto, lost = mark(db, "delhivery_b2c", Canonical.RTO_IN_TRANSIT, Canonical.LOST)
    [other] = mark(db, "shiprocket", Canonical.BOOKING_CANCELLED)
    drained, rejected = box.drain_markers("delhivery_b2c", NOW)
    assert (dict(drained), rejected) == ({"crm_rto": 1, "slack_lost_destroy": 1}, [])
    doc = box.collection.find_one({"_id": f"{rto['_id']}:crm_rto"})
    assert doc["order"] == {"phone": "9000000001", "marketplace": "Shopify", "total_amt": 100.0}
    assert (doc["status"], doc["tracking_key"], doc["flow"]) == (
        "rto in transit",
        "AWB0",
        "delhivery_b2c",
    )
    assert (doc["state"], doc["failures"], doc["idempotency_key"]) == (
        "pending",
        0,
        f"ordertrack-crm_rto-{rto['_id']}",
    )
    assert OUTBOX_FIELD not in db["orders"].find_one({"_id": rto["_id"]})
    assert OUTBOX_FIELD in db["orders"].find_one({"_id": other["_id"]})


def test_drain_removes_empty_marker_objects(db, box):
    # the write path leaves `{}` when the RTO guard holds (the order was in a return before)
    oid = db["orders"].insert_one({"order_id": "E", OUTBOX_FIELD: {}}).inserted_id
    assert box.drain_markers("delhivery_b2c", NOW) == ({}, [])
    assert OUTBOX_FIELD not in db["orders"].find_one({"_id": oid})


def test_a_second_drain_of_the_same_marker_changes_nothing(db, box):
    [lost] = mark(db, "delhivery_b2c", Canonical.LOST)
    marker = db["orders"].find_one({"_id": lost["_id"]})[OUTBOX_FIELD]
    box.drain_markers("delhivery_b2c", NOW)
    box.collection.update_one({}, {"$set": {"state": "sent"}})
    # a crash between copying and removing the marker leaves it for the next run
    db["orders"].update_one({"_id": lost["_id"]}, {"$set": {OUTBOX_FIELD: marker}})
    box.drain_markers("delhivery_b2c", NOW + timedelta(minutes=8))
    [doc] = box.collection.find()
    assert (doc["state"], doc["created_at"]) == ("sent", NOW)
    assert OUTBOX_FIELD not in db["orders"].find_one({"_id": lost["_id"]})


def test_a_drain_costs_one_copy_and_one_removal_per_thousand_orders(db, box):
    mark(db, "delhivery_b2c", *[Canonical.RTO_IN_TRANSIT] * 3, Canonical.LOST)
    mark(db, "shiprocket", Canonical.LOST)
    before = COMMANDS.snapshot()
    drained, rejected = box.drain_markers("delhivery_b2c", NOW)
    # the marketplaces, the marked orders, the copies, the removals
    assert COMMANDS.snapshot().since(before).commands == 4
    assert (dict(drained), rejected) == ({"crm_rto": 3, "slack_lost_destroy": 1}, [])
    assert db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 1


def _write_meanwhile(box, monkeypatch, db, order_id, update):
    """Write `update` to the order while the drain copies its markers (between read and removal)."""
    copy = box._bulk

    def copy_then_write(ops, collection=None):
        if collection is None:
            db["orders"].update_one({"_id": order_id}, update)
        return copy(ops, collection)

    monkeypatch.setattr(box, "_bulk", copy_then_write)


@pytest.mark.parametrize(
    "status",
    [Canonical.LOST, Canonical.RTO_IN_TRANSIT],
    ids=["another event's marker added", "the same event's marker replaced"],
)
def test_a_marker_written_meanwhile_keeps_the_orders_markers(db, box, monkeypatch, status):
    [order] = mark(db, "delhivery_b2c", status)
    read = set(db["orders"].find_one({"_id": order["_id"]})[OUTBOX_FIELD])
    newer = {"flow": "delhivery_b2c", "queued_at": NOW + timedelta(minutes=1)}
    written = {"$set": {f"{OUTBOX_FIELD}.crm_rto": newer}}
    _write_meanwhile(box, monkeypatch, db, order["_id"], written)
    box.drain_markers("delhivery_b2c", NOW)
    markers = db["orders"].find_one({"_id": order["_id"]})[OUTBOX_FIELD]
    assert set(markers) == read | {"crm_rto"}  # kept whole, nothing lost
    assert markers["crm_rto"]["queued_at"] == newer["queued_at"]
    monkeypatch.undo()
    box.drain_markers("delhivery_b2c", NOW)  # the next drain: copying again adds nothing
    assert OUTBOX_FIELD not in db["orders"].find_one({"_id": order["_id"]})
    for kind in read | {"crm_rto"}:
        assert box.collection.count_documents({"kind": kind}) == 1


def test_beside_another_flows_marker_a_replaced_marker_stays(db, box, monkeypatch):
    [lost] = mark(db, "delhivery_b2c", Canonical.LOST)
    other = {"flow": "shiprocket", "queued_at": NOW}
    db["orders"].update_one({"_id": lost["_id"]}, {"$set": {f"{OUTBOX_FIELD}.crm_rto": other}})
    replaced = {"flow": "delhivery_b2c", "queued_at": NOW + timedelta(minutes=1)}
    _write_meanwhile(
        box,
        monkeypatch,
        db,
        lost["_id"],
        {"$set": {f"{OUTBOX_FIELD}.slack_lost_destroy": replaced}},
    )
    box.drain_markers("delhivery_b2c", NOW)
    markers = db["orders"].find_one({"_id": lost["_id"]})[OUTBOX_FIELD]
    assert markers["slack_lost_destroy"]["queued_at"] == replaced["queued_at"]
    assert markers["crm_rto"]["flow"] == "shiprocket"
    monkeypatch.undo()
    box.drain_markers("delhivery_b2c", NOW)
    assert set(db["orders"].find_one({"_id": lost["_id"]})[OUTBOX_FIELD]) == {"crm_rto"}


def test_a_run_report_is_queued_once(box):
    assert box.enqueue_report(Report.EMAIL_SUMMARY, "velocity", "r1", {"subject": "a"}, NOW)
    assert not box.enqueue_report(Report.EMAIL_SUMMARY, "velocity", "r1", {"subject": "b"}, NOW)
    assert box.collection.find_one()["content"] == {"subject": "a"}


def test_concurrent_runs_lease_disjoint_deliveries(db, box):
    queue_reports(box, 5)
    mine = box.claim("delhivery_b2c", ["query_log"], NOW, limit=3)
    theirs = Outbox(db, POLICY, owner="run-2").claim("delhivery_b2c", ["query_log"], NOW)
    assert len(mine) == 3 and len(theirs) == 2
    assert not {d["_id"] for d in mine} & {d["_id"] for d in theirs}
    assert Outbox(db, POLICY, owner="run-3").claim("delhivery_b2c", ["query_log"], NOW) == []


def test_a_claim_reads_the_due_documents_once(box):
    queue_reports(box, 3)
    before = COMMANDS.snapshot()
    claimed = box.claim("delhivery_b2c", ["query_log"], NOW + timedelta(microseconds=123_456))
    assert COMMANDS.snapshot().since(before).commands == 2  # the due documents, the lease
    assert [doc["lease_owner"] for doc in claimed] == ["run-1"] * 3
    stored = box.collection.find({"lease_owner": "run-1"}).sort("_id")
    assert list(stored) == sorted(claimed, key=lambda doc: doc["_id"])  # as stored, to the ms
    assert box.claim("delhivery_b2c", ["query_log"], NOW) == []


def test_a_claim_overtaken_by_another_run_keeps_only_its_own(db, box, monkeypatch):
    queue_reports(box, 4)
    theirs = Outbox(db, POLICY, owner="run-2")
    lease = outbox_module.bulk_update

    def overtaken(collection, ops, log, chunk):
        monkeypatch.setattr(outbox_module, "bulk_update", lease)
        taken.extend(theirs.claim("delhivery_b2c", ["query_log"], NOW, limit=2))
        return lease(collection, ops, log, chunk)

    taken: list[dict] = []
    monkeypatch.setattr(outbox_module, "bulk_update", overtaken)
    mine = box.claim("delhivery_b2c", ["query_log"], NOW)
    assert len(taken) == 2 and len(mine) == 2
    assert not {d["_id"] for d in mine} & {d["_id"] for d in taken}
    assert {
        d["lease_owner"] for d in box.collection.find({"_id": {"$in": [d["_id"] for d in mine]}})
    } == {"run-1"}


def test_success_is_recorded_and_the_report_body_dropped(box):
    queue_reports(box, 1)
    report = deliver(box, box.claim("delhivery_b2c", ["query_log"], NOW), lambda doc: 200)
    assert (report.sent, report.failed) == (1, 0)
    doc = box.collection.find_one()
    assert doc["state"] == "sent" and "content" not in doc and doc["lease_until"] is None
    assert [a["outcome"] for a in doc["attempts"]] == ["sent"]
    assert box.claim("delhivery_b2c", ["query_log"], NOW + timedelta(days=1)) == []


def test_attempts_are_recorded_in_groups_while_sending(box, monkeypatch):
    monkeypatch.setattr(delivery_module, "RECORD_WITHIN_SECONDS", 3600.0)  # only the count
    queue_reports(box, RECORD_EVERY + 5)
    recorded_before = []

    def count_recorded(doc):
        recorded_before.append(box.collection.count_documents({"state": "sent"}))
        return 200

    deliver(box, box.claim("delhivery_b2c", ["query_log"], NOW), count_recorded)
    assert recorded_before[RECORD_EVERY - 1] == 0
    assert recorded_before[RECORD_EVERY] == RECORD_EVERY
    assert box.collection.count_documents({"state": "sent"}) == RECORD_EVERY + 5


def test_a_crash_while_sending_still_records_what_was_sent(box):
    queue_reports(box, 4)
    sent = []

    def crash_on_third(doc):
        if len(sent) == 2:
            raise KeyboardInterrupt  # the process is going down mid-run
        sent.append(doc["_id"])
        return 200

    with pytest.raises(KeyboardInterrupt):
        deliver(box, box.claim("delhivery_b2c", ["query_log"], NOW), crash_on_third)
    recorded = {doc["_id"] for doc in box.collection.find({"state": "sent"})}
    assert recorded == set(sent)


def test_a_group_whose_record_failed_is_not_written_again_on_the_way_out(box, monkeypatch):
    monkeypatch.setattr(delivery_module, "RECORD_EVERY", 2)
    queue_reports(box, 3)
    docs = box.claim("delhivery_b2c", ["query_log"], NOW)
    written = []
    write = box._bulk

    def connection_lost_once(ops, collection=None):
        written.append(len(ops))
        if len(written) == 1:
            raise AutoReconnect("connection lost")  # the server may have applied it
        return write(ops, collection)

    monkeypatch.setattr(box, "_bulk", connection_lost_once)
    with pytest.raises(AutoReconnect):
        deliver(box, docs, lambda doc: 200)
    assert written[0] == 2 and sum(written[1:]) == 0


def test_failures_back_off_then_become_dead_letters_after_the_give_up_time(db):
    moment = NOW
    box = Outbox(db, POLICY, owner="run-1", rng=random.Random(1), clock=lambda: moment)
    queue_reports(box, 1)

    def refuse(doc):
        raise DeliveryError("HTTP 500", http_status=500)

    failures = 0
    while moment - NOW < timedelta(seconds=POLICY.give_up_after_seconds):
        [doc] = box.claim("delhivery_b2c", ["query_log"], moment)
        deliver(box, [doc], refuse)
        failures += 1
        doc = box.collection.find_one()
        assert doc["failures"] == failures and doc["last_error"] == "HTTP 500"
        assert (doc["state"], doc["first_failure_at"]) == ("pending", NOW)
        moment = doc["next_attempt_at"]
    [doc] = box.claim("delhivery_b2c", ["query_log"], moment)
    report = deliver(box, [doc], refuse)  # the first failure after an hour of failing
    doc = box.collection.find_one()
    assert report.became_dead == 1
    assert (doc["state"], doc["failures"]) == ("dead", failures + 1)
    assert box.claim("delhivery_b2c", ["query_log"], moment + timedelta(days=1)) == []
    assert box.counts("delhivery_b2c", ["query_log"])["dead"] == 1
    assert [d["_id"] for d in box.unalerted_dead("delhivery_b2c", ["query_log"])] == [doc["_id"]]
    box.mark_dead_alerted([doc])
    assert box.unalerted_dead("delhivery_b2c", ["query_log"]) == []
    assert box.requeue_dead("delhivery_b2c", ["query_log"], NOW) == 1
    assert len(box.claim("delhivery_b2c", ["query_log"], datetime.now(UTC))) == 1


def test_webhook_retries_stay_inside_the_receivers_key_horizon(db):
    """CRM-KEY-HORIZON: every attempt of a CRM webhook falls within the horizon after its
    first claim; the failure whose next retry would land past it makes the dead letter."""
    horizon = RetryPolicy(base_seconds=60, cap_seconds=6 * 3600, key_horizon_seconds=24 * 3600)
    moment = NOW
    box = Outbox(db, horizon, owner="run-1", rng=random.Random(1), clock=lambda: moment)
    [rto] = mark(db, "delhivery_b2c", Canonical.RTO)
    box.drain_markers("delhivery_b2c", NOW)

    def refuse(doc):
        raise DeliveryError("CRM webhook answered HTTP 500", http_status=500)

    attempts = []
    while claimed := box.claim("delhivery_b2c", ["crm_rto"], moment):
        attempts.append(moment)
        deliver(box, claimed, refuse)
        doc = box.collection.find_one()
        moment = doc.get("next_attempt_at", moment)
    assert doc["state"] == "dead" and doc["first_claimed_at"] == NOW
    assert NOW + timedelta(hours=18) <= attempts[-1] < NOW + timedelta(hours=24)
    assert "forgets the idempotency key 24 h after the first call" in doc["last_error"]
    assert box.requeue_dead("delhivery_b2c", ["crm_rto"], moment) == 1  # ops decided
    assert "first_claimed_at" not in box.collection.find_one()


def test_the_breaker_leaves_the_rest_due_after_repeated_transient_failures(box):
    queue_reports(box, 5)
    docs = box.claim("delhivery_b2c", ["query_log"], NOW)

    def down(doc):
        raise DeliveryError("connection refused")

    report = deliver(box, docs, down)
    assert (report.failed, report.not_attempted) == (BREAKER_THRESHOLD, 5 - BREAKER_THRESHOLD)
    untried = box.claim("delhivery_b2c", ["query_log"], NOW)
    assert len(untried) == 5 - BREAKER_THRESHOLD
    assert all(doc["failures"] == 0 for doc in untried)


def test_a_message_specific_failure_does_not_stop_the_others(box):
    queue_reports(box, 5)

    def picky(doc):
        if doc["content"]["n"] < 4:
            raise ValueError("cannot format")  # a bug in one message: recorded, not raised
        return 200

    report = deliver(box, box.claim("delhivery_b2c", ["query_log"], NOW), picky)
    assert (report.failed, report.sent, report.errors) == (4, 1, ["ValueError: cannot format"])


def test_a_deferral_is_no_failure_and_waits_until_asked(box):
    queue_reports(box, 2)
    later = datetime.now(UTC) + timedelta(seconds=30)

    def limited(doc):
        raise DeliveryDeferred("rate limited", later, 429)

    report = deliver(box, box.claim("delhivery_b2c", ["query_log"], NOW), limited)
    assert (report.deferred, report.not_attempted, report.failed) == (1, 1, 0)
    deferred = box.collection.find_one({"attempts.outcome": "deferred"})
    assert deferred["failures"] == 0
    assert abs(deferred["next_attempt_at"] - later) < timedelta(milliseconds=2)


def test_ops_see_what_waits_retries_and_died_per_effect(box):
    queue_reports(box, 4)  # query logs: one sent, one failed once, one dead, one waiting
    box.enqueue_report(Report.ALERT_LOG, "delhivery_b2c", "run-0", {}, NOW)  # another effect
    ids = [f"query_log:delhivery_b2c:run-{n}" for n in range(3)]
    box.collection.update_one({"_id": ids[0]}, {"$set": {"state": "sent"}})
    box.collection.update_one({"_id": ids[1]}, {"$set": {"failures": 1}})
    box.collection.update_one({"_id": ids[2]}, {"$set": {"state": "dead", "dead_alerted": True}})
    assert box.counts("delhivery_b2c", ["query_log"]) == {"pending": 2, "retrying": 1, "dead": 1}
    assert box.counts("velocity", ["query_log"]) == {"pending": 0, "retrying": 0, "dead": 0}
    assert box.unalerted_dead("delhivery_b2c", ["query_log"]) == []  # announced already


@pytest.mark.parametrize("failures", [1, 2, 5, 12])
def test_backoff_doubles_with_jitter_up_to_the_cap(failures):
    policy = RetryPolicy(base_seconds=60, cap_seconds=3600)
    ceiling = min(3600, 60 * 2 ** (failures - 1))
    delays = {policy.delay(failures, random.Random(seed)).total_seconds() for seed in range(50)}
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(delays) > 1


def test_sent_records_lose_consignee_data_after_retention_and_are_never_sent_again(db, box):
    """At rest: after the retention, a sent record keeps only its id (a tombstone); the
    same event drained again finds it and queues nothing."""
    [rto] = mark(db, "delhivery_b2c", Canonical.RTO_IN_TRANSIT)
    box.drain_markers("delhivery_b2c", NOW)
    deliver(box, box.claim("delhivery_b2c", ["crm_rto"], NOW), lambda doc: 200)
    later = datetime.now(UTC) + timedelta(days=91)  # attempts are stamped with the real time
    assert box.purge_delivered("delhivery_b2c", later - timedelta(days=90), later) == 1
    [doc] = box.collection.find({"kind": "crm_rto"})
    assert doc["state"] == "sent" and "order" not in doc and "attempts" not in doc
    assert "9000000001" not in str(doc)
    db["orders"].update_one(  # the same marker again (a replayed write)
        {"_id": rto["_id"]},
        {"$set": {f"{OUTBOX_FIELD}.crm_rto": {"flow": "delhivery_b2c", "queued_at": later}}},
    )
    box.drain_markers("delhivery_b2c", later)
    assert box.claim("delhivery_b2c", ["crm_rto"], later) == []
    assert box.purge_delivered("delhivery_b2c", later, later) == 0  # purged once


@pytest.mark.parametrize("customer", [None, "9000000001", ["x"]])
def test_an_order_of_any_shape_drains(db, box, customer):
    [lost] = mark(db, "delhivery_b2c", Canonical.LOST)
    db["orders"].update_one(
        {"_id": lost["_id"]}, {"$set": {"customer": customer, "marketplace": {"odd": 1}}}
    )
    drained, rejected = box.drain_markers("delhivery_b2c", NOW)
    assert (sum(drained.values()), rejected) == (1, [])
    [doc] = box.collection.find({"kind": "slack_lost_destroy"})
    assert doc["order"]["phone"] is None and doc["order"]["marketplace"] is None
