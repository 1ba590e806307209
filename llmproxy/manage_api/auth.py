"""Who is calling: the management token (everything) or a project's minting key (that project's tokens only)."""

import hmac
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest

from llmproxy.audit import Actor
from llmproxy.security.events import record_security_event
from llmproxy.security.models import SecurityEventKind, SecurityEventReason
from tokens import secret
from tokens.minting import minting_key_authenticate
from tokens.models import MintingKey

from .errors import ApiError

DISABLED = "management API disabled: MANAGEMENT_TOKEN is not set"
MINTING_KEY_SCOPE = (
    "minting keys may only create, list, read and revoke tokens of their own project (and purge its response cache)"
)


@dataclass(frozen=True)
class Caller:
    actor: Actor
    minting_key: MintingKey | None = None

    @property
    def project_id(self) -> uuid.UUID | None:
        """The one project a minting key is limited to; None for the management token (no limit)."""
        return self.minting_key.project_id if self.minting_key else None

    def require_management_token(self) -> None:
        if self.minting_key is not None:
            raise ApiError(403, MINTING_KEY_SCOPE, "forbidden")

    def require_project(self, project_id: uuid.UUID) -> None:
        """Refuse a minting key acting on another project (without looking up whether that project exists)."""
        if self.minting_key is not None and project_id != self.minting_key.project_id:
            raise ApiError(403, MINTING_KEY_SCOPE, "forbidden")


def _unauthorized(request: HttpRequest, message: str, reason: str, presented: str = "") -> ApiError:
    """The 401 answer, after counting the attempt as a security event (by display prefix, never the secret)."""
    record_security_event(
        kind=SecurityEventKind.MANAGEMENT_AUTH_FAILED,
        reason=reason,
        client_ip=request.META.get("REMOTE_ADDR"),
        token_prefix=presented,
        detail=message,
    )
    return ApiError(401, message, "unauthorized", headers={"WWW-Authenticate": 'Bearer realm="manage"'})


def authenticate(request: HttpRequest) -> Caller:
    management_token = settings.MANAGEMENT_TOKEN
    if not management_token:
        raise ApiError(503, DISABLED, "management_api_disabled")
    credential = secret.bearer(request.META.get("HTTP_AUTHORIZATION", ""))
    if credential is None:
        raise _unauthorized(request, "missing or invalid Authorization header", SecurityEventReason.MISSING)
    remote_addr = request.META.get("REMOTE_ADDR") or None
    if hmac.compare_digest(credential.encode(), management_token.encode()):
        return Caller(actor=Actor(via="api", label="management token", remote_addr=remote_addr))
    if credential.startswith(secret.MINTING_KEY.prefix):
        key = minting_key_authenticate(credential)
        if key is None:
            raise _unauthorized(request, "invalid minting key", SecurityEventReason.UNKNOWN, credential)
        label = f"minting key {key.name} ({key.prefix}…)"
        return Caller(
            actor=Actor(via="api", label=label, remote_addr=remote_addr, extra={"minting_key": str(key.pk)}),
            minting_key=key,
        )
    raise _unauthorized(request, "invalid management token", SecurityEventReason.UNKNOWN)
