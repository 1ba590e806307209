"""Reads about projects."""

import uuid

from django.db.models import Count, Q, QuerySet

from .models import Project


def project_list_with_token_counts() -> QuerySet[Project]:
    """Projects annotated with `token_count`, in one query (no query per row)."""
    return Project.objects.annotate(token_count=Count("tokens"))


def active_projects() -> QuerySet[Project]:
    return Project.objects.filter(is_active=True)


def project_counts() -> dict[str, int]:
    return Project.objects.aggregate(total=Count("id"), active=Count("id", filter=Q(is_active=True)))


def project_get(project_id: uuid.UUID) -> Project | None:
    return Project.objects.filter(pk=project_id).first()


def projects_by_name() -> QuerySet[Project]:
    return Project.objects.order_by("name", "id")


def project_by_reference(reference: str) -> Project | None:
    """A project by its ID or its name (case-insensitive): what a person types on the command line."""
    reference = reference.strip()
    try:
        return Project.objects.filter(pk=uuid.UUID(reference)).first()
    except ValueError:
        return Project.objects.filter(name__iexact=reference).first()


def origins_allowed_by_projects() -> frozenset[str]:
    """Every browser origin some active project allows (for CORS preflights, which carry no token)."""
    origins: set[str] = set()
    for listed in Project.objects.filter(is_active=True, allowed_origins__isnull=False).values_list(
        "allowed_origins", flat=True
    ):
        origins.update(listed or ())
    return frozenset(origins)
