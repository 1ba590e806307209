"""`/v1/<path>`: check the endpoint, admit the token, apply its project's policy, forward to the project's upstream,
pass the response on as it comes.

The order is cheapest first: the path, the allow-list and the token's shape need no database; admission is one
statement (plus one more only to explain a refusal) that also returns the project's upstream and the policy lists;
a project with the response cache on looks the request up next (proxy.cache), and a hit is answered from there; else
the database is not touched again until the usage record, which a background thread writes after the last byte (a
request refused after admission, by the policy or the upstream, first gives its count back).
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import lru_cache, partial

import httpx
import psycopg
from django.db import DatabaseError
from django.http import HttpResponse
from django.utils.encoding import escape_uri_path
from psycopg_pool import PoolTimeout

from llmproxy import egress
from projects import crypto
from projects.policy import UNRESTRICTED, RequestPolicy
from projects.upstreams import auth_header
from tokens import secret

from . import (
    admission,
    cache,
    cache_store,
    cors,
    db,
    endpoints,
    errors,
    headers,
    model_list,
    payload,
    prices,
    replay,
    settlement,
    upstream,
)
from .counting import StreamUsage
from .exchange import Exchange, ProxyRequest, read_headers, token_prefix
from .relay import SETTLE_ERRORS, Relay, RelayResponse, Settlement

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1024)
def _upstream_key(ciphertext: str) -> bytes:
    """Decrypted keys, by ciphertext: a rotated key has a new ciphertext, so this can never serve a stale key."""
    return crypto.decrypt(ciphertext).encode()


async def forward(request: ProxyRequest) -> HttpResponse | RelayResponse:
    """A request to `/v1/…`, called by `proxy.asgi.ProxyHandler`, which has already checked the body's size."""
    scope = request.scope
    read = read_headers(scope)
    exchange = Exchange.from_scope(scope, read)
    api_path = scope["path"][len("/v1") :]
    try:
        if request.method == "OPTIONS":
            return await preflight(request, exchange, api_path)
        return await _forward(request, scope, exchange, api_path, read)
    except asyncio.CancelledError:
        exchange.record(status=499, duration_ms=exchange.elapsed_ms(), client_aborted=True)
        raise
    except Exception:
        # The last guard: a failure of the proxy itself is still an answer in OpenAI's envelope, recorded like a
        # refusal. Its traceback is logged here, once (Django's own line about the 500 is dropped: access_log).
        logger.exception("unexpected error on request %s", exchange.request_id)
        return exchange.refuse(errors.internal_error())


async def _give_back_and_refuse(exchange: Exchange, admitted: admission.Admission, refusal) -> HttpResponse:
    """A request admission counted is refused after all (or failed upstream): its count is given back first, so it
    uses up no quota, then the refusal goes out."""
    exchange.count_later = False
    try:
        await settlement.give_back_async(admitted.token_id, admitted.project_id, admitted.allowance)
    except SETTLE_ERRORS as exc:
        logger.warning("could not give back request %s (%s)", exchange.request_id, type(exc).__name__)
    return exchange.refuse(refusal)


async def preflight(request: ProxyRequest, exchange: Exchange, api_path: str) -> HttpResponse:
    """Answered without a token. Only an allowed origin (by the global list, or by some active project) gets CORS
    headers (so the browser lets the call through); the call itself is checked against its token's project."""
    check = endpoints.check("OPTIONS", api_path)
    if not check.known_path:
        response = errors.refusal_response(
            errors.endpoint_not_allowed("OPTIONS", exchange.path),
            anthropic=errors.anthropic_path(exchange.path),
            request_id=exchange.request_id,
        )
        response["X-Request-ID"] = exchange.request_id
        return response
    response = HttpResponse(status=204, headers={"X-Request-ID": exchange.request_id})
    response["Allow"] = ", ".join((*check.methods, "OPTIONS"))
    if await cors.preflight_allowed(exchange.origin_sent):
        requested = request.header(b"access-control-request-headers")
        for name, value in cors.preflight_headers(exchange.origin_sent, check.methods, requested).items():
            response[name] = value
    return response


def _presented_token(read: dict[bytes, str]) -> str | None:
    """The client's credential: `Authorization: Bearer …` (the OpenAI SDKs), else `x-api-key` (Anthropic's)."""
    return secret.bearer(read.get(b"authorization", "")) or read.get(b"x-api-key", "").strip() or None


def _policy_refusal(exchange: Exchange, policy: RequestPolicy, method: str, api_path: str) -> errors.Refusal | None:
    """What the project's policy (narrowed by the token's) says about where the request comes from and what it
    calls; the model is checked once the body is read. Answers from an origin the project allows carry CORS."""
    if not policy.allows_ip(exchange.client_ip):
        return errors.ip_not_allowed()
    if policy.origins is not None and exchange.origin_sent:
        if not policy.allows_origin(exchange.origin_sent):
            return errors.origin_not_allowed(exchange.origin_sent)
        exchange.origin = exchange.origin_sent
    if not policy.allows_endpoint(method, api_path):
        return errors.endpoint_not_allowed_for_project(method, exchange.path)
    return None


def _model_in_path(api_path: str, forwarded_path: str, policy: RequestPolicy) -> tuple[str, str]:
    """`GET /models/{model}`: the model it names, and the path with an alias resolved."""
    prefix = "/models/"
    if not api_path.startswith(prefix) or "/" in api_path[len(prefix) :]:
        return "", forwarded_path
    model = api_path[len(prefix) :]
    target = policy.resolve(model)
    return target, (prefix + escape_uri_path(target) if target != model else forwarded_path)


async def _forward(
    request: ProxyRequest, scope: dict, exchange: Exchange, api_path: str, read: dict[bytes, str]
) -> HttpResponse | RelayResponse:
    method = exchange.method
    raw_path = scope.get("raw_path") or escape_uri_path(scope["path"]).encode()  # raw_path is optional in ASGI
    if not endpoints.plain_path(raw_path, scope["path"]):
        return exchange.refuse(errors.invalid_path())
    check = endpoints.check(method, api_path)
    if not check.allowed:
        if check.known_path:
            allow = ", ".join((*check.methods, "OPTIONS"))
            return exchange.refuse(errors.method_not_allowed(method, exchange.path, check.methods), {"Allow": allow})
        return exchange.refuse(errors.endpoint_not_allowed(method, exchange.path))

    presented = _presented_token(read)
    if presented is None:
        return exchange.refuse(errors.missing_token())
    exchange.token_prefix = token_prefix(presented)
    # The Go LLM Proxy's shape is taken only for the tokens imported from it: one stored with its digest is admitted
    # by the same statement, any other is refused as malformed. Our own tokens never run the second check.
    original = not secret.TOKEN.is_well_formed(presented)
    if original and not secret.ORIGINAL_TOKEN.is_well_formed(presented):
        return exchange.refuse(errors.invalid_token_format())

    digest = secret.digest(presented)
    query = request.query
    check_request = partial(
        _check,
        exchange,
        api_path=api_path,
        raw_path=raw_path,
        body=request.body,
        content_type=read.get(b"content-type", ""),
        query=query,
        cache_control=read.get(b"cache-control", ""),
    )
    checked = found = None
    looked_up = False
    try:
        if cache_store.in_admission(digest):
            admitted, checked, looked_up, found = await db.run_grouped(
                cache_store.admit_and_take, digest, check_request
            )
        else:
            admitted = await admission.admit_async(digest)
    except (DatabaseError, psycopg.Error, PoolTimeout) as exc:
        logger.error(
            "admission failed for request %s: database unavailable (%s)", exchange.request_id, type(exc).__name__
        )
        return exchange.refuse(errors.database_unavailable())
    exchange.token_id, exchange.project_id = admitted.token_id, admitted.project_id
    if admitted.refusal is not None:
        if original and admitted.token_id is None:
            return exchange.refuse(errors.invalid_token_format())
        return exchange.refuse(admitted.refusal)
    cache_store.remember(digest, admitted.cache_mode)
    exchange.count_later = not admitted.allowance.counted
    if checked is None:
        checked = check_request(admitted)
    if checked.refusal is not None:
        return await _give_back_and_refuse(exchange, admitted, checked.refusal)
    policy, sent, plan, allowance = admitted.policy, checked.sent, checked.plan, admitted.allowance
    if plan is not None and plan.read:
        if not looked_up:
            plan, found = await _look_up(exchange, admitted, plan)
        if found is not None:
            exchange.count_later = False  # a hit is counted as one, not as a request
            rewrite = model_list.rewriter(policy) if checked.lists_models else None
            return replay.response(exchange, found, allowance, strip=sent.usage_injected, rewrite=rewrite)
    try:
        api_key = _upstream_key(admitted.api_key_ciphertext)
    except crypto.KeyDecryptionError:
        logger.error("the upstream key of project %s cannot be decrypted with ENCRYPTION_KEYS", admitted.project_id)
        return await _give_back_and_refuse(exchange, admitted, errors.upstream_key_unusable())
    forwarded_path, lists_models = checked.forwarded_path, checked.lists_models
    price = None
    if allowance.charges_before_end:
        price = (await prices.price_table()).lookup(sent.model)
        if price is None and allowance.budgeted and sent.model:
            # An unknown cost would slip past the budget: refused before it leaves (the count given back).
            return await _give_back_and_refuse(exchange, admitted, errors.model_not_priced(sent.model))
    upstream_request = upstream.build_request(
        method,
        upstream.url(admitted.base_url, forwarded_path, query),
        headers.upstream_request_headers(
            scope["headers"],
            auth=auth_header(admitted.upstream_auth, api_key),
            request_id=exchange.request_id.encode(),
        ),
        sent.body,
    )
    sent_at = time.perf_counter()
    try:
        response = await upstream.send(upstream_request)
    except httpx.TimeoutException:
        return await _give_back_and_refuse(exchange, admitted, errors.upstream_timeout())
    except httpx.HTTPError as exc:
        if egress.is_address_refused(exc):
            logger.warning("request %s: the upstream of project %s: %s", exchange.request_id, admitted.project_id, exc)
            return await _give_back_and_refuse(exchange, admitted, errors.upstream_address_refused())
        logger.warning("upstream unreachable for request %s: %s", exchange.request_id, type(exc).__name__)
        return await _give_back_and_refuse(exchange, admitted, errors.upstream_unreachable())
    headers_at = time.perf_counter()

    is_event_stream = response.headers.get("content-type", "").startswith("text/event-stream")
    strip = is_event_stream and sent.usage_injected
    give_back = response.status_code >= 500  # the upstream failed: the request is not counted
    if give_back:
        exchange.count_later = False
    settle = None
    if give_back or allowance.charges_before_end:
        settle = Settlement(allowance, admitted.token_id, admitted.project_id, price, give_back=give_back)
    stream_usage = None
    if is_event_stream:
        stream_usage = StreamUsage(strip=strip, hold=settle is not None and not give_back)
    rewrite = model_list.rewriter(policy) if lists_models and response.status_code == 200 else None
    keeping = None
    if plan is not None:
        if cache.storable(response.status_code, response.headers, response.headers.get("content-length")):
            keeping = cache.Keeping(plan, response.headers.get("content-type", ""), is_event_stream)
            exchange.cache = cache.Result.STORED
        else:
            exchange.cache = cache.Result.MISS if plan.read else cache.Result.BYPASS
    relay = Relay(
        exchange,
        response,
        sent_at=sent_at,
        stream_usage=stream_usage,
        settle=settle,
        rewrite=rewrite,
        keeping=keeping,
    )
    relay.watch(asyncio.current_task())
    own_limits = allowance.headers()
    own = own_limits | exchange.headers()
    if exchange.cache:
        own["X-Cache"] = exchange.cache
    own["Server-Timing"] = (
        f"proxy;dur={(sent_at - exchange.started) * 1000:.2f}, upstream;dur={(headers_at - sent_at) * 1000:.2f}"
    )
    client_headers = headers.client_response_headers(
        response.headers.raw, own, body_rewritten=strip or rewrite is not None, own_rate_limits=bool(own_limits)
    )
    return RelayResponse(relay, response.status_code, client_headers)


@dataclass(frozen=True)
class Checked:
    """What the project's policy says about the request once its token is admitted: refused, or what is sent where
    (and, with the response cache on, the cache's plan for it)."""

    refusal: errors.Refusal | None = None
    sent: payload.Payload | None = None
    forwarded_path: str = ""
    lists_models: bool = False
    plan: cache.Plan | None = None


def _check(
    exchange: Exchange,
    admitted: admission.Admission,
    *,
    api_path: str,
    raw_path: bytes,
    body: bytes,
    content_type: str,
    query: str,
    cache_control: str,
) -> Checked:
    """The policy's checks, the body read, the cache's plan: no I/O, so on SQLite, for a project with the cache on,
    it runs on the database thread inside admission's transaction (proxy.cache_store.admit_and_take)."""
    method, policy = exchange.method, admitted.policy
    if policy is not UNRESTRICTED and (refusal := _policy_refusal(exchange, policy, method, api_path)):
        return Checked(refusal)
    forwarded_path = raw_path.decode("latin-1")[len("/v1") :]
    sent = payload.inspect(body, content_type, api_path, policy)
    exchange.model = sent.model
    lists_models = False
    if policy.reads_model:
        if sent.duplicate_model:
            return Checked(errors.duplicate_model())
        named = sent.model
        if method == "GET" and not named:
            named, forwarded_path = _model_in_path(api_path, forwarded_path, policy)
            lists_models = api_path == "/models"
        if named and (sent.model_too_long or not policy.allows_model(named)):
            return Checked(errors.model_not_allowed(named))
    plan = None
    if admitted.cache_mode != "off":
        plan = cache.plan(
            mode=admitted.cache_mode,
            default_ttl=admitted.cache_ttl,
            project_id=admitted.project_id,
            method=method,
            api_path=api_path,
            query=query,
            body=body,
            model=sent.model,
            cache_control=cache_control,
            document=sent.document,
        )
        if plan.key is None or not cache_store.available():
            exchange.cache = cache.Result.BYPASS
            plan = None
    return Checked(None, sent, forwarded_path, lists_models, plan)


async def _look_up(
    exchange: Exchange, admitted: admission.Admission, plan: cache.Plan
) -> tuple[cache.Plan | None, cache_store.Entry | None]:
    """The stored answer, counted as a hit (or none); the plan becomes None when the cache cannot be read now."""
    try:
        return plan, await cache_store.take(plan.key, admitted.token_id, admitted.allowance.counted)
    except cache_store.Unavailable:
        exchange.cache = cache.Result.BYPASS
        return None, None
    except SETTLE_ERRORS as exc:
        logger.warning("could not read the response cache for request %s (%s)", exchange.request_id, type(exc).__name__)
        return plan, None
