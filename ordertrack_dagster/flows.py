"""The five tracking flows: the one table that schedules, selection, clients and pacing read.

Every other module takes its numbers from here, so changing a cap or a cron is a one-line
change that the partitions, schedules and courier clients all follow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from itertools import pairwise

from dagster import TimeWindowPartitionsDefinition

# The old cron service ran on India time: "0 */2 * * *" fires on even hours there (in UTC
# it would fire at half past in India). India has no daylight saving, so no tick is ever
# skipped or doubled.
SCHEDULE_TIMEZONE = "Asia/Kolkata"

#: A flow's run may last this many schedule intervals before it counts as hung.
MAX_RUNTIME_INTERVALS = 3
#: The courier fetch may use this share of a run's max runtime; the rest is for the write
#: and the hand-off, so a slow courier defers its last keys instead of getting the run
#: cancelled before anything is written.
FETCH_SHARE_OF_MAX_RUNTIME = 0.5
#: No order is asked more often than its flow's schedule fires, and a run may take three
#: intervals: below this many schedule intervals unpolled, an order is never late.
LONGEST_WAIT_INTERVALS = 3


class Selection(StrEnum):
    """Which contract §2 filter a flow adds to the base filter."""

    WAYBILL = "waybill"  # awb_number set, no LR number, primary source
    LR_NUMBER = "lr_number"  # delhivery_lr_number set, primary source
    NON_PRIMARY_WAYBILL = "non_primary_waybill"  # awb_number set, no LR, non-primary source


@dataclass(frozen=True)
class RateBudget:
    """How many requests the client allows itself per sliding window (below the courier's limit)."""

    requests: int
    window_seconds: float


@dataclass(frozen=True)
class Flow:
    """One tracking flow; its key is the Dagster partition key."""

    key: str
    courier_label: str  # how alerts and Slack messages name the courier
    booking_courier_pattern: str  # case-insensitive regex on orders.bookingCourier
    selection: Selection
    cron: str
    cap: int  # at most this many orders per run, earliest next poll first (polling.py)
    batch_size: int  # tracking keys per request
    concurrency: int  # requests in flight (or workers, for one-key-per-request flows)
    concurrency_env: str | None  # environment variable that overrides `concurrency`
    pause_seconds: float  # each worker waits this long between its calls
    timeout_seconds: float  # per request
    default_rate_budget: RateBudget | None  # client-side budget shared by the courier's runs
    budget_scope: str  # flows that share one courier limit share one budget scope
    # How long the flow's cap and schedule need to ask every live order once, where that is
    # more than `LONGEST_WAIT_INTERVALS` schedule intervals (None: they hold every live order)
    budget_wait: timedelta | None = None

    @property
    def workers(self) -> int:
        """Concurrency, with the old service's environment override honoured."""
        if self.concurrency_env and os.environ.get(self.concurrency_env, "").strip():
            return max(1, int(os.environ[self.concurrency_env]))
        return self.concurrency

    @property
    def rate_budget(self) -> RateBudget | None:
        """The budget, or `ORDERTRACK_RATE_BUDGET_<SCOPE>=<requests>/<seconds>` when set.

        The override exists for a scaled-down rehearsal of a courier's limit (the benchmark
        runs Delhivery's 5-minute window as 30 seconds); production uses the table's value.
        """
        return self.rate_budget_in(os.environ)

    def rate_budget_in(self, env: Mapping[str, str]) -> RateBudget | None:
        """`rate_budget` as a process with environment `env` sees it."""
        override = env.get(f"ORDERTRACK_RATE_BUDGET_{self.budget_scope.upper()}", "")
        if not override.strip():
            return self.default_rate_budget
        requests, _, seconds = override.partition("/")
        return RateBudget(requests=int(requests), window_seconds=float(seconds))

    @property
    def tracking_key_field(self) -> str:
        """The orders field that holds what the courier is asked about."""
        return "delhivery_lr_number" if self.selection is Selection.LR_NUMBER else "awb_number"


# Delhivery allows 750 requests per 5 minutes per IP for the express APIs (B2C and the
# single-waybill path share it); we stay at 700. B2B allows 500; we stay at 480.
_DELHIVERY_EXPRESS_BUDGET = RateBudget(requests=700, window_seconds=300)

# Every flow is capped, so a run's memory and duration are bounded whatever is due; the
# drain sensor starts the next run while a capped or deferred run left work behind.
FLOWS: dict[str, Flow] = {
    flow.key: flow
    for flow in (
        Flow(
            key="delhivery_b2c",
            courier_label="Delhivery B2C",
            booking_courier_pattern="Delhivery",
            selection=Selection.WAYBILL,
            cron="*/8 * * * *",
            cap=36_000,
            batch_size=50,
            concurrency=50,
            concurrency_env=None,
            pause_seconds=0.0,
            timeout_seconds=20.0,
            default_rate_budget=_DELHIVERY_EXPRESS_BUDGET,
            budget_scope="delhivery_express",
        ),
        Flow(
            key="delhivery_b2b",
            courier_label="Delhivery B2B",
            booking_courier_pattern="Delhivery",
            selection=Selection.LR_NUMBER,
            cron="*/8 * * * *",
            cap=480,
            batch_size=1,
            concurrency=3,
            concurrency_env="B2B_TRACKING_WORKERS",
            pause_seconds=0.0,
            timeout_seconds=20.0,
            default_rate_budget=RateBudget(requests=480, window_seconds=300),
            budget_scope="delhivery_b2b",
        ),
        Flow(
            key="shiprocket",
            courier_label="Shiprocket",
            booking_courier_pattern="Shiprocket",
            selection=Selection.WAYBILL,
            cron="*/8 * * * *",
            cap=36_000,  # 720 requests of 50 AWBs: minutes
            batch_size=50,
            concurrency=50,
            concurrency_env=None,
            pause_seconds=0.0,
            timeout_seconds=30.0,
            default_rate_budget=None,
            budget_scope="shiprocket",
        ),
        Flow(
            key="velocity",
            courier_label="Velocity",
            booking_courier_pattern="velocity",
            selection=Selection.WAYBILL,
            cron="*/8 * * * *",
            cap=10_000,
            batch_size=45,
            concurrency=10,
            concurrency_env=None,
            pause_seconds=0.0,
            timeout_seconds=30.0,
            default_rate_budget=None,
            budget_scope="velocity",
        ),
        Flow(
            key="delhivery_fallback",
            courier_label="Delhivery (fallback)",
            booking_courier_pattern="Delhivery",
            selection=Selection.NON_PRIMARY_WAYBILL,
            cron="0 */2 * * *",
            cap=600,  # 3 workers 5 s apart: ~18 minutes; a crash loses no more
            batch_size=1,
            concurrency=3,
            concurrency_env="FALLBACK_TRACKING_WORKERS",
            pause_seconds=5.0,
            timeout_seconds=30.0,
            default_rate_budget=_DELHIVERY_EXPRESS_BUDGET,
            budget_scope="delhivery_express",
            # 3,000 live waybills / 600 per run x 2 h = 10 h before each was asked once,
            # whatever the order; 12 h leaves one schedule interval of slack. More live
            # waybills than that and the freshness check fails: the path cannot keep up.
            budget_wait=timedelta(hours=12),
        ),
    )
}


#: Which flow tracks an order whose free-text `bookingCourier` names the couriers of two
#: flows selecting the same kind of order (contract §2), first wins: a Shiprocket or Velocity
#: booking carried by Delhivery ("Shiprocket - Delhivery Surface") was booked through the
#: aggregator, whose account and API know the shipment, and whose answers are the ones the
#: booking's own status follows; Delhivery's express API would answer for the same AWB, and
#: two flows taking turns would double the requests and could make History flap.
CLAIM_PRECEDENCE = (
    "shiprocket",
    "velocity",
    "delhivery_b2c",
    "delhivery_b2b",
    "delhivery_fallback",
)


def _rank(flow: Flow) -> int:
    return CLAIM_PRECEDENCE.index(flow.key)


def outranking(flow: Flow) -> list[Flow]:
    """The flows that take, before `flow`, an order both would select."""
    return [
        other
        for other in FLOWS.values()
        if other.selection is flow.selection and _rank(other) < _rank(flow)
    ]


def also_claimed_by(flow: Flow, booking_courier: str | None) -> list[Flow]:
    """The flows `flow` outranks that would also select an order (of `flow`'s kind) with this
    `bookingCourier`: they leave it to `flow`."""
    return [
        other
        for other in FLOWS.values()
        if other.selection is flow.selection
        and _rank(other) > _rank(flow)
        and re.search(other.booking_courier_pattern, booking_courier or "", re.IGNORECASE)
    ]


@cache
def cron_ticks(cron: str, start: datetime, end: datetime) -> list[datetime]:
    """The ticks of `cron` in production's time zone from `start` up to `end`, as Dagster's
    schedules fire them. Dagster has no public cron iterator; a time-window partitioning
    walks the ticks the way its schedules do (time zone included), and each key is one tick.
    It is read as at `end`: read now, it would hold no tick still to come."""
    tick_format = "%Y-%m-%dT%H:%M%z"
    keys = TimeWindowPartitionsDefinition(
        cron_schedule=cron, start=start, end=end, timezone=SCHEDULE_TIMEZONE, fmt=tick_format
    ).get_partition_keys(current_time=end)
    return [datetime.strptime(key, tick_format) for key in keys]


@cache
def schedule_interval(cron: str) -> timedelta:
    """The longest gap between two consecutive ticks of `cron` over a week.

    `*/8 * * * *` gives 8 minutes (not the 4 between :56 and :00), so "within one interval"
    never expects a run the schedule could not have made. Kept once computed: every order's
    maximum interval (`polling.max_interval`) asks for it, and a week of ticks is over a
    thousand gaps to compare.
    """
    start = datetime(2024, 1, 1, tzinfo=UTC)
    moments = cron_ticks(cron, start, start + timedelta(days=7))
    return max(later - earlier for earlier, later in pairwise(moments))


def longest_wait(flow: Flow) -> timedelta:
    """The least any order of the flow may be held to between polls: three schedule intervals,
    and never less than what its cap and schedule can ask every live order in (`budget_wait`).
    A bound below that would fail on capacity, not on a fault, and be ignored."""
    floor = LONGEST_WAIT_INTERVALS * schedule_interval(flow.cron)
    return max(floor, flow.budget_wait) if flow.budget_wait else floor


def max_runtime(flow: Flow) -> timedelta:
    """How long a run of the flow may last: three schedule intervals (24 minutes for the
    8-minute flows, 6 hours for the fallback), past which it is hung or dead."""
    return MAX_RUNTIME_INTERVALS * schedule_interval(flow.cron)


#: Run monitoring cancels a run still going after this many seconds (dagster.yaml).
MAX_RUNTIME_TAG = "dagster/max_runtime"


def max_runtime_tag(flow: Flow) -> dict[str, str]:
    """The run tag that gives run monitoring the flow's own max runtime."""
    return {MAX_RUNTIME_TAG: str(int(max_runtime(flow).total_seconds()))}


def fetch_time_box(flow: Flow) -> timedelta:
    """How long a run of the flow may ask its courier (12 minutes for the 8-minute flows)."""
    return FETCH_SHARE_OF_MAX_RUNTIME * max_runtime(flow)


def get_flow(key: str) -> Flow:
    """The flow for a partition key, with a clear error for an unknown one."""
    try:
        return FLOWS[key]
    except KeyError:
        raise ValueError(f"unknown flow {key!r}; known flows: {', '.join(FLOWS)}") from None
