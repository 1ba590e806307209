"""Reads of the security events, for the admin."""

from datetime import timedelta

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from .events import normalise_ip
from .models import SecurityEvent, SecurityEventKind


def security_events() -> QuerySet[SecurityEvent]:
    """All events, newest activity first, with what the admin list shows of their token and project."""
    return SecurityEvent.objects.select_related("token", "project").order_by("-last_seen", "-pk")


def security_events_search(events: QuerySet[SecurityEvent], term: str) -> QuerySet[SecurityEvent]:
    """An IP address matches exactly (indexed); anything else matches a token prefix or an attempted user name."""
    term = term.strip()
    if not term:
        return events
    if ip := normalise_ip(term):
        return events.filter(client_ip=ip)
    return events.filter(Q(token_prefix__startswith=term) | Q(username__icontains=term))


def login_lockout_count(hours: int) -> int:
    """Admin login lockouts (of user names and addresses) in the last `hours`, for the dashboard: the counts of the
    hourly rows last seen in that time."""
    since = timezone.now() - timedelta(hours=hours)
    lockouts = SecurityEvent.objects.filter(kind=SecurityEventKind.ADMIN_LOGIN_LOCKED, last_seen__gte=since)
    return lockouts.aggregate(total=Sum("count"))["total"] or 0
