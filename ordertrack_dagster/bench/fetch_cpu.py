"""The client's CPU per request for reading one answer, measured alone (`--only fetch_cpu`).

The fetch's CPU in a run is measured on a loaded machine beside the courier simulator, so a
change of a tenth of a millisecond per request drowns in its noise. Here the product's own
code reads 50-waybill Delhivery B2C answers, rendered by the simulator exactly as it sends
them, in a loop: the engine's reading of one HTTP answer into one record per waybill (parse
the body, split it per waybill, keep each waybill's answer as JSON text), then the mapping's
reading of each record (parse its text, map it). CPU time (`time.process_time`), never wall
time: the machine is shared. Each figure is taken 5 times; min and median are reported.

`python -m ordertrack_dagster.bench.fetch_cpu [--save PATH] [--before PATH]` prints the
figures, keeps them as JSON, and compares them with figures kept earlier (before a change).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from ordertrack_dagster.couriers import COURIERS, read_json_text
from ordertrack_dagster.couriers.delhivery import DelhiveryB2CClient
from ordertrack_dagster.couriers.engine import _Batch
from ordertrack_dagster.devstack.seed import SCENARIO_WEIGHTS
from ordertrack_dagster.devstack.simulator.base import JSONResponse
from ordertrack_dagster.devstack.simulator.core import CourierSimulator
from ordertrack_dagster.devstack.simulator.delhivery import SIMULATOR as DELHIVERY_EXPRESS
from ordertrack_dagster.devstack.simulator.settings import SimulatorSettings
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.records import FetchRecord, OrderContext
from ordertrack_dagster.resources.state import SharedState

FLOW = FLOWS["delhivery_b2c"]
BODIES = 20  # distinct answers, so no one answer's shape decides the figure
REQUESTS = 400  # answers read per repeat
SMOKE_REQUESTS = 20  # in smoke mode: the figures are produced, their precision is not the point
REPEATS = 5


@dataclass
class FetchCpuFigures:
    """Milliseconds of CPU per request (one answer of `waybills` shipments)."""

    waybills: int
    body_kib: float  # mean size of one answer
    read_ms_min: float  # the engine: one HTTP answer to one record per waybill
    read_ms_median: float
    map_ms_min: float  # the mapping: each record's text parsed and mapped
    map_ms_median: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FetchCpuFigures:
        return cls(**data)


def answers(bodies: int = BODIES, waybills: int = FLOW.batch_size) -> list[tuple[list[str], bytes]]:
    """`bodies` answers of `waybills` shipments each, in the demo seed's mix of life cycles,
    each as the simulator's B2C endpoint renders it (keys, body)."""
    simulator = CourierSimulator(SimulatorSettings(latency_mean_ms=0), [DELHIVERY_EXPRESS])
    rng = random.Random(22)
    scenarios, weights = list(SCENARIO_WEIGHTS), list(SCENARIO_WEIGHTS.values())
    api = simulator.api("delhivery_b2c")
    out = []
    for body in range(bodies):
        keys = [f"2680{body:05d}{index:05d}" for index in range(waybills)]
        simulator.register(
            [
                {
                    "courier": "delhivery_b2c",
                    "tracking_key": key,
                    "order_id": f"OT-{key}",
                    "scenario": scenario,
                    "offset_s": rng.uniform(0, 4) * 86_400,
                }
                for key, scenario in zip(
                    keys, rng.choices(scenarios, weights, k=waybills), strict=True
                )
            ]
        )
        shipments = simulator.answers(api, keys)  # type: ignore[arg-type]
        payload = {"ShipmentData": [{"Shipment": shipment} for shipment in shipments.values()]}
        out.append((keys, JSONResponse(None).render(payload)))
    return out


def _per_request_ms(work: Callable[[int], object], repeats: int, requests: int) -> list[float]:
    """CPU milliseconds per call of `work(i)`, once per repeat."""
    figures = []
    for _ in range(repeats):
        started = time.process_time()
        for index in range(requests):
            work(index)
        figures.append((time.process_time() - started) * 1000 / requests)
    return figures


def measure(repeats: int = REPEATS, requests: int = REQUESTS) -> FetchCpuFigures:
    """The engine's and the mapping's CPU per answer of 50 waybills."""
    bodies = answers()
    # reading an answer asks nothing of the shared state: a client that never connects serves
    never = MongoClient("mongodb://127.0.0.1:9", connect=False)
    client = DelhiveryB2CClient(FLOW, SharedState(never["unused"]), "http://x/", "token")
    responses = [
        (keys, httpx.Response(200, headers={"Content-Type": "application/json"}, content=body))
        for keys, body in bodies
    ]
    now = datetime.now(UTC)

    def read(index: int) -> list[FetchRecord]:
        keys, response = responses[index % len(responses)]
        batch = _Batch(index, keys, attempts=1)
        answered = client.read_answer(response, keys)
        return [client.answer_record(batch, key, answered.get(key), 200, now, 1.0) for key in keys]

    records = [read(index) for index in range(len(responses))]
    interpret = COURIERS[FLOW.key].interpret

    def map_records(index: int) -> None:
        for record in records[index % len(records)]:
            if record.raw is not None:
                context = OrderContext(order_id=f"OT-{record.tracking_key}", tracking_key="")
                interpret(read_json_text(record.raw), context, now)

    reading = _per_request_ms(read, repeats, requests)
    mapping = _per_request_ms(map_records, repeats, requests)
    never.close()
    return FetchCpuFigures(
        waybills=FLOW.batch_size,
        body_kib=round(sum(len(body) for _, body in bodies) / len(bodies) / 1024, 1),
        read_ms_min=round(min(reading), 4),
        read_ms_median=round(statistics.median(reading), 4),
        map_ms_min=round(min(mapping), 4),
        map_ms_median=round(statistics.median(mapping), 4),
    )


def describe(figures: FetchCpuFigures, before: FetchCpuFigures | None = None) -> str:
    """The figures as lines of text, with their ratio to `before` when given."""
    lines = [f"{figures.waybills} waybills per answer, {figures.body_kib:g} KiB"]
    for label, name in (("read (engine)", "read_ms"), ("map (mapping)", "map_ms")):
        low, mid = getattr(figures, f"{name}_min"), getattr(figures, f"{name}_median")
        line = f"{label}: {low:.3f} ms min, {mid:.3f} ms median per request"
        if before is not None:
            old_low, old_mid = getattr(before, f"{name}_min"), getattr(before, f"{name}_median")
            line += f" (after/before: {low / old_low:.2f} min, {mid / old_mid:.2f} median)"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ordertrack_dagster.bench.fetch_cpu")
    parser.add_argument("--save", type=Path, help="keep the figures here as JSON")
    parser.add_argument("--before", type=Path, help="figures kept earlier, to compare with")
    args = parser.parse_args(argv)
    figures = measure()
    before = FetchCpuFigures.from_dict(json.loads(args.before.read_text())) if args.before else None
    print(describe(figures, before))
    if args.save:
        args.save.write_text(json.dumps(asdict(figures), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
