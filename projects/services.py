"""Every change to a project: validated, written and audited in one transaction.

Activation and deactivation live in `tokens.services.project_set_active`: deactivating may revoke the project's
tokens too, and tokens stand above projects.
"""

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from llmproxy.audit import Actor, audited, log_updates
from llmproxy.errors import ServiceError

from . import crypto
from .keys import INVALID_API_KEY
from .limits import clean_limits
from .models import Project

DUPLICATE_NAME = "A project with this name already exists."
NAME_MAX_LENGTH = Project._meta.get_field("name").max_length


def _duplicate_name() -> ServiceError:
    return ServiceError("duplicate_name", DUPLICATE_NAME, field="name")


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ServiceError("required", "Name is required.", field="name")
    if len(name) > NAME_MAX_LENGTH:
        raise ServiceError("too_long", f"Name must be at most {NAME_MAX_LENGTH} characters.", field="name")
    return name


def _name_taken(name: str, *, exclude: Project | None = None) -> bool:
    qs = Project.objects.filter(name__iexact=name)
    if exclude is not None:
        qs = qs.exclude(pk=exclude.pk)
    return qs.exists()


def _set_api_key(project: Project, api_key: str) -> None:
    try:
        project.set_api_key(api_key)
    except ValidationError:
        raise ServiceError("invalid_api_key", INVALID_API_KEY, field="api_key") from None
    project.api_key_updated_at = timezone.now()


def _save(project: Project, **kwargs) -> None:
    try:
        with transaction.atomic():
            project.save(**kwargs)
    except IntegrityError:
        raise _duplicate_name() from None  # a concurrent create or rename took the name after the check


def project_create(*, name: str, api_key: str, actor: Actor, **limits) -> Project:
    """A new, active project; `limits`: any of requests_per_minute, tokens_per_minute, budget_usd, budget_period."""
    project = Project(name=_clean_name(name), **clean_limits(limits))
    _set_api_key(project, api_key)
    if _name_taken(project.name):
        raise _duplicate_name()
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
                raise _duplicate_name()
            project.name = name
        if api_key:
            _set_api_key(project, api_key)
        _save(project)
    return project


def project_set_limits(*, project: Project, actor: Actor, **limits) -> Project:
    """Set, change or remove (None) the limits given; the others stay. Each bites on the next request."""
    cleaned = clean_limits(limits)
    with transaction.atomic(), audited(actor):
        project = Project.objects.select_for_update().get(pk=project.pk)
        changed = [name for name, value in cleaned.items() if getattr(project, name) != value]
        for name in changed:
            setattr(project, name, cleaned[name])
        if changed:
            project.save(update_fields=[*changed, "updated_at"])
    return project


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
