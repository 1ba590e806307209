"""How `/v1/` is served: Django's ASGI handler, without the admin's middleware, with the body limit enforced early.

The admin's middleware (sessions, CSRF, messages, clickjacking, …) has nothing to do for an API call, and on an
async request Django runs each of its hooks through a hop to a thread: a dozen hops per request. The proxy's own
handler loads none, so a request reaches the view directly (URL resolution, the view and its response are plain
Django). It also refuses a body over PROXY_MAX_BODY_BYTES from its Content-Length before reading it, and stops
reading a body without one as soon as it passes the limit.
"""

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

from . import cors, errors, headers
from .exchange import Exchange
from .relay import UpstreamInterrupted

PREFIX = "/v1/"


class _BodyLimit:
    """Wraps `receive`: past the limit, it reports a disconnect, so Django stops reading and answers nothing."""

    def __init__(self, receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.exceeded = False

    async def __call__(self):
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message


def _content_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ProxyHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(
            self._get_response_async if is_async else self._get_response
        )

    async def __call__(self, scope, receive, send) -> None:
        limit = settings.PROXY_MAX_BODY_BYTES
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(scope, send, limit)
            return
        guarded = _BodyLimit(receive, limit)
        try:
            # Django's own __call__ wraps this in a ThreadSensitiveContext, which starts a new thread per request
            # for the sync signal receivers (request_started/finished). The view runs no thread-sensitive code (its
            # database work has its own threads, see proxy.db), so those receivers can share the one global
            # sync thread instead: no thread is started per request.
            await self.handle(scope, guarded, send)
        except UpstreamInterrupted:
            # Returning with the response unfinished makes the server close the connection without the final
            # chunk, so the client sees the body is cut (already logged, without a traceback).
            return
        if guarded.exceeded:
            await self._too_large(scope, send, limit)

    async def _too_large(self, scope, send, limit: int) -> None:
        wanted = {name: value.decode("latin-1") for name, value in scope["headers"]}
        origin = wanted.get(b"origin")
        client = scope.get("client")
        exchange = Exchange(
            method=scope["method"],
            path=scope["path"],
            request_id=headers.request_id(wanted.get(b"x-request-id")),
            client_ip=client[0] if client else None,
            origin=origin if cors.allowed(origin) else None,
        )
        await self.send_response(exchange.refuse(errors.body_too_large(limit)), send)


def with_proxy(application):
    """The ASGI application: `/v1/…` to the proxy's handler, everything else to `application`."""
    proxy = ProxyHandler()

    async def route(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await proxy(scope, receive, send)
        else:
            await application(scope, receive, send)

    return route
