"""Where a project's requests go: its upstream's base URL, how the key is sent there, and what a key must look like.

A project with no `upstream_url` uses the global UPSTREAM_BASE_URL. The key rule follows the upstream: OpenAI's own
keys have a known shape (so a masked or truncated copy is caught when it is entered, not at the first request);
other upstreams (Azure OpenAI, Anthropic, OpenRouter, vLLM, Ollama, …) have keys of their own shapes, so any
printable key without whitespace is taken.
"""

import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from llmproxy import egress
from llmproxy.errors import ServiceError

INVALID_API_KEY = "Invalid API key format"
OPENAI_HOST = "api.openai.com"
URL_MAX_LENGTH = 2000
KEY_MAX_LENGTH = 1000

# `sk-` then only key characters: no whitespace, no ellipsis or asterisks of a masked copy, sensibly long.
OPENAI_KEY_RE = re.compile(r"sk-[A-Za-z0-9_-]{17,500}")
# Any other upstream's key: printable ASCII, no whitespace (a pasted line break or space is a mistake).
OTHER_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{KEY_MAX_LENGTH}}}")


class UpstreamAuth(models.TextChoices):
    BEARER = "bearer", "Authorization: Bearer (OpenAI and OpenAI-compatible servers)"
    API_KEY = "api-key", "api-key header (Azure OpenAI)"
    X_API_KEY = "x-api-key", "x-api-key header (Anthropic)"


# The version of Anthropic's API the test connection asks for (clients send their own on proxied requests).
ANTHROPIC_VERSION = "2023-06-01"


def base_url(upstream_url: str) -> str:
    """The base URL requests go to: the project's own, else the global one."""
    return upstream_url or settings.UPSTREAM_BASE_URL


def uses_openai(upstream_url: str) -> bool:
    """Whether the project's upstream is OpenAI itself (its own URL on api.openai.com, or none: the global one)."""
    if not upstream_url:
        return True
    return (urlsplit(upstream_url).hostname or "") == OPENAI_HOST


def default_auth(upstream_url: str) -> str:
    """The auth style an upstream's URL implies when none is given: Azure's and Anthropic's hosts have their own."""
    host = (urlsplit(upstream_url).hostname or "") if upstream_url else ""
    if host.endswith((".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")):
        return UpstreamAuth.API_KEY
    if host == "api.anthropic.com":
        return UpstreamAuth.X_API_KEY
    return UpstreamAuth.BEARER


def key_rule(upstream_url: str) -> str:
    """What a key must look like for this upstream, in words (form help, error messages)."""
    if uses_openai(upstream_url):
        return "an OpenAI key: sk-… complete, not a masked copy"
    return "printable characters without spaces"


def validate_api_key(value: str, upstream_url: str = "") -> None:
    rule = OPENAI_KEY_RE if uses_openai(upstream_url) else OTHER_KEY_RE
    if not isinstance(value, str) or not rule.fullmatch(value):
        raise ValidationError(INVALID_API_KEY, code="invalid_api_key")


def mask_api_key(value: str) -> str:
    """`sk-proj-Ab…wxyz`: enough to recognise a key, never enough to use it."""
    head = value[: min(10, len(value) // 4)]
    return f"{head}…{value[-4:]}" if len(value) >= 12 else "…"


def auth_header(auth: str, key: bytes) -> tuple[bytes, bytes]:
    """The header that carries the project's key to its upstream."""
    if auth == UpstreamAuth.API_KEY:
        return b"api-key", key
    if auth == UpstreamAuth.X_API_KEY:
        return b"x-api-key", key
    return b"authorization", b"Bearer " + key


def clean_upstream_url(value: str | None) -> str:
    """A project's upstream URL, checked by the egress guard (blank: the global one)."""
    value = (value or "").strip()
    if not value:
        return ""
    if len(value) > URL_MAX_LENGTH:
        raise ServiceError(
            "too_long", f"upstream_url must be at most {URL_MAX_LENGTH} characters.", field="upstream_url"
        )
    try:
        return egress.check_upstream_url(value)
    except egress.UpstreamUrlError as exc:
        raise ServiceError("upstream_url_refused", str(exc), field="upstream_url") from None


def clean_upstream_auth(value: str) -> str:
    if value not in UpstreamAuth.values:
        choices = ", ".join(UpstreamAuth.values)
        raise ServiceError("invalid_choice", f"upstream_auth must be one of: {choices}.", field="upstream_auth")
    return value
