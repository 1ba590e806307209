"""The formatters every log line goes through (LOG_FORMAT): plain `key=value` text, or one JSON object per line.

A line's structured fields come in through `extra={"fields": {...}}`. This module imports nothing from Django:
gunicorn's master uses it before Django is set up (gunicorn.conf.py).
"""

import json
import logging
import re
from datetime import UTC, datetime

# The standard attributes of a LogRecord (anything else came in through `extra`), and uvicorn's terminal colours.
_NOT_EXTRA = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}

# Printable ASCII but space, `"`, `=` and backslash: a value with anything else is quoted in the text format.
_NEEDS_QUOTES = re.compile(r"[^!#-<>-\[\]-~]")


def text_value(value: object) -> str:
    """A value as the plain format writes it: `-` for none, quoted when it holds anything but plain characters."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


class TextFormatter(logging.Formatter):
    """The plain format, with a line's fields appended as `key=value` (values quoted when they need it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            suffix = " ".join(f"{key}={text_value(value)}" for key, value in fields.items())
            head, newline, rest = line.partition("\n")  # after the message, before any traceback
            line = f"{head} {suffix}{newline}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the fields given through `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key == "fields" and isinstance(value, dict):
                document.update(value)
            elif key not in _NOT_EXTRA and not key.startswith("_") and key not in document:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)
