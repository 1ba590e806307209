"""`/v1/<path>`: check the endpoint, admit the token, forward to the upstream, pass the response on as it comes.

The order is cheapest first: the allow-list and the token's shape need no database; admission is one statement
(plus one more only to explain a refusal); the database is not touched again until the usage record, which a
background thread writes after the last byte.
"""

import asyncio
import logging
import time
from functools import lru_cache

import httpx
import psycopg
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.encoding import escape_uri_path
from django.views.decorators.csrf import csrf_exempt
from psycopg_pool import PoolTimeout

from projects import crypto
from tokens import secret

from . import admission, cors, endpoints, errors, headers, payload, upstream
from .exchange import Exchange, token_prefix
from .relay import Relay
from .usage import StreamUsage

logger = logging.getLogger(__name__)

_WANTED = frozenset({b"authorization", b"origin", b"x-request-id", b"content-type"})


@lru_cache(maxsize=1024)
def _upstream_key(ciphertext: str) -> bytes:
    """Decrypted keys, by ciphertext: a rotated key has a new ciphertext, so this can never serve a stale key."""
    return crypto.decrypt(ciphertext).encode()


def _client_headers(request: HttpRequest) -> list[tuple[bytes, bytes]]:
    scope = getattr(request, "scope", None)
    if scope is not None:
        return scope["headers"]
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in request.headers.items()]


def _bearer(value: str) -> str | None:
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def new_exchange(request: HttpRequest, wanted: dict[bytes, str]) -> Exchange:
    origin = wanted.get(b"origin")
    return Exchange(
        method=request.method or "",
        path=request.path,
        request_id=headers.request_id(wanted.get(b"x-request-id")),
        client_ip=request.META.get("REMOTE_ADDR") or None,
        origin=origin if cors.allowed(origin) else None,
    )


@csrf_exempt
async def forward(request: HttpRequest, path: str) -> HttpResponse:
    client_headers = _client_headers(request)
    wanted = {name: value.decode("latin-1") for name, value in client_headers if name in _WANTED}
    exchange = new_exchange(request, wanted)
    api_path = "/" + path
    try:
        if request.method == "OPTIONS":
            return preflight(request, exchange, api_path)
        return await _forward(request, exchange, api_path, client_headers, wanted)
    except asyncio.CancelledError:
        exchange.record(status=499, duration_ms=exchange.elapsed_ms(), client_aborted=True)
        raise


def preflight(request: HttpRequest, exchange: Exchange, api_path: str) -> HttpResponse:
    """Answered without a token. Only an allowed origin gets CORS headers (so the browser lets the call through)."""
    check = endpoints.check("OPTIONS", api_path)
    if not check.known_path:
        response = errors.refusal_response(errors.endpoint_not_allowed("OPTIONS", exchange.path))
        response["X-Request-ID"] = exchange.request_id
        return response
    response = HttpResponse(status=204, headers={"X-Request-ID": exchange.request_id})
    response["Allow"] = ", ".join((*check.methods, "OPTIONS"))
    if exchange.origin:
        requested = request.headers.get("Access-Control-Request-Headers")
        for name, value in cors.preflight_headers(exchange.origin, check.methods, requested).items():
            response[name] = value
    return response


async def _forward(
    request: HttpRequest,
    exchange: Exchange,
    api_path: str,
    client_headers: list[tuple[bytes, bytes]],
    wanted: dict[bytes, str],
) -> HttpResponse:
    method = exchange.method
    check = endpoints.check(method, api_path)
    if not check.allowed:
        if check.known_path:
            allow = ", ".join((*check.methods, "OPTIONS"))
            return exchange.refuse(errors.method_not_allowed(method, exchange.path, check.methods), {"Allow": allow})
        return exchange.refuse(errors.endpoint_not_allowed(method, exchange.path))

    presented = _bearer(wanted.get(b"authorization", ""))
    if presented is None:
        return exchange.refuse(errors.missing_token())
    exchange.token_prefix = token_prefix(presented)
    if not secret.is_well_formed(presented):
        return exchange.refuse(errors.invalid_token_format())

    body = request.body
    if len(body) > settings.PROXY_MAX_BODY_BYTES:
        return exchange.refuse(errors.body_too_large(settings.PROXY_MAX_BODY_BYTES))

    try:
        admitted = await admission.admit_async(secret.digest(presented))
    except (DatabaseError, psycopg.Error, PoolTimeout) as exc:
        logger.error(
            "admission failed for request %s: database unavailable (%s)", exchange.request_id, type(exc).__name__
        )
        return exchange.refuse(errors.database_unavailable())
    exchange.token_id, exchange.project_id = admitted.token_id, admitted.project_id
    if isinstance(admitted, admission.Refused):
        return exchange.refuse(admitted.refusal)
    try:
        api_key = _upstream_key(admitted.api_key_ciphertext)
    except crypto.KeyDecryptionError:
        logger.error("the upstream key of project %s cannot be decrypted with ENCRYPTION_KEYS", admitted.project_id)
        return exchange.refuse(errors.upstream_key_unusable())

    sent = payload.inspect(body, wanted.get(b"content-type", ""), api_path)
    exchange.model = sent.model
    raw_path = getattr(request, "scope", {}).get("raw_path")
    forwarded_path = (raw_path.decode("latin-1") if raw_path else escape_uri_path(request.path))[len("/v1") :]
    upstream_request = upstream.build_request(
        method,
        upstream.url(forwarded_path, request.META.get("QUERY_STRING", "")),
        headers.upstream_request_headers(client_headers, api_key=api_key, request_id=exchange.request_id.encode()),
        sent.body,
    )
    sent_at = time.perf_counter()
    try:
        response = await upstream.send(upstream_request)
    except httpx.TimeoutException:
        return exchange.refuse(errors.upstream_timeout())
    except httpx.HTTPError as exc:
        logger.warning("upstream unreachable for request %s: %s", exchange.request_id, type(exc).__name__)
        return exchange.refuse(errors.upstream_unreachable())
    headers_at = time.perf_counter()

    is_event_stream = response.headers.get("content-type", "").startswith("text/event-stream")
    strip = is_event_stream and sent.usage_injected
    relay = Relay(
        exchange, response, sent_at=sent_at, stream_usage=StreamUsage(strip=strip) if is_event_stream else None
    )
    relay.watch(asyncio.current_task())
    client_response = StreamingHttpResponse(relay.body(), status=response.status_code)
    del client_response["Content-Type"]  # only what the upstream sent
    for name, value in headers.client_response_headers(response.headers.raw, body_rewritten=strip).items():
        client_response[name] = value
    for name, value in exchange.headers().items():
        client_response[name] = value
    client_response["Server-Timing"] = (
        f"proxy;dur={(sent_at - exchange.started) * 1000:.2f}, upstream;dur={(headers_at - sent_at) * 1000:.2f}"
    )
    return client_response
