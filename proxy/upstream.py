"""The upstream HTTP client: one `httpx.AsyncClient` per worker process (per event loop), made on first use.

No total timeout, so a stream may run as long as it keeps sending; the read timeout bounds the wait for the
response headers and for each next chunk. The pool is sized for many concurrent streams.
"""

import asyncio

import httpx
from django.conf import settings

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        for stale in [other for other in _clients if other.is_closed()]:
            del _clients[stale]
        found = _clients[loop] = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.PROXY_CONNECT_TIMEOUT,
                read=settings.PROXY_READ_TIMEOUT,
                write=settings.PROXY_READ_TIMEOUT,
                pool=settings.PROXY_CONNECT_TIMEOUT,
            ),
            limits=httpx.Limits(
                max_connections=settings.PROXY_UPSTREAM_MAX_CONNECTIONS,
                max_keepalive_connections=settings.PROXY_UPSTREAM_MAX_KEEPALIVE,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
        )
    return found


def url(path: str, query: str) -> str:
    """`path` is the part after `/v1`, as the client sent it (still percent-encoded)."""
    return f"{settings.UPSTREAM_BASE_URL}{path}?{query}" if query else f"{settings.UPSTREAM_BASE_URL}{path}"
