"""Detection delay on a simulated clock: how late we learn that a shipment changed, at
production scale, limits and windows, without waiting days of real time.

Real time cannot hold production's proportions (an 8-minute tick against transit legs of a
day or more, Delhivery's 700 requests per 5 minutes against 100,000 live shipments), so this
model runs them on a simulated clock, in memory:

- the shipments follow the courier simulator's own life cycles (`lifecycle.SCENARIOS`, its
  per-shipment step lengths, real hours and days) in the seed's scenario mix;
- each flow ticks on its own cron interval (`flows.schedule_interval`) and selects its due
  orders in the order the PRODUCT's selection sorts them (`build_query(...).sort` applied to
  in-memory documents), up to its cap;
- each request is counted by the product's own `SharedBudget` on the simulated clock (its
  state document kept in memory), with the product's limits (700 per 300 s shared by B2C and
  the fallback, 480 per 300 s for B2B) and the product's rule for a wait: a run waits for
  its budget while that ends inside the fetch's time box, else the rest is deferred;
- a poll reads where the shipment's life cycle is at that moment; the change it shows was
  detected then, and any change it skipped was never seen.

What orders the queue is a parameter (`PollingPolicy`): oldest-first is the product's selection
as it is; another policy plugs in the same way, never copied here.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from ordertrack_dagster.couriers.budget import SharedBudget
from ordertrack_dagster.couriers.delhivery import LEGACY_TABLE, map_express_status
from ordertrack_dagster.devstack.seed import SCENARIO_WEIGHTS, STATUSES
from ordertrack_dagster.devstack.simulator.core import CourierSimulator
from ordertrack_dagster.devstack.simulator.lifecycle import (
    SCENARIOS,
    STEPS,
    Clock,
    Shipment,
    Shipments,
)
from ordertrack_dagster.devstack.simulator.registry import simulators
from ordertrack_dagster.devstack.simulator.settings import SimulatorSettings
from ordertrack_dagster.flows import (
    Flow,
    cron_ticks,
    fetch_time_box,
    get_flow,
    schedule_interval,
)
from ordertrack_dagster.polling import ASKED_FIELD, NEXT_POLL_FIELD, max_interval, next_poll_at
from ordertrack_dagster.resources.budget_window import BudgetWindow
from ordertrack_dagster.statuses import Canonical, normalise_raw_status
from ordertrack_dagster.tracking.selection import SelectionPolicy, build_query

BASELINE_POLICY = "oldest-first"
FLOWS_MODELLED = ("delhivery_b2c", "delhivery_b2b", "delhivery_fallback")
#: The simulated clock's origin as a date (the product's code reads datetimes).
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)
#: The courier's mean answer time, as the benchmark's simulator is set (130 ms).
REQUEST_SECONDS = 0.13
#: Steps whose detection is the end-state target: delivered, and returned to origin.
END_STATE_STEPS = ("delivered", "rto_delivered")
HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True)
class Population:
    """How many live shipments per flow, and how long the clock runs."""

    live: Mapping[str, int]
    warmup_hours: float  # changes before this are not measured (the queue settles first)
    measured_hours: float  # changes in this span after the warm-up are measured
    tail_hours: float  # the clock runs on this long, so late changes can still be seen
    seed: int = 7

    @property
    def hours(self) -> float:
        return self.warmup_hours + self.measured_hours + self.tail_hours


PRODUCTION = Population(
    live={"delhivery_b2c": 100_000, "delhivery_b2b": 2_000, "delhivery_fallback": 3_000},
    warmup_hours=3,
    measured_hours=4,
    tail_hours=1,
)
#: The smoke run's population: a few dozen shipments per flow for four simulated hours, so
#: that every flow ticks in the measured span (the fallback every 2 h) and every figure exists.
SMALL = Population(
    live={"delhivery_b2c": 100, "delhivery_b2b": 20, "delhivery_fallback": 10},
    warmup_hours=1,
    measured_hours=2,
    tail_hours=1,
)


def sim_datetime(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


# -- the documents the product's code reads --------------------------------------------------


@dataclass(slots=True)
class ModelOrder:
    """One live order: its document fields the selection sorts by, and its shipment."""

    doc: dict[str, Any]  # `_id`, `order_status`, ASKED_FIELD, `last_tracking_time`, ...
    flow: str
    key: str
    booked_at: float
    steps: tuple[str, ...]
    starts: tuple[float, ...]  # simulated seconds each step starts at
    changes: tuple[int, ...]  # indexes of the steps that change what the courier says
    seen: int  # index of the last step the courier showed us (-1: none yet)
    last_asked: float  # simulated seconds (booking, before the first ask)
    changed_at: float  # when we last saw its status change
    status: Canonical | None = None  # the canonical status we hold
    sort_key: tuple = ()  # the policy's sort key of `doc`, kept up to date with it


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll of one order told us, for a policy to plan the next one."""

    now_s: float  # simulated seconds
    status: Canonical | None
    courier_status: str
    changed: bool
    last_changed_s: float

    @property
    def now(self) -> datetime:
        return sim_datetime(self.now_s)

    @property
    def last_changed_at(self) -> datetime:
        return sim_datetime(self.last_changed_s)


class PollingPolicy(Protocol):
    """What decides the queue. The selection always sorts as the product's `build_query`
    does; a policy is what each poll stores for that sort to read."""

    name: str

    def after_poll(self, flow: Flow, doc: dict[str, Any], outcome: PollOutcome) -> None:
        """Set on `doc` what the product's write sets for this poll (besides the status and
        the ask and answer times, which the model sets for every policy)."""
        ...


class OldestFirst:
    """The selection as it was: no order has a next-poll time (as before adaptive polling),
    so the sort falls through to its next keys, longest not asked first."""

    name = BASELINE_POLICY

    def after_poll(self, flow: Flow, doc: dict[str, Any], outcome: PollOutcome) -> None:
        """Stores nothing more."""


class Adaptive:
    """The product's adaptive polling (`polling.py`): each poll stores the order's next poll
    time, from its status, how long that has stood and what the courier last said."""

    name = "adaptive"

    def after_poll(self, flow: Flow, doc: dict[str, Any], outcome: PollOutcome) -> None:
        doc[NEXT_POLL_FIELD] = next_poll_at(
            outcome.status, outcome.last_changed_at, outcome.now, outcome.courier_status
        )


def sort_key(spec: Sequence[tuple[str, int]]) -> Callable[[dict[str, Any]], tuple]:
    """An in-memory key for a MongoDB sort spec: missing and null first, as MongoDB sorts
    them ascending; values are numbers (simulated seconds, sequence `_id`s) or datetimes."""

    def value(doc: dict[str, Any], name: str, direction: int) -> tuple:
        item = doc.get(name)
        if item is None:
            return (0, 0.0) if direction > 0 else (1, 0.0)
        number = item.timestamp() if isinstance(item, datetime) else float(item)
        return (1, number) if direction > 0 else (0, -number)

    def key(doc: dict[str, Any]) -> tuple:
        return tuple(value(doc, name, direction) for name, direction in spec)

    return key


class MemoryStateDocuments:
    """The budget windows in memory: the update shapes `BudgetWindow` sends for `SharedBudget`
    (`$inc`, `$unset`, `$max`, upserting by `_id`), so its own code runs on the model clock."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def _apply(self, selector: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
        doc = self.docs.setdefault(selector["_id"], {"_id": selector["_id"]})
        for path, amount in update.get("$inc", {}).items():
            parent, name = self._parent(doc, path)
            parent[name] = parent.get(name, 0) + amount
        for path in update.get("$unset", {}):
            parent, name = self._parent(doc, path)
            parent.pop(name, None)
        for path, value in update.get("$max", {}).items():
            parent, name = self._parent(doc, path)
            parent[name] = max(parent[name], value) if name in parent else value
        return doc

    @staticmethod
    def _parent(doc: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
        *parents, name = path.split(".")
        for part in parents:
            doc = doc.setdefault(part, {})
        return doc, name

    def find_one_and_update(self, selector, update, **_options) -> dict[str, Any]:
        return self._apply(selector, update)

    def update_one(self, selector, update, **_options) -> None:
        self._apply(selector, update)


# -- the life cycles -------------------------------------------------------------------------


def _stored_status(flow: str, said: str) -> str:
    """What the product keeps of the simulator's status text: Delhivery express says
    `StatusType/Status` and the product's reader stores the pair its own way; B2B as said."""
    if flow == "delhivery_b2b":
        return said
    status_type, _, status = said.partition("/")
    return map_express_status({"StatusType": status_type, "Status": status}, None, EPOCH)[0]


class LifeCycles:
    """The simulator's life cycles on the model's clock, and how each flow's courier says each
    step (a change at the courier is a step whose status text differs from the one before)."""

    def __init__(self, seed: int) -> None:
        courier_sim = CourierSimulator(SimulatorSettings(seed=seed), simulators())
        apis = {flow: courier_sim.api(flow) for flow in FLOWS_MODELLED}
        self.clock = Clock(0.0)  # frozen: life-cycle time moves only when the model says
        self.shipments = Shipments(
            self.clock, seed, {name: api.namespace for name, api in apis.items()}
        )
        # read once: the model asks for them millions of times
        self._says = {
            flow: {step: api.raw_status(step) for step in STEPS} for flow, api in apis.items()
        }
        self._stored = {
            flow: {step: _stored_status(flow, said) for step, said in says.items()}
            for flow, says in self._says.items()
        }
        b2b = apis["delhivery_b2b"]
        self._canonical = {
            step: LEGACY_TABLE.get(normalise_raw_status(b2b.raw_status(step))) for step in STEPS
        }

    def register(self, flow: str, key: str, scenario: str, booked_at: float) -> ModelOrder:
        """A shipment whose life cycle starts at `booked_at`, as its order."""
        namespace = self.shipments.namespaces[flow]
        self.shipments.add(
            namespace,
            Shipment(key, key, key, scenario, booked_at, booked_at, SCENARIOS[scenario]),
        )
        timeline = self.shipments.timeline(flow, key)
        self.shipments.forget(flow, key)  # the model keeps only what it reads
        steps = tuple(step for step, _ in timeline)
        return ModelOrder(
            doc={},
            flow=flow,
            key=key,
            booked_at=booked_at,
            steps=steps,
            starts=tuple(start for _, start in timeline),
            changes=tuple(self.changes(flow, steps, 0, len(steps) - 1)),
            seen=-1,
            last_asked=booked_at,
            changed_at=booked_at,
        )

    def courier_status(self, flow: str, step: str) -> str:
        return self._says[flow][step]

    def stored_status(self, flow: str, step: str) -> str:
        """`courier_status` as the product stores it (Delhivery express: `ud-dispatched`)."""
        return self._stored[flow][step]

    def canonical(self, step: str) -> Canonical | None:
        """The product's legacy table on the simulator's B2B status text for the step: one
        reading for every flow, so their rows compare (None: no change, or unmapped)."""
        return self._canonical[step]

    def changes(self, flow: str, steps: Sequence[str], seen: int, position: int) -> list[int]:
        """The steps after `seen`, up to `position`, that changed what the courier says (the
        first scan is where the order starts, booked with it: not a change)."""
        says = self._says[flow]
        return [
            index
            for index in range(max(seen + 1, 1), position + 1)
            if says[steps[index]] != says[steps[index - 1]]
        ]


# -- the figures -----------------------------------------------------------------------------


@dataclass
class Delays:
    """Detection delays of one kind of change, in seconds, and the changes never seen."""

    delays: list[float] = field(default_factory=list)
    missed: int = 0
    pending: int = 0  # happened in the measured span, not yet seen when the clock stopped

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.delays)
        return {
            "detected": len(ordered),
            "missed": self.missed,
            "pending": self.pending,
            "mean_s": statistics.fmean(ordered) if ordered else None,
            "p50_s": _quantile(ordered, 0.50),
            "p95_s": _quantile(ordered, 0.95),
            "max_s": ordered[-1] if ordered else None,
        }


def tally(
    by_step: dict[str, Delays],
    steps: Sequence[str],
    starts: Sequence[float],
    changes: Sequence[int],
    seen_at: float,
    measured: Callable[[float], bool],
) -> None:
    """Count what one answer at `seen_at` showed: the last of `changes` (step indexes the
    courier moved through since we last asked) is seen with its delay, those before it were
    never seen. Only changes that `measured` their start time are counted."""
    for index in changes:
        if not measured(starts[index]):
            continue
        delays = by_step[steps[index]]
        if index == changes[-1]:
            delays.delays.append(seen_at - starts[index])
        else:
            delays.missed += 1  # the courier moved on before anyone asked


def _quantile(ordered: Sequence[float], share: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


@dataclass
class FlowCounts:
    """One flow's counts under one policy, as the model runs."""

    by_step: dict[str, Delays] = field(default_factory=lambda: defaultdict(Delays))
    requests: int = 0  # sent while the measured span ran
    polls: int = 0
    runs: int = 0
    runs_deferring: int = 0  # runs that deferred some of their selection
    ticks_skipped: int = 0  # a tick came while the flow's previous run still went on
    longest_unpolled_s: float = 0.0
    worst_unpolled_share: float = 0.0  # longest unpolled over that order's max interval
    worst_unpolled_status: str = ""


def flow_summary(flow: str, counts: FlowCounts, lifecycles: LifeCycles) -> dict[str, Any]:
    """One flow's figures, as bench.json keeps them."""
    rows = {
        step: {"status": str(lifecycles.canonical(step) or "unmapped/none")} | d.summary()
        for step, d in sorted(counts.by_step.items())
    }
    every = Delays(
        [x for d in counts.by_step.values() for x in d.delays],
        sum(d.missed for d in counts.by_step.values()),
        sum(d.pending for d in counts.by_step.values()),
    ).summary()
    end_states = Delays(
        [x for step in END_STATE_STEPS for x in counts.by_step.get(step, Delays()).delays],
        sum(counts.by_step.get(step, Delays()).missed for step in END_STATE_STEPS),
        sum(counts.by_step.get(step, Delays()).pending for step in END_STATE_STEPS),
    ).summary()
    detected = every["detected"]
    return {
        "flow": flow,
        "interval_s": schedule_interval(get_flow(flow).cron).total_seconds(),
        "by_step": rows,
        "all": every,
        "end_states": end_states,
        "requests": counts.requests,
        "polls": counts.polls,
        "requests_per_detected_change": counts.requests / detected if detected else None,
        "runs": counts.runs,
        "runs_deferring": counts.runs_deferring,
        "ticks_skipped": counts.ticks_skipped,
        "longest_unpolled_s": counts.longest_unpolled_s,
        "worst_unpolled_share": counts.worst_unpolled_share,
        "worst_unpolled_status": counts.worst_unpolled_status,
    }


def _by_sort_key(order: ModelOrder) -> tuple:
    return order.sort_key


# -- the model -------------------------------------------------------------------------------


class FreshnessModel:
    """Production's flows, budgets and life cycles on one simulated clock, under one policy."""

    def __init__(
        self,
        policy: PollingPolicy,
        population: Population,
        selection: SelectionPolicy | None = None,
        intervals: Mapping[str, float] | None = None,
    ) -> None:
        """`intervals`: seconds between a flow's ticks where not its cron's (the end-to-end
        check runs its flow back to back)."""
        self.policy = policy
        self.intervals = dict(intervals or {})
        self.population = population
        self.selection = selection or SelectionPolicy.from_env()
        self.now = 0.0
        self.lifecycles = LifeCycles(population.seed)
        self.state = MemoryStateDocuments()
        self.live: dict[str, list[ModelOrder]] = {flow: [] for flow in population.live}
        self.counts = {flow: FlowCounts() for flow in population.live}
        self._rng = random.Random(population.seed)
        self._next_id = 0
        self._status_ids = {str(name): status_id for status_id, name in STATUSES}
        self._tracked_ids = frozenset(self.selection.tracking_status_ids)
        self._buffer = self.selection.buffer_days * DAY
        self._measure_from = population.warmup_hours * HOUR
        self._measure_to = self._measure_from + population.measured_hours * HOUR
        self._running: set[str] = set()
        self.initial: dict[str, list[ModelOrder]] = {}
        self._scenarios, self._weights = list(SCENARIO_WEIGHTS), list(SCENARIO_WEIGHTS.values())
        self._flows = {key: get_flow(key) for key in population.live}
        # the product's selection sort (fixed: it does not depend on the time)
        self._keys = {
            key: sort_key(build_query(flow, self.selection, EPOCH).sort)
            for key, flow in self._flows.items()
        }
        self._bounds: dict[tuple[str, Canonical | None], float] = {}

    # -- the population ---------------------------------------------------------------------

    def _new_order(self, flow: str, booked_at: float) -> ModelOrder:
        scenario = self._rng.choices(self._scenarios, self._weights)[0]
        self._next_id += 1
        order = self.lifecycles.register(flow, f"{flow}-{self._next_id}", scenario, booked_at)
        order.doc = {"_id": self._next_id, "order_status": self._status_ids["manifested"]}
        return order

    def _settled(self, order: ModelOrder, at: float) -> bool:
        """Put the order where the product would hold it at `at` (polled just before);
        False when it would have left the selection by then."""
        position = bisect.bisect_right(order.starts, at) - 1
        for index in range(position + 1):
            status = self.lifecycles.canonical(order.steps[index])
            if status is not None and status != order.status:
                order.status, order.changed_at = status, order.starts[index]
        order.seen = position
        if order.status is not None:
            order.doc["order_status"] = self._status_ids[str(order.status)]
        asked = at - self._rng.uniform(0, HOUR)
        order.doc[ASKED_FIELD] = order.doc["last_tracking_time"] = order.last_asked = asked
        return self._is_due(order, at)

    def _is_due(self, order: ModelOrder, now: float) -> bool:
        """The selection's own terms: a tracked status, booked within the buffer period."""
        return (
            order.doc["order_status"] in self._tracked_ids and order.booked_at >= now - self._buffer
        )

    def populate(self, initial: Mapping[str, Sequence[ModelOrder]] | None = None) -> None:
        """Each flow's live orders as a steady state holds them: bookings spread over the
        buffer period, kept where the product would still be polling them now. `initial`:
        the orders another model started with (the same shipments, fresh documents)."""
        for flow, count in self.population.live.items():
            orders = self.live[flow]
            for shipment in (initial or {}).get(flow, ()):
                order = replace(shipment, doc={"_id": shipment.doc["_id"]}, status=None)
                order.doc["order_status"] = self._status_ids["manifested"]
                self._next_id = max(self._next_id, order.doc["_id"])
                self._settled(order, 0.0)
                self._after_poll(flow, order, changed=False)
                orders.append(order)
            while len(orders) < count:
                order = self._new_order(flow, -self._rng.uniform(0, self._buffer))
                if self._settled(order, 0.0):
                    self._after_poll(flow, order, changed=False)
                    orders.append(order)
        self.initial = {flow: list(orders) for flow, orders in self.live.items()}

    # -- one poll ---------------------------------------------------------------------------

    def _after_poll(self, flow: str, order: ModelOrder, changed: bool) -> None:
        """The policy's say on the document, then the document's place in the queue."""
        step = order.steps[max(order.seen, 0)]
        outcome = PollOutcome(
            order.last_asked, order.status, self.lifecycles.stored_status(flow, step), changed,
            order.changed_at,
        )  # fmt: skip
        self.policy.after_poll(self._flows[flow], order.doc, outcome)
        order.sort_key = self._keys[flow](order.doc)

    def _measured(self, at: float) -> bool:
        return self._measure_from <= at < self._measure_to

    def poll(self, flow: str, order: ModelOrder) -> None:
        """Ask the courier about one order now: record what changed since we last saw it."""
        now = self.now
        if now >= self._measure_from:
            self._note_gap(flow, order, now)
        order.last_asked = now
        order.doc[ASKED_FIELD] = now
        position = bisect.bisect_right(order.starts, now) - 1
        changed = False
        if position >= 0:  # else the courier does not know it yet: asked, not answered
            order.doc["last_tracking_time"] = now
            if position != order.seen:
                changes = [i for i in order.changes if order.seen < i <= position]
                if changes:
                    tally(
                        self.counts[flow].by_step, order.steps, order.starts, changes, now,
                        self._measured,
                    )  # fmt: skip
                order.seen = position
                status = self.lifecycles.canonical(order.steps[position])
                if status is not None and status != order.status:
                    # the courier's time of the change, as the write stores it
                    order.status, order.changed_at, changed = status, order.starts[position], True
                    order.doc["order_status"] = self._status_ids[str(status)]
        self._after_poll(flow, order, changed)

    def _note_gap(self, flow: str, order: ModelOrder, until: float) -> None:
        counts = self.counts[flow]
        gap = until - order.last_asked
        bound = self._bounds.get((flow, order.status))
        if bound is None:
            bound = max_interval(order.status, self._flows[flow]).total_seconds()
            self._bounds[flow, order.status] = bound
        counts.longest_unpolled_s = max(counts.longest_unpolled_s, gap)
        if gap > bound * counts.worst_unpolled_share:
            counts.worst_unpolled_share = gap / bound
            counts.worst_unpolled_status = str(order.status or "not yet mapped")

    # -- runs -------------------------------------------------------------------------------

    def _select(self, flow: Flow) -> list[ModelOrder]:
        """The due orders in the policy's order, up to the cap; those that left the selection
        are replaced by new bookings (a steady state of live shipments). The live list is
        kept in the last sort's order, so sorting again mostly merges two sorted runs."""
        orders = self.live[flow.key]
        due = [order for order in orders if self._is_due(order, self.now)]
        for _ in range(len(orders) - len(due)):
            order = self._new_order(flow.key, self.now)  # never asked: no times stored
            order.sort_key = self._keys[flow.key](order.doc)
            due.append(order)
        due.sort(key=_by_sort_key)
        self.live[flow.key] = due
        return due[: build_query(flow, self.selection, sim_datetime(self.now)).limit]

    def _run(self, flow: Flow) -> Iterator[float]:
        """One tracking run: select, then ask batch by batch as the budget lets it; yields
        the simulated time it next acts at."""
        counts = self.counts[flow.key]
        counts.runs += 1
        selected = self._select(flow)
        budget = SharedBudget(
            BudgetWindow(self.state, flow.budget_scope),  # type: ignore[arg-type]  # in memory
            flow.rate_budget_in({}),  # production's limit, whatever the environment says
            min_block=flow.workers,
            clock=lambda: self.now,
        )
        closes = self.now + fetch_time_box(flow).total_seconds()
        spacing = (REQUEST_SECONDS + flow.pause_seconds) / flow.workers
        try:
            for start in range(0, len(selected), flow.batch_size):
                while (wait := budget.take()) is not None:
                    if self.now + wait >= closes:  # as the engine: within the time box
                        counts.runs_deferring += 1
                        return
                    yield self.now + wait
                if self._measured(self.now):
                    counts.requests += 1
                for order in selected[start : start + flow.batch_size]:
                    counts.polls += 1
                    self.poll(flow.key, order)
                yield self.now + spacing
        finally:
            budget.close()
            self._running.discard(flow.key)

    def _ticks(self, flow: Flow) -> Iterator[float]:
        """The flow's schedule ticks on the model's clock: its cron in production's time zone
        (so B2C's 8-minute ticks and the fallback's 2-hour ones fire together, as they do),
        or evenly `intervals` apart where one is given."""
        interval = self.intervals.get(flow.key)
        if interval:
            tick = self._rng.uniform(0, interval)
            while True:
                yield tick
                tick += interval
        end = EPOCH + timedelta(hours=self.population.hours + 24)  # past the clock's end
        for tick in cron_ticks(flow.cron, EPOCH, end):
            yield (tick - EPOCH).total_seconds()

    def run(self, initial: Mapping[str, Sequence[ModelOrder]] | None = None) -> dict[str, Any]:
        """Run the clock to the end; every flow's figures (`initial`: see `populate`)."""
        self.populate(initial)
        end = self.population.hours * HOUR
        agenda: list[tuple[float, int, str, Iterator[float]]] = []
        sequence = 0
        for flow_key in self.population.live:
            ticks = self._ticks(get_flow(flow_key))
            heapq.heappush(agenda, (next(ticks), sequence, flow_key, ticks))
            sequence += 1
        runs: list[tuple[float, int, Iterator[float]]] = []
        while agenda or runs:
            tick_at = agenda[0][0] if agenda else math.inf
            run_at = runs[0][0] if runs else math.inf
            self.now = min(tick_at, run_at)
            if self.now >= end:
                break
            if run_at <= tick_at:
                _, order, run = heapq.heappop(runs)
                if (at := next(run, None)) is not None:
                    heapq.heappush(runs, (at, order, run))
                continue
            _, _, flow_key, ticks = heapq.heappop(agenda)
            heapq.heappush(agenda, (next(ticks), sequence, flow_key, ticks))
            sequence += 1
            if flow_key in self._running:
                self.counts[flow_key].ticks_skipped += 1
                continue
            self._running.add(flow_key)
            heapq.heappush(runs, (self.now, sequence, self._run(get_flow(flow_key))))
        self.now = end
        for flow_key, orders in self.live.items():  # still waiting when the clock stopped
            for order in orders:
                if self._is_due(order, end):
                    self._note_gap(flow_key, order, end)
                position = bisect.bisect_right(order.starts, end) - 1
                for index in (i for i in order.changes if order.seen < i <= position):
                    if self._measured(order.starts[index]):
                        self.counts[flow_key].by_step[order.steps[index]].pending += 1
        return {
            "policy": self.policy.name,
            "flows": [
                flow_summary(flow, counts, self.lifecycles) for flow, counts in self.counts.items()
            ],
        }


# -- what the benchmark keeps ----------------------------------------------------------------


def policies() -> list[PollingPolicy]:
    """The policies compared, the product's current selection first."""
    return [OldestFirst(), Adaptive()]


@dataclass
class FreshnessFigures:
    """The model's figures under each policy, and the end-to-end check of the model."""

    live: dict[str, int]
    warmup_hours: float
    measured_hours: float
    tail_hours: float
    policies: list[dict[str, Any]]  # `FreshnessModel.run()` of each policy
    model_seconds: float  # wall time the model took
    validation: dict[str, Any] | None = None

    def policy(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.policies if p["policy"] == name), None)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FreshnessFigures:
        return cls(**data)


def measure_model(population: Population, selection: SelectionPolicy) -> FreshnessFigures:
    """Every policy on the same population, budget and clock."""
    started = time.perf_counter()
    runs, initial = [], None
    for policy in policies():
        print(f"  freshness model: {policy.name}", flush=True)
        model = FreshnessModel(policy, population, selection)
        runs.append(model.run(initial))
        initial = model.initial  # every policy starts from the same shipments
    return FreshnessFigures(
        live=dict(population.live),
        warmup_hours=population.warmup_hours,
        measured_hours=population.measured_hours,
        tail_hours=population.tail_hours,
        policies=runs,
        model_seconds=time.perf_counter() - started,
    )
