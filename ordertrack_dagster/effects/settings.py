"""Where the side effects go and how failing ones are retried (contract §7, §8)."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import ConfigurableResource
from pydantic import Field

from ordertrack_dagster.effects.documents import RetryPolicy
from ordertrack_dagster.markers import Event


class EffectsSettings(ConfigurableResource):
    """Bucket, Slack channels and retry policy of the effects. Unset channels fail the
    delivery (visible, retried) rather than dropping it."""

    bucket: str | None = Field(default=None, description="AWS_S3_BUCKET")
    prefix: str = Field(default="ordertrack", description="key prefix of the logs")
    status_channels: dict[str, str] = Field(
        default_factory=dict,
        description="the Slack channel of each status event, by event: the setting each "
        "event declares (markers.Event.channel_setting)",
    )
    alerts_channel: str | None = Field(default=None, description="TRACKING_ALERTS_SLACK_CHANNEL")
    query_channel: str | None = Field(default=None, description="TRACKING_QUERY_SLACK_CHANNEL")
    webserver_url: str | None = Field(
        default=None, description="DAGSTER_WEBSERVER_URL: emails link to the run"
    )
    give_up_after_hours: float = Field(
        default=72.0, description="a delivery failing this long becomes a dead letter"
    )
    crm_idempotency_hours: float = Field(
        default=24.0,
        description="CRM_IDEMPOTENCY_HOURS: how long the CRM remembers an idempotency key; "
        "no webhook is retried later than this after its first call",
    )
    retry_base_seconds: float = Field(default=60.0, description="first backoff; doubles")
    retry_cap_seconds: float = Field(default=6 * 3600.0, description="longest backoff")
    retention_days: int = Field(
        default=90,
        description="ORDERTRACK_RETENTION_DAYS: consignee data in sent outbox records is "
        "removed this long after sending (the record stays, so nothing is sent twice)",
    )
    send_budget_seconds: float = Field(
        default=60.0, description="one run's sending of one effect stops after this long"
    )

    def retry_policy(self, kinds: Sequence[str] = ()) -> RetryPolicy:
        """The policy of an effect sending `kinds`: the CRM's webhooks stop at its key horizon."""
        horizon = self.crm_idempotency_hours * 3600 if Event.CRM_RTO.value in kinds else None
        return RetryPolicy(
            give_up_after_seconds=self.give_up_after_hours * 3600,
            base_seconds=self.retry_base_seconds,
            cap_seconds=self.retry_cap_seconds,
            send_budget_seconds=self.send_budget_seconds,
            key_horizon_seconds=horizon,
        )

    def status_channel(self, kind: str) -> str | None:
        """The channel of a status event's Slack message."""
        return self.status_channels.get(kind)

    def run_url(self, run_id: str) -> str | None:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}" if self.webserver_url else None
