"""How an audit entry is shown: who did it, and a link to the object it changed."""

from auditlog.models import LogEntry
from django import template
from django.urls import NoReverseMatch, reverse
from django.utils.text import capfirst

register = template.Library()


@register.filter
def audit_actor(entry: LogEntry) -> str:
    """The user's username, or the label of a program actor ("management token", "command line (root)")."""
    if entry.actor_id is not None and entry.actor is not None:
        return entry.actor.get_username()
    return entry.actor_email or "system"


@register.filter
def audit_via(entry: LogEntry) -> str:
    """How the change came in: admin, api, cli, system."""
    data = entry.additional_data
    return str(data.get("via", "")) if isinstance(data, dict) else ""


@register.filter
def audit_object_url(entry: LogEntry) -> str:
    """The admin page of the changed object, or "" when it has none."""
    content_type = entry.content_type
    try:
        return reverse(f"admin:{content_type.app_label}_{content_type.model}_change", args=[entry.object_pk])
    except NoReverseMatch:
        return ""


@register.filter
def audit_changes(entry: LogEntry) -> list[tuple[str, str, str]]:
    """(field, before, after) rows, without reverse relations (auditlog records those as "app.Model.None")."""
    model = entry.content_type.model_class()
    reverse = {f.name for f in model._meta.get_fields() if f.auto_created and not f.concrete} if model else set()
    return [
        (capfirst(field), values[0], values[-1])
        for field, values in entry.changes_display_dict.items()
        if field not in reverse and isinstance(values, list | tuple) and values
    ]
