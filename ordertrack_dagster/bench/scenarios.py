"""The measurements: every flow at production scale, delhivery_b2c as orders grow,
delhivery_b2c draining 100,000 due orders under Delhivery's (scaled) rate limit, B2C and
fallback at once under that one limit, a cap of unanswerable orders ahead of healthy ones,
and a formerly uncapped flow with 100,000 due.

Each measurement seeds its own database on the embedded stack with the demo seed (orders
shaped like production's, each registered with the courier simulator) and materializes the
flow through the `dagster` CLI, as a scheduled tick runs it.
"""

from __future__ import annotations

import bisect
import io
import math
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from ordertrack_dagster.bench.measure import RunFigures, materialize_measured
from ordertrack_dagster.devstack.demo import dagster_env, prepare_dagster_home
from ordertrack_dagster.devstack.seed import seed_demo_orders
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.flows import RateBudget, get_flow
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
    courier_limit: RateBudget  # what the simulator enforces (Delhivery's 750 / 5 min, scaled)
    client_budget: RateBudget  # what the client allows itself (700 / 5 min, scaled alike)
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
    courier_limit=RateBudget(requests=75, window_seconds=30),
    client_budget=RateBudget(requests=70, window_seconds=30),
    shared={"delhivery_b2c": 36_000, "delhivery_fallback": 100},
    head_of_line_healthy=480,
    bounded_orders=100_000,
)

#: A few hundred orders through every code path of the benchmark: four short runs.
SMOKE = Scale(
    throughput={"delhivery_b2c": 300, "delhivery_fallback": 3},
    growth=(100,),
    limited_orders=300,
    # A short window needs more slack than the production ratio: the courier counts a request
    # when it arrives, and latency jitter is a large share of a 3-second window.
    courier_limit=RateBudget(requests=6, window_seconds=3),
    client_budget=RateBudget(requests=3, window_seconds=3),
    shared={"delhivery_b2c": 300, "delhivery_fallback": 6},
    head_of_line_healthy=20,
    bounded_orders=300,
)


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
        """A database seeded with `counts` orders per flow, the simulator knowing only them;
        dropped afterwards (SecantusDB keeps everything in memory)."""
        self.stack.simulator.reset()
        self._client.drop_database(name)
        seed_demo_orders(self._client[name], self.stack.simulator, dict(counts), datetime.now(UTC))
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
    ) -> RunFigures:
        env = dagster_env(self.stack.env, self.home) | {"MONGODB_DB": database}
        env |= budget_env(budget) | dict(extra_env or {})
        figures = materialize_measured(
            label, flow, env, self.home, self.logs, self.service_pids, self.mean_latency_s
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
        data = {k: v for k, v in self.__dict__.items() if k not in ("runs", "request_times")}
        data |= {
            "courier_limit": self.courier_limit.__dict__,
            "client_budget": self.client_budget.__dict__,
            "bound_seconds": self.bound_seconds,
            "budget_share_fetching": self.budget_share_fetching,
            "budget_share_overall": self.budget_share_overall,
            "runs": [run.as_dict() for run in self.runs],
        }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LimitedFigures:
        """The figures `as_dict` wrote; the request times it leaves out stay empty."""
        built = {"courier_limit", "client_budget", "runs", "request_times"}
        return cls(
            **{f.name: data[f.name] for f in fields(cls) if f.name not in built},
            courier_limit=RateBudget(**data["courier_limit"]),
            client_budget=RateBudget(**data["client_budget"]),
            runs=[RunFigures.from_dict(run) for run in data["runs"]],
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


def rate_limited(bench: Bench, scale: Scale) -> LimitedFigures:
    """Item 4: the simulator enforces the (scaled) limit; runs follow each other until every
    due order was asked about at least once."""
    limit = scale.courier_limit
    flow = get_flow(LIMITED_FLOW)
    with (
        bench.database("bench_limited", {LIMITED_FLOW: scale.limited_orders}) as database,
        bench.courier_limit(limit),
    ):
        due = bench.due_keys(database, LIMITED_FLOW)
        first_ask: dict[str, float] = {}
        first_write: dict[str, float] = {}
        runs: list[RunFigures] = []
        request_times: list[float] = []
        intervals: list[tuple[float, float]] = []
        most_runs = math.ceil(len(due) / flow.cap) + 2
        try:
            while len(first_ask) < len(due) and len(runs) < most_runs:
                figures = bench.run(
                    f"limited-{len(runs) + 1}",
                    LIMITED_FLOW,
                    database,
                    scale.client_budget,
                    must_succeed=False,  # a run stopped by a courier pause is a finding
                )
                runs.append(figures)  # a failed run too: the drain's targets are then not met
                if not figures.ok:
                    break
                raw = bench.raw_responses(figures)
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
                if not new:
                    break  # nothing left that the courier answers
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
    )


@dataclass
class SharedLimitFigures:
    """B2C and fallback running at the same time under Delhivery's one (scaled) limit."""

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
