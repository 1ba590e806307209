"""The JSON shapes of the API's resources (field names follow the original tool's, so its clients keep working)."""

from decimal import Decimal
from typing import Any

from auditlog.models import LogEntry
from django.utils import timezone

from projects.models import Project
from projects.policy import POLICY_FIELDS, TOKEN_POLICY_FIELDS
from proxy.models import ModelPrice
from tokens.models import Token
from tokens.services import IssuedToken

from .selectors import AUDIT_ACTIONS, AUDIT_OBJECT_TYPES

_OBJECT_TYPES = {model: name for name, model in AUDIT_OBJECT_TYPES.items()}
_ACTIONS = {action: name for name, action in AUDIT_ACTIONS.items()}


def _limits(owner: Token | Project) -> dict[str, Any]:
    return {
        "requests_per_minute": owner.requests_per_minute,
        "tokens_per_minute": owner.tokens_per_minute,
        "budget_usd": decimal_text(owner.budget_usd),
    }


def _policy(owner: Token | Project, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(owner, name) for name in names}


def project_json(project: Project) -> dict[str, Any]:
    now = timezone.now()
    return {
        "id": str(project.id),
        "name": project.name,
        "api_key": project.api_key_masked,  # never the plaintext
        "is_active": project.is_active,
        "deactivated_at": project.deactivated_at,
        "created_at": project.created_at,
        "updated_at": project.updated_at,
        "api_key_updated_at": project.api_key_updated_at,
        "upstream_url": project.upstream_url,
        "upstream_auth": project.upstream_auth,
        **_limits(project),
        "budget_period": project.budget_period,
        "spent_usd": decimal_text(project.spent_in_period(now)),
        "budget_resets_at": project.budget_resets_at(now),
        **_policy(project, POLICY_FIELDS),
        "cache_mode": project.cache_mode,
        "cache_ttl_seconds": project.cache_ttl_seconds,
    }


def token_json(token: Token) -> dict[str, Any]:
    return {
        "id": str(token.id),
        "token": f"{token.prefix}…",  # the display prefix: recognisable, useless to an attacker
        "project_id": str(token.project_id),
        "label": token.label,
        "status": token.status_at(timezone.now()).value,
        "is_active": token.revoked_at is None,
        "expires_at": token.expires_at,
        "request_count": token.request_count,
        "max_requests": token.max_requests,
        "cache_hit_count": token.cache_hit_count,
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
        "revoked_at": token.revoked_at,
        "imported": token.imported,
        **_limits(token),
        "spent_usd": decimal_text(token.spent_usd),
        **_policy(token, TOKEN_POLICY_FIELDS),
    }


def issued_token_json(issued: IssuedToken) -> dict[str, Any]:
    token = issued.token
    return {
        "id": str(token.id),
        "token": issued.plaintext,
        "expires_at": token.expires_at,
        "max_requests": token.max_requests,
        "project_id": str(token.project_id),
        "label": token.label,
        **_limits(token),
        **_policy(token, TOKEN_POLICY_FIELDS),
    }


def audit_event_json(entry: LogEntry, project_id: str | None) -> dict[str, Any]:
    model = entry.content_type.model_class() if entry.content_type_id else None
    extra = entry.additional_data if isinstance(entry.additional_data, dict) else {}
    return {
        "id": entry.pk,
        "timestamp": entry.timestamp,
        "action": _ACTIONS.get(entry.action, str(entry.action)),
        "object_type": _OBJECT_TYPES.get(model, entry.content_type.model if entry.content_type_id else ""),
        "object_id": entry.object_pk,
        "object_repr": entry.object_repr,
        "project_id": project_id,
        "actor": entry.actor.get_username() if entry.actor else (entry.actor_email or None),
        "via": extra.get("via"),
        "client_ip": entry.remote_addr,
        "changes": entry.changes if isinstance(entry.changes, dict) else None,
    }


def decimal_text(value: Decimal | None) -> str | None:
    """Exact, without trailing zeros: "2.5", "0.075", "10"."""
    return None if value is None else format(value.normalize(), "f")


def price_json(price: ModelPrice) -> dict[str, Any]:
    return {
        "model": price.model,
        "input_per_million": decimal_text(price.input_per_million),
        "cached_input_per_million": decimal_text(price.cached_input_per_million),
        "output_per_million": decimal_text(price.output_per_million),
        "source": price.source,
        "updated_at": price.updated_at,
    }
