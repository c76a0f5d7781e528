"""The measurements: every flow at production scale, delhivery_b2c as orders grow,
delhivery_b2c draining 100,000 due orders under Delhivery's rate limit at its real window,
B2C and fallback at once under that one limit, a cap of unanswerable orders ahead of healthy ones,
and a formerly uncapped flow with 100,000 due.

Each measurement seeds its own database on the embedded stack with the demo seed (orders
shaped like production's, each registered with the courier simulator) and materializes the
flow through the `dagster` CLI, as a scheduled tick runs it.
"""

from __future__ import annotations

import bisect
import io
import math
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from bson import ObjectId
from dagster import DagsterInstance, build_sensor_context
from pymongo import MongoClient
from pymongo.database import Database

from ordertrack_dagster.bench.measure import RunFigures, materialize_measured
from ordertrack_dagster.definitions import defs
from ordertrack_dagster.devstack.demo import dagster_env, prepare_dagster_home
from ordertrack_dagster.devstack.seed import seed_demo_orders
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.flows import RateBudget, cron_ticks, fetch_time_box, get_flow
from ordertrack_dagster.orchestration import SENSORS, tracking_job
from ordertrack_dagster.orchestration.jobs import tracking_only_job
from ordertrack_dagster.orchestration.sensors import DRAIN_SENSOR
from ordertrack_dagster.resources.mongo import MongoResource, prepare_database
from ordertrack_dagster.tracking.selection import SelectionPolicy, build_query

#: The client budget of the unlimited measurements: far above what any run sends, so they
#: measure throughput, not the production budget (at 700 per 5 minutes the last 20 batches
#: of a 36,000-order run would wait about a window).
UNLIMITED_BUDGET = RateBudget(requests=1_000_000, window_seconds=300)
BUDGET_ENV = "ORDERTRACK_RATE_BUDGET_DELHIVERY_EXPRESS"
LIMITED_FLOW = "delhivery_b2c"
GROWTH_FLOW = "delhivery_b2c"
HEAD_OF_LINE_FLOW = "delhivery_b2b"
BOUNDED_FLOW = "shiprocket"


@dataclass(frozen=True)
class Scale:
    """How big each measurement is."""

    throughput: dict[str, int]  # orders seeded per flow, all in one database
    growth: tuple[int, ...]  # delhivery_b2c orders due, one database each
    limited_orders: int  # delhivery_b2c orders due under the rate limit
    courier_limit: RateBudget  # what the simulator enforces (Delhivery's 750 / 5 min)
    client_budget: RateBudget  # what the client allows itself (its 700 / 5 min)
    shared: dict[str, int]  # B2C and fallback orders due, run at once under that one limit
    head_of_line_healthy: int  # B2B orders the courier answers, behind a cap of unanswerable
    bounded_orders: int  # shiprocket orders due (it had no cap): one run's memory and time


FULL = Scale(
    throughput={
        "delhivery_b2c": 36_000,
        "shiprocket": 20_000,
        "velocity": 10_000,
        "delhivery_b2b": 480,
        "delhivery_fallback": 30,
    },
    growth=(1_000, 10_000, 36_000, 100_000),
    limited_orders=100_000,
    # Delhivery's real window: scaled down, a run's start-up and selection hid inside the
    # window's wait and a run met its budget freed whatever the drain's timing.
    courier_limit=RateBudget(requests=750, window_seconds=300),
    client_budget=RateBudget(requests=700, window_seconds=300),
    shared={"delhivery_b2c": 36_000, "delhivery_fallback": 100},
    head_of_line_healthy=480,
    bounded_orders=100_000,
)

#: Every code path of the benchmark once, each run as small as its figures allow: the smoke
#: proves the benchmark produces every figure, not what they are. Each run's fixed cost (a
#: `dagster` process) outweighs its orders, so the runs are as few as the figures need, and
#: the orders only so many that a B2C run sends more than one request (and, under the scaled
#: limit, more than its budget allows in one window, so it waits once).
SMOKE = Scale(
    throughput={"delhivery_b2c": 100, "delhivery_fallback": 3},
    growth=(50,),
    limited_orders=200,
    # Scaled down to seconds. A short window needs more slack than the production ratio: the
    # courier counts a request when it arrives, and jitter is a large share of a 3 s window.
    courier_limit=RateBudget(requests=6, window_seconds=3),
    client_budget=RateBudget(requests=3, window_seconds=3),
    shared={"delhivery_b2c": 100, "delhivery_fallback": 3},  # 5 requests: one window's wait
    head_of_line_healthy=20,
    bounded_orders=100,
)


#: How long a benchmark run waits for one answer of the embedded database: a write or query
#: of 36,000 orders takes SecantusDB tens of seconds, more on a loaded machine, and
#: production's 60 s would fail the run on the embedded database's own slowness.
EMBEDDED_SOCKET_TIMEOUT_MS = 600_000


def patient_uri(uri: str) -> str:
    """The stack's MongoDB URI with the benchmark's socket time-out (the URI's own options win
    over the product's defaults, as a deployment's do)."""
    return f"{uri}{'&' if '?' in uri else '?'}socketTimeoutMS={EMBEDDED_SOCKET_TIMEOUT_MS}"


def budget_env(budget: RateBudget) -> dict[str, str]:
    """The client-side budget override the flows table honours (flows.Flow.rate_budget)."""
    return {BUDGET_ENV: f"{budget.requests}/{budget.window_seconds:g}"}


class Bench:
    """The embedded stack, one Dagster instance, and measured runs against fresh databases."""

    def __init__(self, stack: EmbeddedStack, workdir: Path, latency_mean_ms: float) -> None:
        self.stack = stack
        self.logs = workdir / "runs"
        self.home = prepare_dagster_home(workdir)
        self.mean_latency_s = latency_mean_ms / 1000
        self.service_pids = {name: stack.pid(name) for name in ("mongodb", "simulator")}
        self._client: MongoClient = MongoClient(stack.env["MONGODB_URI"], tz_aware=True)

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def database(self, name: str, counts: Mapping[str, int]) -> Iterator[str]:
        """A database seeded with `counts` orders per flow, the simulator knowing only them,
        with the product's indexes built, as a deployed database has them before a backlog
        arrives (their one-time build is not a run's cost); dropped afterwards (SecantusDB
        keeps everything in memory)."""
        self.stack.simulator.reset()
        self._client.drop_database(name)
        seed_demo_orders(self._client[name], self.stack.simulator, dict(counts), datetime.now(UTC))
        # the same name was dropped before; a failed index would be built by the first run
        if warnings := prepare_database(self._client[name], again=True):
            raise RuntimeError(f"{name}: the product's indexes were not built: {warnings}")
        try:
            yield name
        finally:
            self._client.drop_database(name)

    @contextmanager
    def courier_limit(self, limit: RateBudget) -> Iterator[None]:
        """The simulator enforces Delhivery's express limit, scaled to `limit`, meanwhile."""
        self.stack.simulator.update_settings(
            rate_limits={
                "delhivery_b2c": {
                    "limit": limit.requests,
                    "window_s": limit.window_seconds,
                    "enabled": True,
                }
            }
        )
        try:
            yield
        finally:
            self.stack.simulator.update_settings(rate_limits={"delhivery_b2c": {"enabled": False}})

    def express_counts(self) -> tuple[int, int]:
        """(most requests in any window, HTTP 403s) as the simulator counted Delhivery's."""
        couriers = self.stack.simulator.stats()["couriers"]
        forbidden = sum(
            int(couriers[name]["status_codes"].get("403", 0))
            for name in ("delhivery_b2c", "delhivery_fallback")
        )
        return int(couriers["delhivery_b2c"]["max_window_requests"]), forbidden

    def run(
        self,
        label: str,
        flow: str,
        database: str,
        budget: RateBudget,
        must_succeed: bool = True,
        extra_env: Mapping[str, str] | None = None,
        job: str = tracking_job.name,
    ) -> RunFigures:
        env = dagster_env(self.stack.env, self.home) | {
            "MONGODB_DB": database,
            "MONGODB_URI": patient_uri(self.stack.env["MONGODB_URI"]),
        }
        env |= budget_env(budget) | dict(extra_env or {})
        figures = materialize_measured(
            label, flow, env, self.home, self.logs, self.service_pids, self.mean_latency_s, job
        )
        if not figures.ok:
            message = f"run {label} failed; see {self.logs / (label + '.log')}"
            if must_succeed:
                raise RuntimeError(message)
            print(f"  {message}", flush=True)
            return figures
        print(
            f"  {label}: {figures.orders:,} orders, {figures.requests:,} requests, "
            f"{figures.whole_seconds:.1f} s (fetch {figures.fetch_seconds:.2f} s, "
            f"write {figures.phase_seconds['write']:.1f} s), "
            f"{figures.mongo.round_trips} MongoDB round trips, "
            f"peak RSS {figures.peak_rss_mib:.0f} MiB",
            flush=True,
        )
        return figures

    def raw_responses(self, figures: RunFigures) -> pd.DataFrame:
        """The run's stored `raw_courier_responses` (what each key's request did and when)."""
        uri = str(figures.assets["raw_courier_responses"]["uri"])
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = self.stack.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        columns = ["tracking_key", "state", "batch", "http_status", "fetched_at"]
        return pd.read_parquet(io.BytesIO(body), columns=columns)

    def db(self, name: str) -> Database:
        return self._client[name]

    def written_at(self, database: str, flow_key: str, keys: Collection[str]) -> dict[str, float]:
        """When each key's order was last written (its `last_tracking_time`, epoch seconds).

        One pass over the polled orders, filtered here: SecantusDB answers a `$in` of a cap's
        36,000 keys in minutes, which the drain would count as idle time."""
        field_name = get_flow(flow_key).tracking_key_field
        cursor = self._client[database]["orders"].find(
            {"last_tracking_time": {"$ne": None}}, {field_name: 1, "last_tracking_time": 1}
        )
        written = {str(doc.get(field_name)).strip(): doc["last_tracking_time"] for doc in cursor}
        return {key: written[key].timestamp() for key in keys if key in written}

    def due_keys(self, database: str, flow_key: str) -> set[str]:
        """Every tracking key the flow must poll now (its selection without the cap)."""
        flow = get_flow(flow_key)
        query = build_query(flow, SelectionPolicy.from_env(), datetime.now(UTC))
        cursor = self._client[database]["orders"].find(query.filter, {flow.tracking_key_field: 1})
        return {str(doc[flow.tracking_key_field]).strip() for doc in cursor}


def throughput(bench: Bench, scale: Scale) -> list[RunFigures]:
    """Item 1: every flow once, at production scale, all flows' orders in one database."""
    with bench.database("bench_flows", scale.throughput) as database:
        return [
            bench.run(f"flows-{flow}", flow, database, UNLIMITED_BUDGET)
            for flow in scale.throughput
        ]


def growth(bench: Bench, scale: Scale) -> list[RunFigures]:
    """Item 3: one scheduled run of delhivery_b2c per size, each in a fresh database."""
    runs = []
    for orders in scale.growth:
        with bench.database(f"bench_growth_{orders}", {GROWTH_FLOW: orders}) as database:
            runs.append(bench.run(f"growth-{orders}", GROWTH_FLOW, database, UNLIMITED_BUDGET))
    return runs


#: Who starts a run of the drain, as production would: the schedule's tick, or the drain sensor.
BY_SCHEDULE, BY_DRAIN_SENSOR = "schedule", "drain sensor"


@dataclass
class DrainRun:
    """What one run of the drain did, from its own records (its stored courier responses)."""

    label: str
    started_by: str  # BY_SCHEDULE or BY_DRAIN_SENSOR
    answered: int
    deferred: int
    time_box_seconds: float  # how long the run may ask its courier (flows.fetch_time_box)
    # seconds from the fetch's start (its selection materialized) until the budget's window,
    # as every run's sent requests fill it, had room for a request again
    budget_free_after: float | None

    @property
    def deferred_everything(self) -> bool:
        return self.answered == 0 and self.deferred > 0

    @property
    def deferred_while_budget_freed(self) -> bool:
        """Deferred every order although its budget had room within its time box."""
        return (
            self.deferred_everything
            and self.budget_free_after is not None
            and self.budget_free_after < self.time_box_seconds
        )


@dataclass
class LimitedFigures:
    """Item 4: consecutive runs under the courier's limit until every due order was polled."""

    due: int
    courier_limit: RateBudget
    client_budget: RateBudget
    runs: list[RunFigures]
    started_at: float
    ended_at: float
    requests: int  # sent, as the client counted them
    forbidden: int  # HTTP 403 answers (the simulator's count)
    most_in_window_courier: int  # the simulator's highest count in its sliding window
    most_in_window_client: int  # the same, from the request times the runs recorded
    fetch_occupancy: float  # mean requests in the trailing window while runs were fetching
    fetch_seconds: float  # time with requests to send (first to last request of each run)
    polled: int
    worst_first_ask_seconds: float | None
    worst_first_write_seconds: float | None
    request_times: list[float] = field(default_factory=list)
    drain_runs: list[DrainRun] = field(default_factory=list)  # one per run, in order

    @property
    def bound_seconds(self) -> float:
        """orders / 50 per request / budget per window x window."""
        budget = self.client_budget
        return self.due / 50 / budget.requests * budget.window_seconds

    @property
    def budget_share_fetching(self) -> float:
        return self.fetch_occupancy / self.client_budget.requests

    @property
    def budget_share_overall(self) -> float:
        budget = self.client_budget
        allowed = budget.requests * (self.ended_at - self.started_at) / budget.window_seconds
        return self.requests / allowed

    def as_dict(self) -> dict[str, Any]:
        skipped = ("runs", "request_times", "drain_runs")
        data = {k: v for k, v in self.__dict__.items() if k not in skipped}
        data |= {
            "courier_limit": self.courier_limit.__dict__,
            "client_budget": self.client_budget.__dict__,
            "bound_seconds": self.bound_seconds,
            "budget_share_fetching": self.budget_share_fetching,
            "budget_share_overall": self.budget_share_overall,
            "runs": [run.as_dict() for run in self.runs],
            "drain_runs": [run.__dict__ for run in self.drain_runs],
        }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LimitedFigures:
        """The figures `as_dict` wrote; the request times it leaves out stay empty (and the
        runs' own records, which a drain measured before they were kept does not have)."""
        built = {"courier_limit", "client_budget", "runs", "request_times", "drain_runs"}
        return cls(
            **{f.name: data[f.name] for f in fields(cls) if f.name not in built},
            courier_limit=RateBudget(**data["courier_limit"]),
            client_budget=RateBudget(**data["client_budget"]),
            runs=[RunFigures.from_dict(run) for run in data["runs"]],
            drain_runs=[DrainRun(**run) for run in data.get("drain_runs", [])],
        )


def _occupancy(times: list[float], intervals: list[tuple[float, float]], window: float) -> float:
    """Mean count of requests in the trailing window, sampled through the intervals."""
    samples = []
    for start, end in intervals:
        steps = max(1, int((end - start) / 0.1))
        for step in range(steps + 1):
            at = start + (end - start) * step / steps
            samples.append(bisect.bisect_right(times, at) - bisect.bisect_right(times, at - window))
    return sum(samples) / len(samples) if samples else 0.0


def _most_in_window(times: list[float], window: float) -> int:
    return max(
        (bisect.bisect_right(times, t) - bisect.bisect_right(times, t - window) for t in times),
        default=0,
    )


def budget_free_after(sent: Sequence[float], since: float, budget: RateBudget) -> float:
    """Seconds after `since` until a budget that saw the requests `sent` (sorted times, none
    after `since`) has room for one more: once enough of them left its sliding window."""
    in_window = [at for at in sent if since - budget.window_seconds < at <= since]
    over = len(in_window) - budget.requests + 1
    return 0.0 if over <= 0 else in_window[over - 1] + budget.window_seconds - since


_DRAIN_SENSOR = next(sensor for sensor in SENSORS if sensor.name == DRAIN_SENSOR)


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in this process's environment meanwhile (the flows table reads the budget
    override from it, in the sensor as in a run)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def drain_sensor_starts(instance: DagsterInstance, mongo: MongoResource, flow_key: str) -> bool:
    """Whether the product's drain sensor, evaluated now, starts a run of the flow."""
    with build_sensor_context(
        instance=instance, resources={"mongo": mongo}, repository_def=defs.get_repository_def()
    ) as context:
        result = _DRAIN_SENSOR.evaluate_tick(context)
    return any(request.partition_key == flow_key for request in result.run_requests or [])


def ticks_after(cron: str, since: float) -> list[float]:
    """The schedule's ticks (epoch seconds) after `since`, for the next day."""
    start = datetime.fromtimestamp(since, UTC).replace(minute=0, second=0, microsecond=0)
    ticks = cron_ticks(cron, start, start + timedelta(days=1))
    return [tick.timestamp() for tick in ticks if tick.timestamp() > since]


def next_start(
    bench: Bench, database: str, flow_key: str, idle_since: float, sensor_clock: float
) -> str:
    """Wait until production would start the flow's next run, and say who starts it: the
    flow's schedule at a tick after `idle_since` (ticks while a run was in flight are
    skipped, not queued), or the drain sensor, evaluated every `minimum_interval_seconds`
    from `sensor_clock` on as the daemon does."""
    every = float(_DRAIN_SENSOR.minimum_interval_seconds or 30)
    mongo = MongoResource(uri=bench.stack.env["MONGODB_URI"], database=database)
    ticks = ticks_after(get_flow(flow_key).cron, idle_since)
    while True:
        evaluation = sensor_clock + math.ceil((time.time() - sensor_clock) / every) * every
        time.sleep(max(0.0, min(evaluation, ticks[0]) - time.time()))
        if time.time() >= ticks[0]:
            return BY_SCHEDULE
        with DagsterInstance.from_config(str(bench.home)) as instance:
            if drain_sensor_starts(instance, mongo, flow_key):
                return BY_DRAIN_SENSOR


def rate_limited(bench: Bench, scale: Scale) -> LimitedFigures:
    """Item 4: the simulator enforces the limit; runs follow each other until every due
    order was asked about at least once, each started when production would start it (the
    schedule's tick or the drain sensor); the benchmark launches them itself, through the
    CLI as a tick's run, since it measures each one from the outside."""
    limit = scale.courier_limit
    flow = get_flow(LIMITED_FLOW)
    with (
        bench.database("bench_limited", {LIMITED_FLOW: scale.limited_orders}) as database,
        bench.courier_limit(limit),
        _environment(budget_env(scale.client_budget)),
    ):
        due = bench.due_keys(database, LIMITED_FLOW)
        first_ask: dict[str, float] = {}
        first_write: dict[str, float] = {}
        runs: list[RunFigures] = []
        started_by: list[str] = []
        raws: list[pd.DataFrame] = []
        request_times: list[float] = []
        intervals: list[tuple[float, float]] = []
        most_runs = math.ceil(len(due) / flow.cap) + 2
        sensor_clock = time.time()
        try:
            while len(first_ask) < len(due) and len(runs) < most_runs:
                started_by.append(  # the first run: the schedule's tick that finds them due
                    next_start(bench, database, LIMITED_FLOW, runs[-1].ended_at, sensor_clock)
                    if runs
                    else BY_SCHEDULE
                )
                figures = bench.run(
                    f"limited-{len(runs) + 1}",
                    LIMITED_FLOW,
                    database,
                    scale.client_budget,
                    must_succeed=False,  # a run stopped by a courier pause is a finding
                    job=tracking_only_job.name,  # a tick's and the drain's run: its effects
                    # follow in their own run, off the drain's path
                )
                runs.append(figures)  # a failed run too: the drain's targets are then not met
                if not figures.ok:
                    break
                raw = bench.raw_responses(figures)
                raws.append(raw)
                sent = raw[(raw["state"] != "deferred") | raw["http_status"].notna()]
                times = sorted(
                    sent.groupby("batch")["fetched_at"].max().map(lambda t: t.timestamp())
                )
                if times:
                    intervals.append((times[0], times[-1]))
                request_times.extend(times)
                answered = raw[raw["state"] == "answered"]
                new = {}
                for key, at in zip(answered["tracking_key"], answered["fetched_at"], strict=True):
                    if key in due and key not in first_ask:
                        first_ask[key] = new[key] = at.timestamp()
                # statuses are written while the fetch goes on: each order's own write time
                first_write |= bench.written_at(database, LIMITED_FLOW, new)
        finally:
            most_in_window, forbidden = bench.express_counts()
    started = runs[0].started_at if runs else 0.0
    request_times.sort()
    polled_all = len(first_ask) == len(due)
    return LimitedFigures(
        due=len(due),
        courier_limit=limit,
        client_budget=scale.client_budget,
        runs=runs,
        started_at=started,
        ended_at=runs[-1].ended_at if runs else 0.0,
        requests=sum(run.requests for run in runs),
        forbidden=forbidden,
        most_in_window_courier=most_in_window,
        most_in_window_client=_most_in_window(request_times, limit.window_seconds),
        fetch_occupancy=_occupancy(request_times, intervals, scale.client_budget.window_seconds),
        fetch_seconds=sum(end - start for start, end in intervals),
        polled=len(first_ask),
        worst_first_ask_seconds=max(first_ask.values()) - started if polled_all else None,
        worst_first_write_seconds=max(first_write.values()) - started if polled_all else None,
        request_times=[t - started for t in request_times],
        drain_runs=[
            _drain_run(run, by, raw, request_times, scale.client_budget)
            for run, by, raw in zip(runs, started_by, raws, strict=False)
        ],
    )


def _drain_run(
    run: RunFigures, started_by: str, raw: pd.DataFrame, sent: list[float], budget: RateBudget
) -> DrainRun:
    """One run's answered and deferred orders, and when its budget had room after its fetch
    began (its selection materialized), from the requests the drain's runs sent before."""
    opened = run.materialized_at.get("pending_orders")
    before = [at for at in sent if opened is not None and at <= opened]
    return DrainRun(
        label=run.label,
        started_by=started_by,
        answered=int((raw["state"] == "answered").sum()),
        deferred=int((raw["state"] == "deferred").sum()),
        time_box_seconds=fetch_time_box(get_flow(run.flow)).total_seconds(),
        budget_free_after=None if opened is None else budget_free_after(before, opened, budget),
    )


@dataclass
class SharedLimitFigures:
    """B2C and fallback running at the same time under Delhivery's one limit, as scaled."""

    courier_limit: RateBudget
    client_budget: RateBudget
    runs: list[RunFigures]
    most_in_window_courier: int  # the simulator's highest count in its sliding window
    forbidden: int  # HTTP 403 answers

    def as_dict(self) -> dict[str, Any]:
        return {
            "courier_limit": self.courier_limit.__dict__,
            "client_budget": self.client_budget.__dict__,
            "most_in_window_courier": self.most_in_window_courier,
            "forbidden": self.forbidden,
            "requests": sum(run.requests for run in self.runs),
            "runs": [run.as_dict() for run in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SharedLimitFigures:
        """The figures `as_dict` wrote (the request total is derived, not read)."""
        return cls(
            courier_limit=RateBudget(**data["courier_limit"]),
            client_budget=RateBudget(**data["client_budget"]),
            runs=[RunFigures.from_dict(run) for run in data["runs"]],
            most_in_window_courier=data["most_in_window_courier"],
            forbidden=data["forbidden"],
        )


def shared_limit(bench: Bench, scale: Scale) -> SharedLimitFigures:
    """Both express flows at once, each its own run process, one budget between them."""
    with (
        bench.database("bench_shared", scale.shared) as database,
        bench.courier_limit(scale.courier_limit),
        ThreadPoolExecutor(len(scale.shared)) as pool,
    ):
        started = [
            pool.submit(bench.run, f"shared-{flow}", flow, database, scale.client_budget, False)
            for flow in scale.shared
        ]
        runs = [future.result() for future in started]
        most_in_window, forbidden = bench.express_counts()
    return SharedLimitFigures(
        scale.courier_limit, scale.client_budget, runs, most_in_window, forbidden
    )


@dataclass
class HeadOfLineFigures:
    """A cap's worth of orders the courier cannot answer, first in line, and healthy ones."""

    unanswerable: int
    healthy: int
    healthy_polled_per_run: list[int]
    runs: list[RunFigures]

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "runs"}
        return data | {"runs": [run.as_dict() for run in self.runs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadOfLineFigures:
        return cls(**(dict(data) | {"runs": [RunFigures.from_dict(r) for r in data["runs"]]}))


def _unanswerable_copies(db: Database, flow_key: str, count: int) -> None:
    """`count` orders like the flow's seeded ones, whose keys the courier never heard of,
    older in `_id` than every seeded order (so first in line when nothing else differs)."""
    flow = get_flow(flow_key)
    template = db["orders"].find_one(
        build_query(flow, SelectionPolicy.from_env(), datetime.now(UTC)).filter
    )
    if template is None:
        raise RuntimeError(f"no {flow_key} order was seeded")
    oldest = int(template["_id"].generation_time.timestamp()) - 3600
    copies = []
    for index in range(count):
        doc = dict(template, order_id=f"HOL-{index:06d}", last_tracking_time=None)
        doc["_id"] = ObjectId(f"{oldest:08x}{index:016x}")
        doc[flow.tracking_key_field] = f"UNKNOWN{index:08d}"
        copies.append(doc)
    db["orders"].insert_many(copies)


def head_of_line(bench: Bench, scale: Scale) -> HeadOfLineFigures:
    """delhivery_b2b (cap 480): its cap of unanswerable orders ahead of healthy ones; how many
    healthy orders each of two runs polled."""
    flow = get_flow(HEAD_OF_LINE_FLOW)
    b2b_budget = {"ORDERTRACK_RATE_BUDGET_DELHIVERY_B2B": budget_env(UNLIMITED_BUDGET)[BUDGET_ENV]}
    counts = {HEAD_OF_LINE_FLOW: scale.head_of_line_healthy}
    with bench.database("bench_head_of_line", counts) as database:
        healthy = bench.due_keys(database, HEAD_OF_LINE_FLOW)
        _unanswerable_copies(bench.db(database), HEAD_OF_LINE_FLOW, flow.cap)
        runs, polled = [], []
        for number in (1, 2):
            figures = bench.run(
                f"head-of-line-{number}",
                HEAD_OF_LINE_FLOW,
                database,
                UNLIMITED_BUDGET,
                extra_env=b2b_budget,
            )
            raw = bench.raw_responses(figures)
            answered = set(raw.loc[raw["state"] == "answered", "tracking_key"])
            runs.append(figures)
            polled.append(len(answered & healthy))
    return HeadOfLineFigures(flow.cap, len(healthy), polled, runs)


def bounded(bench: Bench, scale: Scale) -> RunFigures:
    """Shiprocket, which had no cap, with more due than its cap: one run's peak memory and
    the time to its first write (`materialized_at` of order_status_writes)."""
    counts = {BOUNDED_FLOW: scale.bounded_orders}
    with bench.database("bench_bounded", counts) as database:
        return bench.run(f"bounded-{BOUNDED_FLOW}", BOUNDED_FLOW, database, UNLIMITED_BUDGET)
