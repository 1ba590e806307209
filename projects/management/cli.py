"""What the management commands share: finding a project by name or ID, a service's refusal as a CommandError, and
the arguments for a project's upstream, key and policy."""

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

from django.core.management.base import CommandError

from llmproxy.errors import ServiceError
from projects.models import Project
from projects.selectors import project_by_reference
from projects.upstreams import UpstreamAuth


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


def entries_or_none(text: str) -> list[str] | None:
    """A policy list, comma-separated (`gpt-4o-mini,o3*`), or `none` to remove it."""
    if text.strip().lower() == "none":
        return None
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def aliases_or_none(text: str) -> dict[str, str] | None:
    """Model aliases, `fast=gpt-4o-mini,smart=gpt-4.1`, or `none` to remove them."""
    if text.strip().lower() == "none":
        return None
    aliases = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        alias, sep, model = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"write alias=model: {pair.strip()!r}")
        aliases[alias.strip()] = model.strip()
    return aliases


POLICY_OPTIONS = {
    "allowed_models": ("--allowed-models", entries_or_none, "models or prefixes ending in * (gpt-4o-mini,o3*)"),
    "model_aliases": ("--model-aliases", aliases_or_none, "alias=model pairs (fast=gpt-4o-mini,smart=gpt-4.1)"),
    "allowed_endpoints": ("--allowed-endpoints", entries_or_none, "METHOD /path entries ('POST /embeddings')"),
    "allowed_origins": ("--allowed-origins", entries_or_none, "browser origins (https://app.example.com)"),
    "allowed_ips": ("--allowed-ips", entries_or_none, "client addresses or CIDR ranges (10.0.0.0/8,2001:db8::/32)"),
}


def add_policy_arguments(parser, names=tuple(POLICY_OPTIONS)) -> None:
    """Comma-separated lists; `none` removes one; one left out stays as it is."""
    for name in names:
        flag, parse, what = POLICY_OPTIONS[name]
        parser.add_argument(flag, dest=name, type=parse, default=..., help=f"{what}, or none")


def policy_given(options: dict, names=tuple(POLICY_OPTIONS)) -> dict:
    return {name: options[name] for name in names if options.get(name, ...) is not ...}


def add_upstream_arguments(parser) -> None:
    parser.add_argument(
        "--upstream-url",
        default=None,
        help="the upstream API's base URL (https://api.anthropic.com/v1, https://NAME.openai.azure.com/openai/v1, "
        "http://vllm.internal:8000/v1); empty: the proxy's UPSTREAM_BASE_URL",
    )
    parser.add_argument(
        "--upstream-auth",
        choices=UpstreamAuth.values,
        default=None,
        help="how the key is sent: bearer, api-key (Azure) or x-api-key (Anthropic); default: what the URL implies",
    )


def read_key(api_key: str | None, from_stdin: bool) -> str | None:
    if from_stdin:
        api_key = sys.stdin.readline().strip()
        if not api_key:
            raise CommandError("no API key on stdin")
    return api_key
