"""`CourierSimulator`: the state of one simulator app (shipments, rendered answers, faults,
stats, rate windows, settings) and the plumbing every courier request goes through. It all
runs on one event loop."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ordertrack_dagster.devstack.simulator import faults
from ordertrack_dagster.devstack.simulator.base import (
    BadRequest,
    CourierApi,
    Handler,
    ListedCourierApi,
    error,
    utc_iso,
)
from ordertrack_dagster.devstack.simulator.description import CourierSim
from ordertrack_dagster.devstack.simulator.lifecycle import STEPS, Clock, Found, Shipments
from ordertrack_dagster.devstack.simulator.ratelimit import RateWindow
from ordertrack_dagster.devstack.simulator.settings import SimulatorSettings, lognormal_params


@dataclass(slots=True)
class Stats:
    requests: int = 0
    logins: int = 0
    failed_logins: int = 0
    keys_requested: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    status_codes: Counter[int] = field(default_factory=Counter)


class CourierSimulator:
    """State and request handling of one simulator app serving the given couriers' APIs."""

    def __init__(self, settings: SimulatorSettings, simulators: Sequence[CourierSim]) -> None:
        self.settings = settings
        self.clock = Clock(settings.time_scale)
        self.rng = random.Random(settings.seed)
        self._latency = lognormal_params(settings.latency_mean_ms, settings.latency_p99_ms)
        self.couriers = {api.name: api(self, sim) for sim in simulators for api in sim.apis}
        self._by_alias = {
            alias: api for api in self.couriers.values() for alias in (api.name, *api.aliases)
        }
        namespaces = {alias: api.namespace for alias, api in self._by_alias.items()}
        self.shipments = Shipments(self.clock, settings.seed, namespaces)
        # The courier whose answers are kept rendered, by waybill space.
        self._listed = {
            api.namespace: api
            for api in self.couriers.values()
            if isinstance(api, ListedCourierApi)
        }
        # Each shipment's answer as last rendered, by (courier, key), with the step and clock
        # version it shows; rendered again only when the shipment has moved on.
        self._answers: dict[tuple[str, str], tuple[tuple[int, int], dict[str, Any]]] = {}
        self.faults = faults.FaultQueues()
        self.stats = {name: Stats() for name in self.couriers}
        self.windows = {bucket: RateWindow() for bucket in settings.rate_limits}

    def api(self, courier: str) -> CourierApi:
        """The API of a courier name or alias."""
        return self._by_alias[courier]

    def reset(self) -> None:
        """Forget shipments, faults, stats, rate windows and sessions; keep settings and clock."""
        self.shipments.clear()
        self._answers.clear()
        self.faults.clear()
        self.stats = {name: Stats() for name in self.couriers}
        self.windows = {bucket: RateWindow() for bucket in self.settings.rate_limits}
        for api in self.couriers.values():
            api.reset()

    def update_settings(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial settings change (`SimulatorSettings.changed`)."""
        settings = self.settings.changed(changes)
        if settings.seed != self.settings.seed:
            self.rng = random.Random(settings.seed)
            self.shipments.reseed(settings.seed)
            self._answers.clear()
        self.clock.set_scale(settings.time_scale)
        self._latency = lognormal_params(settings.latency_mean_ms, settings.latency_p99_ms)
        self.settings = settings

    # -- shipments ------------------------------------------------------------------------

    def register(self, items: Sequence[object]) -> int:
        """Add or replace shipments; all or none are stored."""
        now = self.clock.now()
        parsed = []
        for index, item in enumerate(items):
            try:
                parsed.append(self.shipments.parse(item, now))
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"shipment {index}: {exc}") from exc
        for namespace, shipment in parsed:
            self.shipments.add(namespace, shipment)
            listed = self._listed.get(namespace)
            if listed is not None:  # rendered now, as a courier stores its tracking document
                self._answers.pop((listed.name, shipment.key), None)
                self.answer(listed, shipment.key)
        return len(parsed)

    def lookup(self, courier: str, key: str) -> Found | None:
        """The shipment, its profile and its events so far, if the courier knows it yet."""
        return self.shipments.lookup(courier, key)

    def force_step(self, courier: str, key: str, step: str, hold: bool) -> None:
        """Put a shipment at `step` now (see `Shipments.force_step`)."""
        if step not in STEPS:
            raise BadRequest(f"unknown step {step!r}")
        listed = self._listed.get(self.shipments.namespaces[courier])
        if listed is not None:
            self._answers.pop((listed.name, key), None)
        self.shipments.force_step(courier, key, step, hold)

    def describe(self, courier: str, key: str) -> dict[str, Any]:
        """A shipment as the admin API shows it."""
        ship = self.shipments.get(courier, key)
        found = self.lookup(courier, key)
        events = found[2] if found else []
        step = events[-1][0] if events else None
        return {
            "courier": courier,
            "tracking_key": ship.key,
            "order_id": ship.order_id,
            "reference_no": ship.reference_no,
            "scenario": ship.scenario,
            "booked_at": utc_iso(ship.booked_at),
            "path": list(ship.path),
            "step": step,
            "pinned": ship.pinned is not None,
            "raw_status": self.api(courier).raw_status(step) if step else None,
            "events": [{"step": s, "at": utc_iso(at)} for s, at in events],
        }

    # -- answers --------------------------------------------------------------------------

    def answer(self, api: ListedCourierApi, key: str) -> dict[str, Any] | None:
        """The shipment's answer in the courier's list format, if the courier knows it yet."""
        found = self.lookup(api.name, key)
        if found is None:
            return None
        ship, profile, events = found
        shown = (len(events) - 1, self.clock.version)
        cached = self._answers.get((api.name, key))
        if cached is not None and cached[0] == shown:
            return cached[1]
        answer = api.render(ship, profile, events)
        self._answers[api.name, key] = (shown, answer)
        return answer

    def answers(self, api: ListedCourierApi, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Answers for the keys the courier knows, in request order; unknown keys are left out."""
        self.stats[api.name].keys_requested += len(keys)
        answers = {}
        for key in keys:
            answer = self.answer(api, key)
            if answer is not None:
                answers[key] = answer
        return answers

    # -- request plumbing -----------------------------------------------------------------

    def endpoint(self, api: CourierApi, endpoint: str, handler: Handler) -> Handler:
        """Wrap a courier handler with stats, latency, the rate limit and queued faults."""

        async def serve(request: Request) -> Response:
            stats = self.stats[api.name]
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                response = await self._serve(request, api, endpoint, handler)
            finally:
                stats.in_flight -= 1
            stats.status_codes[response.status_code] += 1
            return response

        return serve

    async def _serve(
        self, request: Request, api: CourierApi, endpoint: str, handler: Handler
    ) -> Response:
        if self._latency is not None:
            await asyncio.sleep(self.rng.lognormvariate(*self._latency) / 1000)
        ip = request.client.host if request.client else "unknown"
        quota = api.courier_sim.name
        frees_in = self.windows[quota].over(ip, self.settings.rate_limits[quota])
        if frees_in is not None:
            return api.over_quota(frees_in)
        fault = self.faults.take(api.name, endpoint)
        if fault is not None and (replaced := faults.replacement(api, fault)) is not None:
            return replaced
        try:
            response = await handler(request)
        except BadRequest as exc:
            response = error(400, str(exc))
        return response if fault is None else await faults.spoil(fault, response)
