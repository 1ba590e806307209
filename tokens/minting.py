"""Minting keys: project-scoped credentials with which a program creates, lists, reads and revokes its own tokens.

The key's format is `tokens.secret.MINTING_KEY` (`mk-…`, apart from `sk-wt-` tokens and the management token);
like a token it is shown once and stored as a digest.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from llmproxy.audit import Actor, audited
from llmproxy.errors import ServiceError
from projects.models import Project

from . import secret
from .models import MintingKey

NAME_MAX_LENGTH = MintingKey._meta.get_field("name").max_length
# Recording every use would write on every API call; once a minute is enough to answer "is it still used?".
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedMintingKey:
    """A freshly created minting key: the only moment its plaintext exists."""

    key: MintingKey
    plaintext: str


def minting_key_create(*, project: Project, name: str, actor: Actor) -> IssuedMintingKey:
    name = (name or "").strip()
    if not name:
        raise ServiceError("required", "Name is required.", field="name")
    if len(name) > NAME_MAX_LENGTH:
        raise ServiceError("too_long", f"Name must be at most {NAME_MAX_LENGTH} characters.", field="name")
    plaintext = secret.MINTING_KEY.generate()
    with transaction.atomic(), audited(actor):
        key = MintingKey.objects.create(
            project=project,
            name=name,
            digest=secret.digest(plaintext),
            prefix=secret.MINTING_KEY.display_prefix(plaintext),
            **actor.stamp("created"),
        )
    return IssuedMintingKey(key=key, plaintext=plaintext)


def minting_key_revoke(*, key: MintingKey, actor: Actor) -> bool:
    """Revoke a key for good. Returns False if it was already revoked (nothing changes then)."""
    with transaction.atomic(), audited(actor):
        key = MintingKey.objects.select_for_update().get(pk=key.pk)
        if key.revoked_at is not None:
            return False
        key.revoked_at = timezone.now()
        for field, value in actor.stamp("revoked").items():
            setattr(key, field, value)
        key.save(update_fields=["revoked_at", "revoked_by", "revoked_by_label"])
    return True


def minting_key_authenticate(plaintext: str) -> MintingKey | None:
    """The unrevoked key this plaintext belongs to, or None. Records the use (at most once a minute)."""
    if not secret.MINTING_KEY.is_well_formed(plaintext):
        return None
    key = (
        MintingKey.objects.select_related("project")
        .filter(digest=secret.digest(plaintext), revoked_at__isnull=True)
        .first()
    )
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        # A plain UPDATE: usage, not an operator action, so no audit entry (and no signal).
        MintingKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
