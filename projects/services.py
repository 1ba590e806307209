"""Every change to a project: validated, written and audited in one transaction."""

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from llmproxy.audit import Actor, audited, log_updates

from . import crypto
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


@dataclass(frozen=True)
class KeyRotationReport:
    reencrypted: int
    already_current: int
    failed: list[Project]  # stored keys no entry of ENCRYPTION_KEYS can decrypt


def project_keys_reencrypt(*, actor: Actor) -> KeyRotationReport:
    """Re-encrypt every stored upstream key under the newest ENCRYPTION_KEYS entry, so older entries can be dropped.

    Idempotent: keys already under the newest entry are left alone (and not logged). Each re-encrypted project gets
    one audit entry; the ciphertext itself is never logged, and the key and `updated_at` do not change.
    """
    reencrypted, current, failed = 0, 0, []
    for project in Project.objects.order_by("name").iterator():
        if crypto.is_current(project.api_key_ciphertext):
            current += 1
            continue
        try:
            ciphertext = crypto.reencrypt(project.api_key_ciphertext)
        except crypto.KeyDecryptionError:
            failed.append(project)
            continue
        with transaction.atomic():
            # Only if nobody changed the key meanwhile (then it is already under the newest entry anyway).
            changed = Project.objects.filter(pk=project.pk, api_key_ciphertext=project.api_key_ciphertext).update(
                api_key_ciphertext=ciphertext
            )
            if changed:
                log_updates(
                    [project], actor, {"api_key_encryption": ["an older ENCRYPTION_KEYS entry", "the newest entry"]}
                )
        if changed:
            reencrypted += 1
        else:
            current += 1
    return KeyRotationReport(reencrypted=reencrypted, already_current=current, failed=failed)
