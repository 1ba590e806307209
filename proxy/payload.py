"""What the proxy reads from a request body (the model, whether it streams), and the one change it makes to it.

For a streamed chat or text completion the proxy asks the upstream to report usage (`stream_options.include_usage`)
when the client did not; the relay then removes that extra event from what the client receives. Bodies are
forwarded byte for byte otherwise; multipart bodies are never parsed, only searched for their `model` field.
"""

import json
import re
from dataclasses import dataclass

from django.conf import settings

_STREAM_USAGE_PATHS = frozenset({"/chat/completions", "/completions"})
_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')


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
        return Payload(body, model=found.group(1).decode("utf-8", "replace") if found else "")
    return Payload(body)


def _inspect_json(body: bytes, api_path: str) -> Payload:
    try:
        document = json.loads(body)
    except ValueError:
        return Payload(body)  # the upstream will say what is wrong with it
    if not isinstance(document, dict):
        return Payload(body)
    model = document.get("model")
    model = model[:200] if isinstance(model, str) else ""
    options = document.get("stream_options")
    if (
        document.get("stream") is True
        and api_path in _STREAM_USAGE_PATHS
        and (options is None or isinstance(options, dict))
        and (options or {}).get("include_usage") is not True
    ):
        document["stream_options"] = {**(options or {}), "include_usage": True}
        rewritten = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return Payload(rewritten, model=model, usage_injected=True)
    return Payload(body, model=model)
