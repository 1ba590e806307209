"""Every change to a token, and the rules that span a project and its tokens: validated, written and audited in one
transaction."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from llmproxy.audit import Actor, audited, log_updates
from llmproxy.errors import ServiceError
from projects.limits import SHARED_LIMITS, clean_limits
from projects.models import Project
from projects.policy import TOKEN_POLICY_FIELDS, check_within, clean_policy

from . import secret
from .models import Token

INACTIVE_PROJECT = "Cannot generate tokens for inactive project"
LABEL_MAX_LENGTH = Token._meta.get_field("label").max_length


@dataclass(frozen=True)
class IssuedToken:
    """A freshly generated token: the only moment its plaintext exists."""

    token: Token
    plaintext: str


@dataclass(frozen=True)
class RevokeReport:
    """What a revocation of several tokens did: how many it revoked, of how many it was asked to."""

    revoked: int
    total: int

    @property
    def already_revoked(self) -> int:
        return self.total - self.revoked


@dataclass(frozen=True)
class ProjectActivation:
    """The project after `project_set_active`: whether its state changed, and what was revoked (if asked)."""

    project: Project
    changed: bool
    revoked: RevokeReport | None = None


def validate_duration(duration: timedelta) -> None:
    limit = timedelta(hours=settings.TOKEN_MAX_DURATION_HOURS)
    if duration <= timedelta(0):
        raise ServiceError("out_of_range", "Duration must be positive.", field="duration")
    if duration > limit:
        message = f"Duration must be at most {settings.TOKEN_MAX_DURATION_HOURS} hours."
        raise ServiceError("out_of_range", message, field="duration")


def normalize_max_requests(value: int | None) -> int | None:
    """Blank or 0 means unlimited; negatives and absurd values are refused."""
    if value in (None, 0):
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ServiceError("invalid_type", "Request limit must be a whole number.", field="max_requests")
    if value < 0:
        message = "Request limit cannot be negative (leave it blank for unlimited)."
        raise ServiceError("out_of_range", message, field="max_requests")
    if value > settings.TOKEN_MAX_REQUESTS:
        message = f"Request limit must be at most {settings.TOKEN_MAX_REQUESTS}."
        raise ServiceError("out_of_range", message, field="max_requests")
    return value


def _clean_token_limits(limits: dict) -> dict:
    """A token's limits: max_requests (blank or 0: none), and those it shares with projects (None: none)."""
    cleaned = clean_limits({name: value for name, value in limits.items() if name != "max_requests"})
    if "max_requests" in limits:
        cleaned["max_requests"] = normalize_max_requests(limits["max_requests"])
    return cleaned


def _within_project(project: Project, limits: dict) -> None:
    """A minting key's tokens: no limit above the project's own (a program cannot hand out more than it has)."""
    for name in SHARED_LIMITS:
        ceiling, value = getattr(project, name), limits.get(name)
        if ceiling is not None and value is not None and value > ceiling:
            message = f"{name} must not be above the project's ({ceiling})."
            raise ServiceError("exceeds_project_limit", message, field=name)


def token_generate(
    *,
    project: Project,
    duration: timedelta,
    actor: Actor,
    label: str = "",
    within_project_limits: bool = False,
    **options,
) -> IssuedToken:
    """A new token, shown this once. `options`: any of its limits (max_requests, requests_per_minute,
    tokens_per_minute, budget_usd over the token's life) and its own `allowed_models` and `allowed_ips`, which must
    lie within its project's (the policy in force is the intersection). `within_project_limits` (minting keys): no
    limit above the project's."""
    validate_duration(duration)
    policy = clean_policy({n: options.pop(n) for n in TOKEN_POLICY_FIELDS if n in options}, TOKEN_POLICY_FIELDS)
    limits = _clean_token_limits(options)
    label = (label or "").strip()
    if len(label) > LABEL_MAX_LENGTH:
        raise ServiceError("too_long", f"Label must be at most {LABEL_MAX_LENGTH} characters.", field="label")
    plaintext = secret.TOKEN.generate()
    with transaction.atomic(), audited(actor):
        # Lock the project row so a concurrent deactivation cannot slip between the check and the insert.
        project = Project.objects.select_for_update().get(pk=project.pk)
        if not project.is_active:
            raise ServiceError("project_inactive", INACTIVE_PROJECT, field="project")
        if within_project_limits:
            _within_project(project, limits)
        check_within(project.allowed_models, project.allowed_ips, policy)
        token = Token.objects.create(
            project=project,
            label=label,
            digest=secret.digest(plaintext),
            prefix=secret.TOKEN.display_prefix(plaintext),
            expires_at=timezone.now() + duration,
            **limits,
            **policy,
            **actor.stamp("created"),
        )
    return IssuedToken(token=token, plaintext=plaintext)


def tokens_import(tokens: list[Token]) -> None:
    """Tokens carried over from another system (the importer), as they were there: their IDs, digests, counts,
    state and dates, marked `imported` (the proxy then accepts the other system's token shape for them). Saved in
    bulk, without an audit entry each: the import writes one for the whole run."""
    created = [token.created_at for token in tokens]
    for token in tokens:
        token.imported = True
    Token.objects.bulk_create(tokens, batch_size=1000)
    for token, created_at in zip(tokens, created, strict=True):
        token.created_at = created_at  # saving stamped it with now
    Token.objects.bulk_update(tokens, ["created_at"], batch_size=500)


def token_revoke(*, token: Token, actor: Actor) -> bool:
    """Revoke one token. Returns False if it was already revoked (nothing changes then)."""
    return tokens_revoke(tokens=Token.objects.filter(pk=token.pk), actor=actor).revoked == 1


def tokens_revoke(*, tokens: QuerySet[Token], actor: Actor) -> RevokeReport:
    """Revoke every not-yet-revoked token of a queryset in one UPDATE, and log each one."""
    now = timezone.now()
    fields = actor.stamp("revoked")
    with transaction.atomic():
        total = tokens.count()
        ids = list(tokens.filter(revoked_at__isnull=True).select_for_update().values_list("pk", flat=True))
        if ids:
            Token.objects.filter(pk__in=ids).update(revoked_at=now, **fields)
            log_updates(
                Token.objects.filter(pk__in=ids).only("pk", "prefix", "label"),
                actor,
                {"revoked_at": ["None", str(now)], "revoked_by": ["None", str(actor)]},
            )
    return RevokeReport(revoked=len(ids), total=total)


def project_tokens_revoke(*, project: Project, actor: Actor) -> RevokeReport:
    return tokens_revoke(tokens=Token.objects.filter(project=project), actor=actor)


def project_set_active(
    *, project: Project, active: bool, actor: Actor, revoke_tokens: bool = False
) -> ProjectActivation:
    """Activate or deactivate a project. Deactivation blocks the project's tokens at the proxy but revokes none of
    them, unless `revoke_tokens` (only with `active=False`) revokes them all as well, in the same transaction: also
    when the project was inactive already."""
    if revoke_tokens and active:
        raise ServiceError("requires_inactive", "Tokens are revoked only when deactivating.", field="revoke_tokens")
    with transaction.atomic(), audited(actor):
        project = Project.objects.select_for_update().get(pk=project.pk)
        changed = project.set_active(active, timezone.now())
        if changed:
            project.save(update_fields=["is_active", "deactivated_at", "updated_at"])
        revoked = project_tokens_revoke(project=project, actor=actor) if revoke_tokens else None
    return ProjectActivation(project=project, changed=changed, revoked=revoked)


def token_set_limits(*, token: Token, actor: Actor, **limits) -> Token:
    """Set, change or remove the limits given (max_requests: None or 0; the others: None); the others stay. Each
    bites on the next request."""
    cleaned = _clean_token_limits(limits)
    with transaction.atomic(), audited(actor):
        token = Token.objects.select_for_update().get(pk=token.pk)
        changed = [name for name, value in cleaned.items() if getattr(token, name) != value]
        for name in changed:
            setattr(token, name, cleaned[name])
        if changed:
            token.save(update_fields=changed)
    return token


def token_reactivate(*, token: Token, actor: Actor) -> Token:
    """Undo a revocation, for a token that has not expired."""
    with transaction.atomic(), audited(actor):
        token = Token.objects.select_for_update().get(pk=token.pk)
        if token.expires_at <= timezone.now():
            raise ServiceError("token_expired", "An expired token cannot be reactivated.")
        if token.revoked_at is not None:
            token.revoked_at = None
            token.revoked_by = None
            token.revoked_by_label = ""
            token.save(update_fields=["revoked_at", "revoked_by", "revoked_by_label"])
    return token
