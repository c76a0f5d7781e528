"""A loopback TCP proxy between the product and SecantusDB that can cut or stall live
connections, as a network fault would (RELIABILITY.md, DB-CUT-MID-BULK and DB-SLOW), and
answer a command in the server's stead, as a replica set would (DB-WRITE-CONCERN,
DB-STEPDOWN).

    with TcpProxy(stack.ports["mongodb"]) as proxy:
        env = {**stack_env, "MONGODB_URI": proxy.mongodb_uri()}
        proxy.cut_on(ORDERS_UPDATE)       # every connection sending the orders bulk is cut
        proxy.stall_on(ORDERS_UPDATE)     # or: from then on, no byte moves either way
        proxy.reply_on(ORDERS_UPDATE, Reply(applied=True, add=WRITE_CONCERN_ERROR))
                                          # or: the server applies it, the client is told
                                          # the write concern failed

Only 127.0.0.1, one thread per connection, every socket wait bounded (0.1 s polls), and the
proxy closes every connection and stops its threads on leaving the `with` block or once
its `lifetime` is over, whichever comes first.
"""

from __future__ import annotations

import contextlib
import itertools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import bson

HOST = "127.0.0.1"
POLL = 0.1
#: The start of an `update` command on `orders` in MongoDB's wire protocol (BSON: a string
#: element named `update` whose value is "orders"), as the client sends the orders bulk.
ORDERS_UPDATE = b"\x02update\x00\x07\x00\x00\x00orders\x00"
OP_MSG = 2013
#: What a replica set adds to a write's answer when a majority did not confirm it in time.
WRITE_CONCERN_ERROR = {
    "writeConcernError": {
        "code": 64,
        "codeName": "WriteConcernFailed",
        "errmsg": "waiting for replication timed out",
        "errInfo": {"wtimeout": True},
    }
}
#: What a former primary answers a write after a step-down: nothing applied.
NOT_WRITABLE_PRIMARY = {
    "ok": 0.0,
    "errmsg": "not primary",
    "code": 10107,
    "codeName": "NotWritablePrimary",
    "errorLabels": ["RetryableWriteError"],
}


def update_of(collection: str) -> bytes:
    """The start of an `update` command on `collection` in the wire protocol (as
    `ORDERS_UPDATE` is for orders)."""
    name = collection.encode() + b"\x00"
    return b"\x02update\x00" + struct.pack("<i", len(name)) + name


@dataclass
class Reply:
    """How the proxy answers a command in the server's stead: `applied`, the command goes to
    the server and its own answer is changed by `add`; otherwise the server never sees it and
    the answer is `add` alone. `times`: for that many commands, then the fault ends."""

    add: dict[str, Any]
    applied: bool = False
    times: int = 1
    given: int = field(default=0, init=False)


_request_ids = itertools.count(1 << 20)


def _read_message(sock: socket.socket, start: bytes = b"") -> bytes:
    """One whole wire-protocol message (its length is its first four bytes)."""
    data = start
    while len(data) < 4 or len(data) < struct.unpack_from("<i", data)[0]:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed mid-message")
        data += more
    return data


def _op_msg_body(message: bytes) -> dict[str, Any]:
    """The body document of an OP_MSG (section kind 0 right after the flags)."""
    opcode = struct.unpack_from("<i", message, 12)[0]
    if opcode != OP_MSG or message[20] != 0:
        raise ValueError(f"not an OP_MSG body (opcode {opcode})")
    size = struct.unpack_from("<i", message, 21)[0]
    return bson.decode(message[21 : 21 + size])


def _op_msg(document: dict[str, Any], response_to: int) -> bytes:
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(document)
    header = struct.pack("<iiii", 16 + len(payload), next(_request_ids), response_to, OP_MSG)
    return header + payload


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`, with faults armed on demand."""

    def __init__(self, target_port: int, lifetime: float = 300.0) -> None:
        self.target_port = target_port
        self.deadline = time.monotonic() + lifetime
        self.cuts = 0  # connections cut on their marker
        self.stalled_at: float | None = None  # monotonic time the stall began
        self._cut_marker: bytes | None = None
        self._keep: int | None = None
        self._stall_marker: bytes | None = None
        self._replies: dict[bytes, Reply] = {}
        self.replied = 0  # commands answered in the server's stead
        self._stalled = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(POLL)
        self.port = int(self._listener.getsockname()[1])

    def mongodb_uri(self, **options: int) -> str:
        """A connection string through the proxy (`directConnection`: the server announces
        its own address, which must not replace the proxy's)."""
        extra = "".join(f"&{name}={value}" for name, value in options.items())
        return f"mongodb://{HOST}:{self.port}/?directConnection=true{extra}"

    # -- faults ----------------------------------------------------------------------------

    def cut_on(self, marker: bytes, keep: int | None = None) -> None:
        """Cut each connection whose client sends `marker`: forward the client's bytes up to
        `keep` bytes past the marker's start (None: the whole piece read, so the server gets
        the command and only its answer is lost), then close both ends."""
        with self._lock:
            self._cut_marker, self._keep = marker, keep

    def stall_on(self, marker: bytes) -> None:
        """Stall every connection, present and future, once a client sends `marker`."""
        with self._lock:
            self._stall_marker = marker

    def reply_on(self, marker: bytes, reply: Reply) -> None:
        """Answer the next `reply.times` commands holding `marker` as `reply` says."""
        with self._lock:
            self._replies[marker] = reply

    def stall(self) -> None:
        """Stall every connection now: nothing is forwarded either way until `release`."""
        with self._lock:
            if not self._stalled.is_set():
                self.stalled_at = time.monotonic()
                self._stalled.set()

    def release(self) -> None:
        """End every fault; the stalled connections are closed (their clients gave up)."""
        with self._lock:
            self._cut_marker = self._stall_marker = None
            self._replies.clear()
            self._stalled.clear()

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> TcpProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while self._running():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            self._spawn(self._pump, client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward both ways until either end closes, a fault cuts it, or the proxy stops."""
        peers = {client: upstream, upstream: client}
        with client, upstream, selectors.DefaultSelector() as selector:
            for sock in peers:
                sock.settimeout(5)
                selector.register(sock, selectors.EVENT_READ)
            was_stalled = False
            while self._running():
                if self._stalled.is_set():
                    was_stalled = True
                    time.sleep(POLL)
                    continue
                if was_stalled:
                    return  # released: a connection that sat through the stall is dropped
                for key, _ in selector.select(timeout=POLL):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if source is client and not self._forward_from_client(data, client, upstream):
                        return
                    if source is upstream:
                        try:
                            client.sendall(data)
                        except OSError:
                            return

    def _armed_reply(self, data: bytes) -> Reply | None:
        with self._lock:
            for marker, reply in self._replies.items():
                if marker in data and reply.given < reply.times:
                    reply.given += 1
                    self.replied += 1
                    return reply
        return None

    def _answer(
        self, data: bytes, reply: Reply, client: socket.socket, upstream: socket.socket
    ) -> bool:
        """Answer one command in the server's stead (after the server applied it, if so)."""
        try:
            message = _read_message(client, data)
            request_id = struct.unpack_from("<i", message, 4)[0]
            answer = dict(reply.add)
            if reply.applied:
                upstream.sendall(message)
                answer = _op_msg_body(_read_message(upstream)) | reply.add
            client.sendall(_op_msg(answer, request_id))
        except (OSError, ValueError):
            return False
        return True

    def _forward_from_client(
        self, data: bytes, client: socket.socket, upstream: socket.socket
    ) -> bool:
        """Send the client's bytes on, applying an armed fault; False: the connection ends."""
        reply = self._armed_reply(data)
        if reply is not None:
            return self._answer(data, reply, client, upstream)
        with self._lock:
            cut, keep, stall = self._cut_marker, self._keep, self._stall_marker
        if stall is not None and stall in data:
            self.stall()
            return True  # held, never sent: the stall began with this command
        if cut is not None and cut in data:
            end = len(data) if keep is None else data.index(cut) + keep
            with contextlib.suppress(OSError):
                upstream.sendall(data[:end])
            with self._lock:
                self.cuts += 1
            return False
        try:
            upstream.sendall(data)
        except OSError:
            return False
        return True
