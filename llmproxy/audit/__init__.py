"""The audit trail's foundation: the actor behind every state change, and the context that stamps it on entries.

Services take an `Actor` and run their writes inside `audited(actor)`, so django-auditlog records the change with
the actor, its address and how it came in (admin, API, command line), in the same transaction as the change.
Nothing in this package imports an app of the project: every app builds on it.
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from auditlog.context import set_extra_data
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.http import HttpRequest
from django.utils import timezone


@dataclass(frozen=True)
class Actor:
    """An operator (a user), or a program (management token, minting key, command line)."""

    via: str  # "admin", "api", "cli", "system"
    user: AbstractBaseUser | None = None
    label: str = ""  # who, when there is no user: "management token", "minting key ci (mk-ab12…)"
    remote_addr: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_request(cls, request: HttpRequest, *, via: str = "admin") -> "Actor":
        user = request.user if getattr(request, "user", None) and request.user.is_authenticated else None
        return cls(via=via, user=user, remote_addr=request.META.get("REMOTE_ADDR") or None)

    @classmethod
    def cli(cls, name: str = "") -> "Actor":
        import getpass

        return cls(via="cli", label=name or f"command line ({getpass.getuser()})")

    def stamp(self, role: str) -> dict[str, Any]:
        """`{role}_by` / `{role}_by_label` field values (see tokens.models.IssuedCredential)."""
        return {f"{role}_by": self.user, f"{role}_by_label": "" if self.user else str(self)[:200]}

    def __str__(self) -> str:
        if self.user is not None:
            return self.user.get_username()
        return self.label or self.via


@contextmanager
def audited(actor: Actor) -> Iterator[None]:
    """Stamp every auditlog entry written inside the block with this actor."""
    context: dict[str, Any] = {
        "actor": actor.user,
        "remote_addr": actor.remote_addr,
        "additional_data": {"via": actor.via, **actor.extra},
    }
    if actor.user is None:
        context["actor_email"] = str(actor)[:254]
    with set_extra_data(context_data=context):
        yield


def log_updates(instances: Iterable[Model], actor: Actor, changes: dict[str, list[str]]) -> None:
    """One audit entry per object for changes made without `save()` (a bulk UPDATE, which fires no signals)."""
    from auditlog.models import LogEntry

    now = timezone.now()
    LogEntry.objects.bulk_create(
        [
            LogEntry(
                content_type=ContentType.objects.get_for_model(instance),
                object_pk=str(instance.pk),
                object_repr=str(instance),
                action=LogEntry.Action.UPDATE,
                changes=changes,
                changes_text="",
                actor=actor.user,
                actor_email=getattr(actor.user, "email", None) if actor.user else str(actor)[:254],
                remote_addr=actor.remote_addr,
                additional_data={"via": actor.via, **actor.extra},
                timestamp=now,
            )
            for instance in instances
        ],
        batch_size=500,
    )
