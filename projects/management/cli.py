"""What the management commands share: finding a project by name or ID, and a service's refusal as a CommandError."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError

from llmproxy.errors import ServiceError
from projects.models import Project
from projects.selectors import project_by_reference


def get_project(reference: str) -> Project:
    project = project_by_reference(reference)
    if project is None:
        raise CommandError(f"project not found: {reference!r} (give its name or ID; see `list_projects`)")
    return project


@contextmanager
def refusals_as_errors() -> Iterator[None]:
    """A service's refusal as a one-line CommandError (stderr, exit status 1): `field: message`."""
    try:
        yield
    except ServiceError as e:
        raise CommandError(f"{e.field}: {e.text}" if e.field else e.text) from None
