import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from projects.limits import SpendLimits
from projects.models import Project
from projects.policy import AccessPolicy


class TokenStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"
    LIMIT_REACHED = "limit_reached", "Limit reached"


def status_conditions(now: datetime) -> dict[str, Q]:
    """The status rule, as SQL conditions: the one place it is written (see `Token.status_at` for its twin).

    Precedence: revoked, then expired, then limit reached, else active.
    """
    revoked = Q(revoked_at__isnull=False)
    expired = Q(revoked_at__isnull=True, expires_at__lte=now)
    limit = Q(revoked_at__isnull=True, expires_at__gt=now, max_requests__isnull=False) & Q(
        request_count__gte=F("max_requests")
    )
    active = Q(revoked_at__isnull=True, expires_at__gt=now) & (
        Q(max_requests__isnull=True) | Q(request_count__lt=F("max_requests"))
    )
    return {
        TokenStatus.REVOKED: revoked,
        TokenStatus.EXPIRED: expired,
        TokenStatus.LIMIT_REACHED: limit,
        TokenStatus.ACTIVE: active,
    }


class TokenQuerySet(models.QuerySet):
    def with_status(self, status: str, now: datetime | None = None) -> "TokenQuerySet":
        return self.filter(status_conditions(now or timezone.now())[TokenStatus(status)])

    def usable(self, now: datetime | None = None) -> "TokenQuerySet":
        """Active and its project active: what the proxy would admit."""
        return self.with_status(TokenStatus.ACTIVE, now).filter(project__is_active=True)


class IssuedCredential(models.Model):
    """Who created and who revoked a credential: a user, or a program's label (management token, command line)."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_label = models.CharField(max_length=200, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_by_label = models.CharField(max_length=200, blank=True, editable=False)

    class Meta:
        abstract = True

    @property
    def created_by_display(self) -> str:
        return self.created_by.get_username() if self.created_by else self.created_by_label

    @property
    def revoked_by_display(self) -> str:
        return self.revoked_by.get_username() if self.revoked_by else self.revoked_by_label


class Token(IssuedCredential, SpendLimits, AccessPolicy):
    """A short-lived, revocable credential for one project. The secret itself is never stored.

    Its limits are its own, on top of its project's; its budget counts over its whole life.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="tokens")
    label = models.CharField(max_length=200, blank=True, help_text="Who or what holds this token.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=20, db_index=True, editable=False)
    expires_at = models.DateTimeField(db_index=True)
    max_requests = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Blank means unlimited.", verbose_name="request limit"
    )
    request_count = models.PositiveBigIntegerField(default=0, editable=False)
    cache_hit_count = models.PositiveBigIntegerField(default=0, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    imported = models.BooleanField(
        default=False,
        editable=False,
        help_text="Carried over from the Go LLM Proxy (manage.py import_llm_proxy): its secret was made there, with "
        "62 random bits and no sk-wt- prefix. Rotate it: generate a new token, then revoke this one.",
    )

    objects = TokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "-created_at"], name="token_project_created"),
            models.Index(fields=["revoked_at", "expires_at"], name="token_revoked_expires"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_requests__isnull=True) | Q(max_requests__gt=0),
                name="token_max_requests_positive",
            )
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.label})" if self.label else f"{self.prefix}…"

    def status_at(self, now: datetime) -> TokenStatus:
        """The status rule in Python, the twin of `status_conditions`."""
        if self.revoked_at is not None:
            return TokenStatus.REVOKED
        if self.expires_at <= now:
            return TokenStatus.EXPIRED
        if self.max_requests is not None and self.request_count >= self.max_requests:
            return TokenStatus.LIMIT_REACHED
        return TokenStatus.ACTIVE

    @property
    def status(self) -> TokenStatus:
        return self.status_at(timezone.now())

    @property
    def blocked_by_project(self) -> bool:
        """Would be usable, but its project is inactive."""
        return self.status == TokenStatus.ACTIVE and not self.project.is_active

    @property
    def requests_remaining(self) -> int | None:
        if self.max_requests is None:
            return None
        return max(self.max_requests - self.request_count, 0)


class MintingKey(IssuedCredential):
    """A project-scoped credential for programs that mint their own tokens (management API, that project only).

    Like a token, the secret is shown once and stored only as a digest.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="minting_keys")
    name = models.CharField(max_length=100, help_text="Which program holds this key, e.g. “web backend”.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=20, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "minting key"
        indexes = [models.Index(fields=["project", "-created_at"], name="mintingkey_project_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def status_label(self) -> str:
        return "Revoked" if self.is_revoked else "Active"
