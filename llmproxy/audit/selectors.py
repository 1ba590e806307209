"""Reads about the audit trail (django-auditlog's entries), for the admin's history, audit list and dashboard."""

from auditlog.models import LogEntry
from django.contrib.auth import get_user_model
from django.db.models import Model, QuerySet


def audit_entries_for_object(obj: Model) -> QuerySet[LogEntry]:
    """Every recorded change of one object, newest first."""
    return LogEntry.objects.get_for_object(obj).select_related("actor", "content_type").order_by("-timestamp")


def audit_recent_entries(limit: int = 10) -> list[LogEntry]:
    return list(LogEntry.objects.select_related("actor", "content_type").order_by("-timestamp")[:limit])


def audit_actor_choices() -> list[tuple[str, str]]:
    """Everyone who appears in the audit trail: users (`user:<pk>`), then program actors by label (`label:<text>`)."""
    username = f"actor__{get_user_model().USERNAME_FIELD}"
    users = LogEntry.objects.filter(actor__isnull=False).values_list("actor_id", username).order_by(username).distinct()
    labels = (
        LogEntry.objects.filter(actor__isnull=True, actor_email__gt="")
        .values_list("actor_email", flat=True)
        .order_by("actor_email")
        .distinct()
    )
    return [(f"user:{pk}", str(name)) for pk, name in users] + [(f"label:{label}", label) for label in labels]


def audit_entries_by_actor(entries: QuerySet[LogEntry], choice: str) -> QuerySet[LogEntry]:
    """Narrow to one actor of `audit_actor_choices`."""
    kind, _, value = choice.partition(":")
    if kind == "user":
        return entries.filter(actor_id=value) if value.isdigit() else entries.none()
    if kind == "label":
        return entries.filter(actor__isnull=True, actor_email=value)
    return entries
