"""Connections of the HTTP endpoint: one I/O thread, a bounded pool of workers, deadlines.

A thread per connection lets any client hold a thread for as long as it trickles bytes
(106 slow sockets held 110 threads). Here one I/O thread does every connection's socket
work without blocking: the TLS handshake, reading the request head, writing the response.
Only a complete head reaches a worker (a fixed pool), which runs the handler against the
buffered head and collects the response in memory; the I/O thread sends it. So a slow
client costs a socket and a small buffer, never a thread, and Prometheus's scrape, whose
head arrives at once, goes straight to a free worker however many slow sockets are open.

Every connection has a deadline (the head within ``HEAD_TIMEOUT_SECONDS`` of the accept,
TLS handshake included; the response within ``RESPONSE_TIMEOUT_SECONDS``), and at most
``MAX_CONNECTIONS`` are open: a new one then evicts the oldest still sending its head.
Whatever a client does wrong (hangs up, fails the handshake, times out) ends its
connection with one count in ``ClientErrors`` and one debug line, never a traceback.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

log = logging.getLogger("confusion_exporter.web")

HEAD_TIMEOUT_SECONDS = 10.0
RESPONSE_TIMEOUT_SECONDS = 30.0
MAX_HEAD_BYTES = 64 * 1024
MAX_CONNECTIONS = 512
WORKERS = 8
_CHUNK = 64 * 1024

CLIENT_ERROR_REASONS = (
    "tls_handshake",  # the TLS handshake failed or the client left during it
    "disconnect",  # the client closed or reset the connection before the response was sent
    "head_timeout",  # no complete request head within HEAD_TIMEOUT_SECONDS
    "head_too_large",  # a request head over MAX_HEAD_BYTES
    "response_timeout",  # the client did not read the response within RESPONSE_TIMEOUT_SECONDS
    "evicted",  # closed while sending its head, to make room: MAX_CONNECTIONS were open
)

_INTERNAL_ERROR = (
    b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 22\r\nConnection: close\r\n\r\ninternal server error\n"
)
_TIMEOUT = b"HTTP/1.0 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOO_LARGE = b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ClientErrors:
    """Connections ended by the client's doing, counted by reason (exported on /metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(CLIENT_ERROR_REASONS, 0)

    def add(self, reason: str, client: Any, detail: str = "") -> None:
        with self._lock:
            self._counts[reason] += 1
        fields = {"reason": reason, "client": _peer(client)}
        if detail:
            fields["detail"] = detail[:200]
        log.debug("client connection ended", extra={"fields": fields})

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if isinstance(client, tuple) and len(client) >= 2 else str(client)


class _Response(io.RawIOBase):
    """The handler's ``wfile``: keeps the parts it is given (no copy of a pre-rendered
    exposition) for the I/O thread to send."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        part = data if isinstance(data, bytes) else bytes(data)
        self.parts.append(part)
        return len(part)


class _Request:
    """What a worker gets: the buffered request head and where the response goes."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.response = _Response()


class BufferedRequestHandler(BaseHTTPRequestHandler):
    """A request handler that reads the head the I/O thread buffered and writes into memory;
    it never touches the socket."""

    request: _Request

    def setup(self) -> None:
        self.rfile = io.BytesIO(self.request.head)  # type: ignore[assignment]
        self.wfile = self.request.response  # type: ignore[assignment]

    def finish(self) -> None:
        self.rfile.close()


class _Connection:
    __slots__ = ("sock", "client", "phase", "deadline", "buffer", "parts", "offset", "events")

    def __init__(self, sock: socket.socket, client: Any, phase: str) -> None:
        self.sock = sock
        self.client = client
        self.phase = phase  # handshake -> head -> working -> writing
        self.deadline = time.monotonic() + HEAD_TIMEOUT_SECONDS
        self.buffer = bytearray()
        self.parts: collections.deque[memoryview] = collections.deque()
        self.offset = 0
        self.events = 0  # what the selector waits for on this socket (0: not registered)


def _head_complete(buffer: bytearray) -> bool:
    # http.server accepts bare LF line ends too
    return b"\r\n\r\n" in buffer or b"\n\n" in buffer


class _IOLoop(threading.Thread):
    """Owns every accepted socket: non-blocking handshake, head, response, deadline."""

    def __init__(
        self,
        context: ssl.SSLContext | None,
        work: Callable[[_Connection], None],
        errors: ClientErrors,
    ) -> None:
        super().__init__(name="http-io", daemon=True)
        self._context = context
        self._work = work
        self._errors = errors
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._open: dict[int, _Connection] = {}  # in accept order: the oldest first
        self._stopping = False

    # -- called from other threads --------------------------------------------------------

    def accepted(self, sock: socket.socket, client: Any) -> None:
        self._post(("accepted", (sock, client)))

    def respond(self, conn: _Connection, parts: list[bytes]) -> None:
        self._post(("respond", (conn, parts)))

    def stop(self) -> None:
        self._post(("stop", None))
        self.join(timeout=5)

    def _post(self, item: tuple[str, Any]) -> None:
        self._inbox.append(item)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_write.send(b"\0")

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(self._timeout()):
                    if key.data is None:
                        self._drain_wakeups()
                    else:
                        self._guarded(self._advance, key.data)
                self._take_inbox()
                self._expire()
        finally:
            for conn in list(self._open.values()):
                self._close(conn)
            self._selector.close()
            self._wake_read.close()
            self._wake_write.close()

    def _guarded(self, step: Callable[..., None], conn: _Connection, *args: Any) -> None:
        """A bug met by one connection closes that connection, not the loop serving all."""
        try:
            step(conn, *args)
        except Exception as error:
            log.error(
                "connection failed",
                extra={
                    "fields": {
                        "client": _peer(conn.client),
                        "error": type(error).__name__,
                        "detail": str(error)[:300],
                    }
                },
            )
            with contextlib.suppress(Exception):
                self._close(conn)

    def _timeout(self) -> float | None:
        waiting = [c.deadline for c in self._open.values() if c.phase != "working"]
        return max(0.0, min(waiting) - time.monotonic()) if waiting else None

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_read.recv(4096):
                pass

    def _take_inbox(self) -> None:
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "stop":
                self._stopping = True
            elif kind == "accepted":
                sock, client = payload
                try:
                    self._admit(sock, client)
                except Exception as error:
                    log.error(
                        "connection failed",
                        extra={"fields": {"client": _peer(client), "error": type(error).__name__}},
                    )
                    sock.close()
            elif kind == "respond":
                self._guarded(self._start_response, *payload)

    def _start_response(self, conn: _Connection, parts: list[bytes]) -> None:
        if conn.phase == "closed":
            return
        conn.phase = "writing"
        conn.deadline = time.monotonic() + RESPONSE_TIMEOUT_SECONDS
        conn.parts.extend(memoryview(p) for p in parts if p)
        self._advance(conn)

    def _admit(self, raw: socket.socket, client: Any) -> None:
        if len(self._open) >= MAX_CONNECTIONS:
            oldest = next((c for c in self._open.values() if c.phase in ("handshake", "head")), None)
            if oldest is None:  # every slot is a request being answered: refuse the newcomer
                raw.close()
                self._errors.add("evicted", client, "all connections busy")
                return
            self._end(oldest, "evicted")
        raw.setblocking(False)
        sock: socket.socket = raw
        phase = "head"
        if self._context is not None:
            try:
                sock = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as error:
                raw.close()
                self._errors.add("tls_handshake", client, str(error))
                return
            phase = "handshake"
        conn = _Connection(sock, client, phase)
        self._open[id(conn)] = conn
        self._guarded(self._advance, conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._open.values() if c.phase != "working" and c.deadline <= now]:
            self._guarded(self._expire_one, conn)

    def _expire_one(self, conn: _Connection) -> None:
        if conn.phase == "closed":
            return
        if conn.phase == "head":
            self._try_send(conn, _TIMEOUT)
            self._end(conn, "head_timeout")
        elif conn.phase == "handshake":
            self._end(conn, "head_timeout", "during the TLS handshake")
        else:
            self._end(conn, "response_timeout")

    def _advance(self, conn: _Connection) -> None:
        """Move a connection on as far as its socket allows without blocking."""
        if conn.phase == "handshake":
            self._handshake(conn)
        if conn.phase == "head":
            self._read_head(conn)
        elif conn.phase == "writing":
            self._write(conn)

    def _handshake(self, conn: _Connection) -> None:
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._wait(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._wait(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as error:  # SSLError and SSLEOFError are OSErrors
            self._end(conn, "tls_handshake", _describe(error))
            return
        conn.phase = "head"

    def _read_head(self, conn: _Connection) -> None:
        while True:
            try:
                data = conn.sock.recv(_CHUNK)
            except (ssl.SSLWantReadError, BlockingIOError):
                self._wait(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._wait(conn, selectors.EVENT_WRITE)
                return
            except OSError as error:
                self._end(conn, "disconnect", _describe(error))
                return
            if not data:
                self._end(conn, "disconnect", "closed before a complete request head")
                return
            conn.buffer += data
            if _head_complete(conn.buffer):
                conn.phase = "working"
                self._wait(conn, 0)
                self._work(conn)
                return
            if len(conn.buffer) > MAX_HEAD_BYTES:
                self._try_send(conn, _TOO_LARGE)
                self._end(conn, "head_too_large")
                return

    def _write(self, conn: _Connection) -> None:
        while conn.parts:
            part = conn.parts[0]
            try:
                # The same chunk is offered again after a "want": OpenSSL requires it.
                sent = conn.sock.send(part[conn.offset : conn.offset + _CHUNK])
            except (ssl.SSLWantWriteError, BlockingIOError):
                self._wait(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._wait(conn, selectors.EVENT_READ)
                return
            except OSError as error:
                self._end(conn, "disconnect", _describe(error))
                return
            conn.offset += sent
            if conn.offset >= len(part):
                conn.parts.popleft()
                conn.offset = 0
        self._end(conn, None)

    def _wait(self, conn: _Connection, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self._selector.register(conn.sock, events, conn)
        elif events == 0:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _try_send(self, conn: _Connection, data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.sock.send(data)

    def _end(self, conn: _Connection, reason: str | None, detail: str = "") -> None:
        self._close(conn)
        if reason is not None:
            self._errors.add(reason, conn.client, detail)

    def _close(self, conn: _Connection) -> None:
        conn.phase = "closed"
        self._wait(conn, 0)
        self._open.pop(id(conn), None)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.sock.close()


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return f"{type(error).__name__}: {reason or getattr(error, 'strerror', None) or error}"


class EndpointServer(HTTPServer):
    """``HTTPServer`` whose connections are served by an I/O thread and ``WORKERS`` workers
    (see the module's docstring); ``serve_forever``, ``shutdown`` and ``server_close`` keep
    their meaning."""

    request_queue_size = 128  # the accept backlog: a burst of connections waits, not refused

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BufferedRequestHandler],
        context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(address, handler)
        self.client_errors = ClientErrors()
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="http-worker")
        self._loop = _IOLoop(context, self._submit, self.client_errors)
        self._loop.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        self._loop.accepted(request, client_address)

    def _submit(self, conn: _Connection) -> None:
        self._workers.submit(self._run_handler, conn)

    def _run_handler(self, conn: _Connection) -> None:
        request = _Request(bytes(conn.buffer))
        try:
            self.RequestHandlerClass(request, conn.client, self)  # type: ignore[arg-type]
            parts = request.response.parts
        except Exception as error:  # a bug must cost one request a 500, never the client a traceback
            first_line = request.head.split(b"\n", 1)[0].decode("latin-1").strip()
            log.error(
                "request failed",
                extra={
                    "fields": {
                        "request": first_line[:200],
                        "error": type(error).__name__,
                        "detail": str(error)[:300],
                    }
                },
            )
            parts = [_INTERNAL_ERROR]  # nothing was sent yet, so the reply is a clean 500
        self._loop.respond(conn, parts)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback here; the accept path has nothing a user must see
        log.warning("connection failed", extra={"fields": {"client": _peer(client_address)}})

    def server_close(self) -> None:
        super().server_close()
        # socketserver calls this when bind() fails too, before the loop and workers exist
        # (a port in use must stay a clear exit 2, not an AttributeError).
        if hasattr(self, "_loop"):
            self._loop.stop()
            self._workers.shutdown(wait=False, cancel_futures=True)
