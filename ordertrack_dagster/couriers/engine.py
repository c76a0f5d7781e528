"""The fetch engine every courier shares: batches, workers, pacing, retries with backoff and
jitter, rate-limit pauses, the request budget and per-batch failure isolation, once.

A courier module only says how to build one request, how to split an answer into one raw
answer per tracking key (or, faster, how to cut each key's JSON text from the answer as it
came), and how to log in; reading one raw answer is its pure half (`answers.py` holds the
helpers for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import uvloop
from pymongo.errors import PyMongoError

from ordertrack_dagster.couriers.answers import decode_json, json_text
from ordertrack_dagster.couriers.budget import SharedBudget
from ordertrack_dagster.couriers.failures import (
    AuthFailure,
    BatchFailure,
    Deferred,
    NotAnswered,
    RateLimited,
)
from ordertrack_dagster.couriers.pauses import (
    DEFAULT_RETRY_AFTER_SECONDS,
    MAX_INLINE_WAIT_SECONDS,
    rate_limited,
)
from ordertrack_dagster.couriers.transport import BodyTooLarge, bounded_request
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.records import FetchRecord, FetchResult, FetchState, FetchStats
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.security.redaction import http_error_text, redact

MAX_ATTEMPTS = 3
#: How much of an unforeseen error's text a record keeps.
MAX_ERROR_CHARS = 300
#: A worker about to wait this long (for its budget or a courier pause) first hands over what
#: the fetch has answered: at Delhivery's real window a run sends its 700 requests in seconds
#: and then waits minutes for the window to free, and 35,000 answers would wait with it.
HAND_OVER_BEFORE_WAIT_SECONDS = 5.0

#: Receives finished records while the fetch goes on (a run writes their statuses meanwhile).
StreamRecords = Callable[[list[FetchRecord]], None]


@dataclass(frozen=True)
class FetchOptions:
    """How one fetch runs, beyond its keys.

    `ignore_stored_pause` (a run forced by ops) starts as if no pause were stored; a rate limit
    met during the run still pauses it. Keys not yet asked when `time_box` closes are
    deferred, so a slow courier cannot hold the run past its max runtime. `stream` gets the
    records finished since its last call every `stream_every` while the fetch goes on (in a
    thread, so the workers go on asking), and before any wait of
    `HAND_OVER_BEFORE_WAIT_SECONDS` or more; it must not raise. A fetch shorter than
    `stream_every` that never waits that long never calls it.
    """

    ignore_stored_pause: bool = False
    time_box: timedelta | None = None
    stream: StreamRecords | None = None
    stream_every: timedelta = timedelta(0)


PLAIN_FETCH = FetchOptions()


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
    #: When its request last went out, after any wait for the budget or a login (until then,
    #: when a worker took it up): its records' `fetched_at` and the start of their latency,
    #: so a wait for the budget is not read as a slow courier. `sent_clock` is 0 while no
    #: request of this attempt went out (a refused login): such records have no latency.
    sent_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    sent_clock: float = 0.0

    def latency_ms(self) -> float | None:
        """Milliseconds since its request went out; None when none did."""
        return (time.perf_counter() - self.sent_clock) * 1000 if self.sent_clock else None


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

    def __init__(self, flow: Flow, state: SharedState, *, max_attempts: int = MAX_ATTEMPTS):
        self.flow = flow
        self.state = state
        self.max_attempts = max_attempts
        self.stats = FetchStats()
        self._resume_at: datetime | None = None
        self._forced_past: datetime | None = None  # the stored pause a forced run ignores
        self._box_closes: float | None = None  # monotonic time past which nothing is sent
        self._budget: SharedBudget  # set when a fetch starts
        self._budget_turn = asyncio.Lock()  # one worker at a time uses the budget
        self._records: list[FetchRecord] = []
        self._stream: StreamRecords | None = None
        self._streamed = 0  # records already handed to `_stream`
        self._streamed_at = 0.0  # monotonic time of the last hand-over
        self._stream_every = 0.0
        self._streaming = False
        self._hand_over: asyncio.Task[None] | None = None  # one started before a long wait
        #: Notes a courier module leaves on one key's answer (e.g. duplicates resolved).
        self.answer_notes: dict[str, str] = {}
        self._tls: ssl.SSLContext | None = None

    # -- what a courier module provides -------------------------------------------------

    @abstractmethod
    def build_request(self, keys: Sequence[str]) -> Request:
        """The request that asks about these keys."""

    @abstractmethod
    def split_answer(self, keys: Sequence[str], payload: Any) -> dict[str, Any]:
        """One raw answer per key that was answered; raise BatchFailure for a batch error."""

    def answer_texts(self, keys: Sequence[str], response: httpx.Response) -> dict[str, str]:
        """Each answered key's answer as JSON text, as the records keep it: the body read and
        split (`split_answer`), each answer written back as text. A courier whose answers can
        be cut from the body as they came overrides this, to skip writing them again."""
        answers = self.split_answer(keys, decode_json(response))
        return {key: json_text(answer) for key, answer in answers.items()}

    async def auth_headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        """Headers that authenticate a request; a login happens here, once, when needed."""
        return {}

    async def on_unauthorized(self, http: httpx.AsyncClient, rejected: dict[str, str]) -> bool:
        """React to a 401; True when a fresh token makes a retry worthwhile."""
        return False

    # -- the engine ---------------------------------------------------------------------

    async def fetch(self, keys: Sequence[str], options: FetchOptions = PLAIN_FETCH) -> FetchResult:
        """Ask about every key (as `options` say); every key gets exactly one FetchRecord."""
        self._stream, self._streamed_at = options.stream, time.monotonic()
        self._stream_every = options.stream_every.total_seconds()
        if options.time_box is not None:
            self._box_closes = time.monotonic() + options.time_box.total_seconds()
        stored = self.state.paused_until(self.flow.budget_scope)
        self._resume_at = None if options.ignore_stored_pause else stored
        self._forced_past = stored if options.ignore_stored_pause else None
        self._budget = SharedBudget(
            self.state.budget_window(self.flow.budget_scope),
            self.flow.rate_budget,
            min_block=self.flow.workers,
        )
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
            try:
                await asyncio.gather(*workers)
            finally:
                if self._hand_over is not None:  # the fetch's answers written before it ends
                    await self._hand_over
                try:
                    self._budget.close()
                except PyMongoError as error:  # the answers are in: this only over-counts
                    self.stats.budget_unsettled = redact(str(error))
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
            await self._run_batch(http, queue, queue.get_nowait())
            await self._stream_finished()
            if self.flow.pause_seconds and not queue.empty():
                await asyncio.sleep(self.flow.pause_seconds)

    async def _stream_finished(self, *, now: bool = False) -> None:
        """Hand the records finished since the last hand-over to `stream` when it is time (or
        `now`): in a thread, so the other workers go on asking while this one waits for it."""
        if self._stream is None or self._streaming or len(self._records) == self._streamed:
            return
        if not now and time.monotonic() - self._streamed_at < self._stream_every:
            return
        self._streaming = True
        chunk = self._records[self._streamed :]
        self._streamed, self._streamed_at = len(self._records), time.monotonic()
        try:
            await asyncio.to_thread(self._stream, chunk)
        finally:
            self._streaming = False

    async def _wait(self, seconds: float) -> None:
        """Wait before a request; a long wait starts handing over the answers the fetch has,
        beside the wait: a hand-over of a whole burst may outlast the wait, and this worker's
        next request must not wait for it."""
        if seconds >= HAND_OVER_BEFORE_WAIT_SECONDS and (
            self._hand_over is None or self._hand_over.done()
        ):
            self._hand_over = asyncio.create_task(self._stream_finished(now=True))
        await asyncio.sleep(seconds)

    async def _permit(self) -> None:
        """Hold one request (data, retry, re-send or login) until a pause is over and the
        shared budget covers it; raise Deferred when that is longer than a run waits."""
        while True:
            self._within_time_box(0.0)
            if self._resume_at is not None:
                wait = (self._resume_at - datetime.now(UTC)).total_seconds()
                if wait > MAX_INLINE_WAIT_SECONDS:
                    raise Deferred(f"courier paused until {self._resume_at:%Y-%m-%d %H:%M:%S}Z")
                if wait > 0:
                    self._within_time_box(wait)
                    await self._wait(wait)
                    continue
            if self._budget.pause_hinted() and self._adopt_stored_pause():
                continue  # another process met a limit: this request waits for it too
            wait = await self._take_budget()
            if wait is None:
                return
            # a run waits for its budget as long as its time box allows (contract §1): the
            # next run would only wait for the same window, after its own start-up
            if self._box_closes is None and wait > MAX_INLINE_WAIT_SECONDS:
                raise Deferred("request budget for this window is used up")
            self._within_time_box(wait, "request budget frees only after the run's time box")
            await self._wait(wait)

    async def _take_budget(self) -> float | None:
        """`SharedBudget.take`, with a reservation's MongoDB round trip in a thread: on the
        event loop it would stop every worker, and the answers coming in, while MongoDB serves
        the streamed writes queued ahead of it. Workers take their turn, as the budget is
        this run's one view of the limit (one round trip at a time)."""
        async with self._budget_turn:
            if self._budget.needs_round_trip():
                return await asyncio.to_thread(self._budget.take)
            return self._budget.take()

    def _within_time_box(
        self, wait: float, reason: str = "the run's time for asking the courier is used up"
    ) -> None:
        """Raise Deferred when a request sent after `wait` seconds would start past the box."""
        if self._box_closes is not None and time.monotonic() + wait >= self._box_closes:
            raise Deferred(reason)

    def _adopt_stored_pause(self) -> bool:
        """Take over a pause another process stored; True when it lies beyond ours."""
        stored = self.state.paused_until(self.flow.budget_scope)
        known = max(filter(None, (self._resume_at, self._forced_past)), default=None)
        if stored is None or (known is not None and stored <= known):
            return False  # none, or one this run already honours or was forced past
        self._resume_at = stored
        return True

    async def _run_batch(
        self, http: httpx.AsyncClient, queue: asyncio.Queue[_Batch], batch: _Batch
    ) -> None:
        batch.attempts += 1
        batch.sent_at, batch.sent_clock = datetime.now(UTC), 0.0
        http_status: int | None = None
        try:
            http_status, texts = await self._send(http, batch)
            latency_ms = batch.latency_ms()
            records = [
                self.answer_record(
                    batch, key, texts.get(key), http_status, batch.sent_at, latency_ms
                )
                for key in batch.keys
            ]
        except NotAnswered as reason:
            self._record_all(
                batch,
                FetchState.NOT_ANSWERED,
                f"not answered: {reason}",
                reason.http_status,
                batch.sent_at,
                batch.latency_ms(),
            )
            return
        except Deferred as reason:
            self._defer(batch, str(reason))
            return
        except RateLimited as limited:
            self.stats.rate_limited += 1
            self._pause(limited.resume_at)
            self._defer(batch, str(limited), http_status=limited.http_status)
            return
        except AuthFailure as failure:
            self._fail(batch, f"login failed: {failure}", None)
            return
        except BatchFailure as failure:
            if failure.retryable and batch.attempts < self.max_attempts:
                self.stats.retries += 1
                await asyncio.sleep(_backoff_seconds(batch.attempts))
                await self._run_batch(http, queue, batch)
                return
            self._fail(batch, str(failure), failure.http_status)
            return
        except Exception as error:  # noqa: BLE001 - any answer that breaks reading fails its batch
            reason = redact(f"unreadable answer: {type(error).__name__}: {error}")
            self._fail(batch, reason[:MAX_ERROR_CHARS], http_status)
            return
        self._records.extend(records)

    def answer_record(
        self,
        batch: _Batch,
        key: str,
        text: str | None,
        http_status: int,
        fetched_at: datetime,
        latency_ms: float | None,
    ) -> FetchRecord:
        """The record of one key asked in `batch` (`text`: its answer, None if not answered)."""
        return FetchRecord(
            tracking_key=key,
            state=FetchState.NOT_ANSWERED if text is None else FetchState.ANSWERED,
            batch=batch.index,
            http_status=http_status,
            fetched_at=fetched_at,
            latency_ms=latency_ms,
            attempts=batch.attempts,
            raw=text,
            error=self.answer_notes.get(key) if text is not None else "asked but not answered",
        )

    async def _send(self, http: httpx.AsyncClient, batch: _Batch) -> tuple[int, dict[str, str]]:
        """One request (and at most one re-authentication); each answered key's JSON text."""
        spec = self.build_request(batch.keys)
        for attempt in range(2):
            headers = await self.auth_headers(http)
            await self._permit()
            batch.sent_at, batch.sent_clock = datetime.now(UTC), time.perf_counter()
            self.stats.requests += 1
            try:
                response = await bounded_request(
                    http,
                    spec.method,
                    request_url(spec),
                    deadline_seconds=self.flow.timeout_seconds,
                    json=spec.json,
                    headers=headers,
                )
            except (httpx.TimeoutException, TimeoutError):
                raise BatchFailure(
                    f"no complete answer within {self.flow.timeout_seconds:g} s", retryable=True
                ) from None
            except BodyTooLarge as refused:
                raise BatchFailure(
                    str(refused), retryable=False, http_status=refused.http_status
                ) from None
            except httpx.LocalProtocolError as error:
                raise BatchFailure(http_error_text(error), retryable=False) from None
            except httpx.TransportError as error:
                raise BatchFailure(
                    f"connection failed: {http_error_text(error)}", retryable=True
                ) from None
            except httpx.HTTPError as error:  # a body that does not decode (bad gzip, ...)
                raise BatchFailure(
                    f"unreadable body: {http_error_text(error)}", retryable=False
                ) from None
            if (
                response.status_code == 401
                and attempt == 0
                and await self.on_unauthorized(http, headers)
            ):
                continue
            return response.status_code, self.read_answer(response, batch.keys)
        raise AssertionError("unreachable")

    def _raise_if_told_to_stop(self, response: httpx.Response, now: datetime) -> None:
        """A 429 or a block status (a firewall's 403) pauses the courier, whatever was asked."""
        if response.status_code == 429:
            raise rate_limited(response, now)
        if response.status_code in self.block_statuses:
            raise RateLimited(now + timedelta(seconds=self.block_seconds), response.status_code)

    def read_answer(self, response: httpx.Response, keys: Sequence[str]) -> dict[str, str]:
        """Each answered key's JSON text from one HTTP answer, or why there is none (a pause,
        a failed batch); public so the benchmark can time the reading alone."""
        status = response.status_code
        self._raise_if_told_to_stop(response, datetime.now(UTC))
        if status >= 500:
            raise BatchFailure(f"HTTP {status}", retryable=True, http_status=status)
        if status == 401:
            raise BatchFailure("HTTP 401: credentials refused", retryable=False, http_status=401)
        try:
            return self.answer_texts(keys, response)
        except (NotAnswered, BatchFailure) as answer_error:
            # couriers answer "unknown key" with 200 or 404: the record keeps which it was
            answer_error.http_status = answer_error.http_status or status
            raise

    def _pause(self, resume_at: datetime) -> None:
        if self._resume_at is None or resume_at > self._resume_at:
            self._resume_at = resume_at
            self.state.pause(self.flow.budget_scope, resume_at)
            self._budget.note_pause(resume_at)

    def _defer(self, batch: _Batch, reason: str, http_status: int | None = None) -> None:
        self.stats.batches_deferred += 1
        self._record_all(batch, FetchState.DEFERRED, reason, http_status, datetime.now(UTC), None)

    def _fail(self, batch: _Batch, reason: str, http_status: int | None) -> None:
        self.stats.batches_failed += 1
        self._record_all(
            batch, FetchState.FAILED, reason, http_status, batch.sent_at, batch.latency_ms()
        )

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
    client: CourierClient, keys: Sequence[str], options: FetchOptions = PLAIN_FETCH
) -> FetchResult:
    """Run a fetch from synchronous code (an asset), as cheaply in CPU as the engine allows.

    On uvloop, whose event loop spends less per request than asyncio's own. With the objects
    that exist before the fetch frozen out of the garbage collector: reading answers makes
    millions of short-lived objects, and every collection they trigger would otherwise rescan
    all that Dagster keeps alive in the run process (a tenth of the fetch's CPU).
    """
    gc.freeze()
    try:
        return uvloop.run(client.fetch(keys, options))
    finally:
        gc.unfreeze()


def _backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped at 8 s."""
    return random.uniform(0, min(8.0, 0.5 * 2 ** (attempt - 1)))
