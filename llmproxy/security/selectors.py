"""Reads of the security events, for the admin."""

from django.db.models import Q, QuerySet

from .events import normalise_ip
from .models import SecurityEvent


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
