"""Passing the upstream's response body on to the client as it arrives, settling and recording the request at its
end.

Nothing is buffered: each chunk read from the upstream is handed on before the next read. Usage is read from the
bytes as they pass (a bounded tail for JSON, the usage event for server-sent events). When the client goes away,
Django cancels the response; the upstream request is closed at once and the record says the client aborted.

A request with something to settle (`Settlement`: its tokens and cost to charge because a limit depends on them, or
its count to give back because the upstream failed) keeps back the end of its response until that is done, so a
client that sends its next request when this one ends finds the limits as they now are: for a stream, the usage
event and what follows it (the last events); for any other body, its last chunk (the chunks before it go on as they
come).
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

import httpx
import psycopg
from django.db import DatabaseError
from psycopg_pool import PoolTimeout

from llmproxy.server import DirectBody

from . import cache_store, metrics, settlement
from .admission import Allowance
from .cache import Keeping
from .counting import StreamUsage, TokenCounts, counts_from_json_tail
from .exchange import Exchange
from .prices import Price

logger = logging.getLogger(__name__)

JSON_TAIL_BYTES = 16 * 1024
# The event that ends an OpenAI stream: the SDKs stop reading there, and the synchronous one closes the connection at
# once, often before the upstream's own end of the body has reached the proxy.
_STREAM_END = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n")
REWRITE_MAX_BYTES = 8 << 20  # a body the proxy rewrites whole (a model list) is read whole: it must stay small


class UpstreamInterrupted(Exception):
    """The upstream broke off mid-body: the client's connection is cut too, so the truncation shows."""


@dataclass(frozen=True)
class Settlement:
    """What an admitted request's end settles before the client sees the end (see proxy.settlement)."""

    allowance: Allowance
    token_id: UUID
    project_id: UUID
    price: Price | None  # the model's price, when it has one
    give_back: bool  # the upstream failed (5xx): the request's count is given back instead of charging


SETTLE_ERRORS = (DatabaseError, psycopg.Error, PoolTimeout)


class RelayResponse:
    """The upstream's response on its way to the client: its status, its headers as the server sends them (from
    `proxy.headers.client_response_headers`), and the relay's `parts` (bytes, never empty), which
    `proxy.asgi.ProxyHandler` sends as they come, giving the relay the server's way to write a stream's chunks at
    once (`Relay.direct`). Not one of Django's responses: built for every relayed request, Django's (its headers
    checked and encoded one by one into a case-insensitive mapping, then out again for the server) cost 15 µs of it."""

    __slots__ = ("relay", "parts", "status_code", "headers")

    def __init__(self, relay: "Relay", status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.relay = relay
        self.parts = relay.body()
        self.status_code = status
        self.headers = headers


class Relay:
    def __init__(
        self,
        exchange: Exchange,
        upstream: httpx.Response,
        *,
        sent_at: float,
        stream_usage: StreamUsage | None,
        settle: Settlement | None = None,
        rewrite: Callable[[bytes], bytes] | None = None,
        keeping: Keeping | None = None,
    ) -> None:
        """`rewrite`: the body is read whole and what it returns is sent instead (a model list the policy filters).
        `keeping`: the upstream's bytes are kept for the response cache, and stored once they have arrived whole."""
        self.exchange = exchange
        self.upstream = upstream
        self.sent_at = sent_at
        self.stream_usage = stream_usage
        self.settle = settle
        self.rewrite = rewrite
        self.keeping = keeping
        self.whole = bytearray()
        content_type = upstream.headers.get("content-type", "")
        json_body = content_type.startswith("application/json") and rewrite is None
        self.json_tail: bytearray | None = bytearray() if json_body else None
        self.held = b""  # the last chunk of a body whose end waits for the settlement
        self.first_byte_at: float | None = None
        self.last_part = b""  # the last bytes passed on to the client
        self.finished = False
        self.settled = False
        self.cost_usd: Decimal | None = None
        self.charged = False
        # The server's writer of this response's body parts, when it has one (llmproxy.server.DirectBody).
        self.direct: DirectBody | None = None
        if stream_usage is not None:
            metrics.STREAMS_IN_FLIGHT.inc()

    async def body(self):
        """The body's parts, as `proxy.asgi.ProxyHandler` sends them.

        A stream's chunks (given `direct`, on our own upstream transport) are passed on from the upstream
        connection's callback as they arrive (`pump`), so the event loop does not wake this task, and the task
        that sends, for each of them; one the client cannot take at once is sent the usual way, waiting for it."""
        aborted = cut = False
        try:
            stream = self.upstream.stream
            pump = getattr(stream, "pump", None) if self.direct is not None and self.stream_usage is not None else None
            if pump is None:
                async for chunk in stream:
                    if part := self._through(chunk):
                        yield part
            else:
                while not await pump(self._pass_on):
                    chunk = await stream.next_chunk()  # the one waiting, the usual way; then pumping again
                    if chunk is None:
                        break
                    if part := self._through(chunk):
                        yield part
            await self.upstream.aclose()  # the connection goes back to the pool before the settlement
            held = self.held
            if self.keeping is not None:
                self._keep()
            if self.rewrite is not None:
                held = self.rewrite(bytes(self.whole))
            if self.stream_usage is not None:
                held = self.stream_usage.finish()
                if self.settle is not None:
                    await self._settle()
                held += self.stream_usage.release()
            elif self.settle is not None:
                await self._settle()
            if held:
                if self.first_byte_at is None:
                    self.first_byte_at = time.perf_counter()
                yield held
        except asyncio.CancelledError:
            aborted = not self.last_part.endswith(_STREAM_END)  # a client may leave once it has the stream's end
            raise
        except httpx.HTTPError as exc:
            cut = True
            logger.warning("upstream broke off request %s: %s", self.exchange.request_id, type(exc).__name__)
            raise UpstreamInterrupted("the upstream broke off the response body") from None
        finally:
            await self.finish(aborted=aborted, cut=cut)

    def ready(self) -> bytes:
        """What of the body can go to the client with the response's head: what has arrived already (with a stream's
        head the upstream typically sends its first events), through `_through`; b"" when nothing has, or when the
        upstream's transport cannot tell (httpx's own, through an egress proxy)."""
        ready = getattr(self.upstream.stream, "ready", None)
        chunk = ready() if ready is not None else b""
        return self._through(chunk) if chunk else b""

    def _through(self, chunk: bytes) -> bytes:
        """What of an upstream chunk goes on to the client now (b"": nothing yet)."""
        if self.keeping is not None:
            self.keeping.add(chunk)
        if self.rewrite is not None:
            self.whole += chunk
            if len(self.whole) > REWRITE_MAX_BYTES:
                raise httpx.DecodingError("a body to rewrite is larger than REWRITE_MAX_BYTES")
            return b""
        if self.json_tail is not None:
            self.json_tail += chunk
            if len(self.json_tail) > 2 * JSON_TAIL_BYTES:
                del self.json_tail[:-JSON_TAIL_BYTES]
        if self.stream_usage is not None:
            chunk = self.stream_usage.feed(chunk)
        elif self.settle is not None:
            chunk, self.held = self.held, chunk
        if chunk:
            self.last_part = chunk
            if self.first_byte_at is None:
                self.first_byte_at = time.perf_counter()
        return chunk

    def _pass_on(self, chunk: bytes) -> bool:
        """The pump's sink: a chunk through to the client at once, or False (nothing done) if it cannot take it."""
        direct = self.direct
        if not direct.writable():
            return False
        if part := self._through(chunk):
            direct.write(part)
        return True

    def _keep(self) -> None:
        """The whole answer arrived: into the response cache, if it stayed within the size cap."""
        keeping = self.keeping
        if keeping.body is None:
            return
        plan = keeping.plan
        entry = cache_store.Entry(keeping.content_type, bytes(keeping.body), keeping.streamed, time.time())
        cache_store.put(cache_store.Stored(plan.key, plan.project_id, plan.model, plan.path, plan.ttl, entry))

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
            if self.settle is not None:
                await self._settle()  # a cut or abandoned response is settled all the same, after its end
        finally:
            self._record(ended, aborted, cut)

    def counts(self) -> TokenCounts | None:
        if self.stream_usage is not None:
            return self.stream_usage.counts
        return counts_from_json_tail(bytes(self.json_tail)) if self.json_tail else None

    async def _settle(self) -> None:
        """Give back the request's count (the upstream failed), or charge its tokens and cost. A database failure
        here costs nothing but the timing: the usage writer charges what was not charged, with the record."""
        if self.settled:
            return
        self.settled = True
        settle = self.settle
        try:
            if settle.give_back:
                await settlement.give_back_async(settle.token_id, settle.project_id, settle.allowance)
                return
            counts = self.counts()
            if counts is None:
                return
            if settle.price is not None:
                self.cost_usd = settle.price.cost(
                    input_tokens=counts.prompt_tokens or 0,
                    cached_input_tokens=counts.cached_tokens or 0,
                    output_tokens=counts.completion_tokens or 0,
                )
            charge = settlement.Charge(settle.token_id, settle.project_id, self.cost_usd or Decimal(0), counts.used)
            await settlement.charge_async(charge)
            self.charged = True
        except SETTLE_ERRORS as exc:
            logger.warning("could not settle request %s now (%s)", self.exchange.request_id, type(exc).__name__)

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
            cost_usd=self.cost_usd,
            charged=self.charged,
        )
