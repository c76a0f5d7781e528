"""Couriers that log in for a token: one token per account, shared by every worker and run.

The token is cached in `ordertrack_state`, so later runs (on any machine) reuse it instead of
logging in again. A 401 is answered by one worker while the others wait on a lock; a worker
that wakes up to a token other than the one it sent simply retries with it. Couriers lock
accounts after failed logins (and Velocity revokes older tokens on every login), so a failed
login is never retried in a loop: it fails the rest of the run and, when the courier refused
the credentials, blocks logins for every process for a while.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
from dagster import ConfigurableResource
from pydantic import Field

from ordertrack_dagster.couriers.engine import CourierClient, Request
from ordertrack_dagster.couriers.failures import AuthFailure, BatchFailure
from ordertrack_dagster.couriers.transport import BodyTooLarge, bounded_request
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.resources.state import CachedToken, SharedState


def token_at(payload: Any, *path: str) -> str | None:
    """The token a login answer carries at `path` (e.g. "data", "jwt"), or None when the
    answer has no non-empty string there."""
    value = payload
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value if isinstance(value, str) and value else None


class LoginClient(CourierClient):
    """A courier client whose requests carry a token obtained by logging in."""

    #: The courier's name in `ordertrack_state` (the account name is appended).
    token_name: ClassVar[str]
    #: After a refused login no process logs in again for this long.
    login_block_seconds: ClassVar[float] = 600.0
    #: Token refreshes after the run's first login are at least this far apart.
    min_refresh_seconds: ClassVar[float] = 0.0

    def __init__(self, flow: Flow, state: SharedState, url: str, username: str, password: str):
        super().__init__(flow, state)
        self.url = url.rstrip("/")
        self._username = username
        self._password = password
        self.token_key = f"{self.token_name}:{username}"
        self._lock = asyncio.Lock()
        self._token: CachedToken | None = None
        self._logged_in = False  # the run's first login is not a refresh
        self._last_refresh: float | None = None  # time.monotonic() of the last refresh
        self._failure: str | None = None  # set once a login failed: the run stops logging in

    # -- what a courier module provides -------------------------------------------------

    @abstractmethod
    def login_request(self, username: str, password: str) -> Request:
        """The login call."""

    @abstractmethod
    def read_login(self, payload: Any, now: datetime) -> CachedToken | None:
        """The token and its expiry from a successful login answer; None if there is none."""

    @abstractmethod
    def token_headers(self, token: str) -> dict[str, str]:
        """Headers that present the token."""

    # -- the token discipline -----------------------------------------------------------

    async def auth_headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        self._raise_if_failed()
        if self._token is None:
            async with self._lock:
                self._raise_if_failed()
                if self._token is None:
                    self._token = self.state.cached_token(self.token_key) or await self._login(http)
        return self.token_headers(self._token.token)

    async def on_unauthorized(self, http: httpx.AsyncClient, rejected: dict[str, str]) -> bool:
        async with self._lock:
            self._raise_if_failed()
            if self._token is not None and self.token_headers(self._token.token) != rejected:
                return True  # another worker refreshed while this request was out
            stored = self.state.cached_token(self.token_key)
            if stored is not None and self.token_headers(stored.token) != rejected:
                self._token = stored  # another run logged in (and may have revoked ours)
                return True
            self._check_refresh_spacing()
            self._token = await self._login(http)
            return True

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise AuthFailure(self._failure)

    def _check_refresh_spacing(self) -> None:
        if self._last_refresh is None:  # no refresh yet (the run's first login is none)
            return
        since = time.monotonic() - self._last_refresh
        if since < self.min_refresh_seconds:
            raise BatchFailure(
                f"HTTP 401 {since:.0f} s after the last token refresh; not refreshing again"
                f" within {self.min_refresh_seconds:.0f} s",
                retryable=False,
                http_status=401,
            )

    async def _login(self, http: httpx.AsyncClient) -> CachedToken:
        """Log in once. Failures are final for the run; refusals also block other runs."""
        now = datetime.now(UTC)
        blocked = self.state.login_blocked_until(self.token_key)
        if blocked is not None:
            raise self._give_up(
                f"logins are blocked until {blocked:%Y-%m-%d %H:%M:%S}Z after a failed login",
                block=False,
            )
        await self._permit()  # a login is a request: it waits for pauses and is budgeted
        if self._logged_in:
            self._last_refresh = time.monotonic()
        self._logged_in = True
        self.stats.logins += 1
        spec = self.login_request(self._username, self._password)
        try:
            response = await bounded_request(
                http,
                spec.method,
                spec.url,
                deadline_seconds=self.flow.timeout_seconds,
                json=spec.json,
            )
        except (httpx.HTTPError, TimeoutError, BodyTooLarge) as error:
            # `from None`: the request behind the error holds the password
            raise self._give_up(
                f"login request failed ({type(error).__name__})", block=False
            ) from None
        status = response.status_code
        self._raise_if_told_to_stop(response, now)  # a pause, not refused credentials
        if status >= 500:
            raise self._give_up(f"login answered HTTP {status}", block=False)
        payload = _json_or_none(response)
        token = self.read_login(payload, now) if status < 300 else None
        if token is None:
            raise self._give_up(
                f"login refused (HTTP {status}{_courier_message(payload)})", block=True
            )
        self.state.save_token(self.token_key, token)
        return token

    def _give_up(self, reason: str, *, block: bool) -> AuthFailure:
        self._failure = reason
        if block:
            until = datetime.now(UTC) + timedelta(seconds=self.login_block_seconds)
            self.state.block_login(self.token_key, until, reason)
        return AuthFailure(reason)


class LoginResource(ConfigurableResource):
    """The resource of every courier that logs in: the same three settings, one client.

    A courier names its client in a subclass (`client_class`); its description maps the
    fields to its settings' names.
    """

    url: str = Field(description="the courier API's root URL")
    username: str = Field(description="the account that logs in (a user name or an email)")
    password: str = Field(description="the account's password")

    client_class: ClassVar[type[LoginClient]]

    def client(self, flow: Flow, state: SharedState) -> CourierClient:
        return self.client_class(flow, state, self.url, self.username, self.password)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):  # not JSON, or nested past any real login answer
        return None


def _courier_message(payload: Any) -> str:
    """The courier's own words on a refused login (never the credentials)."""
    if not isinstance(payload, dict):
        return ""
    message = payload.get("message")
    error = payload.get("error")
    if message is None and isinstance(error, dict):
        message = error.get("message")
    elif message is None:
        message = error
    return f": {str(message)[:200]}" if message else ""
