"""How `/v1/` is served: the proxy's view called straight from the ASGI server, with the body limit enforced early.

Django's handler, its middleware and its URL resolution have nothing to do for an API call: the view needs the
scope, the body and its path, and answers with one of Django's responses (a refusal, a preflight, an answer from the
response cache) or with the relayed upstream response (`RelayResponse`, which is not one of them).
Building Django's request (its META from every header), resolving the URL, the middleware chain and the request
signals (each a hop to a thread on an async request) cost about a seventh of a worker's time per request, so
`ProxyHandler` reads the body, calls `proxy.views.forward` and sends what it returns, beside a listener that cancels
the view when the client goes away, as Django's own handler does. The body limit (PROXY_MAX_BODY_BYTES) is kept in
front of it, by the mechanism every path shares (llmproxy.body_limit); a body over it is refused here, in OpenAI's
envelope and with a usage record.
"""

import asyncio
import contextlib
from collections.abc import Coroutine

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from llmproxy.body_limit import limit_body
from llmproxy.server import direct_body

from . import errors, views
from .exchange import Exchange, ProxyRequest, read_headers
from .relay import RelayResponse, UpstreamInterrupted
from .writer import writer

PREFIX = "/v1/"


class ProxyHandler(ASGIHandler):
    """Django's ASGI handler for how it sends a response and listens for the client's disconnect; the request goes
    to the proxy's view directly (see the module's doc), so no middleware is loaded."""

    def __init__(self) -> None:
        pass

    async def handle(self, scope, receive, send) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before its body was sent
        await self._unless_client_leaves(self._respond(ProxyRequest(scope, body), send), receive)

    async def _unless_client_leaves(self, work: Coroutine, receive) -> None:
        """Run `work` in this task, cancelled if the client goes away first. Django runs the view in a task of its
        own beside the listener and waits for either (`asyncio.wait`); here only the listener is a task, and its
        end cancels this one: a task, a wait and a turn of the loop less per request."""
        task = asyncio.current_task()
        left = finished = False

        def on_listener_end(listener: asyncio.Task) -> None:
            nonlocal left
            if listener.cancelled():
                return
            listener.exception()  # RequestAborted: the client went away (retrieved, so it is not reported)
            if not finished:
                left = True
                task.cancel()

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        listener.add_done_callback(on_listener_end)
        try:
            await work
        except asyncio.CancelledError:
            if not left:
                raise
        finally:
            finished = True
            listener.cancel()
            if left:
                task.uncancel()

    async def _respond(self, request: ProxyRequest, send) -> None:
        response = await views.forward(request)
        with contextlib.suppress(asyncio.CancelledError):  # the client went away while it was being sent
            await self.send_response(response, send)

    async def send_response(self, response, send) -> None:
        """Django's for Django's responses; a relayed one's head and parts go to the server as they are."""
        if not isinstance(response, RelayResponse):
            await super().send_response(response, send)
            return
        start = {"type": "http.response.start", "status": response.status_code, "headers": response.headers}
        direct = response.relay.direct = direct_body(send)
        first = response.relay.ready()
        if direct is not None and 0 < len(first) <= self.chunk_size:
            await direct.start(send, start, first)  # one write: the client wakes once for both
        else:
            await send(start)
            if first:
                await self._send_part(first, send)
        async with contextlib.aclosing(response.parts) as parts:
            async for part in parts:
                await self._send_part(part, send)
        await send({"type": "http.response.body"})

    async def _send_part(self, part: bytes, send) -> None:
        if len(part) <= self.chunk_size:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        else:
            for chunk, _ in self.chunk_bytes(part):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.handle(scope, receive, send)
        except UpstreamInterrupted:
            # Returning with the response unfinished makes the server close the connection without the final
            # chunk, so the client sees the body is cut (already logged, without a traceback).
            return

    async def too_large(self, scope, send, limit: int) -> None:
        exchange = Exchange.from_scope(scope, read_headers(scope))
        await self.send_response(exchange.refuse(errors.body_too_large(limit)), send)


async def _read_body(receive) -> bytes | None:
    """The request's whole body (within the limit `llmproxy.body_limit` enforces), or None if the client went away."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def lifespan(receive, send) -> None:
    """The worker's start and end: the usage writer starts with it (and writes back what dead processes left in
    spill files), and writes or spills what it still holds before the worker exits."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            writer.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(writer.flush)
            await send({"type": "lifespan.shutdown.complete"})
            return


def with_proxy(application):
    """The ASGI application: `/v1/…` to the proxy's handler (its bodies limited), the lifespan to the proxy,
    everything else to `application`."""
    handler = ProxyHandler()
    proxy = limit_body(handler, settings.PROXY_MAX_BODY_BYTES, handler.too_large)

    async def route(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await proxy(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send)
        else:
            await application(scope, receive, send)

    return route
