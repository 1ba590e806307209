"""Request bodies against a size limit, in front of the app: one mechanism for every path (llmproxy.asgi gives
`/v1/` PROXY_MAX_BODY_BYTES and its refusal, everything else MAX_REQUEST_BODY_BYTES).

It has to sit in front of Django: Django's ASGI handler reads a whole body before anything else looks at the
request, and writes what passes FILE_UPLOAD_MAX_MEMORY_SIZE to a temporary file, so an unbounded body would be
spooled to disk before authentication. Imports nothing from Django.
"""

from collections.abc import Awaitable, Callable

Refusal = Callable[[dict, Callable, int], Awaitable[None]]


class BodyLimit:
    """A request body's size against a limit: refused up front by its Content-Length when that says too much, or
    cut off as soon as the body read so far passes the limit (a chunked body has no length to go by).

    Wraps `receive`: past the limit it reports a disconnect, so the app stops reading (before it has stored the
    chunk that passed the limit) and answers nothing; `exceeded` then says the answer is 413.
    """

    def __init__(self, scope: dict, receive: Callable, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.exceeded = self._declared(scope) > limit

    @staticmethod
    def _declared(scope: dict) -> int:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message


def limit_body(application, limit: int, refuse: Refusal):
    """`application` with its HTTP request bodies limited to `limit` bytes; `refuse(scope, send, limit)` answers
    a body over it (without a `Connection: close`, so the client can finish sending and read the answer)."""

    async def limited(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await application(scope, receive, send)
            return
        body = BodyLimit(scope, receive, limit)
        if not body.exceeded:
            await application(scope, body, send)
        if body.exceeded:
            await refuse(scope, send, limit)

    return limited
