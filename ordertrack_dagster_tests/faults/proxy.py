"""A loopback TCP proxy between the product and SecantusDB that can cut or stall live
connections, as a network fault would (RELIABILITY.md, DB-CUT-MID-BULK and DB-SLOW).

    with TcpProxy(stack.ports["mongodb"]) as proxy:
        env = {**stack_env, "MONGODB_URI": proxy.mongodb_uri()}
        proxy.cut_on(ORDERS_UPDATE)       # every connection sending the orders bulk is cut
        proxy.stall_on(ORDERS_UPDATE)     # or: from then on, no byte moves either way

Only 127.0.0.1, one thread per connection, every socket wait bounded (0.1 s polls), and the
proxy closes every connection and stops its threads on leaving the `with` block or once
its `lifetime` is over, whichever comes first.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

HOST = "127.0.0.1"
POLL = 0.1
#: The start of an `update` command on `orders` in MongoDB's wire protocol (BSON: a string
#: element named `update` whose value is "orders"), as the client sends the orders bulk.
ORDERS_UPDATE = b"\x02update\x00\x07\x00\x00\x00orders\x00"


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
                    if source is client and not self._forward_from_client(data, upstream):
                        return
                    if source is upstream:
                        try:
                            client.sendall(data)
                        except OSError:
                            return

    def _forward_from_client(self, data: bytes, upstream: socket.socket) -> bool:
        """Send the client's bytes on, applying an armed fault; False: the connection ends."""
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
