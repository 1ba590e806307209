"""CORS for browser integrations: only origins named in PROXY_CORS_ALLOWED_ORIGINS ("*" allows any), or in a
project's `allowed_origins` for that project's tokens, get headers.

Preflights are answered without a token, so for any origin allowed by the global list or by some active project
(read at most every PROXY_CORS_PROJECT_ORIGINS_SECONDS); the real request is then checked against its own project's
list. No credentials mode: the token travels in the Authorization header.
"""

import logging
import time
from functools import lru_cache

from django.conf import settings
from django.db import DatabaseError

from projects.selectors import origins_allowed_by_projects

from . import db

logger = logging.getLogger(__name__)

EXPOSED = "X-Request-ID, X-Upstream-Request-ID, Server-Timing"
_DEFAULT_REQUEST_HEADERS = "Authorization, Content-Type"


@lru_cache(maxsize=4)
def _allowed(origins: tuple[str, ...]) -> frozenset[str]:
    return frozenset(o.rstrip("/") for o in origins)


def allowed(origin: str | None) -> bool:
    if not origin:
        return False
    origins = _allowed(tuple(settings.PROXY_CORS_ALLOWED_ORIGINS))
    return origin in origins or "*" in origins


_project_origins: tuple[float, frozenset[str]] = (0.0, frozenset())


async def preflight_allowed(origin: str | None) -> bool:
    global _project_origins
    if not origin or allowed(origin):
        return bool(origin)
    read_at, origins = _project_origins
    if time.monotonic() - read_at > settings.PROXY_CORS_PROJECT_ORIGINS_SECONDS:
        try:
            origins = await db.run(origins_allowed_by_projects)
        except DatabaseError:
            logger.warning("preflight: the projects' origins cannot be read (database unavailable); using the last")
        else:
            _project_origins = (time.monotonic(), origins)
    return origin.rstrip("/") in origins


def response_headers(origin: str) -> dict[str, str]:
    """For an actual (non-preflight) response to an allowed origin."""
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSED, "Vary": "Origin"}


def preflight_headers(origin: str, methods: tuple[str, ...], requested_headers: str | None) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ", ".join((*methods, "OPTIONS")),
        "Access-Control-Allow-Headers": _sane_header_list(requested_headers) or _DEFAULT_REQUEST_HEADERS,
        "Access-Control-Max-Age": str(settings.PROXY_CORS_MAX_AGE),
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }


def _sane_header_list(value: str | None) -> str:
    """The requested header names, echoed back if they are plain header names (the browser asks for what the
    page's code sends: Authorization, Content-Type, the SDK's own X-Stainless-* headers, …)."""
    if not value:
        return ""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if all(name.replace("-", "").isalnum() and name.isascii() and len(name) <= 100 for name in names):
        return ", ".join(names)
    return ""
