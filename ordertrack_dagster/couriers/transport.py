"""One courier request with hard bounds: a total deadline and a body size limit.

httpx's timeout applies to each read, so a server trickling a byte a second holds a worker
forever; and it reads a whole body into memory, however large, before anyone looks at it.
Here the whole exchange has one deadline, and a body is refused as soon as it (decoded)
passes the limit, or before reading when its Content-Length says it would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

#: Fifty waybills answer in well under a megabyte; anything this large is not an answer.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Headers that describe the body as it travelled, not the decoded bytes we keep.
_TRANSFER_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class BodyTooLarge(Exception):
    """The answer is larger than MAX_BODY_BYTES; it was not read to the end."""

    def __init__(self, http_status: int, limit: int):
        super().__init__(f"HTTP {http_status} with a body over {limit:,} bytes: refused unread")
        self.http_status = http_status


async def bounded_request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    deadline_seconds: float,
    max_bytes: int = MAX_BODY_BYTES,
    **options: Any,
) -> httpx.Response:
    """The response with its (decoded) body read, within `deadline_seconds` in total.

    Raises TimeoutError past the deadline, BodyTooLarge, and httpx's errors (a body that
    does not decode as its Content-Encoding says raises httpx.DecodingError).
    """
    async with asyncio.timeout(deadline_seconds):
        async with http.stream(method, url, **options) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise BodyTooLarge(response.status_code, max_bytes)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge(response.status_code, max_bytes)
                chunks.append(chunk)
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in _TRANSFER_HEADERS
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=b"".join(chunks), request=response.request
    )
