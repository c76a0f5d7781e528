"""Canonical statuses and the moves allowed between them (contract §3, §6): defined here only.

The Python check (for alerts and reporting) and the MongoDB write filters (the guard that
holds under concurrent runs) are both derived from `refused_predecessors`, so the two can
never disagree.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Canonical(StrEnum):
    """The ten statuses the tracker writes; values are the exact stored strings."""

    PENDING = "pending"
    IN_TRANSIT = "in transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    NDR = "ndr"
    RTO = "rto"
    RTO_IN_TRANSIT = "rto in transit"
    LOST = "lost"
    DESTROY = "destroy"
    BOOKING_CANCELLED = "booking_cancelled"


FORWARD = frozenset(
    {Canonical.PENDING, Canonical.IN_TRANSIT, Canonical.OUT_FOR_DELIVERY, Canonical.NDR}
)
RETURN = frozenset({Canonical.RTO, Canonical.RTO_IN_TRANSIT})
FINAL = frozenset(
    {Canonical.DELIVERED, Canonical.LOST, Canonical.DESTROY, Canonical.BOOKING_CANCELLED}
)


def is_allowed(current: Canonical | None, new: Canonical) -> bool:
    """Whether an order may move from `current` to `new`.

    `current` is None when the order's status is not canonical (booked, manifested, ...):
    such an order may take any canonical status. Staying put is not a move.
    """
    if current is None:
        return True
    if current == new:
        return False
    if current in FINAL:
        return False
    if current in FORWARD:
        return new != Canonical.PENDING
    # current is in the return phase
    return new in RETURN or new in {Canonical.LOST, Canonical.DESTROY}


def refused_predecessors(new: Canonical) -> frozenset[Canonical]:
    """The current statuses from which a move to `new` is refused (including `new` itself)."""
    return frozenset(current for current in Canonical if not is_allowed(current, new))


def timestamp_key(status: Canonical) -> str:
    """The `tracking_timestamps` sub-field for a status: spaces become underscores."""
    return status.value.replace(" ", "_")


_PUNCTUATION = re.compile(r"[^A-Z0-9_]")


def normalise_raw_status(raw: str) -> str:
    """Contract §5 normalisation: upper-case, spaces and hyphens to `_`, other marks removed."""
    upper = raw.strip().upper().replace(" ", "_").replace("-", "_")
    return _PUNCTUATION.sub("", upper)


def mapping_table(rows: dict[Canonical | None, str]) -> dict[str, Canonical | None]:
    """Build a lookup from `{status: "RAW_A RAW_B ..."}`; the None key lists "no change" rows.

    Courier modules write their contract §5 tables in this compact form so each table reads like
    the contract; a raw status listed twice is a bug and fails at import.
    """
    table: dict[str, Canonical | None] = {}
    for status, raw_statuses in rows.items():
        for raw in raw_statuses.split():
            key = normalise_raw_status(raw)
            if key in table:
                raise ValueError(f"raw status {raw!r} is mapped twice")
            table[key] = status
    return table
