"""The "test connection" of a project: its upstream asked for its model list with the project's key, through a
one-off transport guarded like the proxy's (llmproxy.egress); what it answered, in one line that never holds the key.
"""

import asyncio
import json
import ssl
from dataclasses import dataclass

import httpx

from llmproxy.egress import (
    AddressRefused,
    UpstreamUrlError,
    check_upstream_url,
    exception_chain,
    is_trusted_origin,
)
from llmproxy.http11 import new_transport
from llmproxy.security.scrub import scrub_secrets
from projects import crypto
from projects.models import Project
from projects.upstreams import ANTHROPIC_VERSION, UpstreamAuth, auth_header

PROBE_TIMEOUT = 10.0
PROBE_MAX_BODY_BYTES = 8 * 1024 * 1024  # a model list larger than this is not read to its end


@dataclass(frozen=True)
class ProbeResult:
    """What the upstream answered."""

    ok: bool
    status: int | None  # the upstream's HTTP status; None when no answer came
    message: str  # one line, for the operator; never contains the key
    model_count: int | None = None


def project_upstream_test(*, project: Project) -> ProbeResult:
    """The project's upstream asked with its key and auth style (nothing is written): whether the URL, the auth
    style and the key work together, or what the upstream said. What the admin, the API and the command call."""
    try:
        key = project.api_key.encode()
    except crypto.KeyDecryptionError:
        return ProbeResult(False, None, "The stored key cannot be decrypted with ENCRYPTION_KEYS.")
    headers = [auth_header(project.upstream_auth, key)]
    if project.upstream_auth == UpstreamAuth.X_API_KEY:
        headers.append((b"anthropic-version", ANTHROPIC_VERSION.encode()))
    return probe_sync(project.base_url, headers)


async def probe(base_url: str, headers: list[tuple[bytes, bytes]]) -> ProbeResult:
    """GET `{base_url}/models` with these headers (the project's auth header), through a one-off transport.

    The transport is guarded like the proxy's (unless `base_url` has the origin of the global UPSTREAM_BASE_URL,
    which requests to it are not either); it is closed afterwards. At most PROBE_TIMEOUT seconds in all.
    """
    secrets = _secret_parts(headers)

    def result(ok: bool, status: int | None, message: str, count: int | None = None) -> ProbeResult:
        return ProbeResult(ok, status, _clean(message, secrets), count)

    base_url = base_url.strip().rstrip("/")
    try:
        trusted = is_trusted_origin(base_url)
    except httpx.InvalidURL:
        trusted = False  # and check_upstream_url says what is wrong with it
    if not trusted:
        try:
            base_url = check_upstream_url(base_url, resolve=False)
        except UpstreamUrlError as exc:
            return result(False, None, str(exc))
    transport = new_transport(base_url, guarded=not trusted, limits=httpx.Limits(max_connections=1))
    request = httpx.Request(
        "GET",
        f"{base_url}/models",
        headers=[(b"accept", b"application/json"), *headers],
        extensions={"timeout": httpx.Timeout(PROBE_TIMEOUT).as_dict()},
    )
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            response = await transport.handle_async_request(request)
            try:
                body = await _read_limited(response, PROBE_MAX_BODY_BYTES)
            finally:
                await response.stream.aclose()
    except TimeoutError:
        return result(False, None, f"The upstream did not answer within {PROBE_TIMEOUT:g} s.")
    except httpx.HTTPError as exc:
        return result(False, None, _connection_failure(exc))
    finally:
        await transport.aclose()
    return _judge(response.status_code, body, result)


def probe_sync(base_url: str, headers: list[tuple[bytes, bytes]]) -> ProbeResult:
    """`probe` for synchronous code (admin views, commands): runs its own event loop, so not from inside one."""
    return asyncio.run(probe(base_url, headers))


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.stream:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def _judge(status: int, body: bytes, result) -> ProbeResult:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if 200 <= status < 300:
        data = document.get("data") if isinstance(document, dict) else None
        if isinstance(data, list):
            count = len(data)
            models = "model" if count == 1 else "models"
            return result(True, status, f"Connected: the upstream lists {count} {models}.", count)
        return result(False, status, f"The upstream answered {status} but not with a model list: {_excerpt(body)}")
    return result(False, status, f"The upstream answered {status}: {_error_message(document) or _excerpt(body)}")


def _error_message(document) -> str | None:
    """The message of an error body: OpenAI's and Anthropic's `error.message`, or the usual other places."""
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    for value in (error, document.get("message"), document.get("detail")):
        if isinstance(value, str) and value.strip():
            return value
    return None


def _excerpt(body: bytes) -> str:
    text = body[:1200].decode("utf-8", "replace").strip()
    return text[:300] or "(an empty body)"


def _connection_failure(exc: httpx.HTTPError) -> str:
    causes = exception_chain(exc)
    refused = next((cause for cause in causes if isinstance(cause, AddressRefused)), None)
    if refused is not None:
        return f"Not connected: {refused}."
    if isinstance(exc, httpx.ConnectTimeout):
        return f"Could not connect within {PROBE_TIMEOUT:g} s."
    if isinstance(exc, httpx.TimeoutException):
        return f"The upstream did not answer within {PROBE_TIMEOUT:g} s."
    tls = next((cause for cause in causes if isinstance(cause, ssl.SSLError)), None)
    if tls is not None:
        return f"The TLS handshake failed: {getattr(tls, 'verify_message', None) or tls.reason or tls}."
    if isinstance(exc, httpx.ConnectError):
        system = next((cause for cause in reversed(causes) if isinstance(cause, OSError) and cause.errno), None)
        if isinstance(system, ConnectionRefusedError):
            return "Could not connect: the connection was refused (does anything listen on that port?)."
        if system is not None:
            return f"Could not connect: {system.strerror or system}."
        return f"Could not connect: {exc or type(exc).__name__}."
    return f"The connection failed: {exc or type(exc).__name__}."


def _secret_parts(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """What must never be shown of these headers: each value, and each word of it (the key of `Bearer <key>`)."""
    parts = set()
    for _, value in headers:
        text = value.decode("latin-1").strip()
        parts.update(part for part in (text, *text.split()) if len(part) >= 8)  # not "Bearer", nor a "1"
    return sorted(parts, key=len, reverse=True)


def _clean(message: str, secrets: list[str]) -> str:
    """One line, the secrets cut out, at most 400 characters."""
    for secret in secrets:
        message = message.replace(secret, "[redacted]")
    message = scrub_secrets(" ".join(message.split()))
    return message if len(message) <= 400 else message[:399] + "…"
