"""Every change to a project: validated, written and audited in one transaction.

Activation and deactivation live in `tokens.services.project_set_active`: deactivating may revoke the project's
tokens too, and tokens stand above projects.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from llmproxy.audit import Actor, audited, log_updates
from llmproxy.errors import ServiceError

from . import crypto
from .limits import clean_limits
from .models import CacheMode, Project
from .policy import POLICY_FIELDS, clean_policy
from .upstreams import (
    INVALID_API_KEY,
    UpstreamAuth,
    clean_upstream_auth,
    clean_upstream_url,
    default_auth,
    key_rule,
    uses_openai,
    validate_api_key,
)

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


def _invalid_key(upstream_url: str) -> ServiceError:
    """The guide's words for OpenAI's keys; what is expected instead for other upstreams."""
    if uses_openai(upstream_url):
        return ServiceError("invalid_format", INVALID_API_KEY, field="api_key")
    message = f"{INVALID_API_KEY}: for this upstream, {key_rule(upstream_url)}."
    return ServiceError("invalid_format", message, field="api_key")


def _set_api_key(project: Project, api_key: str) -> None:
    try:
        project.set_api_key(api_key)
    except ValidationError:
        raise _invalid_key(project.upstream_url) from None
    project.api_key_updated_at = timezone.now()


CACHE_FIELDS = ("cache_mode", "cache_ttl_seconds")
CACHE_TTL_MAX = 30 * 24 * 3600


def clean_cache(options: dict) -> dict:
    """The response cache's settings given: a mode of CacheMode, a lifetime from 1 s to 30 days."""
    cleaned = {}
    if (mode := options.get("cache_mode")) is not None:
        if mode not in CacheMode.values:
            choices = ", ".join(CacheMode.values)
            raise ServiceError("invalid_choice", f"cache_mode must be one of {choices}.", field="cache_mode")
        cleaned["cache_mode"] = mode
    if (ttl := options.get("cache_ttl_seconds")) is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= CACHE_TTL_MAX:
            raise ServiceError(
                "invalid_value",
                f"cache_ttl_seconds must be a whole number of seconds from 1 to {CACHE_TTL_MAX} (30 days).",
                field="cache_ttl_seconds",
            )
        cleaned["cache_ttl_seconds"] = ttl
    return cleaned


def _split_options(options: dict) -> tuple[dict, dict]:
    """A project's limits and its policy lists and cache settings, checked; any other name is a bug of the
    caller."""
    policy = {name: options.pop(name) for name in POLICY_FIELDS if name in options}
    caching = clean_cache({name: options.pop(name) for name in CACHE_FIELDS if name in options})
    return clean_limits(options), clean_policy(policy) | caching


def _save(project: Project, **kwargs) -> None:
    try:
        with transaction.atomic():
            project.save(**kwargs)
    except IntegrityError:
        raise _duplicate_name() from None  # a concurrent create or rename took the name after the check


def project_create(
    *,
    name: str,
    api_key: str,
    actor: Actor,
    upstream_url: str = "",
    upstream_auth: str | None = None,
    **options,
) -> Project:
    """A new, active project. `upstream_url`: blank for the global one; `upstream_auth`: None for the style its
    URL implies (projects.upstreams.default_auth). `options`: any of its limits (requests_per_minute,
    tokens_per_minute, budget_usd, budget_period), policy lists (projects.policy.POLICY_FIELDS) and response cache
    settings (cache_mode, cache_ttl_seconds)."""
    limits, policy = _split_options(dict(options))
    upstream_url = clean_upstream_url(upstream_url)
    auth = clean_upstream_auth(upstream_auth) if upstream_auth else default_auth(upstream_url)
    project = Project(name=_clean_name(name), upstream_url=upstream_url, upstream_auth=auth, **limits, **policy)
    _set_api_key(project, api_key)
    if _name_taken(project.name):
        raise _duplicate_name()
    with transaction.atomic(), audited(actor):
        _save(project)
    return project


def project_for_import(
    *,
    id: uuid.UUID,
    name: str,
    api_key: str,
    is_active: bool,
    deactivated_at: datetime | None,
    created_at: datetime,
    updated_at: datetime,
    upstream_url: str = "",
    upstream_auth: str = UpstreamAuth.BEARER,
) -> Project:
    """A project carried over from another system (the importer), as it was there: its ID, name, state and dates,
    checked by project_create's rules (the name; the key, by the upstream's rule) and its key encrypted, but not
    saved: `projects_import` saves them. `upstream_url` is cleaned already (clean_upstream_url, once per import)."""
    project = Project(
        id=id,
        name=_clean_name(name),
        upstream_url=upstream_url,
        upstream_auth=upstream_auth,
        is_active=is_active,
        deactivated_at=None if is_active else (deactivated_at or updated_at),
        created_at=created_at,
        updated_at=updated_at,
    )
    _set_api_key(project, api_key)
    return project


def projects_import(projects: list[Project]) -> None:
    """Save projects made by `project_for_import`, with their own dates, in bulk and without an audit entry each:
    the import writes one for the whole run. A name taken meanwhile fails the whole batch (the caller's
    transaction)."""
    dates = [(project.created_at, project.updated_at) for project in projects]
    Project.objects.bulk_create(projects, batch_size=500)
    for project, (created_at, updated_at) in zip(projects, dates, strict=True):
        project.created_at, project.updated_at = created_at, updated_at  # saving stamped them with now
    Project.objects.bulk_update(projects, ["created_at", "updated_at"], batch_size=500)


def project_update(
    *,
    project: Project,
    actor: Actor,
    name: str | None = None,
    api_key: str | None = None,
    upstream_url: str | None = None,
    upstream_auth: str | None = None,
) -> Project:
    """Rename, move to another upstream and/or rotate the upstream key. A blank `api_key` keeps the current one,
    which must then fit the new upstream's key rule; an empty `upstream_auth` is the style the URL implies. None:
    unchanged."""
    if upstream_url is not None:
        upstream_url = clean_upstream_url(upstream_url)
    if upstream_auth:
        upstream_auth = clean_upstream_auth(upstream_auth)
    with transaction.atomic(), audited(actor):
        project = Project.objects.select_for_update().get(pk=project.pk)
        if name is not None:
            name = _clean_name(name)
            if name != project.name and _name_taken(name, exclude=project):
                raise _duplicate_name()
            project.name = name
        if upstream_url is not None and upstream_url != project.upstream_url:
            project.upstream_url = upstream_url
            if not api_key:
                _check_current_key(project)
        if upstream_auth is not None:
            project.upstream_auth = upstream_auth or default_auth(project.upstream_url)
        if api_key:
            _set_api_key(project, api_key)
        _save(project)
    return project


def _check_current_key(project: Project) -> None:
    """A project moved to another upstream keeps its key only if the key fits that upstream's rule."""
    try:
        validate_api_key(project.api_key, project.upstream_url)
    except crypto.KeyDecryptionError:
        raise ServiceError(
            "api_key_required", "The current key cannot be decrypted: enter the key for this upstream.", field="api_key"
        ) from None
    except ValidationError:
        raise ServiceError(
            "api_key_required",
            f"{INVALID_API_KEY}: the current key does not fit this upstream ({key_rule(project.upstream_url)}); "
            "enter its key.",
            field="api_key",
        ) from None


def project_set_policy(*, project: Project, actor: Actor, **policy) -> Project:
    """Set, change or remove (None or empty) the policy lists given; the others stay. Each bites on the next request.

    Tokens that narrow a list keep their own lists: the policy in force is always the intersection."""
    return _change_fields(project=project, actor=actor, values=clean_policy(policy))


def project_set_limits(*, project: Project, actor: Actor, **limits) -> Project:
    """Set, change or remove (None) the limits given; the others stay. Each bites on the next request."""
    return _change_fields(project=project, actor=actor, values=clean_limits(limits))


def project_set_cache(
    *, project: Project, actor: Actor, cache_mode: str | None = None, cache_ttl_seconds: int | None = None
) -> Project:
    """Set the response cache's mode and/or default lifetime (None: unchanged). Bites on the next request; answers
    already kept stay until they expire or are purged (turning the cache off stops their use at once)."""
    values = clean_cache({"cache_mode": cache_mode, "cache_ttl_seconds": cache_ttl_seconds})
    return _change_fields(project=project, actor=actor, values=values)


def _change_fields(*, project: Project, actor: Actor, values: dict) -> Project:
    """Set the fields whose cleaned values differ, on the locked row, in one save with its audit entry."""
    with transaction.atomic(), audited(actor):
        project = Project.objects.select_for_update().get(pk=project.pk)
        changed = [name for name, value in values.items() if getattr(project, name) != value]
        for name in changed:
            setattr(project, name, values[name])
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
