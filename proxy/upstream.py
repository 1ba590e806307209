"""The upstream HTTP client: one transport per upstream origin (scheme, host, port) and per event loop of a worker
process, each made on first use with the same limits.

The origin of the global UPSTREAM_BASE_URL (the operator's own setting) connects as it always did; every other
origin (a project's own upstream) has `llmproxy.egress.GuardedBackend` under it, which checks every address a host
resolves to before connecting. Requests find their transport by the text of their URL up to the path, a dictionary
lookup (`build_request`); the request then carries it to `send`.

Requests go straight to the transport (`send`), not through an `httpx.AsyncClient`: the client's layers (auth,
redirects, event hooks, URL merging and its cookie jar) cost about a fifth of the proxy's CPU per request and the
proxy uses none of them. Its cookie jar was even wrong here: it would have stored a cookie the upstream set for one
project's request and sent it with every later request, whichever project's. What the client did add is kept: its
default headers (when the client did not send its own) and the timeouts.

No total timeout, so a stream may run as long as it keeps sending; the read timeout bounds the wait for the
response headers and for each next chunk. The pool is sized for many concurrent streams.
"""

import asyncio

import httpx
from django.conf import settings

from llmproxy import egress

from .loops import of_this_loop

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

    def __init__(
        self, shards: int, limits: httpx.Limits, timeouts: httpx.Timeout, base_url: str, guarded: bool
    ) -> None:
        self.timeouts = timeouts.as_dict()  # what each request's extensions carry
        per_shard = httpx.Limits(
            max_connections=max(1, (limits.max_connections or 1000) // shards),
            max_keepalive_connections=max(1, (limits.max_keepalive_connections or 100) // shards),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._pools = [egress.new_transport(base_url, limits=per_shard, guarded=guarded) for _ in range(shards)]
        self.guarded = egress.is_guarded(self._pools[0])  # not when an egress proxy is set (egress.new_transport)
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


class _LoopTransports:
    """One event loop's transports: by origin, and by the text of a URL up to its path (the lookup requests use)."""

    def __init__(self) -> None:
        self.by_origin: dict[egress.Origin, ShardedTransport] = {}
        self.by_prefix: dict[str, ShardedTransport] = {}


_transports: dict[asyncio.AbstractEventLoop, _LoopTransports] = {}


def _prefix(url: str) -> str:
    """`scheme://authority` of a URL: the text before the path (or query), without parsing it."""
    end = url.find("/", url.find("://") + 3)
    prefix = url if end < 0 else url[:end]
    return prefix.partition("?")[0] if "?" in prefix else prefix


def transport(base_url: str | None = None) -> ShardedTransport:
    """This event loop's transport for the origin of `base_url` (a base URL or any URL with that origin; None: the
    global UPSTREAM_BASE_URL), made on first use with the settings of that moment."""
    loop_transports = of_this_loop(_transports, _LoopTransports)
    prefix = _prefix(settings.UPSTREAM_BASE_URL if base_url is None else base_url)
    found = loop_transports.by_prefix.get(prefix)
    if found is None:
        key = egress.origin(prefix)
        found = loop_transports.by_origin.get(key)
        if found is None:
            found = loop_transports.by_origin[key] = _new_transport(prefix)
        loop_transports.by_prefix[prefix] = found
    return found


def _new_transport(base_url: str) -> ShardedTransport:
    limits = httpx.Limits(
        max_connections=settings.PROXY_UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.PROXY_UPSTREAM_MAX_KEEPALIVE,
        keepalive_expiry=30.0,
    )
    return ShardedTransport(
        settings.PROXY_UPSTREAM_POOLS,
        limits,
        httpx.Timeout(
            connect=settings.PROXY_CONNECT_TIMEOUT,
            read=settings.PROXY_READ_TIMEOUT,
            write=settings.PROXY_READ_TIMEOUT,
            pool=settings.PROXY_CONNECT_TIMEOUT,
        ),
        base_url,
        guarded=not egress.is_trusted_origin(base_url),
    )


class UpstreamRequest(httpx.Request):
    """A request that knows the transport of its origin (picked once, by `build_request`)."""

    transport: ShardedTransport


def build_request(method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> UpstreamRequest:
    """A request to `url` (from `url()`), for the transport of its origin."""
    found = transport(url)
    present = {name for name, _ in headers}
    request = UpstreamRequest(
        method,
        url,
        headers=[header for header in _DEFAULT_HEADERS if header[0] not in present] + headers,
        content=body,
        extensions={"timeout": found.timeouts},
    )
    request.transport = found
    return request


async def send(request: httpx.Request) -> httpx.Response:
    """Send a request upstream, through its origin's transport; the response's body is left to be read
    (`aiter_raw`) and closed by the caller.

    Raises httpx's exceptions (`httpx.TimeoutException`, `httpx.HTTPError`), as `AsyncClient.send` would; a
    connection the guard refused is an `httpx.ConnectError` for which `egress.is_address_refused` is true.
    """
    found = request.transport if isinstance(request, UpstreamRequest) else transport(str(request.url))
    response = await found.handle_async_request(request)
    response.request = request
    return response


def url(base_url: str, path: str, query: str) -> str:
    """The upstream URL of a request: `base_url` (a project's upstream URL, or the global UPSTREAM_BASE_URL; no
    trailing `/`), then `path`, the part after `/v1` as the client sent it (still percent-encoded), and the query."""
    return f"{base_url}{path}?{query}" if query else f"{base_url}{path}"
