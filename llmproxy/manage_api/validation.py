"""Request parsing: each field is declared once, and that declaration both checks input and writes its JSON Schema.

So the OpenAPI document cannot drift from what the API accepts: a value the schema admits is parsed, a value it
refuses gets a 400 that names the field and the rule. Bounds that come from settings are read at call time.
"""

import json
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from .errors import ApiError, invalid

MAX_BODY_BYTES = 64 * 1024

Bound = int | Callable[[], int]


def _bound(value: Bound) -> int:
    return value() if callable(value) else value


def _class_ranges(chars: list[int]) -> str:
    """A regex character-class body (`\\u0000-\\u001f…`) for a sorted list of code points."""
    parts, start, prev = [], None, None
    for c in [*chars, None]:
        if start is not None and (c is None or c != prev + 1):
            parts.append(f"\\u{start:04x}" if start == prev else f"\\u{start:04x}-\\u{prev:04x}")
            start = None
        if c is not None and start is None:
            start = c
        prev = c
    return "".join(parts)


# Control characters are refused in every text field (they include NUL, which PostgreSQL cannot store).
_CONTROL = _class_ranges([*range(0x00, 0x20), *range(0x7F, 0xA0)])
# What Python's str.strip() removes, minus the control characters above: the services strip names and labels.
_SPACE = _class_ranges(
    [c for c in range(sys.maxunicode + 1) if chr(c).isspace() and not (c < 0x20 or 0x7F <= c < 0xA0)]
)
TEXT_PATTERN = f"[^{_CONTROL}]*"
NOT_BLANK_PATTERN = f"[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*"
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_QUERY_INT_RE = re.compile(r"-?[0-9]+")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class Field:
    description: str = ""
    nullable: bool = False

    def type_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        schema = self.type_schema()
        if self.nullable:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            schema["type"] = [*types, "null"]
        if self.description:
            schema["description"] = self.description
        return schema

    def parse(self, name: str, value: Any) -> Any:
        """A JSON value, checked."""
        if value is None:
            if self.nullable:
                return None
            raise invalid(name, f"{name} must not be null", "invalid_type")
        return self.check(name, value)

    def check(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def parse_query(self, name: str, raw: str) -> Any:
        """A query-string value, checked (query strings are text, so numbers are parsed first)."""
        return self.check(name, raw)


@dataclass(frozen=True)
class Integer(Field):
    minimum: Bound = 0
    maximum: Bound = 2**63 - 1

    def type_schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": _bound(self.minimum), "maximum": _bound(self.maximum)}

    def check(self, name: str, value: Any) -> int:
        # As in JSON Schema, 3.0 is an integer and true is not.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(name, f"{name} must be an integer", "invalid_type")
        low, high = _bound(self.minimum), _bound(self.maximum)
        if not low <= value <= high:
            raise invalid(name, f"{name} must be between {low} and {high}", "out_of_range")
        return value

    def parse_query(self, name: str, raw: str) -> int:
        if not _QUERY_INT_RE.fullmatch(raw):
            raise invalid(name, f"{name} must be an integer", "invalid_type")
        if len(raw) > 30:
            low, high = _bound(self.minimum), _bound(self.maximum)
            raise invalid(name, f"{name} must be between {low} and {high}", "out_of_range")
        return self.check(name, int(raw))


@dataclass(frozen=True)
class DecimalNumber(Field):
    """A decimal from 0 to `maximum`, as a JSON number (2.5) or a decimal string ("2.50", kept exactly as written).

    `maximum` is a power of ten, so the schema can bound strings too: at most that many digits before the point.
    """

    maximum: Decimal = Decimal(10)
    minimum: Decimal = Decimal(0)
    pattern: str | None = None  # for strings, when the minimum is above 0 (the default pattern admits 0 and up)

    def _pattern(self) -> str:
        if self.pattern is not None:
            return self.pattern
        top = int(self.maximum)
        return rf"[0-9]{{1,{len(str(top)) - 1}}}(?:\.[0-9]+)?|{top}(?:\.0+)?"

    def type_schema(self) -> dict[str, Any]:
        return {
            "type": ["number", "string"],
            "minimum": float(self.minimum) if self.minimum != int(self.minimum) else int(self.minimum),
            "maximum": int(self.maximum),
            "pattern": f"^(?:{self._pattern()})$",
        }

    def check(self, name: str, value: Any) -> Decimal:
        if isinstance(value, str):
            if not re.fullmatch(self._pattern(), value):
                message = (
                    f'{name} must be a decimal from {self.minimum} to {self.maximum}, like 2.5 or "2.50" (no exponent)'
                )
                raise invalid(name, message, "invalid_format")
            number = Decimal(value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(name, f"{name} must be a number or a decimal string", "invalid_type")
        else:
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not number.is_finite() or not self.minimum <= number <= self.maximum:
            raise invalid(name, f"{name} must be between {self.minimum} and {self.maximum}", "out_of_range")
        return number


@dataclass(frozen=True)
class Boolean(Field):
    def type_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise invalid(name, f"{name} must be true or false", "invalid_type")
        return value

    def parse_query(self, name: str, raw: str) -> bool:
        if raw not in ("true", "false"):
            raise invalid(name, f"{name} must be true or false", "invalid_type")
        return raw == "true"


@dataclass(frozen=True)
class String(Field):
    max_length: int = 200
    min_length: int = 0
    not_blank: bool = False
    pattern: str | None = None  # a full-match pattern, written so Python and ECMA-262 read it the same
    pattern_message: str = ""

    def _pattern(self) -> str:
        if self.pattern is not None:
            return self.pattern
        return NOT_BLANK_PATTERN if self.not_blank else TEXT_PATTERN

    def type_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length, "pattern": f"^(?:{self._pattern()})$"}
        if self.min_length:
            schema["minLength"] = self.min_length
        return schema

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise invalid(name, f"{name} must be a string", "invalid_type")
        if len(value) > self.max_length:
            raise invalid(name, f"{name} must be at most {self.max_length} characters", "too_long")
        if len(value) < self.min_length:
            raise invalid(name, f"{name} must be at least {self.min_length} characters", "too_short")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid(name, f"{name} must be valid Unicode text", "invalid") from None
        if not re.fullmatch(self._pattern(), value):
            if self.pattern_message:
                raise invalid(name, self.pattern_message, "invalid_format")
            if self.not_blank and value.strip() == "" and not re.search(f"[{_CONTROL}]", value):
                raise invalid(name, f"{name} must not be blank", "blank")
            raise invalid(name, f"{name} must not contain control characters", "invalid_format")
        return value


@dataclass(frozen=True)
class StringList(Field):
    """A JSON array of strings, each checked by `item`; what the entries mean is the service's to check."""

    item: String = field(default_factory=String)
    max_items: int = 500

    def type_schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.type_schema(), "maxItems": self.max_items}

    def check(self, name: str, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise invalid(name, f"{name} must be a list of strings", "invalid_type")
        if len(value) > self.max_items:
            raise invalid(name, f"{name} must have at most {self.max_items} entries", "too_long")
        return [self.item.check(name, entry) for entry in value]


@dataclass(frozen=True)
class StringMap(Field):
    """A JSON object of string values, keys and values each checked by `item`."""

    item: String = field(default_factory=String)
    max_items: int = 500

    def type_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": self.item.type_schema(),
            "propertyNames": {k: v for k, v in self.item.type_schema().items() if k != "type"},
            "maxProperties": self.max_items,
        }

    def check(self, name: str, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise invalid(name, f"{name} must be an object of strings", "invalid_type")
        if len(value) > self.max_items:
            raise invalid(name, f"{name} must have at most {self.max_items} entries", "too_long")
        return {self.item.check(name, key): self.item.check(name, entry) for key, entry in value.items()}


@dataclass(frozen=True)
class Uuid(Field):
    def type_schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "uuid"}

    def check(self, name: str, value: Any) -> uuid.UUID:
        if not isinstance(value, str) or not UUID_RE.fullmatch(value):
            raise invalid(name, f"{name} must be a UUID (8-4-4-4-12 hexadecimal digits)", "invalid_format")
        return uuid.UUID(value)


@dataclass(frozen=True)
class Choice(Field):
    choices: tuple[str, ...] = ()

    def type_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}

    def check(self, name: str, value: Any) -> str:
        if value not in self.choices:
            raise invalid(name, f"{name} must be one of: {', '.join(self.choices)}", "invalid_choice")
        return value


@dataclass(frozen=True)
class DateTime(Field):
    def type_schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}

    def check(self, name: str, value: Any) -> datetime:
        message = f"{name} must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z"
        if not isinstance(value, str):
            raise invalid(name, message, "invalid_format")
        try:
            parsed = datetime.fromisoformat(value.upper())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)  # no offset given: read as UTC
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            raise invalid(name, message, "invalid_format") from None


@dataclass(frozen=True)
class Date(Field):
    """A calendar date, `YYYY-MM-DD` (RFC 3339 full-date, what JSON Schema's `date` format means)."""

    def type_schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date"}

    def check(self, name: str, value: Any) -> date:
        message = f"{name} must be a date, YYYY-MM-DD, e.g. 2026-01-31"
        if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
            raise invalid(name, message, "invalid_format")
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise invalid(name, message, "invalid_format") from None


@dataclass(frozen=True)
class Body:
    """A JSON object body: known fields only, required ones present, cross-field rules in `check`."""

    fields: dict[str, Field]
    required: tuple[str, ...] = ()
    min_properties: int = 0
    rule_schema: dict[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: f.schema() for name, f in self.fields.items()},
            "additionalProperties": False,
        }
        if self.required:
            schema["required"] = list(self.required)
        if self.min_properties:
            schema["minProperties"] = self.min_properties
        return {**schema, **self.rule_schema}

    def parse(self, raw: bytes) -> dict[str, Any]:
        data = parse_json_object(raw)
        for name in data:
            if name not in self.fields:
                raise invalid(name, f"unknown field: {name}", "unknown_field")
        for name in self.required:
            if name not in data:
                raise invalid(name, f"{name} is required", "required")
        if len(data) < self.min_properties:
            raise ApiError(400, "no fields to update", "no_fields")
        parsed = {name: self.fields[name].parse(name, value) for name, value in data.items()}
        if self.check is not None:
            self.check(parsed)
        return parsed


def _refuse_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "request body must be valid JSON", "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    return data


@dataclass(frozen=True)
class Query:
    """Query-string parameters; unknown ones are refused, like unknown body fields (a typo must not filter nothing)."""

    fields: dict[str, Field]

    def parameters(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "in": "query", "required": False, "schema": f.schema(), "description": f.description}
            for name, f in self.fields.items()
        ]

    def parse(self, query: Mapping[str, str]) -> dict[str, Any]:
        for name in query:
            if name not in self.fields:
                raise invalid(name, f"unknown query parameter: {name}", "unknown_field")
        return {name: f.parse_query(name, query[name]) for name, f in self.fields.items() if name in query}
