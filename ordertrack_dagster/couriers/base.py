"""What every courier shares: the fetch engine, its retry and rate-limit rules, and the types
that carry answers from the wire to the mapping step.

A courier module only says how to build one request, how to split an answer into one raw
answer per tracking key, how to log in, and how to read one raw answer. Batching, workers,
pacing, retries with backoff and jitter, rate-limit pauses, the request budget and
per-batch failure isolation live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import json
import random
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import httpx
import orjson
import uvloop

from ordertrack_dagster.couriers.state import CourierState
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.statuses import Canonical, normalise_raw_status

INDIA = ZoneInfo("Asia/Kolkata")

DEFAULT_RETRY_AFTER_SECONDS = 300.0
MAX_ATTEMPTS = 3
# A pause shorter than this is waited out inside the run; a longer one defers the rest.
MAX_INLINE_WAIT_SECONDS = 45.0


class Outcome(StrEnum):
    """What became of one tracking key in one run."""

    MAPPED = "mapped"  # the raw status maps onto a canonical status
    NO_CHANGE = "no_change"  # the mapping says "no change"
    UNMAPPED = "unmapped"  # unknown raw status: alert, treated as no change
    REFERENCE_MISMATCH = "reference_mismatch"  # answered for another order: alert, no update
    NOT_FOUND = "not_found"  # asked and not answered: alert, stays due
    FAILED = "failed"  # transport or parse failure: alert, stays due
    DEFERRED = "deferred"  # not asked (rate limit pause or budget): stays due

    @property
    def was_read(self) -> bool:
        """SPEC §6: the courier's answer was received and read, so the poll is recorded."""
        return self in _READ_OUTCOMES


_READ_OUTCOMES = frozenset(
    {Outcome.MAPPED, Outcome.NO_CHANGE, Outcome.UNMAPPED, Outcome.REFERENCE_MISMATCH}
)


@dataclass(frozen=True)
class OrderContext:
    """What a courier module may need of the order to read its answer."""

    order_id: str
    tracking_key: str


@dataclass(frozen=True)
class Interpretation:
    """One tracking key's answer, read and mapped (the pure half of a courier module)."""

    outcome: Outcome
    courier_status: str | None = None  # what is stored in orders.courier_status
    status: Canonical | None = None  # set only for Outcome.MAPPED
    event_time: datetime | None = None  # the courier's time for the status, UTC
    alert: str | None = None  # why ops should look, if they should
    stop_tracking: bool = False  # set being_tracked: false (fallback end states)


class FetchState(StrEnum):
    """How asking about one key went, before its answer is read."""

    ANSWERED = "answered"
    NOT_ANSWERED = "not_answered"  # the courier left it out or said it does not know it
    FAILED = "failed"  # transport, HTTP, login or shape failure after bounded retries
    DEFERRED = "deferred"  # not asked: rate-limit pause or request budget


@dataclass(frozen=True)
class FetchRecord:
    """One row per tracking key asked: exactly what came back, kept for analysts."""

    tracking_key: str
    state: FetchState
    batch: int
    http_status: int | None
    fetched_at: datetime
    latency_ms: float | None
    attempts: int
    raw: str | None  # this key's answer as JSON text; None when there was none
    error: str | None


@dataclass
class FetchStats:
    """Counts for the run's metadata and the benchmark."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    logins: int = 0
    batches_failed: int = 0
    batches_deferred: int = 0
    paused_until: datetime | None = None


class BatchFailure(Exception):
    """A batch that cannot be answered now; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, http_status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.http_status = http_status


class RateLimited(Exception):
    """The courier said stop: no request until `resume_at`."""

    def __init__(self, resume_at: datetime, http_status: int):
        super().__init__(f"rate limited (HTTP {http_status}) until {resume_at.isoformat()}")
        self.resume_at = resume_at
        self.http_status = http_status


class NotAnswered(Exception):
    """The courier answered the batch but knows none of its keys (an error body)."""

    def __init__(self, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status


class AuthFailure(Exception):
    """Login failed; never retried in a loop (couriers lock accounts)."""


@dataclass(frozen=True)
class Request:
    """One HTTP request, as a courier module describes it."""

    method: str
    url: str
    params: Mapping[str, str] | None = None
    json: Any = None


@dataclass
class _Batch:
    index: int
    keys: list[str]
    attempts: int = 0


@dataclass(repr=False)
class FetchResult:
    records: list[FetchRecord]
    stats: FetchStats = field(default_factory=FetchStats)

    def __repr__(self) -> str:
        # asyncio.run() reprs its task's result on the way out (the SIGINT handler check of
        # Python 3.11); the default repr would spell out every record of a 36,000-key run.
        return f"FetchResult({len(self.records)} records, {self.stats!r})"


def blocking_pause(state: CourierState, scope: str, now: datetime) -> datetime | None:
    """The stored resume time when it is too far off to wait out inside a run, else None.

    Schedules skip and unforced runs stop on such a pause: the run would only defer.
    """
    resume_at = state.paused_until(scope)
    if resume_at is None or (resume_at - now).total_seconds() <= MAX_INLINE_WAIT_SECONDS:
        return None
    return resume_at


def describe_pause(flow: Flow, resume_at: datetime) -> str:
    """How ops read a stored pause: the courier and the resume time in UTC and India time."""
    return (
        f"{flow.courier_label} is paused by a courier rate limit until "
        f"{resume_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
        f"({resume_at.astimezone(INDIA):%H:%M:%S} India time)"
    )


def parse_retry_after(value: str | None, now: datetime) -> datetime:
    """Retry-After as seconds, a Unix time or an HTTP date; five minutes when absent or odd."""
    default = now + timedelta(seconds=DEFAULT_RETRY_AFTER_SECONDS)
    if not value or not value.strip():
        return default
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return default
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if number > 1_000_000_000:  # a Unix time, not a delay
        return datetime.fromtimestamp(number, UTC)
    return now + timedelta(seconds=max(0.0, number))


def parse_courier_time(value: Any) -> datetime | None:
    """A courier timestamp as UTC; zone-less values are India time. None when unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1) if "T" not in value else value.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=INDIA)
    return parsed.astimezone(UTC)


def first_entry(value: Any) -> dict[str, Any]:
    """`value[0]` of a list of objects (`shipment_track[0]`, `wbns[0]`); {} when there is none."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value[0]
    return {}


def newest_activity_time(activities: Any) -> datetime | None:
    """The newest readable activity `date`, UTC (SPEC §6 History time of Shiprocket, Velocity).

    Couriers list activities newest first; taking the latest date does not rely on it.
    """
    if not isinstance(activities, list):
        return None
    times = [parse_courier_time(item.get("date")) for item in activities if isinstance(item, dict)]
    return max((when for when in times if when is not None), default=None)


StatusTable = Mapping[str, Canonical | None]


def read_status(
    candidates: Sequence[tuple[Any, StatusTable]], event_time: datetime | None
) -> Interpretation:
    """Map the first raw status its table knows: SPEC §5's "status from X, else Y".

    `courier_status` is the raw value actually used, as the courier sent it. When none maps,
    the answer is unmapped (no change, and an alert naming every raw value seen); an answer
    without any status is malformed.
    """
    present = [
        (str(raw).strip(), table)
        for raw, table in candidates
        if raw is not None and str(raw).strip()
    ]
    for raw, table in present:
        key = normalise_raw_status(raw)
        if key in table:
            status = table[key]
            return Interpretation(
                Outcome.MAPPED if status else Outcome.NO_CHANGE,
                courier_status=raw,
                status=status,
                event_time=event_time,
            )
    if not present:
        return Interpretation(Outcome.FAILED, alert="malformed answer: no status")
    return Interpretation(
        Outcome.UNMAPPED,
        courier_status=present[0][0],
        event_time=event_time,
        alert="unmapped status " + " / ".join(repr(raw) for raw, _ in present),
    )


def decode_json(response: httpx.Response) -> Any:
    """The JSON body, or a retryable failure for HTML, XML, empty or truncated bodies.

    Read as `read_json_text` reads, but from the bytes first: the common, valid body is not
    decoded to text at all; a body orjson refuses is read again as text in its charset.
    """
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text
    try:
        return read_json_text(text)
    except ValueError:
        snippet = " ".join(text[:80].split())
        raise BatchFailure(
            f"HTTP {response.status_code} with a body that is not JSON: {snippet!r}",
            retryable=True,
            http_status=response.status_code,
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_text(answer: Any) -> str:
    """One key's answer as compact JSON text, kept as the courier sent it (no ASCII escaping).

    orjson writes it an order of magnitude faster than the standard library (this runs for
    every key of every answer); integers beyond 64 bits, which only the standard library
    reads, are written by it too.
    """
    try:
        return orjson.dumps(answer).decode()
    except TypeError:
        return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def read_json_text(text: str) -> Any:
    """JSON text as couriers send it and `json_text` keeps it: strict JSON (RFC 8259), read by
    orjson several times faster than the standard library, or by the standard library when it
    takes what orjson refuses (integers beyond 64 bits). NaN and Infinity are not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text, parse_constant=_refuse_constant)


def request_url(spec: Request) -> str:
    """The URL with its query string built once here: httpx would parse and re-quote a long
    query (50 waybills) twice per request, which cost more CPU than reading the answer.
    Commas stay literal, as couriers document their lists."""
    if not spec.params:
        return spec.url
    query = urlencode(spec.params, safe=",", quote_via=quote)
    return f"{spec.url}{'&' if '?' in spec.url else '?'}{query}"


class CourierClient(ABC):
    """Asks one courier about many tracking keys, honouring its limits.

    One instance serves one run. Workers pull batches from a queue: `flow.workers` of them,
    each pausing `flow.pause_seconds` between its calls, so "50 requests in flight" and
    "3 workers, 5 s apart" are the same mechanism.
    """

    #: HTTP statuses that mean "stop sending" for this courier, besides 429.
    block_statuses: frozenset[int] = frozenset()
    block_seconds: float = DEFAULT_RETRY_AFTER_SECONDS

    def __init__(self, flow: Flow, state: CourierState, *, max_attempts: int = MAX_ATTEMPTS):
        self.flow = flow
        self.state = state
        self.max_attempts = max_attempts
        self.stats = FetchStats()
        self._resume_at: datetime | None = None
        self._records: list[FetchRecord] = []
        self._tls: ssl.SSLContext | None = None

    # -- what a courier module provides -------------------------------------------------

    @abstractmethod
    def build_request(self, keys: Sequence[str]) -> Request:
        """The request that asks about these keys."""

    @abstractmethod
    def split_answer(self, keys: Sequence[str], payload: Any) -> dict[str, Any]:
        """One raw answer per key that was answered; raise BatchFailure for a batch error."""

    async def auth_headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        """Headers that authenticate a request; a login happens here, once, when needed."""
        return {}

    async def on_unauthorized(self, http: httpx.AsyncClient, rejected: dict[str, str]) -> bool:
        """React to a 401; True when a fresh token makes a retry worthwhile."""
        return False

    # -- the engine ---------------------------------------------------------------------

    async def fetch(self, keys: Sequence[str], *, ignore_stored_pause: bool = False) -> FetchResult:
        """Ask about every key; every key gets exactly one FetchRecord.

        `ignore_stored_pause` (a run forced by ops) starts as if no pause were stored; a rate
        limit met during the run still pauses it.
        """
        stored = None if ignore_stored_pause else self.state.paused_until(self.flow.budget_scope)
        self._resume_at = stored
        batches = [
            _Batch(index, list(keys[start : start + self.flow.batch_size]))
            for index, start in enumerate(range(0, len(keys), self.flow.batch_size))
        ]
        queue: asyncio.Queue[_Batch] = asyncio.Queue()
        for batch in batches:
            queue.put_nowait(batch)
        async with contextlib.AsyncExitStack() as connections:
            workers = [
                self._worker(await connections.enter_async_context(self._connection()), queue)
                for _ in range(min(self.flow.workers, len(batches)))
            ]
            await asyncio.gather(*workers)
        self.state.flush_budget(self.flow.budget_scope)
        self.stats.paused_until = self._resume_at
        return FetchResult(records=self._records, stats=self.stats)

    def _connection(self) -> httpx.AsyncClient:
        """A worker's own keep-alive connection.

        One shared pool of 50 connections costs more CPU than the requests themselves: httpx
        scans (and polls) every pooled connection on each request and each response. A pool of
        one per worker makes that constant; the TLS context is built once and shared.
        """
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.flow.timeout_seconds),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=self._tls,
        )

    async def _worker(self, http: httpx.AsyncClient, queue: asyncio.Queue[_Batch]) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            if not await self._wait_for_permission():
                self._defer(batch, f"courier paused until {self._resume_at:%Y-%m-%d %H:%M:%S}Z")
                continue
            if not await self._acquire_budget():
                self._defer(batch, "request budget for this window is used up")
                continue
            await self._run_batch(http, queue, batch)
            if self.flow.pause_seconds and not queue.empty():
                await asyncio.sleep(self.flow.pause_seconds)

    async def _wait_for_permission(self) -> bool:
        """False when a rate-limit pause is too long to wait out inside this run."""
        if self._resume_at is None:
            return True
        wait = (self._resume_at - datetime.now(UTC)).total_seconds()
        if wait <= 0:
            return True
        if wait > MAX_INLINE_WAIT_SECONDS:
            return False
        await asyncio.sleep(wait)
        return True

    async def _acquire_budget(self) -> bool:
        budget = self.flow.rate_budget
        while True:
            wait = self.state.reserve_request(self.flow.budget_scope, budget)
            if wait is None:
                return True
            if wait > MAX_INLINE_WAIT_SECONDS:
                return False
            await asyncio.sleep(wait)

    async def _run_batch(
        self, http: httpx.AsyncClient, queue: asyncio.Queue[_Batch], batch: _Batch
    ) -> None:
        batch.attempts += 1
        started = time.perf_counter()
        fetched_at = datetime.now(UTC)
        http_status: int | None = None
        try:
            http_status, answers = await self._send(http, batch.keys)
        except NotAnswered as reason:
            self._record_all(
                batch,
                FetchState.NOT_ANSWERED,
                f"not answered: {reason}",
                reason.http_status,
                fetched_at,
                (time.perf_counter() - started) * 1000,
            )
            return
        except RateLimited as limited:
            self.stats.rate_limited += 1
            self._pause(limited.resume_at)
            self._defer(batch, str(limited), http_status=limited.http_status)
            return
        except AuthFailure as failure:
            self._fail(batch, f"login failed: {failure}", None, fetched_at, started)
            return
        except BatchFailure as failure:
            if failure.retryable and batch.attempts < self.max_attempts:
                self.stats.retries += 1
                await asyncio.sleep(_backoff_seconds(batch.attempts))
                await self._run_batch(http, queue, batch)
                return
            self._fail(batch, str(failure), failure.http_status, fetched_at, started)
            return
        latency_ms = (time.perf_counter() - started) * 1000
        for key in batch.keys:
            answer = answers.get(key)
            self._records.append(
                FetchRecord(
                    tracking_key=key,
                    state=FetchState.NOT_ANSWERED if answer is None else FetchState.ANSWERED,
                    batch=batch.index,
                    http_status=http_status,
                    fetched_at=fetched_at,
                    latency_ms=latency_ms,
                    attempts=batch.attempts,
                    raw=None if answer is None else json_text(answer),
                    error=None if answer is not None else "asked but not answered",
                )
            )

    async def _send(self, http: httpx.AsyncClient, keys: Sequence[str]) -> tuple[int, dict]:
        """One request (and at most one re-authentication); the per-key answers."""
        spec = self.build_request(keys)
        for attempt in range(2):
            headers = await self.auth_headers(http)
            self.stats.requests += 1
            try:
                response = await http.request(
                    spec.method, request_url(spec), json=spec.json, headers=headers
                )
            except httpx.TimeoutException:
                raise BatchFailure("timed out", retryable=True) from None
            except httpx.TransportError as error:
                raise BatchFailure(f"connection failed: {error!r}", retryable=True) from None
            if (
                response.status_code == 401
                and attempt == 0
                and await self.on_unauthorized(http, headers)
            ):
                continue
            return response.status_code, self._read(response, keys)
        raise AssertionError("unreachable")

    def _read(self, response: httpx.Response, keys: Sequence[str]) -> dict[str, Any]:
        status = response.status_code
        now = datetime.now(UTC)
        if status == 429:
            raise RateLimited(parse_retry_after(response.headers.get("Retry-After"), now), status)
        if status in self.block_statuses:
            raise RateLimited(now + timedelta(seconds=self.block_seconds), status)
        if status >= 500:
            raise BatchFailure(f"HTTP {status}", retryable=True, http_status=status)
        if status == 401:
            raise BatchFailure("HTTP 401: credentials refused", retryable=False, http_status=401)
        try:
            return self.split_answer(keys, decode_json(response))
        except (NotAnswered, BatchFailure) as answer_error:
            # couriers answer "unknown key" with 200 or 404: the record keeps which it was
            answer_error.http_status = answer_error.http_status or status
            raise

    def _pause(self, resume_at: datetime) -> None:
        if self._resume_at is None or resume_at > self._resume_at:
            self._resume_at = resume_at
            self.state.pause(self.flow.budget_scope, resume_at)

    def _defer(self, batch: _Batch, reason: str, http_status: int | None = None) -> None:
        self.stats.batches_deferred += 1
        self._record_all(batch, FetchState.DEFERRED, reason, http_status, datetime.now(UTC), None)

    def _fail(
        self,
        batch: _Batch,
        reason: str,
        http_status: int | None,
        fetched_at: datetime,
        started: float,
    ) -> None:
        self.stats.batches_failed += 1
        latency_ms = (time.perf_counter() - started) * 1000
        self._record_all(batch, FetchState.FAILED, reason, http_status, fetched_at, latency_ms)

    def _record_all(
        self,
        batch: _Batch,
        state: FetchState,
        error: str,
        http_status: int | None,
        fetched_at: datetime,
        latency_ms: float | None,
    ) -> None:
        for key in batch.keys:
            self._records.append(
                FetchRecord(
                    key,
                    state,
                    batch.index,
                    http_status,
                    fetched_at,
                    latency_ms,
                    batch.attempts,
                    None,
                    error,
                )
            )


def fetch_to_completion(
    client: CourierClient, keys: Sequence[str], *, ignore_stored_pause: bool = False
) -> FetchResult:
    """Run a fetch from synchronous code (an asset), as cheaply in CPU as the engine allows.

    On uvloop, whose event loop spends less per request than asyncio's own. With the objects
    that exist before the fetch frozen out of the garbage collector: reading answers makes
    millions of short-lived objects, and every collection they trigger would otherwise rescan
    all that Dagster keeps alive in the run process (a tenth of the fetch's CPU).
    """
    gc.freeze()
    try:
        return uvloop.run(client.fetch(keys, ignore_stored_pause=ignore_stored_pause))
    finally:
        gc.unfreeze()


def _backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped at 8 s."""
    return random.uniform(0, min(8.0, 0.5 * 2 ** (attempt - 1)))
