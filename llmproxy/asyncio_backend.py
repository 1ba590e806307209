"""An httpcore network backend on asyncio's own transports and protocols, in place of httpcore's anyio backend.

httpcore reads and writes its connections through a network backend (a public extension point). The anyio one
wraps every read and every write in a cancel scope (`anyio.fail_after`: a context manager, a task lookup and a timer
each time), checks an idle connection with a `poll` system call before each request reuses it, and pays anyio's
stream layers on every chunk: together about a tenth of the proxy's CPU per request and more per stream chunk.
Here a connection is an `asyncio.Protocol` that keeps what arrives: a read returns at once when data is there and
otherwise waits on one future (with one timer only when it has to wait and has a timeout); a write is the
transport's `write`, waiting only while the transport asks the writer to pause (its buffer is full). An idle
connection is readable when the loop has seen data or its end, which the loop learns as soon as it arrives.

Behaviour is httpcore's: `b""` at the end of the stream, its Read/Write/Connect errors (the cause as their
argument, as httpcore's own backends give it) and timeouts, TLS through the
loop's `start_tls` (with the host name for SNI and certificate checks), socket options set after connecting.
"""

import asyncio
import collections
import ssl
import typing

import httpcore

# Reading pauses while this much is kept and not yet read (the response's reader is slower than the upstream).
_READ_HIGH_WATER = 256 * 1024


class _Connection(asyncio.Protocol):
    """What has arrived on a connection, and whether its writer must wait."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.kept = 0
        self.ended = False  # the peer sent its end, or the connection is lost
        self.error: Exception | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future | None = None  # a read, or a write waiting for the buffer to drain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.kept += len(data)
        if self.kept > _READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self.writing_paused = False
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something happens (data, the end, the writer may go on), or TimeoutError after `timeout`."""
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def take(self, max_bytes: int) -> bytes:
        data = self.chunks.popleft()
        if len(data) > max_bytes:
            self.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        self.kept -= len(data)
        if self.reading_paused and self.kept <= _READ_HIGH_WATER // 2 and not self.ended:
            self.reading_paused = False
            self.transport.resume_reading()
        return data


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, connection: _Connection) -> None:
        self._transport = transport
        self._connection = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        connection = self._connection
        while not connection.chunks:
            if connection.ended:
                if connection.error is not None:
                    raise httpcore.ReadError(connection.error)
                return b""
            try:
                await connection.wait(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out while reading") from None
        return connection.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        connection = self._connection
        if self._transport.is_closing() or connection.ended and connection.error is not None:
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        while connection.writing_paused:
            try:
                await connection.wait(timeout)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out while writing") from None
        if connection.error is not None:
            raise httpcore.WriteError(connection.error)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._connection, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out during the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(exc) from exc
        if transport is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._connection.transport = transport
        return AsyncioStream(transport, self._connection)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            connection = self._connection
            return bool(connection.chunks) or connection.ended
        name = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername", "socket": "socket"}
        return self._transport.get_extra_info(name[info]) if info in name else None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        return await self._connect(
            timeout, socket_options, loop.create_connection(_Connection, host, port, local_addr=local)
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await self._connect(timeout, socket_options, loop.create_unix_connection(_Connection, path))

    @staticmethod
    async def _connect(timeout, socket_options, connecting) -> AsyncioStream:
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await connecting
        except TimeoutError:
            raise httpcore.ConnectTimeout("timed out while connecting") from None
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        for option in socket_options or ():
            transport.get_extra_info("socket").setsockopt(*option)
        return AsyncioStream(transport, connection)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def install(transport) -> None:
    """Put this backend under an httpx transport's direct connection pool (its private `_pool`, as
    `llmproxy.egress.install_guard` does), before its first connection."""
    pool = transport._pool
    if type(pool) is not httpcore.AsyncConnectionPool:
        raise TypeError("the asyncio backend goes only under a direct connection pool (no egress proxy)")
    pool._network_backend = AsyncioBackend()
