"""What the management commands share: finding a project by name or ID, and turning refusals into CommandError."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from projects.models import Project
from projects.selectors import project_by_reference


def get_project(reference: str) -> Project:
    project = project_by_reference(reference)
    if project is None:
        raise CommandError(f"project not found: {reference!r} (give its name or ID; see `list_projects`)")
    return project


@contextmanager
def refusals_as_errors() -> Iterator[None]:
    """A service's ValidationError as a one-line CommandError (stderr, exit status 1)."""
    try:
        yield
    except ValidationError as e:
        if hasattr(e, "error_dict"):
            message = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in e.message_dict.items())
        else:
            message = " ".join(e.messages)
        raise CommandError(message) from None
