"""One log line per proxied request, written by the usage writer thread from the request's usage row (see
`proxy.writer`), so the event loop never formats or writes it. It holds what identifies and measures the request,
never a token (only its display prefix), an upstream key, a header or a body: the row's path and model have had
anything shaped like a key cut to its display prefix.
"""

import logging

from llmproxy.logs import text_value

logger = logging.getLogger("proxy.access")
_NO_CALLER = ("(unknown file)", 0)  # what `logging` records when it does not look for the caller


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def log_request(row: dict, project: str) -> None:
    """Log one finished request from its usage row (`project`: the project's name, or "")."""
    if not logger.isEnabledFor(logging.INFO):
        return
    path = row["path"]
    fields = {
        "request_id": row["request_id"],
        "method": row["method"],
        "path": path,
        "status": row["status"],
        "project_id": str(row["project_id"]) if row["project_id"] else None,
        "project": project or None,
        "token_prefix": row["token_prefix"] or None,
        "model": row["model"] or None,
        "streamed": row["streamed"],
        "duration_ms": _ms(row["duration_ms"]),
        "ttfb_ms": _ms(row["ttfb_ms"]),
        "upstream_ms": _ms(row["upstream_ms"]),
        "prompt_tokens": row.get("prompt_tokens"),
        "completion_tokens": row.get("completion_tokens"),
        "client_ip": row["client_ip"],
        "refusal_code": row["refusal_code"] or None,
        "client_aborted": row["client_aborted"],
        "upstream_aborted": row["upstream_aborted"],
        "cache": row.get("cache") or None,
    }
    # The record made here, not by `logger.info`, which first walks the stack for the caller's file and line (6 µs of
    # the line's 50, measured) for what no format of ours prints.
    args = (row["method"], text_value(path), row["status"])
    extra = {"fields": fields}
    logger.handle(logger.makeRecord(logger.name, logging.INFO, *_NO_CALLER, "%s %s %s", args, None, extra=extra))
