from django.db import models
from django.utils import timezone

from projects.models import Project
from tokens.models import Token


class UsageRecord(models.Model):
    """One proxied request, refused or forwarded: written after its last byte, off the client's path.

    A refused request with a bad token names no token, only the display prefix of what was sent (never more).
    """

    id = models.BigAutoField(primary_key=True)
    time = models.DateTimeField(default=timezone.now, help_text="When the request arrived.")
    # A log, not a relation to keep consistent: no database constraint, so an insert takes no lock on the tokens
    # and projects tables (nor looks them up), and rows outlive anything they name. The composite indexes below
    # serve lookups by project or token; single-column ones would only slow inserts.
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    token = models.ForeignKey(
        Token, null=True, blank=True, on_delete=models.DO_NOTHING, related_name="+", db_index=False, db_constraint=False
    )
    token_prefix = models.CharField(max_length=20, blank=True)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    model = models.CharField(max_length=200, blank=True)
    status = models.PositiveSmallIntegerField()
    streamed = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.FloatField(help_text="From arrival to the last byte sent (or the cut).")
    ttfb_ms = models.FloatField(null=True, blank=True, help_text="From arrival to the first body byte sent.")
    upstream_ms = models.FloatField(null=True, blank=True, help_text="From sending upstream to its last byte.")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, db_index=True)
    refusal_code = models.CharField(max_length=40, blank=True, help_text="Why the proxy refused, if it did.")
    client_aborted = models.BooleanField(default=False, help_text="The client went away before the end.")

    class Meta:
        ordering = ["-time"]
        indexes = [
            models.Index(fields=["time"], name="usage_time"),
            models.Index(fields=["project", "time"], name="usage_project_time"),
            models.Index(fields=["token", "time"], name="usage_token_time"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.status} ({self.request_id})"
