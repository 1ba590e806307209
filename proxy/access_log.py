"""One log line per proxied request, and the formatters every log line of the app goes through (LOG_FORMAT).

The line is written by the usage writer thread from the request's usage row (see `proxy.usage.UsageWriter`), so
the event loop never formats or writes it. It holds what identifies and measures the request, never a token (only
its display prefix), an upstream key, a header or a body.

This module imports nothing from Django at load time: gunicorn's master uses its formatters before Django is set
up (gunicorn.conf.py).
"""

import json
import logging
import re
from datetime import UTC, datetime

logger = logging.getLogger("proxy.access")

# The standard attributes of a LogRecord (anything else came in through `extra`), and uvicorn's terminal colours.
_NOT_EXTRA = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


# Printable ASCII but space, `"`, `=` and backslash: a value with anything else is quoted in the text format.
_NEEDS_QUOTES = re.compile(r"[^!#-<>-\[\]-~]")


def _scrubbed(value: str) -> str:
    """Free text a client chose (model, path) with anything shaped like a key or token cut to its display prefix."""
    if "sk-" not in value:
        return value
    from llmproxy.security import SECRET_LIKE_RE
    from tokens import secret

    return SECRET_LIKE_RE.sub(lambda m: secret.display_prefix(m.group()) + "…", value)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def log_request(row: dict, project: str) -> None:
    """Log one finished request from its usage row (`project`: the project's name, or "")."""
    if not logger.isEnabledFor(logging.INFO):
        return
    path = _scrubbed(row["path"])
    fields = {
        "request_id": row["request_id"],
        "method": row["method"],
        "path": path,
        "status": row["status"],
        "project_id": str(row["project_id"]) if row["project_id"] else None,
        "project": project or None,
        "token_prefix": row["token_prefix"] or None,
        "model": _scrubbed(row["model"]) or None,
        "streamed": row["streamed"],
        "duration_ms": _ms(row["duration_ms"]),
        "ttfb_ms": _ms(row["ttfb_ms"]),
        "upstream_ms": _ms(row["upstream_ms"]),
        "prompt_tokens": row.get("prompt_tokens"),
        "completion_tokens": row.get("completion_tokens"),
        "client_ip": row["client_ip"],
        "refusal_code": row["refusal_code"] or None,
        "client_aborted": row["client_aborted"],
    }
    logger.info("%s %s %s", row["method"], _text_value(path), row["status"], extra={"fields": fields})


class ProxiedRequestWarnings(logging.Filter):
    """Drops Django's "Unauthorized: /v1/…"-style warning for each 4xx of the proxy: its access line says it all.
    Errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        path = getattr(getattr(record, "request", None), "path", "")
        return not path.startswith("/v1/")


def _text_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


class TextFormatter(logging.Formatter):
    """The plain format, with a request's fields appended as `key=value` (values quoted when they need it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            suffix = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
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
