"""Every change to a project: validated, written and audited in one transaction."""

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from llmproxy.audit import Actor, audited

from .models import Project

DUPLICATE_NAME = "A project with this name already exists."


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Name is required."})
    if len(name) > 200:
        raise ValidationError({"name": "Name must be at most 200 characters."})
    return name


def _name_taken(name: str, *, exclude: Project | None = None) -> bool:
    qs = Project.objects.filter(name__iexact=name)
    if exclude is not None:
        qs = qs.exclude(pk=exclude.pk)
    return qs.exists()


def _save(project: Project, **kwargs) -> None:
    try:
        with transaction.atomic():
            project.save(**kwargs)
    except IntegrityError:
        raise ValidationError({"name": DUPLICATE_NAME}) from None


def project_create(*, name: str, api_key: str, actor: Actor) -> Project:
    name = _clean_name(name)
    project = Project(name=name, api_key_updated_at=timezone.now())
    try:
        project.set_api_key(api_key)
    except ValidationError as e:
        raise ValidationError({"api_key": e.messages}) from None
    if _name_taken(name):
        raise ValidationError({"name": DUPLICATE_NAME})
    with transaction.atomic(), audited(actor):
        _save(project)
    return project


def project_update(*, project: Project, actor: Actor, name: str | None = None, api_key: str | None = None) -> Project:
    """Rename and/or rotate the upstream key. A blank `api_key` keeps the current one."""
    with transaction.atomic(), audited(actor):
        project = Project.objects.select_for_update().get(pk=project.pk)
        if name is not None:
            name = _clean_name(name)
            if name != project.name and _name_taken(name, exclude=project):
                raise ValidationError({"name": DUPLICATE_NAME})
            project.name = name
        if api_key:
            try:
                project.set_api_key(api_key)
            except ValidationError as e:
                raise ValidationError({"api_key": e.messages}) from None
            project.api_key_updated_at = timezone.now()
        _save(project)
    return project


def project_set_active(*, project: Project, active: bool, actor: Actor) -> Project:
    """Activate or deactivate. Deactivation blocks the project's tokens but revokes nothing."""
    with transaction.atomic(), audited(actor):
        project = Project.objects.select_for_update().get(pk=project.pk)
        if project.is_active != active:
            project.is_active = active
            project.deactivated_at = None if active else timezone.now()
            project.save(update_fields=["is_active", "deactivated_at", "updated_at"])
    return project


def project_activate(*, project: Project, actor: Actor) -> Project:
    return project_set_active(project=project, active=True, actor=actor)


def project_deactivate(*, project: Project, actor: Actor) -> Project:
    return project_set_active(project=project, active=False, actor=actor)
