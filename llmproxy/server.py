"""The HTTP server's own limits against hostile clients: uvicorn's httptools protocol with a bound on the request
head (its size, its number of headers, the time it may take to arrive) and on the connections a worker holds, and
the gunicorn worker class that serves with it (named in gunicorn.conf.py).

Each limit is enforced before a request reaches the app, so a refused request is never proxied, counted or logged
as one. The gunicorn master imports this module to find the worker class: it must not import Django (the worker
reads its settings after loading the app, which sets Django up).
"""

import asyncio
import contextlib
import gc
import logging
import resource
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate

import httptools
from gunicorn.arbiter import Arbiter
from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn_worker import UvicornWorker

from llmproxy.balance import OneAtATime

logger = logging.getLogger("uvicorn.error")

# Descriptors a worker needs besides its connections: listening sockets, log and metrics files, the event loop's
# own, static files being served (database and idle upstream connections are added from the settings).
BASE_DESCRIPTORS = 128
# A connection may hold three: its socket, an upstream connection and a request body spooled to a temporary file.
DESCRIPTORS_PER_CONNECTION = 3
# The request line's bytes besides its URL and method (two spaces, `HTTP/1.1`, CRLF) and the blank line ending the
# head; each header line adds `: ` and CRLF to its name and value.
REQUEST_LINE_EXTRA = 12 + 2
HEADER_LINE_EXTRA = 4
# Allocations (less deallocations) between two collections of the youngest generation (Python's default: 700).
# A request makes and frees thousands of objects, most freed by reference counting; with 700 the collector ran about
# every 16th request, and a full collection walked all Django had loaded. Measured at c=32 (SQLite), per worker:
# 420 collections, 65 µs a request; with what was loaded frozen and this threshold, 25 collections, 20 µs.
GC_YOUNG_THRESHOLD = 7000


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_headers: int
    head_timeout: float
    max_connections: int


def raise_descriptor_limit() -> None:
    """Raise the soft limit on open descriptors to the hard one (as far as an unprivileged process may), so a
    common soft limit of 1,024 does not cap the connections. Where the system refuses (macOS, whose hard limit is
    "unlimited" but not really), the soft limit stays and the connection cap follows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _answer(status: int, text: bytes) -> bytes:
    """A whole response that ends the connection, for a client the app never sees."""
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(text),
            b"connection: close\r\n\r\n",
            text,
        )
    )


HEAD_TOO_LARGE = _answer(431, b"Request header fields too large.\n")
BUSY = _answer(503, b"Too many connections; try again later.\n")


class DirectBody:
    """A started chunked response's body parts written to its connection at once, from a callback of the event
    loop: what uvicorn's `send` does with an `http.response.body` message that has more to come, without a task
    having to wake up to send it (a stream's chunks are relayed from the upstream connection's callback,
    `llmproxy.http11`'s `_Body.pump`). `writable` says whether it may write now; if not (the client is not reading,
    the response is not chunked, or it is over), the caller sends with `send`, which waits as uvicorn does."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def writable(self) -> bool:
        cycle = self._cycle
        return cycle.disconnected or (
            cycle.chunked_encoding is True and not cycle.response_complete and not cycle.flow.write_paused
        )

    async def start(self, send, start: dict, first: bytes) -> None:
        """The response's head and its first body part (more to come), made by `send` as uvicorn makes them, in
        one write: one segment, so the client wakes once for both rather than once for each."""
        cycle = self._cycle
        transport, gathered = cycle.transport, _Gathered()
        cycle.transport = gathered
        try:
            await send(start)
            await send({"type": "http.response.body", "body": first, "more_body": True})
        finally:
            cycle.transport = transport
        if not cycle.disconnected:
            transport.write(b"".join(gathered.parts))

    def write(self, data: bytes) -> None:
        """One part (not empty), once `writable` said yes; dropped if the client has gone, as `send` drops it."""
        cycle = self._cycle
        if not cycle.disconnected:
            cycle.transport.write(b"%x\r\n%b\r\n" % (len(data), data))


class _Gathered:
    """Stands in for a connection's transport while a response's first writes are gathered (`DirectBody.start`)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


def direct_body(send) -> DirectBody | None:
    """For an ASGI `send` that is uvicorn's httptools protocol's own (how this server serves), its `DirectBody`."""
    cycle = getattr(send, "__self__", None)
    return DirectBody(cycle) if isinstance(cycle, RequestResponseCycle) else None


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that has been answered and closed."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the limits of `limits` (set by the worker, one per process).

    The head's clock starts when the connection is made and, on a kept-alive connection, at the first byte of each
    later request (an idle connection between requests stays under the keep-alive timeout); it stops when the head
    is complete. The head's size is counted twice: exactly, from the URL and the headers the parser hands over
    (checked when the head is complete), and in raw bytes received while a head is in progress, so a head that
    never ends (one endless header, which the parser would buffer whole) is refused once it passes the limit.
    """

    limits: Limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self._refuse(BUSY)
            return
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _start_head_clock(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)
        self._head_received = 0

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.transport.close()

    def _refuse(self, answer: bytes) -> None:
        self.transport.write(answer)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the raw count of a head in progress, and quiet about a request already refused."""
        self._unset_keepalive_if_required()
        if self._head_timer is not None:
            self._head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.transport.is_closing():
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_timer is not None and self._head_received > self.limits.max_header_bytes:
            self._refuse(HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        date_headers(self.server_state, self.config)
        self._header_bytes = 0
        if self._head_timer is None:
            self._start_head_clock()

    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's (inlined: the parser calls this for every header), counting the header's bytes."""
        self._header_bytes += len(name) + len(value)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_timer.cancel()
        self._head_timer = None
        headers = len(self.headers)
        size = len(self.parser.get_method()) + len(self.url) + self._header_bytes + HEADER_LINE_EXTRA * headers
        if size + REQUEST_LINE_EXTRA > self.limits.max_header_bytes or headers > self.limits.max_headers:
            self._refuse(HEAD_TOO_LARGE)
            raise _Refused
        super().on_headers_complete()


class QuietServer(Server):
    """uvicorn's server without its housekeeping ten times a second: an idle worker sleeps until there is something
    to do. Each wake-up of an idle worker cost about 0.35 ms of CPU (once a second, 0.36 ms a second per worker, a
    third of a ms per one-second stream at c=1). The Date header follows the clock where each request begins
    (`date_headers`); the heartbeat to gunicorn goes at a quarter of gunicorn's timeout; a request cap (gunicorn's
    max_requests) is checked once a second, as uvicorn does; a signal to exit wakes it at once. The sockets it is
    given (gunicorn's, shared by the workers) it serves one connection at a time (llmproxy.balance)."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list | None = None) -> None:
        if sockets is None:
            await super().startup()
            return
        await super().startup(sockets=[])  # the lifespan, and no server of uvicorn's own
        config, loop = self.config, asyncio.get_running_loop()

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        self.servers = [OneAtATime(loop, sock, create_protocol, ssl=config.ssl) for sock in sockets]

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        config, state = self.config, self.server_state
        date_headers(state, config)
        # gunicorn's worker passes sys.maxsize when no max_requests is set.
        cap = self.limit_max_requests if self.limit_max_requests not in (None, sys.maxsize) else None
        # The worker's `timeout_notify` is half gunicorn's timeout, after which gunicorn kills a silent worker (none
        # when the timeout is 0).
        heartbeat = config.callback_notify is not None and config.timeout_notify > 0
        interval = 1.0 if cap is not None else config.timeout_notify / 2 if heartbeat else None
        while not self.should_exit:
            if cap is not None and state.total_requests >= cap:
                logger.info("Maximum request limit of %d exceeded. Terminating process.", cap)
                return
            if config.callback_notify is not None:
                await config.callback_notify()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)


def date_headers(state: ServerState, config: Config) -> None:
    """The headers uvicorn adds to every response (Date, Server), brought to the current second when it changed:
    called where each request begins, so no timer has to wake an idle worker to keep the Date right."""
    second = int(time.time())
    if getattr(state, "date_second", None) != second:
        state.date_second = second
        date = [(b"date", formatdate(second, usegmt=True).encode())] if config.date_header else []
        state.default_headers = date + config.encoded_headers


class LimitedUvicornWorker(UvicornWorker):
    """gunicorn's uvicorn worker serving with LimitedHttpToolsProtocol, on a QuietServer."""

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "http": LimitedHttpToolsProtocol}

    async def _serve(self) -> None:
        """uvicorn_worker's, with a QuietServer."""
        self.config.app = self.wsgi
        server = QuietServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def load_wsgi(self) -> None:
        """Load the app (in the worker process), settle the heap, then take the limits from its settings."""
        super().load_wsgi()
        _settle_heap()
        from django.conf import settings

        LimitedHttpToolsProtocol.limits = Limits(
            max_header_bytes=settings.MAX_REQUEST_HEADER_BYTES,
            max_headers=settings.MAX_REQUEST_HEADERS,
            head_timeout=settings.REQUEST_HEAD_TIMEOUT,
            max_connections=self._connection_cap(settings),
        )

    @staticmethod
    def _connection_cap(settings) -> int:
        """MAX_CONNECTIONS_PER_WORKER, lowered (with a warning) to what the worker's descriptors allow."""
        database = settings.DATABASES["default"]
        connections = database["OPTIONS"].get("pool", {}).get("max_size", 0) + settings.PROXY_DB_THREADS
        connections += settings.PROXY_ADMISSION_CONNECTIONS
        # A SQLite connection holds three files (the database, its write-ahead log, its shared memory).
        per_connection = 3 if database["ENGINE"].endswith("sqlite3") else 1
        reserved = BASE_DESCRIPTORS + per_connection * connections + settings.PROXY_UPSTREAM_MAX_KEEPALIVE
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cap = max(1, min(settings.MAX_CONNECTIONS_PER_WORKER, (descriptors - reserved) // DESCRIPTORS_PER_CONNECTION))
        if cap < settings.MAX_CONNECTIONS_PER_WORKER:
            logger.warning(
                "MAX_CONNECTIONS_PER_WORKER lowered from %d to %d: this worker may open %d descriptors",
                settings.MAX_CONNECTIONS_PER_WORKER,
                cap,
                descriptors,
            )
        return cap


def _settle_heap() -> None:
    """What the app loaded (Django, the models, the settings: about 100,000 objects) is moved out of the cyclic
    collector's reach, which otherwise walks it at every full collection; young objects are collected less often
    (GC_YOUNG_THRESHOLD). Garbage in cycles is still collected, later."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
