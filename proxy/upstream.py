"""The upstream HTTP client: one transport per upstream origin (scheme, host, port) and per event loop of a worker
process, each made on first use with the same limits (`llmproxy.http11`: HTTP/1.1 on asyncio, kept-alive connections).

The origin of the global UPSTREAM_BASE_URL (the operator's own setting) connects as it always did; every other
origin (a project's own upstream) is guarded: every address its host resolves to is checked before connecting
(`llmproxy.egress`). Requests find their transport by the text of their URL up to the path, a dictionary lookup
(`build_request`); the request then carries it to `send`.

Requests go straight to the transport (`send`), not through an `httpx.AsyncClient`: the client's layers (auth,
redirects, event hooks, URL merging and its cookie jar) cost about a fifth of the proxy's CPU per request and the
proxy uses none of them. Its cookie jar was even wrong here: it would have stored a cookie the upstream set for one
project's request and sent it with every later request, whichever project's. What the client did add is kept: its
default headers (when the client did not send its own) and the timeouts.

No total timeout, so a stream may run as long as it keeps sending; the read timeout bounds the wait for the
response headers and for each next chunk. The pool is sized for many concurrent streams.
"""

import asyncio
from dataclasses import dataclass

import httpx
from django.conf import settings

from llmproxy import egress, http11

from .loops import of_this_loop

# What httpx.AsyncClient adds to every request unless the request has its own (Accept-Encoding is always set).
_DEFAULT_HEADERS = (
    (b"accept", b"*/*"),
    (b"connection", b"keep-alive"),
    (b"user-agent", f"python-httpx/{httpx.__version__}".encode()),
)


class Upstream:
    """An origin's transport, with the timeouts its requests carry."""

    def __init__(self, transport: httpx.AsyncBaseTransport, timeouts: httpx.Timeout) -> None:
        self.transport = transport
        self.timeouts = timeouts.as_dict()
        self.guarded: bool = transport.guarded

    async def aclose(self) -> None:
        await self.transport.aclose()


class _LoopTransports:
    """One event loop's transports: by origin, and by the text of a URL up to its path (the lookup requests use)."""

    def __init__(self) -> None:
        self.by_origin: dict[egress.Origin, Upstream] = {}
        self.by_prefix: dict[str, Upstream] = {}


_transports: dict[asyncio.AbstractEventLoop, _LoopTransports] = {}


def _prefix(url: str) -> str:
    """`scheme://authority` of a URL: the text before the path (or query), without parsing it."""
    end = url.find("/", url.find("://") + 3)
    prefix = url if end < 0 else url[:end]
    return prefix.partition("?")[0] if "?" in prefix else prefix


def transport(base_url: str | None = None) -> Upstream:
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


def _new_transport(base_url: str) -> Upstream:
    limits = httpx.Limits(
        max_connections=settings.PROXY_UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.PROXY_UPSTREAM_MAX_KEEPALIVE,
        keepalive_expiry=30.0,
    )
    return Upstream(
        http11.new_transport(base_url, limits=limits, guarded=not egress.is_trusted_origin(base_url)),
        httpx.Timeout(
            connect=settings.PROXY_CONNECT_TIMEOUT,
            read=settings.PROXY_READ_TIMEOUT,
            write=settings.PROXY_READ_TIMEOUT,
            pool=settings.PROXY_CONNECT_TIMEOUT,
        ),
    )


@dataclass(slots=True)
class UpstreamRequest:
    """What goes upstream: the method, the URL (`url()`) and its path and query, the headers and the body, and the
    transport of its origin (picked once, by `build_request`)."""

    method: str
    url: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    upstream: Upstream


def build_request(method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> UpstreamRequest:
    """A request to `url` (from `url()`), for the transport of its origin."""
    prefix = _prefix(url)
    target = url[len(prefix) :]
    if not target.startswith("/"):
        target = "/" + target
    present = {name for name, _ in headers}
    return UpstreamRequest(
        method,
        url,
        target.encode("ascii"),
        [header for header in _DEFAULT_HEADERS if header[0] not in present] + headers,
        body,
        transport(prefix),
    )


async def send(request: UpstreamRequest) -> httpx.Response:
    """Send a request upstream, through its origin's transport; the response's body is left to be read
    (`aiter_raw`) and closed by the caller.

    Raises httpx's exceptions (`httpx.TimeoutException`, `httpx.HTTPError`), as `AsyncClient.send` would; a
    connection the guard refused is an `httpx.ConnectError` for which `egress.is_address_refused` is true.
    """
    found = request.upstream
    if isinstance(found.transport, http11.Transport):
        return await found.transport.request(
            request.method, request.target, request.headers, request.body, found.timeouts
        )
    through_proxy = httpx.Request(
        request.method,
        request.url,
        headers=request.headers,
        content=request.body,
        extensions={"timeout": found.timeouts},
    )
    response = await found.transport.handle_async_request(through_proxy)
    response.request = through_proxy
    return response


def url(base_url: str, path: str, query: str) -> str:
    """The upstream URL of a request: `base_url` (a project's upstream URL, or the global UPSTREAM_BASE_URL; no
    trailing `/`), then `path`, the part after `/v1` as the client sent it (still percent-encoded), and the query."""
    return f"{base_url}{path}?{query}" if query else f"{base_url}{path}"
