"""How `/v1/` is served: Django's ASGI handler, without the admin's middleware, with the body limit enforced early.

The admin's middleware (sessions, CSRF, messages, clickjacking, …) has nothing to do for an API call, and on an
async request Django runs each of its hooks through a hop to a thread: a dozen hops per request. The proxy's own
handler loads none, so a request reaches the view directly (URL resolution, the view and its response are plain
Django). Its body limit (PROXY_MAX_BODY_BYTES) is kept in front of it, by the mechanism every path shares
(llmproxy.body_limit); a body over it is refused here, in OpenAI's envelope and with a usage record.
"""

import asyncio
import contextlib

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

from llmproxy.body_limit import limit_body

from . import errors
from .exchange import Exchange, read_headers
from .relay import RelayResponse, UpstreamInterrupted
from .writer import writer

PREFIX = "/v1/"


class ProxyHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(
            self._get_response_async if is_async else self._get_response
        )

    async def handle(self, scope, receive, send) -> None:
        """Django's `ASGIHandler.handle` without its hops to a sync thread for the request signals.

        Django sends request_started before the view and request_finished from `response.close()` after the
        response, each through `sync_to_async`, since their receivers are sync: they close the sync thread's stale
        database connections and caches and reset a per-request URLconf. The proxy uses none of these (its
        database work runs on its own threads with their own connections, see proxy.db; no cache, no URLconf
        override; its responses hold nothing to close), so it skips them. The rest is Django's: the body read,
        the request, the view and the response sent in a task beside a listener that cancels it when the client
        goes away.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                await self.send_response(error_response, send)
                return
            # As in Django: the listener first (it raises nothing unexpected), so the view is always seen to.
            tasks = [
                asyncio.create_task(self.listen_for_disconnect(receive)),
                asyncio.create_task(self._respond(request, send)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    with contextlib.suppress(RequestAborted):
                        task.result()
                else:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            body_file.close()

    async def _respond(self, request, send) -> None:
        response = await self.run_get_response(request)
        with contextlib.suppress(asyncio.CancelledError):  # the client went away while it was being sent
            await self.send_response(response, send)

    async def send_response(self, response, send) -> None:
        """Django's, but a relayed response's parts go to the server as they are (`RelayResponse`)."""
        if not isinstance(response, RelayResponse):
            await super().send_response(response, send)
            return
        headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]  # str, always
        headers += [(b"Set-Cookie", c.output(header="").encode("ascii").strip()) for c in response.cookies.values()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        chunk_size = self.chunk_size
        async with contextlib.aclosing(response.parts) as parts:
            async for part in parts:
                if len(part) <= chunk_size:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                else:
                    for chunk, _ in self.chunk_bytes(part):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            # Django's own __call__ wraps this in a ThreadSensitiveContext, which starts a new thread per request
            # for sync code; the proxy's handle runs none (see handle), so none is started.
            await self.handle(scope, receive, send)
        except UpstreamInterrupted:
            # Returning with the response unfinished makes the server close the connection without the final
            # chunk, so the client sees the body is cut (already logged, without a traceback).
            return

    async def too_large(self, scope, send, limit: int) -> None:
        exchange = Exchange.from_scope(scope, read_headers(scope))
        await self.send_response(exchange.refuse(errors.body_too_large(limit)), send)


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
