"""New connections spread over the workers: each worker accepts one connection each time the shared listening
socket is ready, not every connection queued.

gunicorn's workers all wait on the master's one listening socket. uvloop (like asyncio) accepts every connection
queued when the socket becomes ready, so when connections arrive together (a client opening its keep-alive pool, a
load balancer opening its own) the worker that wakes first takes them all: on the shared benchmark, 32 connections
opened at once went 32/0, 27/5 or 29/3 to two workers, and a 2-worker server ran on one core. Kept-alive
connections stay where they landed, so this lasts.

Here a worker accepts one connection when the socket is ready and then leaves the socket to the others for a
millisecond; the socket stays ready while connections wait, so the next goes to a worker whose turn it is, and a
busy worker, slower to come back to it, takes fewer. (Taking turns matters: with one connection per wake-up but no
pause, the worker that happened to wake first still took 31 of 32 now and then.) Measured: 32 connections opened at
once split between 13/19 and 16/16. A worker accepts at most a thousand connections a second this way, far more
than it serves requests. Connections the kernel has queued stay on the shared socket until a worker takes them, so
a worker that exits (or is killed) loses none of them.
"""

import asyncio
import logging
import socket
from collections.abc import Callable

logger = logging.getLogger("uvicorn.error")

PAUSE_AFTER_ACCEPT = 0.001  # seconds: the other workers' turn (an event loop's timers count in milliseconds)
PAUSE_WHEN_OUT_OF_DESCRIPTORS = 1.0  # seconds (as asyncio's own accept loop does)


class OneAtATime:
    """Serves a listening socket like the `asyncio.Server` uvicorn keeps (`close`, `wait_closed`), accepting one
    connection per readiness."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl=None,
    ) -> None:
        self.loop, self.sock, self.protocol_factory, self.ssl = loop, sock, protocol_factory, ssl
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it
        except OSError as error:  # out of descriptors, or buffers: stop accepting for a moment
            logger.error(
                "cannot accept a connection (%s); trying again in %.0f s", error, PAUSE_WHEN_OUT_OF_DESCRIPTORS
            )
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(PAUSE_WHEN_OUT_OF_DESCRIPTORS, self._resume)
            return
        self.loop.remove_reader(self.sock.fileno())
        self.loop.call_later(PAUSE_AFTER_ACCEPT, self._resume)
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl)
        except Exception:  # a TLS handshake that failed, a client gone already: its connection only
            conn.close()

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())

    async def wait_closed(self) -> None:
        return None
