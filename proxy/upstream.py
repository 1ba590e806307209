"""The upstream HTTP client: one httpx transport per worker process (per event loop), made on first use.

Requests go straight to the transport (`send`), not through an `httpx.AsyncClient`: the client's layers (auth,
redirects, event hooks, URL merging and its cookie jar) cost about a fifth of the proxy's CPU per request and the
proxy uses none of them. Its cookie jar was even wrong here: it would have stored a cookie the upstream set for one
project's request and sent it with every later request, whichever project's. What the client did add is kept: its
default headers (when the client did not send its own) and the timeouts.

No total timeout, so a stream may run as long as it keeps sending; the read timeout bounds the wait for the
response headers and for each next chunk. The pool is sized for many concurrent streams.
"""

import asyncio
import urllib.request
from urllib.parse import urlsplit

import httpx
from django.conf import settings

_transports: dict[asyncio.AbstractEventLoop, "ShardedTransport"] = {}

# What httpx.AsyncClient adds to every request unless the request has its own (Accept-Encoding is always set).
_DEFAULT_HEADERS = (
    (b"accept", b"*/*"),
    (b"connection", b"keep-alive"),
    (b"user-agent", f"python-httpx/{httpx.__version__}".encode()),
)


class _Released(httpx.AsyncByteStream):
    """A response body that tells its pool when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, on_close) -> None:
        self._stream = stream
        self._on_close = on_close

    def __aiter__(self):
        return self._stream.__aiter__()  # the pool's own iterator: no extra generator step per chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._on_close is not None:
                self._on_close()
                self._on_close = None


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several httpcore connection pools, each request going to the least busy one.

    httpcore's pool rescans all its connections for every waiting request, so its cost per request grows with the
    number of requests in flight: one pool serves 32 concurrent requests at a quarter of the rate it serves one.
    Small pools side by side keep that cost flat.
    """

    def __init__(self, shards: int, limits: httpx.Limits, timeouts: httpx.Timeout, proxy: str | None = None) -> None:
        self.timeouts = timeouts.as_dict()  # what each request's extensions carry
        per_shard = httpx.Limits(
            max_connections=max(1, (limits.max_connections or 1000) // shards),
            max_keepalive_connections=max(1, (limits.max_keepalive_connections or 100) // shards),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._pools = [httpx.AsyncHTTPTransport(limits=per_shard, proxy=proxy) for _ in range(shards)]
        self._active = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=self._active.__getitem__)
        self._active[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            self._active[index] -= 1
            raise

        def release() -> None:
            self._active[index] -= 1

        response.stream = _Released(response.stream, release)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def _environment_proxy(upstream: str) -> str | None:
    """An egress proxy from HTTPS_PROXY/HTTP_PROXY (unless NO_PROXY exempts the upstream), as httpx would use."""
    parts = urlsplit(upstream)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def transport() -> ShardedTransport:
    """This event loop's transport (made on first use, with the settings of that moment)."""
    loop = asyncio.get_running_loop()
    found = _transports.get(loop)
    if found is None:
        for stale in [other for other in _transports if other.is_closed()]:
            del _transports[stale]
        limits = httpx.Limits(
            max_connections=settings.PROXY_UPSTREAM_MAX_CONNECTIONS,
            max_keepalive_connections=settings.PROXY_UPSTREAM_MAX_KEEPALIVE,
            keepalive_expiry=30.0,
        )
        found = _transports[loop] = ShardedTransport(
            settings.PROXY_UPSTREAM_POOLS,
            limits,
            httpx.Timeout(
                connect=settings.PROXY_CONNECT_TIMEOUT,
                read=settings.PROXY_READ_TIMEOUT,
                write=settings.PROXY_READ_TIMEOUT,
                pool=settings.PROXY_CONNECT_TIMEOUT,
            ),
            proxy=_environment_proxy(settings.UPSTREAM_BASE_URL),
        )
    return found


def build_request(method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> httpx.Request:
    present = {name for name, _ in headers}
    return httpx.Request(
        method,
        url,
        headers=[header for header in _DEFAULT_HEADERS if header[0] not in present] + headers,
        content=body,
        extensions={"timeout": transport().timeouts},
    )


async def send(request: httpx.Request) -> httpx.Response:
    """Send a request upstream; the response's body is left to be read (`aiter_raw`) and closed by the caller.

    Raises httpx's exceptions (`httpx.TimeoutException`, `httpx.HTTPError`), as `AsyncClient.send` would.
    """
    response = await transport().handle_async_request(request)
    response.request = request
    return response


def url(path: str, query: str) -> str:
    """`path` is the part after `/v1`, as the client sent it (still percent-encoded)."""
    return f"{settings.UPSTREAM_BASE_URL}{path}?{query}" if query else f"{settings.UPSTREAM_BASE_URL}{path}"
