"""An answer from the response cache: sent as the upstream's was, and recorded as a hit (it cost nothing; the
writer puts what it would have cost on the record as saved).

A stored stream goes out event by event, in order, through the same filter as a live stream (proxy.counting), so
the usage event the proxy asked the upstream for reaches only a client that asked for it, and its counts are read
for the record. A stored model list goes through the policy's filter, since tokens of one project may see
different models.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

from django.http import HttpResponse, StreamingHttpResponse

from .admission import Allowance
from .cache import Result
from .cache_store import Entry
from .counting import StreamUsage, split_events
from .exchange import Exchange
from .relay import JSON_TAIL_BYTES


def response(
    exchange: Exchange,
    entry: Entry,
    allowance: Allowance,
    *,
    strip: bool,
    rewrite: Callable[[bytes], bytes] | None,
) -> HttpResponse:
    exchange.cache = Result.HIT
    if entry.streamed:
        answer = StreamingHttpResponse(_events(exchange, entry, strip))
    else:
        body = rewrite(entry.body) if rewrite is not None else entry.body
        answer = HttpResponse(body)
        duration = exchange.elapsed_ms()
        exchange.record(
            status=200,
            duration_ms=duration,
            ttfb_ms=duration,
            json_tail=body[-JSON_TAIL_BYTES:],
            cost_usd=Decimal(0),
            charged=True,
            cached=True,
        )
    del answer["Content-Type"]
    if entry.content_type:
        answer["Content-Type"] = entry.content_type
    for name, value in (allowance.headers() | exchange.headers()).items():
        answer[name] = value
    answer["X-Cache"] = Result.HIT
    answer["Age"] = str(entry.age())
    answer["Server-Timing"] = f"proxy;dur={exchange.elapsed_ms():.2f}"
    return answer


async def _events(exchange: Exchange, entry: Entry, strip: bool) -> AsyncIterator[bytes]:
    usage = StreamUsage(strip=strip)
    first_byte_at = None
    aborted = False
    try:
        for event in split_events(entry.body):
            if out := usage.feed(event):
                first_byte_at = first_byte_at or time.perf_counter()
                yield out
        if rest := usage.finish():
            yield rest
    except asyncio.CancelledError:
        aborted = True
        raise
    finally:
        exchange.record(
            status=200,
            duration_ms=exchange.elapsed_ms(),
            ttfb_ms=exchange.elapsed_ms(first_byte_at) if first_byte_at else None,
            streamed=True,
            client_aborted=aborted,
            counts=usage.counts,
            cost_usd=Decimal(0),
            charged=True,
            cached=True,
        )
