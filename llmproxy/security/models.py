from django.db import models
from django.db.models import Q

from projects.models import Project
from tokens.models import Token


class SecurityEventKind(models.TextChoices):
    PROXY_AUTH_FAILED = "proxy_auth_failed", "Proxy authentication failed"
    PROJECT_INACTIVE = "project_inactive", "Refused: project inactive"
    ADMIN_LOGIN_FAILED = "admin_login_failed", "Admin login failed"
    ADMIN_LOGIN_LOCKED = "admin_login_locked", "Admin login locked"
    MANAGEMENT_AUTH_FAILED = "management_auth_failed", "Management API authentication failed"
    POLICY_REFUSED = "policy_refused", "Refused: not from an allowed address or origin"


class SecurityEventReason(models.TextChoices):
    """Why a credential was refused (blank for kinds that need no sub-code)."""

    MISSING = "missing", "Missing token"
    MALFORMED = "malformed", "Malformed token"
    UNKNOWN = "unknown", "Unknown token"
    REVOKED = "revoked", "Revoked token"
    EXPIRED = "expired", "Expired token"
    IP = "ip", "Client address not allowed"
    ORIGIN = "origin", "Origin not allowed"


# The identity of an event, beside the token or project it concerns. Identical events within the same hour are one
# row with a count (see `llmproxy.security.record_security_event`). The token and project columns are nullable
# foreign keys, and NULLs never collide in a unique index, so there is one partial unique index per case.
IDENTITY_FIELDS = ("kind", "reason", "client_ip", "username", "hour")


class SecurityEvent(models.Model):
    """Refused credentials and failed logins, counted per hour so repeated attempts cannot flood the table.

    Only display prefixes, addresses and attempted user names are kept: never a token, a key or a password.
    """

    kind = models.CharField(max_length=32, choices=SecurityEventKind.choices)
    reason = models.CharField(max_length=16, choices=SecurityEventReason.choices, blank=True)
    client_ip = models.CharField(max_length=45, blank=True, verbose_name="client IP")
    token_prefix = models.CharField(
        max_length=20, blank=True, help_text="The display prefix of the token presented (the last one seen)."
    )
    token = models.ForeignKey(Token, null=True, blank=True, on_delete=models.PROTECT, related_name="security_events")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.PROTECT, related_name="security_events", db_index=False
    )
    username = models.CharField(max_length=150, blank=True, help_text="The user name attempted (admin logins).")
    detail = models.CharField(max_length=200, blank=True)
    hour = models.DateTimeField(help_text="The hour this row counts events for.")
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=1)

    class Meta:
        ordering = ["-last_seen"]
        verbose_name = "security event"
        indexes = [
            models.Index(fields=["-last_seen"], name="secevent_last_seen"),
            models.Index(fields=["kind", "-last_seen"], name="secevent_kind_last_seen"),
            models.Index(fields=["client_ip"], name="secevent_client_ip"),
            models.Index(fields=["project", "-last_seen"], name="secevent_project_last_seen"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=[*IDENTITY_FIELDS, "token"],
                condition=Q(token__isnull=False),
                name="secevent_identity_token",
            ),
            models.UniqueConstraint(
                fields=[*IDENTITY_FIELDS, "project"],
                condition=Q(token__isnull=True, project__isnull=False),
                name="secevent_identity_project",
            ),
            models.UniqueConstraint(
                fields=list(IDENTITY_FIELDS),
                condition=Q(token__isnull=True, project__isnull=True),
                name="secevent_identity_anonymous",
            ),
        ]

    def __str__(self) -> str:
        label = self.get_kind_display()
        if self.reason:
            label += f" ({self.get_reason_display().lower()})"
        return f"{label} from {self.client_ip or 'unknown address'}"


class LoginThrottleScope(models.TextChoices):
    USER = "user", "User name"
    ADDRESS = "address", "Client address"


class LoginThrottle(models.Model):
    """Failed admin logins of one user name or one client address, and its lockout (see `llmproxy.security.throttle`).

    One row per user name or address, changed only by single atomic statements, so the count is exact across workers
    and instances. The key is what was attempted: a user name that does not exist is counted and locked like one that
    does, so a lockout never tells whether an account exists.
    """

    scope = models.CharField(max_length=8, choices=LoginThrottleScope.choices)
    key = models.CharField(max_length=150, help_text="The user name attempted, or the client address (IPv6: its /64).")
    failures = models.PositiveIntegerField(default=0, help_text="Failures since window_start.")
    window_start = models.DateTimeField(help_text="When the current counting window began.")
    locked_until = models.DateTimeField(null=True, blank=True)
    lockouts = models.PositiveIntegerField(
        default=0, help_text="Lockouts in the current series (each one soon after the last doubles its length)."
    )

    class Meta:
        verbose_name = "login throttle"
        indexes = [models.Index(fields=["window_start"], name="loginthrottle_window_start")]
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="loginthrottle_scope_key")]

    def __str__(self) -> str:
        return f"{self.get_scope_display()} {self.key}"
