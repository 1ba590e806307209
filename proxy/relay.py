"""Passing the upstream's response body on to the client as it arrives, and recording the request at its end.

Nothing is buffered: each chunk read from the upstream is handed on before the next read. Usage is read from the
bytes as they pass (a bounded tail for JSON, the usage event for server-sent events). When the client goes away,
Django cancels the response; the upstream request is closed at once and the record says the client aborted.
"""

import asyncio
import logging
import time

import httpx

from . import metrics
from .counting import StreamUsage
from .exchange import Exchange

logger = logging.getLogger(__name__)

JSON_TAIL_BYTES = 16 * 1024


class UpstreamInterrupted(Exception):
    """The upstream broke off mid-body: the client's connection is cut too, so the truncation shows."""


class Relay:
    def __init__(
        self, exchange: Exchange, upstream: httpx.Response, *, sent_at: float, stream_usage: StreamUsage | None
    ) -> None:
        self.exchange = exchange
        self.upstream = upstream
        self.sent_at = sent_at
        self.stream_usage = stream_usage
        content_type = upstream.headers.get("content-type", "")
        self.json_tail: bytearray | None = bytearray() if content_type.startswith("application/json") else None
        self.first_byte_at: float | None = None
        self.finished = False
        if stream_usage is not None:
            metrics.STREAMS_IN_FLIGHT.inc()

    async def body(self):
        """The async iterator Django's StreamingHttpResponse sends."""
        aborted = cut = False
        try:
            async for chunk in self.upstream.aiter_raw():
                if self.json_tail is not None:
                    self.json_tail += chunk
                    if len(self.json_tail) > 2 * JSON_TAIL_BYTES:
                        del self.json_tail[:-JSON_TAIL_BYTES]
                if self.stream_usage is not None:
                    chunk = self.stream_usage.feed(chunk)
                if chunk:
                    if self.first_byte_at is None:
                        self.first_byte_at = time.perf_counter()
                    yield chunk
            if self.stream_usage is not None and (rest := self.stream_usage.finish()):
                yield rest
        except asyncio.CancelledError:
            aborted = True
            raise
        except httpx.HTTPError as exc:
            cut = True
            logger.warning("upstream broke off request %s: %s", self.exchange.request_id, type(exc).__name__)
            raise UpstreamInterrupted("the upstream broke off the response body") from None
        finally:
            await self.finish(aborted=aborted, cut=cut)

    def watch(self, task: asyncio.Task | None) -> None:
        """Close the upstream even if the response is dropped before its body is ever iterated."""
        if task is not None:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        if not self.finished:
            asyncio.get_running_loop().create_task(self.finish(aborted=True))

    async def finish(self, *, aborted: bool, cut: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        ended = time.perf_counter()
        if self.stream_usage is not None:
            metrics.STREAMS_IN_FLIGHT.dec()
        try:
            await self.upstream.aclose()
        finally:
            self._record(ended, aborted, cut)

    def _record(self, ended: float, aborted: bool, cut: bool) -> None:
        exchange = self.exchange
        exchange.record(
            status=self.upstream.status_code,
            duration_ms=exchange.elapsed_ms(ended),
            ttfb_ms=exchange.elapsed_ms(self.first_byte_at) if self.first_byte_at else None,
            upstream_ms=(ended - self.sent_at) * 1000,
            streamed=self.stream_usage is not None,
            client_aborted=aborted,
            upstream_aborted=cut,
            counts=self.stream_usage.counts if self.stream_usage is not None else None,
            json_tail=bytes(self.json_tail) if self.json_tail else None,
        )
