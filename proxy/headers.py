"""Which headers cross the proxy, in each direction, and the request ID.

Headers are handled as the raw `(name, value)` byte pairs of the ASGI scope and of httpx, lower-cased names.
"""

import os
import re

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Never sent upstream: the client's credentials (replaced by the project's key; a token put in another header
# must not reach OpenAI either), cookies, who and where the client is (IP headers), headers that would route the
# request to another OpenAI organisation or project than the key's, and what the proxy sets itself.
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"authorization",
    b"api-key",
    b"x-api-key",
    b"cookie",
    b"forwarded",
    b"x-real-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"x-original-forwarded-for",
    b"cf-connecting-ip",
    b"cf-connecting-ipv6",
    b"cf-ipcountry",
    b"true-client-ip",
    b"fastly-client-ip",
    b"openai-organization",
    b"openai-project",
    b"x-request-id",
    b"accept-encoding",
}

# Never passed back: hop-by-hop headers, the upstream's cookies, its server and date (the proxy's server sets
# its own), which organisation and project the company's key belongs to (OpenAI's, Anthropic's), and the
# upstream's request ID (passed on as X-Upstream-Request-ID, since X-Request-ID is the proxy's; Anthropic's
# `request-id` passes as it is, for a support request to Anthropic).
_RESPONSE_DROP = HOP_BY_HOP | {
    b"set-cookie",
    b"server",
    b"date",
    b"alt-svc",
    b"openai-organization",
    b"openai-project",
    b"anthropic-organization-id",
    b"x-request-id",
}

_IDENTITY = (b"accept-encoding", b"identity")


def upstream_request_headers(
    client_headers: list[tuple[bytes, bytes]], *, auth: tuple[bytes, bytes], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """The client's headers minus the forbidden ones, plus the header with the project's key (`auth`, as its
    upstream takes it: projects.upstreams.auth_header) and the request ID.

    The upstream is asked for an uncompressed body, so the proxy can read usage from it as it passes.
    """
    named_hop_by_hop: set[bytes] = set()
    for name, value in client_headers:
        if name == b"connection":
            named_hop_by_hop.update(part.strip().lower() for part in value.split(b","))
    headers = [
        (name, value)
        for name, value in client_headers
        if name not in _REQUEST_DROP and not name.startswith(b"x-forwarded-") and name not in named_hop_by_hop
    ]
    headers.append(auth)
    headers.append((b"x-request-id", request_id))
    headers.append(_IDENTITY)
    return headers


def client_response_headers(
    upstream_headers: list[tuple[bytes, bytes]],
    own: dict[str, str],
    *,
    body_rewritten: bool,
    own_rate_limits: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The response's headers as the server sends them: the upstream's that pass back (a repeated one joined into
    one), then the proxy's `own`, each in place of an upstream header of the same name, whatever its case.

    With `own_rate_limits`, the upstream's `x-ratelimit-*` (the company's account) give way to the caller's own.
    """
    headers: dict[bytes, tuple[bytes, bytes]] = {}  # by lower-cased name
    for raw_name, raw_value in upstream_headers:
        name = raw_name.lower()
        if (
            name in _RESPONSE_DROP
            or (body_rewritten and name == b"content-length")
            or (own_rate_limits and name.startswith(b"x-ratelimit-"))
        ):
            if name == b"x-request-id":
                headers[b"x-upstream-request-id"] = (b"X-Upstream-Request-ID", raw_value)
            continue
        known = headers.get(name)
        headers[name] = (raw_name, raw_value) if known is None else (known[0], known[1] + b", " + raw_value)
    for name, value in own.items():
        raw_name = name.encode("latin-1")
        headers[raw_name.lower()] = (raw_name, value.encode("latin-1"))
    return list(headers.values())


_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{8,128}")


def request_id(client_value: str | None) -> str:
    """The client's own X-Request-ID when it is a sane one (so it can correlate), else a fresh one."""
    if client_value and _CLIENT_REQUEST_ID.fullmatch(client_value):
        return client_value
    return os.urandom(16).hex()
