"""The rules for an upstream (OpenAI) API key: what counts as complete, and how it is shown masked."""

import re

from django.core.exceptions import ValidationError

INVALID_API_KEY = "Invalid API key format"

# `sk-` then only key characters: no whitespace, no ellipsis or asterisks of a masked copy, sensibly long.
API_KEY_RE = re.compile(r"sk-[A-Za-z0-9_-]{17,500}")


def validate_api_key(value: str) -> None:
    if not isinstance(value, str) or not API_KEY_RE.fullmatch(value):
        raise ValidationError(INVALID_API_KEY, code="invalid_api_key")


def mask_api_key(value: str) -> str:
    """`sk-proj-Ab…wxyz`: enough to recognise a key, never enough to use it."""
    head = value[: min(10, len(value) // 4)]
    return f"{head}…{value[-4:]}"
