"""What the proxy reads from a request body (the model, whether it streams), and the one change it makes to it.

For a streamed chat or text completion the proxy asks the upstream to report usage (`stream_options.include_usage`)
when the client did not; the relay then removes that extra event from what the client receives. Bodies are
forwarded byte for byte otherwise; multipart bodies are never parsed, only searched for their `model` field. A body
the proxy cannot read (not JSON, or nested deeper than the parser goes) is forwarded as it came, and the upstream
says what is wrong with it.
"""

import json
import re
from dataclasses import dataclass

from django.conf import settings

_STREAM_USAGE_PATHS = frozenset({"/chat/completions", "/completions"})
_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')
# What a model name may not hold, since it is stored and logged: NUL (PostgreSQL text refuses it) and lone surrogates
# (`"\ud800"` is valid JSON, but has no UTF-8 form).
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Payload:
    body: bytes
    model: str = ""
    usage_injected: bool = False  # the client did not ask for the usage event: remove it from the stream


def inspect(body: bytes, content_type: str, api_path: str) -> Payload:
    """`api_path` is the path after `/v1`."""
    if not body or len(body) > settings.PROXY_INSPECT_MAX_BYTES:
        return Payload(body)
    if content_type.startswith("application/json"):
        return _inspect_json(body, api_path)
    if content_type.startswith("multipart/form-data"):
        found = _MULTIPART_MODEL.search(body)
        return Payload(body, model=_text(found.group(1).decode("utf-8", "replace")) if found else "")
    return Payload(body)


def _inspect_json(body: bytes, api_path: str) -> Payload:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return Payload(body)  # the upstream will say what is wrong with it
    if not isinstance(document, dict):
        return Payload(body)
    model = document.get("model")
    model = _text(model[:200]) if isinstance(model, str) else ""
    options = document.get("stream_options")
    if (
        document.get("stream") is True
        and api_path in _STREAM_USAGE_PATHS
        and (options is None or isinstance(options, dict))
        and (options or {}).get("include_usage") is not True
    ):
        document["stream_options"] = {**(options or {}), "include_usage": True}
        # A lone surrogate cannot be encoded: it goes on as the JSON escape the client sent (`\ud800`).
        rewritten = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")
        return Payload(rewritten, model=model, usage_injected=True)
    return Payload(body, model=model)


def _text(value: str) -> str:
    return _NOT_TEXT.sub("\ufffd", value)
