"""Reads about tokens."""

import re
import uuid
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from . import secret
from .models import MintingKey, Token, TokenStatus

_ID_PREFIX_RE = re.compile(r"[0-9a-fA-F-]{4,36}")


def _exact_reference(term: str) -> Q | None:
    """A whole token (ours or an imported one, by its digest) or a token ID; None for anything else."""
    if secret.TOKEN.is_well_formed(term) or (
        not term.startswith(secret.TOKEN.prefix) and secret.ORIGINAL_TOKEN.is_well_formed(term)
    ):
        return Q(digest=secret.digest(term))
    try:
        return Q(pk=uuid.UUID(term))
    except ValueError:
        return None


def token_by_reference(reference: str) -> Token | None:
    """A token by its ID or the whole token: what a person gives on the command line. ValueError for anything else."""
    condition = _exact_reference(reference.strip())
    if condition is None:
        raise ValueError(f"not a token ID or a whole {secret.TOKEN.prefix}… token: {reference!r}")
    return Token.objects.filter(condition).first()


def token_search_filter(term: str) -> Q | None:
    """What an operator can paste into the search box: a whole token, its display prefix, or (part of) its ID."""
    term = term.strip()
    if not term:
        return None
    if (exact := _exact_reference(term)) is not None:
        return exact
    if term.startswith(secret.TOKEN.prefix):
        return Q(prefix__startswith=term[: secret.TOKEN.display_length])
    if term.startswith(secret.ORIGINAL_TOKEN.prefix):  # an imported token's
        return Q(prefix__startswith=term[: secret.ORIGINAL_TOKEN.display_length])
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


def tokens_expiring_soon(*, hours: int = 24, limit: int = 6) -> list[Token]:
    """The usable tokens that expire within `hours`, soonest first (with their project)."""
    now = timezone.now()
    return list(
        Token.objects.usable(now)
        .filter(expires_at__lte=now + timedelta(hours=hours))
        .select_related("project")
        .order_by("expires_at")[:limit]
    )


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


def token_get(token_id: uuid.UUID, *, project_id: uuid.UUID | None = None) -> Token | None:
    """The token, if it exists and (when `project_id` is given) belongs to that project."""
    tokens = Token.objects.filter(pk=token_id)
    if project_id is not None:
        tokens = tokens.filter(project_id=project_id)
    return tokens.first()


def tokens_newest_first(*, project_ids: list[uuid.UUID] = (), statuses: list[str] = ()) -> QuerySet[Token]:
    """Tokens, newest first, of every project in `project_ids` with every status in `statuses` (several narrow,
    never widen)."""
    tokens = Token.objects.order_by("-created_at", "id")
    for project_id in project_ids:
        tokens = tokens.filter(project_id=project_id)
    for status in statuses:
        tokens = tokens.with_status(status)
    return tokens


BLOCKED_STATUS = "blocked"


def tokens_with_display_status(tokens: QuerySet[Token], status: str) -> QuerySet[Token]:
    """Filter by status as the operator sees it: a token status, or `blocked` (active, but its project inactive)."""
    if status == BLOCKED_STATUS:
        return tokens.with_status(TokenStatus.ACTIVE).filter(project__is_active=False)
    return tokens.with_status(status)


def project_minting_keys(project) -> list:
    """A project's minting keys, newest first (a project has a handful, so no paging)."""
    return list(MintingKey.objects.filter(project=project).order_by("-created_at"))
