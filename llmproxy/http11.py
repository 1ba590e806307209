"""HTTP/1.1 to one upstream origin: an httpx transport on asyncio's own transports, with httptools's parser.

httpx is the client library (its requests, responses, timeouts and errors are what the rest of the proxy sees), and a
transport is its public extension point. Its default one, httpcore's connection pool with h11, took about two fifths of
the event loop's time per proxied request: anyio locks and cancel scopes around every step, h11's state machine
and header validation in Python, a pool that rescans its connections for each request. This one does what the proxy
needs and nothing else, with the same behaviour:

- connections are kept alive and reused, the most recently used first; an idle one is dropped when the upstream has
  closed it (the loop sees its end as it arrives), when it has sat idle longer than `keepalive_expiry`, or when more
  than `max_keepalive_connections` are idle; at most `max_connections` are open, a request beyond waits for one
  (the pool timeout);
- the request goes out in one write (head and body); the response's head and each chunk of its body are read as
  they arrive, within the read timeout, by httptools (the C parser uvicorn serves with): Content-Length, chunked or
  until-close bodies, interim 1xx responses skipped; reading pauses while more than 256 KiB wait for a slow reader;
- a body is read by iterating it, or pumped (`_Body.pump`): each chunk handed, as it arrives, to a callback of the
  reader's from the connection's own (a stream's chunks go on to the client without waking a task for each); one
  the callback cannot take is left to be read the usual way;
- a response whose body is closed before its end (the client went away), a cancelled request, a timeout or a
  protocol error closes its connection: only a connection whose response ended cleanly is reused;
- TLS through the loop (the host name for SNI and certificate checks), and with `guarded`, the egress guard's check
  of every address the name resolves to, on every new connection (`llmproxy.egress.allowed_addresses`);
- errors are httpx's: ConnectError, ConnectTimeout, PoolTimeout, WriteError, WriteTimeout, ReadTimeout, ReadError,
  RemoteProtocolError (the upstream closed without an answer or sent what is not HTTP/1.1), LocalProtocolError (a
  header with a line break, which would split the request).

Requests through an egress proxy (HTTPS_PROXY/HTTP_PROXY) keep httpx's own transport (`llmproxy.egress`).
"""

import asyncio
import collections
import ssl
import typing

import httptools
import httpx

from llmproxy import egress

# Reading pauses while this much has arrived and is not yet read; it resumes below half of it.
_READ_HIGH_WATER = 256 * 1024
# Methods whose request carries a Content-Length even when the body is empty (as httpx and curl send them).
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class _Connection(asyncio.Protocol):
    """One upstream connection and the response arriving on it."""

    def __init__(self, pool: "Transport") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = "active"  # "idle" in the pool, "active" with a request, "closed"
        self.idle_since = 0.0
        self.waiter: asyncio.Future | None = None
        self.deadline: float | None = None  # of the wait in progress (`wait`)
        self.wait_timeout: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sink: typing.Callable[[bytes], bool] | None = None  # takes body chunks as they arrive (`_Body.pump`)
        self.ended = False  # the upstream sent its end, or the connection is lost
        self.error: BaseException | None = None
        self.writing_paused = False
        self.reading_paused = False
        self._reset()

    def _reset(self) -> None:
        """Ready for the next request's response."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.interim = False  # the response being parsed is a 1xx one, to skip
        self.no_body = False  # the request was a HEAD: the response ends with its head
        self.until_close = False  # the body ends when the connection does
        self.complete = False
        self.keep_alive = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.kept = 0
        self.sink_error: BaseException | None = None

    # --- asyncio's protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.state != "active" or self.complete:
            # Bytes nobody asked for (after a response's end, or on an idle connection): it cannot be reused.
            self.ended = True
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"the upstream's response is not valid HTTP/1.1 ({exc})")
            self.ended = True
            self.transport.close()
        if self.kept > _READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.sink is not None and not self.complete and not self.ended:
            # The sink took it all: the reader sleeps on, its deadline moved as the next wait's would be.
            if self.waiter is not None and self.wait_timeout is not None:
                self.deadline = self.waiter.get_loop().time() + self.wait_timeout
            return
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        if self.head_done and self.until_close and not self.complete:
            self.complete = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if exc is not None and self.error is None:
            self.error = exc
        self.writing_paused = False
        self._wake()
        self.pool._lost(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    # --- httptools's callbacks (from `feed_data`) ---
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True
            self.headers = []
            return
        self.status = status
        self.head_done = True
        if self.no_body:
            self.complete = True  # and the connection is not reused: the parser still expects the body
            return
        if status not in (204, 304):
            names = {name.lower() for name, _ in self.headers}
            self.until_close = b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        if self.sink is not None and not self.chunks:
            try:
                if self.sink(body):
                    return
            except Exception as exc:  # raised to the reader (`_Body.pump`), not into the parser
                self.sink_error = exc
            self.sink = None  # it could not take this one: the rest waits for the reader
        self.chunks.append(body)
        self.kept += len(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive() and not self.until_close

    # --- used by the transport ---
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something happens (data, the end, the writer may go on), or TimeoutError after `timeout`.

        One timer serves every wait of the connection: a wait moves the deadline, and the timer, when it fires
        before the deadline, sets itself again for it. A stream's chunks each used to make and cancel a timer of
        their own (in uvloop, a libuv handle opened and closed)."""
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.wait_timeout = timeout
        if timeout is None:
            self.deadline = None
        else:
            self.deadline = loop.time() + timeout
            if self.timer is None:
                self.timer = loop.call_at(self.deadline, self._on_timer)
        try:
            await waiter
        finally:
            self.waiter = None

    def _on_timer(self) -> None:
        self.timer = None
        waiter, deadline = self.waiter, self.deadline
        if waiter is None or waiter.done() or deadline is None:
            return
        loop = waiter.get_loop()
        if loop.time() < deadline:
            self.timer = loop.call_at(deadline, self._on_timer)
        else:
            waiter.set_exception(TimeoutError())

    def broken(self) -> BaseException:
        """What to raise when the connection ended before the response did."""
        if isinstance(self.error, httpx.HTTPError):
            return self.error
        if self.error is not None:
            return httpx.ReadError(str(self.error) or type(self.error).__name__)
        if not self.head_done:
            return httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.RemoteProtocolError("the upstream closed the connection before the response's end")

    def take(self) -> bytes:
        data = self.chunks.popleft()
        self.kept -= len(data)
        if self.reading_paused and self.kept <= _READ_HIGH_WATER // 2 and not self.ended:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def reusable(self, now: float, expiry: float | None) -> bool:
        return not self.ended and (expiry is None or now - self.idle_since < expiry)


def _head(method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The request line and headers, checked: a line break or NUL inside a header would split the request."""
    verb = method.encode("ascii")
    lines = [b"%s %s HTTP/1.1" % (verb, target)]
    lines += [b"%s: %s" % pair for pair in headers]
    if (body or verb in _BODY_METHODS) and not any(
        name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers
    ):
        lines.append(b"Content-Length: %d" % len(body))
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    expected = len(lines) + 1
    if head.count(b"\n") != expected or head.count(b"\r") != expected or b"\0" in head:
        raise httpx.LocalProtocolError("a header name or value holds a line break or NUL")
    return head


class _Body(httpx.AsyncByteStream):
    """A response's body, as it arrives; closing it gives the connection back (or closes it, before the end)."""

    def __init__(self, pool: "Transport", connection: _Connection, timeout: float | None) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._timeout = timeout

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def next_chunk(self) -> bytes | None:
        """The next chunk as it arrives (within the read timeout), or None at the body's end."""
        connection = self._connection
        if connection is None:
            return None
        while True:
            if connection.chunks:
                return connection.take()
            if connection.complete:
                return None
            if connection.ended:
                raise connection.broken()
            try:
                await connection.wait(self._timeout)
            except TimeoutError:
                raise httpx.ReadTimeout("timed out while reading the response") from None

    def ready(self) -> bytes:
        """What of the body has arrived and waits to be read, taken at once (b"" when nothing has)."""
        connection = self._connection
        if connection is None or not connection.chunks:
            return b""
        parts = [connection.take()]
        while connection.chunks:
            parts.append(connection.take())
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def pump(self, sink: typing.Callable[[bytes], bool]) -> bool:
        """Hand the chunks to `sink` as they arrive, from the connection's callback, without waking this task for
        each: True once the body has ended, False as soon as a chunk is waiting to be read the usual way (one was
        there already, or `sink` returned False: it could not take it now, and kept nothing of it). The read timeout
        bounds the wait for each chunk, as when iterating."""
        connection = self._connection
        if connection is None or connection.chunks:
            return connection is None
        connection.sink = sink
        try:
            while connection.sink is not None and not connection.complete:
                if connection.ended:
                    raise connection.broken()
                try:
                    await connection.wait(self._timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("timed out while reading the response") from None
        finally:
            connection.sink = None
        if connection.sink_error is not None:
            raise connection.sink_error
        return connection.complete and not connection.chunks

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._give_back(connection)


class Transport(httpx.AsyncBaseTransport):
    """The connections to one origin (`scheme://host:port`), for one event loop."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
        guarded: bool = False,
    ) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.guarded = guarded
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            authority += f":{port}"
        self._authority = authority.encode("ascii")
        self._ssl = (ssl_context or egress.ssl_context()) if scheme == "https" else None
        self._max = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: list[_Connection] = []  # the most recently used last
        self._open = 0  # connections open or being opened
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._send(
            request.method,
            request.url.raw_path,
            request.headers.raw,  # with the Host (and Content-Length) httpx.Request added
            request.content,
            request.extensions.get("timeout", {}),
        )

    async def request(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, timeouts: dict
    ) -> httpx.Response:
        """What `handle_async_request` does, without building an httpx.Request (a fifth of what the proxy spent on
        the upstream call): `target` is the path and query, the Host header is added."""
        return await self._send(method, target, [(b"Host", self._authority), *headers], body, timeouts)

    async def _send(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, timeouts: dict
    ) -> httpx.Response:
        head = _head(method, target, headers, body)
        connection = await self._acquire(timeouts)
        try:
            connection.no_body = method == "HEAD"
            connection.transport.write(head + body if body else head)
            while connection.writing_paused and not connection.ended:
                try:
                    await connection.wait(timeouts.get("write"))
                except TimeoutError:
                    raise httpx.WriteTimeout("timed out while sending the request") from None
            read_timeout = timeouts.get("read")
            while not connection.head_done:
                if connection.ended:
                    raise connection.broken()
                try:
                    await connection.wait(read_timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("timed out waiting for the response") from None
        except BaseException:
            self._close(connection)
            raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Body(self, connection, read_timeout),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._closed = True
        for connection in self._idle[:]:
            self._close(connection)

    # --- the pool ---
    async def _acquire(self, timeouts: dict) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._idle:
                connection = self._idle.pop()
                connection.state = "active"
                if connection.reusable(now, self._expiry):
                    return connection
                self._close(connection)
            if self._max is None or self._open < self._max:
                self._open += 1
                try:
                    return await self._connect(timeouts.get("connect"))
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter = loop.create_future()
            self._waiting.append(waiter)
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no upstream connection became free in time") from None
            finally:
                if not waiter.done():
                    self._waiting.remove(waiter)

    async def _connect(self, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self.guarded:
            addresses = await egress.allowed_addresses(self.host, self.port, timeout)
        else:
            addresses = [self.host]
        failure: BaseException | None = None
        for address in addresses:  # the first that accepts, in the resolver's order; a timeout ends the attempt
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                async with asyncio.timeout(remaining):
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self),
                        address,
                        self.port,
                        ssl=self._ssl,
                        server_hostname=self.host if self._ssl is not None else None,
                    )
                return connection
            except TimeoutError:
                raise httpx.ConnectTimeout(f"could not connect to {self.host} within {timeout:g} s") from None
            except (OSError, ssl.SSLError) as exc:
                failure = exc
        raise httpx.ConnectError(str(failure) or type(failure).__name__) from failure

    def _give_back(self, connection: _Connection) -> None:
        """A response's body is closed: its connection goes back to the pool if the response ended cleanly."""
        if connection.state != "active":
            return
        clean = connection.complete and connection.keep_alive and not connection.ended and not connection.chunks
        if not clean or self._closed or (self._max_idle is not None and len(self._idle) >= self._max_idle):
            self._close(connection)
            return
        connection._reset()
        connection.state = "idle"
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)
        self._wake_one()

    def _close(self, connection: _Connection) -> None:
        if connection.state == "closed":
            return
        if connection.state == "idle":
            self._idle.remove(connection)
        connection.state = "closed"
        connection.transport.close()
        self._open -= 1
        self._wake_one()

    def _lost(self, connection: _Connection) -> None:
        """The connection ended; an idle one leaves the pool now (an active one when its request is done)."""
        if connection.state == "idle":
            self._close(connection)

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def new_transport(url: str, *, limits: httpx.Limits, guarded: bool) -> httpx.AsyncBaseTransport:
    """A transport for the origin of `url`: this module's, with the egress guard when `guarded`; or, when the
    environment names an egress proxy for it, httpx's own through that proxy (not guarded: the proxy resolves the
    upstream's name, see `llmproxy.egress`). Either has `guarded` saying which."""
    proxy = egress.environment_proxy(url)
    if proxy is not None:
        through_proxy = httpx.AsyncHTTPTransport(verify=egress.ssl_context(), limits=limits, proxy=proxy)
        through_proxy.guarded = False
        return through_proxy
    scheme, host, port = egress.origin(url)
    return Transport(scheme, host, port, limits=limits, guarded=guarded)
