import uuid

from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from projects.models import Project
from tokens.models import Token

from .managers import UsageDailyManager, UsageRecordManager


def log_reference(model: type[models.Model]) -> models.ForeignKey:
    """A nullable reference from a log row: no database constraint or index of its own (see UsageRecord)."""
    return models.ForeignKey(
        model, null=True, blank=True, on_delete=models.DO_NOTHING, related_name="+", db_index=False, db_constraint=False
    )


class UsageRecord(models.Model):
    """One proxied request, refused or forwarded: written after its last byte, off the client's path.

    A refused request with a bad token names no token, only the display prefix of what was sent (never more).
    """

    id = models.BigAutoField(primary_key=True)
    time = models.DateTimeField(default=timezone.now, help_text="When the request arrived.")
    # A log, not a relation to keep consistent: no database constraint, so an insert takes no lock on the tokens
    # and projects tables (nor looks them up), and rows outlive anything they name. The composite indexes below
    # serve lookups by project or token; single-column ones would only slow inserts.
    project = log_reference(Project)
    token = log_reference(Token)
    token_prefix = models.CharField(max_length=20, blank=True)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    model = models.CharField(max_length=200, blank=True)
    status = models.PositiveSmallIntegerField()
    streamed = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Of the prompt tokens, those the upstream read from its prompt cache."
    )
    cost_usd = models.DecimalField(
        max_digits=20,
        decimal_places=12,
        null=True,
        blank=True,
        verbose_name="cost (USD)",
        help_text="The reported usage at the model's price at the time; blank when the model had no price.",
    )
    cached = models.BooleanField(default=False, help_text="Answered from the response cache: it cost nothing.")
    saved_usd = models.DecimalField(
        max_digits=20,
        decimal_places=12,
        null=True,
        blank=True,
        verbose_name="saved (USD)",
        help_text="For an answer from the cache: what its tokens would have cost at the model's price.",
    )
    duration_ms = models.FloatField(help_text="From arrival to the last byte sent (or the cut).")
    ttfb_ms = models.FloatField(null=True, blank=True, help_text="From arrival to the first body byte sent.")
    upstream_ms = models.FloatField(null=True, blank=True, help_text="From sending upstream to its last byte.")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, db_index=True)
    refusal_code = models.CharField(max_length=40, blank=True, help_text="Why the proxy refused, if it did.")
    client_aborted = models.BooleanField(default=False, help_text="The client went away before the end.")
    upstream_aborted = models.BooleanField(
        default=False, help_text="The upstream broke off before the end (the client's response was cut too)."
    )
    # Set by the proxy for each request (never by a client): written once however often the record is retried or
    # replayed from a spill file. Null on records written before it existed.
    uid = models.UUIDField(null=True, blank=True, unique=True, editable=False)

    objects = UsageRecordManager()

    class Meta:
        ordering = ["-time"]
        verbose_name = "request"
        indexes = [
            models.Index(fields=["time"], name="usage_time"),
            # The request log's status-class and model filters: a rare value is found without scanning the table.
            models.Index(fields=["status", "time"], name="usage_status_time"),
            models.Index(fields=["model", "time"], name="usage_model_time"),
            models.Index(fields=["project", "time"], name="usage_project_time"),
            models.Index(fields=["token", "time"], name="usage_token_time"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.status} ({self.request_id})"


# "No project" and "no token" in the unique key of a day's aggregate: NULLs never collide in a unique index, so the
# key compares the ids with this nil UUID in their place (no real id is ever nil).
NIL_UUID = uuid.UUID(int=0)


def _or_nil(field: str) -> Coalesce:
    return Coalesce(field, Value(NIL_UUID, output_field=models.UUIDField()), output_field=models.UUIDField())


class UsageDaily(models.Model):
    """The sums of one UTC day's usage records per project, token and model: what charts and summaries read.

    Kept up to date by the usage writer in the same transaction as the records it sums, by one upsert per batch, and
    kept by the retention purge, so figures over any period stay right after the records themselves are gone.
    """

    id = models.BigAutoField(primary_key=True)
    day = models.DateField(help_text="The UTC date of the requests.")
    # Like UsageRecord's: no database constraint, the rows outlive anything they name.
    project = log_reference(Project)
    token = log_reference(Token)
    model = models.CharField(max_length=200, blank=True, help_text="Blank when the request named none.")
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0, help_text="Requests answered with a status of 400 or more.")
    streamed = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=26, decimal_places=12, default=0, verbose_name="cost (USD)")
    cache_hits = models.PositiveBigIntegerField(default=0, help_text="Requests answered from the response cache.")
    saved_usd = models.DecimalField(
        max_digits=26, decimal_places=12, default=0, verbose_name="saved (USD)", help_text="What the hits saved."
    )

    objects = UsageDailyManager()

    class Meta:
        ordering = ["-day"]
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        # The unique key starts with the day, so it serves reads by day (the dashboard) too.
        indexes = [
            models.Index(fields=["project", "day"], name="usagedaily_project_day"),
            models.Index(fields=["token", "day"], name="usagedaily_token_day"),
        ]
        constraints = [
            models.UniqueConstraint(
                F("day"), _or_nil("project"), _or_nil("token"), F("model"), name="usagedaily_identity"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model or '(no model)'}: {self.requests} requests"


class ModelPrice(models.Model):
    """What a model's tokens cost, in US dollars per million tokens: every dollar figure of spend control rests on
    these. `model` is a name, or a prefix pattern ending in `*` (see proxy.prices for how a price is chosen)."""

    model = models.CharField(
        max_length=200, unique=True, help_text="A model name (gpt-4o-2024-08-06) or a prefix pattern (gpt-4o*)."
    )
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6, verbose_name="input ($ / 1M)")
    cached_input_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        verbose_name="cached input ($ / 1M)",
        help_text="Empty: cached input tokens cost as much as other input tokens.",
    )
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6, verbose_name="output ($ / 1M)")
    source = models.CharField(max_length=200, blank=True, help_text="Where the figures come from, and when.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]
        verbose_name = "model price"

    def __str__(self) -> str:
        return self.model


class BudgetAlert(models.Model):
    """A project's spend crossed a threshold of its budget (80 or 100 %) in a budget period: one row each, written by
    whichever usage writer saw it first (see proxy.alerts)."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="budget_alerts")
    period = models.CharField(max_length=8)
    period_key = models.BigIntegerField()
    period_start = models.DateField(null=True, blank=True, help_text="Blank for a total budget.")
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the budget.")
    budget_usd = models.DecimalField(max_digits=19, decimal_places=6)
    spent_usd = models.DecimalField(max_digits=26, decimal_places=12)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True, help_text="When ALERT_WEBHOOK_URL took it.")
    attempts = models.PositiveSmallIntegerField(default=0)
    delivery_error = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "period", "period_key", "threshold"], name="budgetalert_once_per_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project} reached {self.threshold}% of its {self.period} budget"


class CacheEntry(models.Model):
    """One stored answer of the response cache's database backend (proxy.cache): found by its key, which names its
    project, so two projects never share one. Expired rows are never served and are deleted by `purge_cache
    --expired` (and `purge_usage`)."""

    key = models.CharField(max_length=200, primary_key=True)
    project = log_reference(Project)
    model = models.CharField(max_length=200, blank=True)
    path = models.CharField(max_length=500)
    content_type = models.CharField(max_length=200, blank=True)
    streamed = models.BooleanField(default=False)
    body = models.BinaryField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "cached answer"
        indexes = [models.Index(fields=["project", "model"], name="cacheentry_project_model")]

    def __str__(self) -> str:
        return f"{self.path} {self.model}"
