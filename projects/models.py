import uuid
from datetime import datetime
from decimal import Decimal

from django.db import models
from django.db.models.functions import Lower

from . import crypto
from .limits import BudgetPeriod, SpendLimits, period_key, period_resets_at
from .policy import AccessPolicy
from .upstreams import URL_MAX_LENGTH, UpstreamAuth, base_url, mask_api_key, validate_api_key


class CacheMode(models.TextChoices):
    """When a project's answers are kept in the response cache (proxy.cache)."""

    OFF = "off", "Off"
    OPT_IN = "opt-in", "Opt-in (the client sends Cache-Control: max-age)"
    ON = "on", "On (embeddings, temperature 0 or a seed; others opt in)"


class Project(SpendLimits, AccessPolicy):
    """An upstream (its URL, how its key is sent, the key), with the tokens handed out against it. Never deleted:
    kept for the audit.

    Its limits hold for all its tokens together; its budget counts per `budget_period` (`spent_usd` is the spend
    of the period `spend_period` names). Its policy (projects.policy) holds for all its tokens, each of which may
    narrow it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    upstream_url = models.CharField(
        max_length=URL_MAX_LENGTH,
        blank=True,
        default="",
        verbose_name="upstream URL",
        help_text="The API's base URL, e.g. https://api.anthropic.com/v1; blank: the proxy's UPSTREAM_BASE_URL.",
    )
    upstream_auth = models.CharField(
        max_length=16,
        choices=UpstreamAuth.choices,
        default=UpstreamAuth.BEARER,
        verbose_name="key sent as",
    )
    api_key_ciphertext = models.TextField(editable=False)
    api_key_updated_at = models.DateTimeField(editable=False, verbose_name="API key set")
    is_active = models.BooleanField(default=True, verbose_name="active")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    budget_period = models.CharField(
        max_length=8,
        choices=BudgetPeriod.choices,
        default=BudgetPeriod.MONTH,
        help_text="The budget counts per calendar period in UTC, and starts again at its end.",
    )
    spend_period = models.BigIntegerField(default=0, editable=False)
    model_aliases = models.JSONField(
        null=True,
        blank=True,
        help_text='Other names for models, {"fast": "gpt-4o-mini"}: the request\'s model is rewritten before it is '
        "forwarded.",
    )
    allowed_endpoints = models.JSONField(
        null=True, blank=True, help_text="METHOD /path entries within PROXY_ALLOWED_ENDPOINTS. Empty: all of those."
    )
    allowed_origins = models.JSONField(
        null=True, blank=True, help_text="Browser origins (https://app.example.com) the tokens may be used from."
    )

    cache_mode = models.CharField(
        max_length=8,
        choices=CacheMode.choices,
        default=CacheMode.OFF,
        verbose_name="response cache",
        help_text="Off: nothing is cached. Opt-in: a request is cached when the client sends Cache-Control: "
        "max-age=N. On: also embeddings and requests with temperature 0 or a seed, for the cache lifetime.",
    )
    cache_ttl_seconds = models.PositiveIntegerField(
        default=3600,
        verbose_name="cache lifetime (seconds)",
        help_text="How long an answer cached without the client's max-age is kept (mode On).",
    )

    COUNTERS = (*SpendLimits.COUNTERS, "spend_period")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                Lower("name"),
                name="project_name_unique_ci",
                violation_error_message="A project with this name already exists.",
            )
        ]
        indexes = [models.Index(fields=["is_active", "name"], name="project_active_name")]

    def __str__(self) -> str:
        return self.name

    def set_api_key(self, plaintext: str) -> None:
        """Checked by the rule of the project's upstream (set that first)."""
        validate_api_key(plaintext, self.upstream_url)
        self.api_key_ciphertext = crypto.encrypt(plaintext)

    @property
    def base_url(self) -> str:
        """Where its requests go: its own upstream URL, else the proxy's UPSTREAM_BASE_URL."""
        return base_url(self.upstream_url)

    @property
    def api_key(self) -> str:
        return crypto.decrypt(self.api_key_ciphertext)

    @property
    def api_key_masked(self) -> str:
        try:
            return mask_api_key(self.api_key)
        except crypto.KeyDecryptionError:
            return "(cannot be decrypted with ENCRYPTION_KEYS)"

    def set_active(self, active: bool, now: datetime) -> bool:
        """Activate or deactivate (not saved). `deactivated_at` is set exactly while inactive. False: no change."""
        if self.is_active == active:
            return False
        self.is_active = active
        self.deactivated_at = None if active else now
        return True

    def spent_in_period(self, now: datetime) -> Decimal:
        """The spend of the budget period `now` falls in (what was spent in an earlier one no longer counts)."""
        return self.spent_usd if self.spend_period == period_key(self.budget_period, now) else Decimal(0)

    def budget_resets_at(self, now: datetime) -> datetime | None:
        return period_resets_at(self.budget_period, now)

    @property
    def status_label(self) -> str:
        return "Active" if self.is_active else "Inactive"
