"""What the management commands share: finding a project by name or ID, and a service's refusal as a CommandError."""

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

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


def usd_amount(text: str) -> Decimal:
    """An argument in US dollars (argparse turns the refusal into a usage error)."""
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in US dollars: {text!r}") from None


def limit_or_none(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argument that is a limit, or `none` to remove it."""

    def read(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    return read
