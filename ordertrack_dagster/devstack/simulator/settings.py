"""The simulator's settings (all of them changeable at run time through the admin API) and the
latency distribution they describe."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from statistics import NormalDist
from typing import Any

from ordertrack_dagster.devstack.simulator.lifecycle import DEFAULT_TIME_SCALE
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit
from ordertrack_dagster.devstack.simulator.registry import (
    default_courier_settings,
    default_rate_limits,
)


@dataclass(frozen=True)
class SimulatorSettings:
    """Behaviour of the simulator; every field can also be changed at run time. The quotas
    and the couriers' own settings are keyed by simulated courier (`CourierSim.name`), their
    defaults taken from the courier modules."""

    latency_mean_ms: float = 130.0  # 0 disables the artificial latency
    latency_p99_ms: float = 530.0
    time_scale: float = DEFAULT_TIME_SCALE  # how much faster than real shipments move; 0 holds
    seed: int = 1
    rate_limits: dict[str, RateLimit] = field(default_factory=default_rate_limits)
    # Credentials, token lifetimes and lock-outs (wall-clock seconds, whatever the time scale).
    couriers: dict[str, Any] = field(default_factory=default_courier_settings)

    def __post_init__(self) -> None:
        lognormal_params(self.latency_mean_ms, self.latency_p99_ms)
        if self.time_scale < 0:
            raise ValueError("time_scale must not be negative")
        names = set(default_courier_settings())
        for setting in ("rate_limits", "couriers"):
            if set(getattr(self, setting)) != names:
                raise ValueError(f"{setting} needs exactly {sorted(names)}")

    def changed(self, changes: Mapping[str, Any]) -> SimulatorSettings:
        """These settings with a partial change applied; the entries of `rate_limits` and
        `couriers` are changed field by field (e.g. ``{"couriers": {"velocity":
        {"token_ttl_s": 1}}}``)."""
        names = {f.name for f in fields(SimulatorSettings)}
        if unknown := set(changes) - names:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        merged = dict(changes)
        for setting in ("rate_limits", "couriers"):
            if setting in changes:
                merged[setting] = _patched(getattr(self, setting), changes[setting], setting)
        return replace(self, **merged)


def _patched(
    entries: Mapping[str, Any], patches: Mapping[str, Any], setting: str
) -> dict[str, Any]:
    """`entries` with each patched one's fields replaced."""
    patched = dict(entries)
    for name, patch in dict(patches).items():
        if name not in patched:
            raise ValueError(f"no {setting} entry {name!r}")
        patched[name] = replace(patched[name], **patch)
    return patched


def lognormal_params(mean_ms: float, p99_ms: float) -> tuple[float, float] | None:
    """(mu, sigma) of the log-normal latency with this mean and 99th percentile, in ms."""
    if mean_ms == 0:
        return None
    if mean_ms < 0 or p99_ms < mean_ms:
        raise ValueError("latency needs 0 <= mean <= p99")
    z = NormalDist().inv_cdf(0.99)
    discriminant = z * z - 2 * math.log(p99_ms / mean_ms)
    if discriminant < 0:
        raise ValueError("latency p99 is too far above the mean for a log-normal distribution")
    sigma = z - math.sqrt(discriminant)
    return math.log(mean_ms) - sigma * sigma / 2, sigma
