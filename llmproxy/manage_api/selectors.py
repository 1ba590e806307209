"""Reads behind the management API that belong to no app: pages, and the audit trail as the API filters it."""

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, F, Model, Q, QuerySet, Value
from django.db.models.functions import Cast, Replace

from projects.models import Project
from proxy.models import ModelPrice
from tokens.models import MintingKey, Token

from .validation import UUID_RE

# The API's names for what the audit trail records, both ways (serializers.py reads them the other way round).
AUDIT_OBJECT_TYPES: dict[str, type[Model]] = {
    "project": Project,
    "token": Token,
    "minting_key": MintingKey,
    "model_price": ModelPrice,
}
AUDIT_ACTIONS = {
    "create": LogEntry.Action.CREATE,
    "update": LogEntry.Action.UPDATE,
    "delete": LogEntry.Action.DELETE,
    "access": LogEntry.Action.ACCESS,
}


@dataclass(frozen=True)
class Page:
    items: list
    page: int
    page_size: int
    total_count: int

    def pagination(self) -> dict[str, Any]:
        total_pages = math.ceil(self.total_count / self.page_size)
        return {
            "page": self.page,
            "page_size": self.page_size,
            "total_count": self.total_count,
            "total_pages": total_pages,
            "has_next": self.page < total_pages,
            "has_prev": self.page > 1,
        }


def paginate(queryset: QuerySet, *, page: int, page_size: int) -> Page:
    start = (page - 1) * page_size
    return Page(
        items=list(queryset[start : start + page_size]),
        page=page,
        page_size=page_size,
        total_count=queryset.count(),
    )


def _normalized_pk(expression) -> Replace:
    """A primary key as hyphen-less text: how SQLite stores UUIDs, so one comparison works on both databases."""
    return Replace(Cast(expression, CharField()), Value("-"), Value(""))


def audit_events(
    *,
    action: str | None = None,
    actor: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    project_id: uuid.UUID | None = None,
    token_id: uuid.UUID | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[LogEntry]:
    entries = LogEntry.objects.select_related("content_type", "actor").order_by("-timestamp", "-id")
    if action is not None:
        entries = entries.filter(action=AUDIT_ACTIONS[action])
    if actor:
        entries = entries.filter(Q(actor_email__icontains=actor) | Q(actor__username__icontains=actor))
    if object_type is not None:
        entries = entries.filter(content_type=ContentType.objects.get_for_model(AUDIT_OBJECT_TYPES[object_type]))
    if object_id:
        entries = entries.filter(object_pk=object_id)
    if project_id is not None:
        entries = entries.annotate(_pk=_normalized_pk(F("object_pk"))).filter(
            Q(content_type=ContentType.objects.get_for_model(Project), object_pk=str(project_id))
            | Q(
                content_type=ContentType.objects.get_for_model(Token),
                _pk__in=Token.objects.filter(project_id=project_id).values(k=_normalized_pk("pk")),
            )
            | Q(
                content_type=ContentType.objects.get_for_model(MintingKey),
                _pk__in=MintingKey.objects.filter(project_id=project_id).values(k=_normalized_pk("pk")),
            )
        )
    if token_id is not None:
        entries = entries.filter(content_type=ContentType.objects.get_for_model(Token), object_pk=str(token_id))
    if start is not None:
        entries = entries.filter(timestamp__gte=start)
    if end is not None:
        entries = entries.filter(timestamp__lte=end)
    return entries


def audit_event_get(event_id: int) -> LogEntry | None:
    return LogEntry.objects.select_related("content_type", "actor").filter(pk=event_id).first()


def audit_project_ids(entries: list[LogEntry]) -> dict[int, str]:
    """The project each entry is about (itself, or the owner of a token or minting key), in two queries at most."""
    project_type = ContentType.objects.get_for_model(Project).pk
    result = {e.pk: e.object_pk for e in entries if e.content_type_id == project_type}
    for model in (Token, MintingKey):
        content_type = ContentType.objects.get_for_model(model).pk
        ids = {e.object_pk for e in entries if e.content_type_id == content_type and UUID_RE.fullmatch(e.object_pk)}
        if not ids:
            continue
        owners = {
            str(pk): str(project) for pk, project in model.objects.filter(pk__in=ids).values_list("pk", "project")
        }
        result.update(
            {e.pk: owners[e.object_pk] for e in entries if e.content_type_id == content_type and e.object_pk in owners}
        )
    return result
