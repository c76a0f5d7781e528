"""Faults queued through the admin API for a courier endpoint's next requests: answers that
replace the courier's (server errors, HTML, XML, 429, 403, 401, empty) and ones that spoil it
(a timeout, truncated JSON)."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass

from starlette.responses import Response

from ordertrack_dagster.devstack.simulator.base import CourierApi
from ordertrack_dagster.devstack.simulator.ratelimit import retry_after

FAULT_KINDS = (
    "http_500",
    "http_502",
    "http_503",
    "timeout",
    "html",
    "xml",
    "truncated_json",
    "rate_limited",
    "forbidden",
    "token_expired",
    "empty",
)
"""Fault kinds the admin API can queue for a courier's next requests."""

_FIREWALL_PAGE = (
    "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
    "<center><h1>403 Forbidden</h1></center>\r\n"
    "<hr><center>Request blocked by web application firewall</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(slots=True)
class Fault:
    kind: str
    remaining: int
    seconds: float
    retry_after: float
    retry_after_format: str


def firewall_block() -> Response:
    """A web application firewall's refusal (Delhivery's answer over its quota, not a 429)."""
    return Response(_FIREWALL_PAGE, status_code=403, media_type="text/html")


class FaultQueues:
    """Queued faults by (courier, endpoint); each fault serves `remaining` requests."""

    def __init__(self) -> None:
        self._queues: dict[tuple[str, str], deque[Fault]] = defaultdict(deque)

    def clear(self) -> None:
        self._queues.clear()

    def add(self, courier: str, endpoint: str, fault: Fault) -> None:
        self._queues[courier, endpoint].append(fault)

    def take(self, courier: str, endpoint: str) -> Fault | None:
        queue = self._queues.get((courier, endpoint))
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        return fault


def replacement(api: CourierApi, fault: Fault) -> Response | None:
    """The answer of a fault that replaces the courier's answer entirely; None for a fault
    that spoils the real answer instead (`spoil`)."""
    match fault.kind:
        case "timeout" | "truncated_json":
            return None
        case "http_500":
            return Response("Internal Server Error", status_code=500, media_type="text/plain")
        case "http_502" | "http_503":
            code = int(fault.kind[-3:])
            title = f"{code} {'Bad Gateway' if code == 502 else 'Service Temporarily Unavailable'}"
            page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            return Response(page, status_code=code, media_type="text/html")
        case "html":
            page = "<!DOCTYPE html><html><body><h1>Scheduled maintenance</h1></body></html>"
            return Response(page, media_type="text/html")
        case "xml":
            doc = '<?xml version="1.0"?><Error><Code>ServiceUnavailable</Code></Error>'
            return Response(doc, media_type="application/xml")
        case "rate_limited":
            after = retry_after(fault.retry_after, fault.retry_after_format)
            return api.error(429, "Too Many Requests", {"Retry-After": after})
        case "forbidden":
            return firewall_block()
        case "token_expired":
            return api.error(401, "Token expired")
        case _:  # "empty"
            return Response(b"", media_type="application/json")


async def spoil(fault: Fault, response: Response) -> Response:
    """The real answer, late by `fault.seconds` or cut in half."""
    if fault.kind == "timeout":
        await asyncio.sleep(fault.seconds)
        return response
    body = bytes(response.body)
    return Response(body[: len(body) // 2], response.status_code, media_type="application/json")
