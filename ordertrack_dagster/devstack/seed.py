"""The demo data set: reference collections and orders shaped like production's.

Orders carry the exact contract §2 fields with the values production holds (courier-style
waybills, free-text `bookingCourier`, mixed sales channels, partial status histories), so
the pipeline meets the same data in the demo, the tests and the benchmark. Each trackable
shipment is registered with the courier simulator, which then answers for it. A few noise
orders that no flow may select (too old, no waybill, another courier, tracking switched
off, already final) check the selection from the other side.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from ordertrack_dagster.devstack.simulator import (
    DemoOrders,
    ShipmentSpec,
    SimulatorAdmin,
    demo_orders,
)
from ordertrack_dagster.devstack.simulator.description import digits
from ordertrack_dagster.flows import FLOWS, Selection
from ordertrack_dagster.statuses import FORWARD, RETURN, Canonical, timestamp_key
from ordertrack_dagster.tracking.selection import PRIMARY_SOURCES

if TYPE_CHECKING:
    from ordertrack_dagster.devstack.stack import EmbeddedStack

Document = dict[str, Any]

#: `status` collection: (status_id, name). The default TRACKING_STATUS
#: (4,5,6,7,8,9,11,14,16,51,26,25) holds every status still moving and no final one.
STATUSES: tuple[tuple[int, str], ...] = (
    (1, "new"),
    (2, "confirmed"),
    (3, "ready to ship"),
    (4, "booked"),
    (5, Canonical.PENDING),
    (6, Canonical.IN_TRANSIT),
    (7, Canonical.OUT_FOR_DELIVERY),
    (8, Canonical.NDR),
    (9, Canonical.RTO),
    (10, Canonical.DELIVERED),
    (11, Canonical.RTO_IN_TRANSIT),
    (12, Canonical.LOST),
    (13, Canonical.DESTROY),
    (14, "manifested"),
    (15, Canonical.BOOKING_CANCELLED),
    (16, "pickup scheduled"),
    (25, "shipped"),
    (26, "reattempt scheduled"),
    (51, "picked up"),
)

#: Sales channel (`orders.source`) -> marketplace name.
MARKETPLACES = {
    "shopify": "Shopify",
    "woocommerce": "WooCommerce",
    "Outbound": "Outbound",
    "other": "Direct",
    "Retailer": "Retailer",
    "amazon": "Amazon",
    "flipkart": "Flipkart",
    "meesho": "Meesho",
}

#: Simulator scenarios and how often each occurs among trackable shipments.
SCENARIO_WEIGHTS = {
    "forward": 55,
    "failed_attempt": 10,
    "rto": 8,
    "stuck": 7,
    "no_scans": 7,
    "cancelled": 5,
    "lost": 3,
    "unmapped": 3,
    "destroyed": 2,
}

BOOKED_WITHIN_DAYS = 20
INSERT_CHUNK = 5_000

# A status history is a subsequence of this journey; (earliest age in days, status).
_JOURNEY: tuple[tuple[float, str], ...] = (
    (0, "booked"),
    (0, "manifested"),
    (0.5, Canonical.PENDING),
    (0.5, "pickup scheduled"),
    (1, "picked up"),
    (1.5, "shipped"),
    (2, Canonical.IN_TRANSIT),
    (4, Canonical.OUT_FOR_DELIVERY),
    (5, Canonical.NDR),
    (6, "reattempt scheduled"),
)
_RETURN_JOURNEY: tuple[tuple[float, str], ...] = ((8, Canonical.RTO), (9, Canonical.RTO_IN_TRANSIT))

_CANONICAL_NAMES = frozenset(status.value for status in Canonical)
# Every primary channel, Shopify and WooCommerce the most common, as in production.
_PRIMARY_SOURCE_MIX = PRIMARY_SOURCES + ("shopify",) * 4 + ("woocommerce",)
_FALLBACK_SOURCE_MIX = ("amazon", "amazon", "flipkart", "flipkart", "meesho")
_OTHER_COURIERS = ("Xpressbees", "Ecom Express", "Blue Dart", "DTDC")
_REBOOKING_SUFFIXES = ("-C", "-C1", "-R")

_FIRST_NAMES = ("Aarav", "Priya", "Rohan", "Ananya", "Vikram", "Sneha", "Arjun", "Kavya", "Rahul")
_LAST_NAMES = ("Sharma", "Patel", "Iyer", "Reddy", "Singh", "Nair", "Gupta", "Mehta", "Das", "Rao")

# The statuses of an order still moving, which a poll may already have recorded.
_POLLED_STATUSES = FORWARD | RETURN


@dataclass(frozen=True)
class _Profile:
    """How one flow's orders look: its courier's `DemoOrders`, and the sales channels its
    selection takes."""

    orders: DemoOrders
    sources: tuple[str, ...]


def _profiles() -> dict[str, _Profile]:
    """Each flow's profile, in the flows table's order."""
    shapes = demo_orders()
    if missing := set(FLOWS) - set(shapes):
        raise ValueError(f"no simulated courier says how the orders of {sorted(missing)} look")
    return {
        flow: _Profile(
            shapes[flow],
            _FALLBACK_SOURCE_MIX
            if FLOWS[flow].selection is Selection.NON_PRIMARY_WAYBILL
            else _PRIMARY_SOURCE_MIX,
        )
        for flow in FLOWS
    }


def _format_order_id(source: str, number: int, rng: random.Random) -> str:
    """Each sales channel's own order id style; marketplaces bring their own ids."""
    match source:
        case "shopify":
            return str(number)
        case "woocommerce":
            return f"WC-{number}"
        case "Outbound":
            return f"OB-{number}"
        case "other":
            return f"SHP-{100_000 + number}"
        case "Retailer":
            return f"RTL-{number}"
        case "amazon":
            return f"40{rng.randint(1, 8)}-{digits(rng, 7)}-{digits(rng, 7)}"
        case "flipkart":
            return "OD" + digits(rng, 18)
        case _:
            return digits(rng, 18) + "_1"  # meesho


@dataclass(frozen=True)
class ReferenceData:
    """What orders point at: status documents by name, marketplace ids by sales channel."""

    statuses: dict[str, Document]
    marketplaces: dict[str, ObjectId]


@dataclass
class SeedResult:
    """How many orders each flow should select, and how many were seeded as noise."""

    per_flow: dict[str, int]
    noise: int
    shipments_registered: int
    order_ids: dict[str, list[str]] = field(default_factory=dict)


def seed_reference_data(db: Database[Document]) -> ReferenceData:
    """Write the `status` and `marketplaces` documents that are missing; safe to re-run."""
    have = {doc["status_id"] for doc in db.status.find({}, {"status_id": 1})}
    missing = [
        {"_id": ObjectId(), "status_id": status_id, "name": str(name)}
        for status_id, name in STATUSES
        if status_id not in have
    ]
    if missing:
        db.status.insert_many(missing)
    have_names = {doc["name"] for doc in db.marketplaces.find({}, {"name": 1})}
    new_marketplaces = [
        {"_id": ObjectId(), "name": name}
        for name in dict.fromkeys(MARKETPLACES.values())
        if name not in have_names
    ]
    if new_marketplaces:
        db.marketplaces.insert_many(new_marketplaces)
    marketplace_ids = {doc["name"]: doc["_id"] for doc in db.marketplaces.find()}
    return ReferenceData(
        statuses={doc["name"]: doc for doc in db.status.find()},
        marketplaces={source: marketplace_ids[name] for source, name in MARKETPLACES.items()},
    )


class _OrderFactory:
    """Builds realistic orders; all randomness comes from one seeded generator."""

    def __init__(self, reference: ReferenceData, now: datetime, rng: random.Random) -> None:
        self.reference = reference
        self.now = now
        self.rng = rng
        self._next_number = 2001
        self._used: set[str] = set()

    def _unique(self, make: Callable[[], str]) -> str:
        while (value := make()) in self._used:
            pass
        self._used.add(value)
        return value

    def _order_id(self, source: str) -> str:
        self._next_number += self.rng.randint(1, 3)
        return self._unique(lambda: _format_order_id(source, self._next_number, self.rng))

    def _customer(self) -> Document:
        first, last = self.rng.choice(_FIRST_NAMES), self.rng.choice(_LAST_NAMES)
        return {
            "name": f"{first} {last}",
            "phone": self.rng.choice("6789") + digits(self.rng, 9),
            "email": f"{first}.{last}{self.rng.randint(1, 999)}@example.com".lower(),
        }

    def _history(self, age_days: float, returning: bool) -> list[str]:
        """A plausible status history for a shipment this old, current status last."""
        journey = _JOURNEY + (_RETURN_JOURNEY if returning else ())
        reached = [status for earliest, status in journey if earliest <= age_days]
        current = self.rng.choice(reached[-3:])
        path = [str(status) for _, status in journey]
        upto = path[: path.index(current) + 1]
        middle = [status for status in upto[1:-1] if self.rng.random() < 0.5]
        return list(dict.fromkeys([upto[0], *middle, current]))

    def order(
        self,
        profile: _Profile,
        scenario: str,
        *,
        booked_days_ago: float,
        final_status: str | None = None,
    ) -> Document:
        rng, shape = self.rng, profile.orders
        booked_at = self.now - timedelta(days=booked_days_ago)
        source = rng.choice(profile.sources)
        history = self._history(booked_days_ago, returning=scenario == "rto")
        if final_status is not None:
            history.append(final_status)
        statuses = self.reference.statuses
        current = history[-1]
        canonical = [Canonical(status) for status in history if status in _CANONICAL_NAMES]
        step = booked_days_ago / (len(history) + 1)
        doc: Document = {
            "_id": ObjectId(),
            "order_id": self._order_id(source),
            "order_status": statuses[current]["status_id"],
            "order_status_map": [statuses[status]["_id"] for status in history],
            "awb_number": self._unique(lambda: shape.waybill(rng)),
            "bookingCourier": rng.choice(shape.booking_couriers),
            "source": source,
            "isBooked": {"timestamp": booked_at},
            "tracking_timestamps": {
                timestamp_key(status): booked_at
                + timedelta(days=step * (history.index(status) + 1))
                for status in canonical
            },
            "marketplace": self.reference.marketplaces[source],
            "customer": self._customer(),
            "total_amt": round(rng.uniform(*shape.value_range), 2),
        }
        if (lr_number := shape.lr_number) is not None:
            doc["delhivery_lr_number"] = self._unique(lambda: lr_number(rng))
        else:
            # Production has all three shapes of "no LR number".
            absent = rng.choice(("missing", None, ""))
            if absent != "missing":
                doc["delhivery_lr_number"] = absent
        if rng.random() < 0.5:
            doc["being_tracked"] = True
        if current in _POLLED_STATUSES and final_status is None and rng.random() < 0.6:
            doc["last_tracking_time"] = self.now - timedelta(minutes=rng.uniform(5, 180))
            doc["courier_status"] = shape.courier_status(current)
        return doc


def _noise_orders(factory: _OrderFactory, count: int) -> Iterator[Document]:
    """Orders that look trackable at a glance but that no flow may select."""
    profiles = _profiles()
    b2c, fallback = profiles["delhivery_b2c"], profiles["delhivery_fallback"]
    rng = factory.rng
    for index in range(count):
        kind = index % 5
        recent = rng.uniform(0, BOOKED_WITHIN_DAYS)
        if kind == 0:  # booked too long ago (BUFFER_PERIOD is 31 days)
            yield factory.order(b2c, "forward", booked_days_ago=rng.uniform(32, 60))
        elif kind == 1:  # the fallback flow switched tracking off
            yield factory.order(fallback, "forward", booked_days_ago=recent) | {
                "being_tracked": False
            }
        elif kind == 2:  # booked without a waybill
            yield factory.order(b2c, "forward", booked_days_ago=recent) | {"awb_number": ""}
        elif kind == 3:  # a courier without a flow
            yield factory.order(b2c, "forward", booked_days_ago=recent) | {
                "bookingCourier": rng.choice(_OTHER_COURIERS)
            }
        else:  # already in a final status
            final = rng.choice((Canonical.DELIVERED, Canonical.LOST, Canonical.BOOKING_CANCELLED))
            yield factory.order(b2c, "forward", booked_days_ago=recent, final_status=final)


def _chunks(items: Sequence[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def seed_demo_orders(
    db: Database[Document],
    simulator: SimulatorAdmin | None,
    counts: dict[str, int],
    now: datetime,
    rng_seed: int = 7,
    noise: int | None = None,
) -> SeedResult:
    """Insert `counts[flow]` selectable orders per flow plus noise (default 5%, at least 5),
    and register each selectable shipment with `simulator` (skipped when None).

    Writes are bulk inserts: SecantusDB is slow per operation.
    """
    if unknown := set(counts) - set(FLOWS):
        raise ValueError(f"unknown flows {sorted(unknown)}; known: {', '.join(FLOWS)}")
    rng = random.Random(rng_seed)
    factory = _OrderFactory(seed_reference_data(db), now, rng)
    orders: list[Document] = []
    shipments: list[ShipmentSpec] = []
    result = SeedResult(per_flow=dict(counts), noise=0, shipments_registered=0)
    scenarios, weights = list(SCENARIO_WEIGHTS), list(SCENARIO_WEIGHTS.values())
    profiles = _profiles()
    for flow, count in counts.items():
        profile = profiles[flow]
        result.order_ids[flow] = []
        for scenario in rng.choices(scenarios, weights, k=count):
            booked_days_ago = rng.uniform(0, BOOKED_WITHIN_DAYS)
            doc = factory.order(profile, scenario, booked_days_ago=booked_days_ago)
            # The simulator's courier names are the flow keys.
            shipment: ShipmentSpec = {
                "courier": flow,
                "tracking_key": doc.get("delhivery_lr_number") or doc["awb_number"],
                "order_id": doc["order_id"],
                "booked_at": doc["isBooked"]["timestamp"].isoformat(),
                "scenario": scenario,
                # as far into its life cycle as its age allows (up to four days), so the demo
                # opens on a mix of statuses rather than with every shipment just manifested
                "offset_s": rng.uniform(0, min(booked_days_ago, 4.0)) * 86_400,
            }
            if profile.orders.reused_references:
                _vary_reference(rng, doc, shipment)
            orders.append(doc)
            shipments.append(shipment)
            result.order_ids[flow].append(doc["order_id"])
    result.noise = max(5, sum(counts.values()) // 20) if noise is None else noise
    orders.extend(_noise_orders(factory, result.noise))
    for chunk in _chunks(orders, INSERT_CHUNK):
        db.orders.insert_many(chunk, ordered=False)
    if simulator is not None:
        result.shipments_registered = simulator.register_shipments(shipments)
    return result


def _vary_reference(rng: random.Random, order: Document, shipment: ShipmentSpec) -> None:
    """Exercise Delhivery's reference check: some orders were rebooked (a suffix the check
    allows) and a few waybills answer with another order's reference (a reused waybill)."""
    roll = rng.random()
    if roll < 0.03:
        shipment["reference_no"] = order["order_id"]
        order["order_id"] += rng.choice(_REBOOKING_SUFFIXES)
        shipment["order_id"] = order["order_id"]
    elif roll < 0.05:
        shipment["reference_no"] = f"SHP-{rng.randint(900_000, 999_999)}"


def spread_orders(total: int) -> dict[str, int]:
    """`total` orders split over the flows by their `DemoOrders.share`, each flow getting at
    least one and a paced one at most its `most`, so a demo run stays short; the flow with the
    largest share takes what the others leave."""
    shapes = {flow: profile.orders for flow, profile in _profiles().items()}
    counts: dict[str, int] = {}
    for flow, shape in shapes.items():
        count = max(1, int(total * shape.share))
        counts[flow] = count if shape.most is None else min(count, shape.most)
    counts[max(shapes, key=lambda flow: shapes[flow].share)] += max(0, total - sum(counts.values()))
    return counts


def seed_stack(stack: EmbeddedStack, total_orders: int, rng_seed: int = 7) -> SeedResult:
    """Seed a running stack: its database, and its simulator when it runs one."""
    simulator = stack.simulator if "simulator" in stack.services else None
    with MongoClient(stack.env["MONGODB_URI"]) as client:
        return seed_demo_orders(
            client[stack.env["MONGODB_DB"]],
            simulator,
            spread_orders(total_orders),
            datetime.now(UTC),
            rng_seed,
        )
