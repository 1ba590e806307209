"""Refusals in OpenAI's error envelope, so the SDKs raise their usual exception with a readable message; on Anthropic's
Messages API (`/v1/messages` and under it) in Anthropic's, so its SDKs do too.

Messages are fixed texts plus harmless facts (a method, a path, a limit): never a token, a key or an exception.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.http import HttpResponse

from llmproxy.security.models import SecurityEventKind, SecurityEventReason
from llmproxy.security.scrub import scrub_secrets


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    type: str = "invalid_request_error"
    retry: bool = False  # whether the SDK should retry it (it retries 429 and 5xx unless told not to)
    event: tuple[str, str] | None = None  # (kind, reason) of the security event it is, if it is one
    headers: tuple[tuple[str, str], ...] = ()  # what else the answer says: Retry-After, x-ratelimit-*
    param: str | None = None  # the request parameter at fault, as OpenAI names it


def _auth_failed(reason: str) -> tuple[str, str]:
    return SecurityEventKind.PROXY_AUTH_FAILED, reason


def missing_token() -> Refusal:
    return Refusal(
        401,
        "missing_token",
        "No token provided. Send your sk-wt-… token as 'Authorization: Bearer <token>' or 'x-api-key: <token>' "
        "(the OpenAI and Anthropic SDKs do this with api_key=<token>).",
        event=_auth_failed(SecurityEventReason.MISSING),
    )


def invalid_token_format() -> Refusal:
    return Refusal(
        401,
        "invalid_token_format",
        "Malformed token: expected 'sk-wt-' followed by 32 letters and digits.",
        event=_auth_failed(SecurityEventReason.MALFORMED),
    )


def unknown_token() -> Refusal:
    return Refusal(
        401,
        "invalid_token",
        "Unknown token. Check that you copied it completely.",
        event=_auth_failed(SecurityEventReason.UNKNOWN),
    )


def token_revoked() -> Refusal:
    return Refusal(
        401,
        "token_revoked",
        "This token has been revoked. Ask the operator for a new one.",
        event=_auth_failed(SecurityEventReason.REVOKED),
    )


def token_expired() -> Refusal:
    return Refusal(
        401,
        "token_expired",
        "This token has expired. Ask the operator for a new one.",
        event=_auth_failed(SecurityEventReason.EXPIRED),
    )


def project_inactive() -> Refusal:
    return Refusal(
        403,
        "project_inactive",
        "The project of this token is inactive. Ask the operator.",
        event=(SecurityEventKind.PROJECT_INACTIVE, ""),
    )


def request_limit_reached(limit: int) -> Refusal:
    return Refusal(
        429,
        "request_limit_reached",
        f"This token has used all of its {limit} requests. Ask the operator to raise its limit.",
        type="insufficient_quota",
    )


def endpoint_not_allowed(method: str, path: str) -> Refusal:
    return Refusal(404, "endpoint_not_allowed", f"This proxy does not serve {method} {path}.")


def invalid_path() -> Refusal:
    return Refusal(
        400,
        "invalid_path",
        "The path has an encoded slash or backslash, a backslash or a dot segment. Send the plain path.",
    )


def method_not_allowed(method: str, path: str, allowed: tuple[str, ...]) -> Refusal:
    return Refusal(
        405, "method_not_allowed", f"Method {method} is not allowed for {path} (allowed: {', '.join(allowed)})."
    )


def body_too_large(limit: int) -> Refusal:
    return Refusal(413, "request_too_large", f"The request body is larger than the limit of {_size(limit)}.")


def upstream_unreachable() -> Refusal:
    return Refusal(502, "upstream_unreachable", "The upstream API could not be reached.", "server_error", True)


def upstream_timeout() -> Refusal:
    return Refusal(504, "upstream_timeout", "The upstream API did not answer in time.", "server_error", True)


def database_unavailable() -> Refusal:
    return Refusal(
        503,
        "service_unavailable",
        "The proxy cannot check tokens right now (its database is unavailable). Try again shortly.",
        "server_error",
        True,
    )


def upstream_key_unusable() -> Refusal:
    return Refusal(
        503,
        "upstream_key_unusable",
        "The project's upstream key cannot be used (it cannot be decrypted). Ask the operator.",
        "server_error",
    )


def rate_limit_exceeded(owner: str, kind: str, limit: int | None, reset_seconds: int) -> Refusal:
    """A per-minute limit (`kind`: requests or tokens) of the token or its project is reached: the SDKs wait for
    Retry-After and try again, as they should."""
    headers = [("Retry-After", str(reset_seconds))]
    if limit is not None:
        headers += [
            (f"x-ratelimit-limit-{kind}", str(limit)),
            (f"x-ratelimit-remaining-{kind}", "0"),
            (f"x-ratelimit-reset-{kind}", f"{reset_seconds}s"),
        ]
    whose = "This token" if owner == "token" else "This token's project"
    limit_text = f"its limit of {limit} {kind} per minute" if limit is not None else f"its {kind} per minute"
    return Refusal(
        429,
        "rate_limit_exceeded",
        f"{whose} has reached {limit_text}. Try again in {reset_seconds} s.",
        type=kind,
        retry=True,
        headers=tuple(headers),
    )


def _usd(amount: Decimal) -> str:
    return f"${amount:,.2f}" if amount == amount.quantize(Decimal("0.01")) else f"${amount.normalize():,f}"


def token_budget_exceeded(budget: Decimal) -> Refusal:
    return Refusal(
        429,
        "budget_exceeded",
        f"This token has spent its budget of {_usd(budget)}. Ask the operator to raise it.",
        type="insufficient_quota",
    )


def project_budget_exceeded(budget: Decimal, period: str, resets_at: datetime | None) -> Refusal:
    when = "It does not reset" if resets_at is None else f"It resets on {resets_at:%Y-%m-%d} at 00:00 UTC"
    per = "in total" if period == "total" else f"this {period}"
    return Refusal(
        429,
        "budget_exceeded",
        f"This token's project has spent its budget of {_usd(budget)} {per}. {when}; ask the operator to raise it "
        "sooner.",
        type="insufficient_quota",
    )


def _shown(value: str) -> str:
    return scrub_secrets(value)[:100] or "(none)"


def model_not_priced(model: str) -> Refusal:
    """A dollar budget applies, and the model has no price: it would cost an unknown amount, so it is refused."""
    return Refusal(
        403,
        "model_not_priced",
        f"The model {_shown(model)!r} has no price, and a dollar budget applies to this token or its project, so it "
        "cannot be used until an operator adds a price (admin: Model prices; PUT /manage/prices/{model}; or "
        "manage.py load_prices).",
        param="model",
    )


def model_not_allowed(model: str) -> Refusal:
    return Refusal(
        403,
        "model_not_allowed",
        f"The model {_shown(model)!r} is not allowed for this token. Ask the operator which models it may use "
        "(GET /v1/models lists them).",
        param="model",
    )


def duplicate_model() -> Refusal:
    return Refusal(
        400,
        "duplicate_model",
        "The request body names its model more than once; send one model field.",
        param="model",
    )


def endpoint_not_allowed_for_project(method: str, path: str) -> Refusal:
    return Refusal(403, "endpoint_not_allowed", f"This token may not call {method} {path}. Ask the operator.")


def origin_not_allowed(origin: str) -> Refusal:
    return Refusal(
        403,
        "origin_not_allowed",
        f"This token may not be used from the web origin {_shown(origin)!r}. Ask the operator.",
        event=(SecurityEventKind.POLICY_REFUSED, SecurityEventReason.ORIGIN),
    )


def ip_not_allowed() -> Refusal:
    return Refusal(
        403,
        "ip_not_allowed",
        "This token may not be used from your network address. Ask the operator.",
        event=(SecurityEventKind.POLICY_REFUSED, SecurityEventReason.IP),
    )


def upstream_address_refused() -> Refusal:
    """The project's upstream resolved to an address the egress guard refuses (llmproxy.egress): never connected."""
    return Refusal(
        502,
        "upstream_address_refused",
        "The project's upstream resolves to an address the proxy may not connect to. Ask the operator.",
        "server_error",
    )


def internal_error() -> Refusal:
    """An unexpected failure of the proxy itself: nothing about it goes to the client (the log has the traceback).
    Not retried: it may well fail the same way again, and the upstream may already have been asked."""
    return Refusal(500, "internal_error", "The proxy failed to handle this request.", "server_error")


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


# Anthropic's error type for each status (its SDKs pick the exception by status; the type is what they show).
# Anthropic uses invalid_request_error for any other 4xx, and api_error is its 5xx.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_PATH = "/messages"


def anthropic_path(path: str) -> bool:
    """Whether a request path is Anthropic's Messages API, whose refusals take Anthropic's shape: `/v1/messages` and
    anything under it (count_tokens, batches). Takes the recorded path (`/v1/…`) or the one after `/v1`."""
    path = path.removeprefix("/v1")
    return path == _ANTHROPIC_PATH or path.startswith(_ANTHROPIC_PATH + "/")


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def refusal_body(refusal: Refusal, *, anthropic: bool = False, request_id: str | None = None) -> bytes:
    """OpenAI's envelope; with `anthropic`, Anthropic's (`request_id` in it, as Anthropic's own errors have it)."""
    if anthropic:
        document = {"type": "error", "error": {"type": anthropic_type(refusal.status), "message": refusal.message}}
        if request_id:
            document["request_id"] = request_id
        return json.dumps(document).encode()
    error = {"message": refusal.message, "type": refusal.type, "param": refusal.param, "code": refusal.code}
    return json.dumps({"error": error}).encode()


def refusal_headers(refusal: Refusal) -> dict[str, str]:
    """The same for both shapes: the OpenAI and Anthropic SDKs both honour X-Should-Retry and Retry-After."""
    headers = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
    if not refusal.retry:
        headers["X-Should-Retry"] = "false"  # retrying a refusal changes nothing
    headers.update(refusal.headers)
    return headers


def refusal_response(refusal: Refusal, *, anthropic: bool = False, request_id: str | None = None) -> HttpResponse:
    body = refusal_body(refusal, anthropic=anthropic, request_id=request_id)
    return HttpResponse(body, status=refusal.status, headers=refusal_headers(refusal))
