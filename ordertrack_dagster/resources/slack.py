"""Slack through dagster-slack, with the Web API base URL overridable (SLACK_API_URL)."""

from __future__ import annotations

from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient

DEFAULT_SLACK_API_URL = "https://slack.com/api/"


class OrdertrackSlackResource(SlackResource):
    """dagster-slack's resource, pointed at SLACK_API_URL so a local stand-in can answer."""

    base_url: str = Field(default=DEFAULT_SLACK_API_URL, description="SLACK_API_URL")
    timeout_seconds: int = Field(default=15)

    def get_client(self) -> WebClient:
        base_url = self.base_url if self.base_url.endswith("/") else f"{self.base_url}/"
        return WebClient(self.token, base_url=base_url, timeout=self.timeout_seconds)
