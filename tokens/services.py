"""Every change to a token: validated, written and audited in one transaction."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from llmproxy.audit import Actor, audited, log_updates
from projects.models import Project

from . import secret
from .models import Token

INACTIVE_PROJECT = "Cannot generate tokens for inactive project"


@dataclass(frozen=True)
class IssuedToken:
    """A freshly generated token: the only moment its plaintext exists."""

    token: Token
    plaintext: str


def validate_duration(duration: timedelta) -> None:
    limit = timedelta(hours=settings.TOKEN_MAX_DURATION_HOURS)
    if duration <= timedelta(0):
        raise ValidationError({"duration": "Duration must be positive."})
    if duration > limit:
        raise ValidationError({"duration": f"Duration must be at most {settings.TOKEN_MAX_DURATION_HOURS} hours."})


def normalize_max_requests(value: int | None) -> int | None:
    """Blank or 0 means unlimited; negatives and absurd values are refused."""
    if value in (None, 0):
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError({"max_requests": "Request limit must be a whole number."})
    if value < 0:
        raise ValidationError({"max_requests": "Request limit cannot be negative (leave it blank for unlimited)."})
    if value > settings.TOKEN_MAX_REQUESTS:
        raise ValidationError({"max_requests": f"Request limit must be at most {settings.TOKEN_MAX_REQUESTS}."})
    return value


def token_generate(
    *,
    project: Project,
    duration: timedelta,
    actor: Actor,
    max_requests: int | None = None,
    label: str = "",
) -> IssuedToken:
    validate_duration(duration)
    max_requests = normalize_max_requests(max_requests)
    label = (label or "").strip()
    if len(label) > 200:
        raise ValidationError({"label": "Label must be at most 200 characters."})
    plaintext = secret.generate()
    with transaction.atomic(), audited(actor):
        # Lock the project row so a concurrent deactivation cannot slip between the check and the insert.
        project = Project.objects.select_for_update().get(pk=project.pk)
        if not project.is_active:
            raise ValidationError({"project": INACTIVE_PROJECT}, code="project_inactive")
        token = Token.objects.create(
            project=project,
            label=label,
            digest=secret.digest(plaintext),
            prefix=secret.display_prefix(plaintext),
            expires_at=timezone.now() + duration,
            max_requests=max_requests,
            **actor.stamp("created"),
        )
    return IssuedToken(token=token, plaintext=plaintext)


def token_revoke(*, token: Token, actor: Actor) -> bool:
    """Revoke one token. Returns False if it was already revoked (nothing changes then)."""
    return tokens_revoke(tokens=Token.objects.filter(pk=token.pk), actor=actor) == 1


def tokens_revoke(*, tokens, actor: Actor) -> int:
    """Revoke every not-yet-revoked token of a queryset in one UPDATE, and log each one. Returns how many."""
    now = timezone.now()
    fields = actor.stamp("revoked")
    with transaction.atomic():
        ids = list(tokens.filter(revoked_at__isnull=True).select_for_update().values_list("pk", flat=True))
        if not ids:
            return 0
        Token.objects.filter(pk__in=ids).update(revoked_at=now, **fields)
        log_updates(
            Token.objects.filter(pk__in=ids).only("pk", "prefix", "label"),
            actor,
            {"revoked_at": ["None", str(now)], "revoked_by": ["None", str(actor)]},
        )
    return len(ids)


def project_tokens_revoke(*, project: Project, actor: Actor) -> int:
    return tokens_revoke(tokens=Token.objects.filter(project=project), actor=actor)


def token_set_max_requests(*, token: Token, max_requests: int | None, actor: Actor) -> Token:
    """Raise, lower or remove (None/0) a token's request limit."""
    max_requests = normalize_max_requests(max_requests)
    with transaction.atomic(), audited(actor):
        token = Token.objects.select_for_update().get(pk=token.pk)
        if token.max_requests != max_requests:
            token.max_requests = max_requests
            token.save(update_fields=["max_requests"])
    return token


def token_reactivate(*, token: Token, actor: Actor) -> Token:
    """Undo a revocation, for a token that has not expired."""
    with transaction.atomic(), audited(actor):
        token = Token.objects.select_for_update().get(pk=token.pk)
        if token.expires_at <= timezone.now():
            raise ValidationError("An expired token cannot be reactivated.", code="token_expired")
        if token.revoked_at is not None:
            token.revoked_at = None
            token.revoked_by = None
            token.revoked_by_label = ""
            token.save(update_fields=["revoked_at", "revoked_by", "revoked_by_label"])
    return token
