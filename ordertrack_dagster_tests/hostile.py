"""A hostile HTTP server on loopback: answers no simulator would give, byte for byte.

Each request is handed to a function that returns a `Raw` answer: any status line, any
headers (a `Content-Encoding` that lies, a `Retry-After` of `inf`), a body given whole or
as chunks written with a pause between them (a trickle). Nothing is corrected on the way:
the bytes go to the socket as given. Requests are kept, so a test can check what reached
the server (and that a refused request never did).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Raw:
    """One answer, sent as is. `chunks` (with `pause` seconds before each) replaces `body`."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunks: Iterable[bytes] | None = None
    pause: float = 0.0
    content_length: bool = True  # False: no Content-Length, the body ends with the connection

    def head(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} Hostile", *(f"{k}: {v}" for k, v in self.headers)]
        if self.chunks is None and self.content_length:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Handler = Callable[[Seen], Raw]


def json_answer(body: bytes | str, status: int = 200, **headers: str) -> Raw:
    data = body.encode() if isinstance(body, str) else body
    return Raw(status, [("Content-Type", "application/json"), *headers.items()], data)


def _read_request(stream: socket.socket) -> Seen | None:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = stream.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(rest) < length:
        piece = stream.recv(65536)
        if not piece:
            break
        rest += piece
    parts = urlsplit(target)
    return Seen(method, parts.path, parse_qs(parts.query), headers, rest[:length])


class HostileServer:
    """A threaded server on 127.0.0.1; `url` is its base URL, `seen` what it received."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.seen: list[Seen] = []
        outer = self

        class _Connection(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                seen = _read_request(self.request)
                if seen is None:
                    return
                outer.seen.append(seen)
                answer = outer.handler(seen)
                try:
                    self.request.sendall(answer.head())
                    if answer.chunks is None:
                        self.request.sendall(answer.body)
                        return
                    for chunk in answer.chunks:
                        time.sleep(answer.pause)
                        self.request.sendall(chunk)
                except OSError:  # the client gave up (deadline, size limit): expected
                    pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Connection)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def hostile_server(handler: Handler) -> Iterator[HostileServer]:
    with HostileServer(handler) as server:
        yield server
