"""Alert once per condition (effects/alert_memory.py), on the stack's MongoDB."""

from datetime import UTC, datetime

from ordertrack_dagster.effects.alert_memory import new_alerts

NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)


def line(kind, message, order_id="OT-1"):
    return {
        "flow": "delhivery_b2c",
        "order_id": order_id,
        "tracking_key": "1490000000001",
        "kind": kind,
        "message": message,
    }


def test_a_condition_is_new_once_until_the_answer_changes(db):
    unmapped = line("unmapped_status", "unmapped status 'UD'/'X'")
    missing = line("missing_awb", "No such waybill", order_id="OT-2")
    assert new_alerts(db, [unmapped, missing], "r1", NOW) == [unmapped, missing]
    assert new_alerts(db, [unmapped, missing], "r2", NOW) == []
    changed = line("unmapped_status", "unmapped status 'UD'/'Y'")
    assert new_alerts(db, [changed, missing], "r3", NOW) == [changed]


def test_the_answer_is_the_same_however_often_a_run_asks(db):
    refused = line("refused_move", "refused move 'delivered' -> 'in transit'")
    assert new_alerts(db, [refused], "r1", NOW) == [refused]
    assert new_alerts(db, [refused], "r1", NOW) == [refused]  # the email after the alert log


def test_run_wide_conditions_are_announced_every_time(db):
    failure = line("api_failure", "HTTP 502")
    assert new_alerts(db, [failure], "r1", NOW) == [failure]
    assert new_alerts(db, [failure], "r2", NOW) == [failure]


def test_a_rejected_write_is_one_condition_per_error_code_whatever_the_text(db):
    def rejected(code, text):
        head = f"MongoDB rejected the update (error code {code}), the order stays due"
        return line("rejected_write", f"{head}: {text}")

    first = rejected(121, "Document failed validation at 2024-09-22T06:00:00")
    assert new_alerts(db, [first], "r1", NOW) == [first]
    again = rejected(121, "Document failed validation at 2024-09-22T06:08:00")
    assert new_alerts(db, [again], "r2", NOW) == []
    other = rejected(2, "bad value")
    assert new_alerts(db, [other], "r3", NOW) == [other]


def test_a_shared_tracking_key_is_announced_once(db):
    shared = line("shared_tracking_key", "shared tracking key: 1 is shared by due orders A, B")
    assert new_alerts(db, [shared], "r1", NOW) == [shared]
    assert new_alerts(db, [shared], "r2", NOW) == []
