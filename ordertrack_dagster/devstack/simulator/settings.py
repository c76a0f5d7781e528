"""The simulator's settings (all of them changeable at run time through the admin API) and the
latency distribution they describe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

from ordertrack_dagster.devstack.simulator.lifecycle import DAY, DEFAULT_TIME_SCALE
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit, default_rate_limits


@dataclass(frozen=True)
class SimulatorSettings:
    """Behaviour of the simulator; every field can also be changed at run time."""

    latency_mean_ms: float = 130.0  # 0 disables the artificial latency
    latency_p99_ms: float = 530.0
    time_scale: float = DEFAULT_TIME_SCALE  # how much faster than real shipments move; 0 holds
    seed: int = 1
    rate_limits: dict[str, RateLimit] = field(default_factory=default_rate_limits)
    b2b_not_found_http_200_share: float = 0.5  # live Delhivery LTL answers both 404 and 200
    delhivery_token: str = "demo-delhivery-token"
    b2b_username: str = "demo-b2b"
    b2b_password: str = "demo-b2b-password"
    shiprocket_email: str = "demo@ordertrack.example"
    shiprocket_password: str = "demo-shiprocket-password"
    velocity_username: str = "demo-velocity"
    velocity_password: str = "demo-velocity-password"
    # Token lifetimes and lock-outs: wall-clock seconds, whatever the time scale.
    b2b_token_ttl_s: float = DAY
    shiprocket_token_ttl_s: float = 10 * DAY
    velocity_token_ttl_s: float = DAY
    b2b_lockout_s: float = 600.0
    velocity_max_failed_logins: int = 5
    velocity_lockout_s: float = 1800.0

    def __post_init__(self) -> None:
        lognormal_params(self.latency_mean_ms, self.latency_p99_ms)
        if self.time_scale < 0:
            raise ValueError("time_scale must not be negative")
        buckets = set(default_rate_limits())
        if set(self.rate_limits) != buckets:
            raise ValueError(f"rate_limits needs exactly {sorted(buckets)}")


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
