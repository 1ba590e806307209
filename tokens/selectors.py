"""Reads about tokens."""

import re
import uuid
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from . import secret
from .models import MintingKey, Token, TokenStatus

_ID_PREFIX_RE = re.compile(r"[0-9a-fA-F-]{4,36}")


def token_search_filter(term: str) -> Q | None:
    """What an operator can paste into the search box: a whole token, its display prefix, or (part of) its ID."""
    term = term.strip()
    if not term:
        return None
    if secret.is_well_formed(term):
        return Q(digest=secret.digest(term))
    if term.startswith(secret.PREFIX):
        return Q(prefix__startswith=term[: secret.DISPLAY_PREFIX_LENGTH])
    try:
        return Q(pk=uuid.UUID(term))
    except ValueError:
        pass
    if _ID_PREFIX_RE.fullmatch(term):
        return Q(pk__startswith=_canonical_uuid_prefix(term)) | Q(label__icontains=term)
    return Q(label__icontains=term)


def _canonical_uuid_prefix(term: str) -> str:
    """`5F2D7878FEFE` or `5f2d7878-fefe` → `5f2d7878-fefe`: PostgreSQL compares the ID's hyphenated text form (and
    Django strips the hyphens again where UUIDs are stored as 32 hex characters, as on SQLite)."""
    digits = term.replace("-", "").lower()
    bounds = ((0, 8), (8, 12), (12, 16), (16, 20), (20, None))
    return "-".join(digits[a:b] for a, b in bounds if digits[a:b])


def token_counts() -> dict[str, int]:
    now = timezone.now()
    usable = Token.objects.usable(now)
    return {
        "active": usable.count(),
        "expiring_24h": usable.filter(expires_at__lte=now + timedelta(hours=24)).count(),
    }


def project_token_summary(project) -> dict:
    tokens = Token.objects.filter(project=project)
    return {
        "total": tokens.count(),
        "active": tokens.with_status(TokenStatus.ACTIVE).count(),
        "recent": list(tokens.order_by("-created_at")[:10]),
    }


def project_unrevoked_token_count(project) -> int:
    """How many of the project's tokens a "revoke all" would revoke."""
    return Token.objects.filter(project=project, revoked_at__isnull=True).count()


def tokens_for_list() -> QuerySet[Token]:
    return Token.objects.select_related("project")


BLOCKED_STATUS = "blocked"


def tokens_with_display_status(tokens: QuerySet[Token], status: str) -> QuerySet[Token]:
    """Filter by status as the operator sees it: a token status, or `blocked` (active, but its project inactive)."""
    if status == BLOCKED_STATUS:
        return tokens.with_status(TokenStatus.ACTIVE).filter(project__is_active=False)
    return tokens.with_status(status)


def project_minting_keys(project) -> list:
    """A project's minting keys, newest first (a project has a handful, so no paging)."""
    return list(MintingKey.objects.filter(project=project).order_by("-created_at"))
