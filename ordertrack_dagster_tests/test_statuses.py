"""The transition rule of contract §6, checked cell by cell, and the normalisation of §5."""

import pytest

from ordertrack_dagster.statuses import (
    FINAL,
    FORWARD,
    RETURN,
    Canonical,
    is_allowed,
    mapping_table,
    normalise_raw_status,
    refused_predecessors,
    timestamp_key,
)

C = Canonical


def expected(current: Canonical, new: Canonical) -> bool:
    """Contract §6 restated independently of the implementation."""
    if current == new:
        return False
    if current in FORWARD:
        return new != C.PENDING
    if current in RETURN:
        return new in RETURN or new in (C.LOST, C.DESTROY)
    return False


def test_phases_partition_the_ten_statuses():
    assert set(Canonical) == FORWARD | RETURN | FINAL
    assert len(Canonical) == 10
    assert not (FORWARD & RETURN or FORWARD & FINAL or RETURN & FINAL)


@pytest.mark.parametrize("current", list(Canonical))
@pytest.mark.parametrize("new", list(Canonical))
def test_every_cell_of_the_transition_table(current, new):
    assert is_allowed(current, new) == expected(current, new)


@pytest.mark.parametrize("new", list(Canonical))
def test_non_canonical_current_status_may_take_any_canonical_status(new):
    assert is_allowed(None, new)


def test_named_examples_from_the_spec():
    assert not is_allowed(C.IN_TRANSIT, C.PENDING)
    assert is_allowed(C.NDR, C.OUT_FOR_DELIVERY)
    assert is_allowed(C.RTO, C.RTO_IN_TRANSIT) and is_allowed(C.RTO_IN_TRANSIT, C.RTO)
    assert not is_allowed(C.RTO, C.DELIVERED)
    assert not is_allowed(C.RTO_IN_TRANSIT, C.IN_TRANSIT)
    assert not is_allowed(C.RTO, C.BOOKING_CANCELLED)
    assert is_allowed(C.RTO_IN_TRANSIT, C.LOST)
    assert not is_allowed(C.DELIVERED, C.RTO)


@pytest.mark.parametrize("new", list(Canonical))
def test_refused_predecessors_agree_with_is_allowed(new):
    refused = refused_predecessors(new)
    assert new in refused
    assert refused == {current for current in Canonical if not is_allowed(current, new)}


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("In Transit", "IN_TRANSIT"),
        ("out-for-delivery", "OUT_FOR_DELIVERY"),
        ("RTO In-Transit", "RTO_IN_TRANSIT"),
        ("Shipment Delivered!", "SHIPMENT_DELIVERED"),
        ("Disposed Off.", "DISPOSED_OFF"),
        ("  delivered ", "DELIVERED"),
        ("$where", "WHERE"),
    ],
)
def test_normalise_raw_status(raw, normalised):
    assert normalise_raw_status(raw) == normalised


def test_timestamp_keys_turn_spaces_into_underscores():
    assert timestamp_key(C.RTO_IN_TRANSIT) == "rto_in_transit"
    assert timestamp_key(C.OUT_FOR_DELIVERY) == "out_for_delivery"


def test_a_raw_status_mapped_twice_fails_loudly():
    with pytest.raises(ValueError, match="mapped twice"):
        mapping_table({C.LOST: "LOST", C.DESTROY: "lost"})
