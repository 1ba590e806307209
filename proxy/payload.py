"""What the proxy reads from a request body (the model, whether it streams), and the changes it makes to it.

For a streamed chat or text completion the proxy asks the upstream to report usage (`stream_options.include_usage`)
when the client did not; the relay then removes that extra event from what the client receives. A model alias of
the project's policy is replaced by the model it stands for. Bodies are forwarded byte for byte otherwise;
multipart bodies are never parsed, only searched for their `model` field. A body the proxy cannot read (not JSON, or
nested deeper than the parser goes) is forwarded as it came, and the upstream says what is wrong with it.

When the policy restricts models (or has aliases), the model must be read whatever the body's size or declared
type, and a body that names its model twice is refused: the proxy and the upstream could read different ones.
"""

import json
import re
from dataclasses import dataclass

from django.conf import settings

from projects.policy import UNRESTRICTED, RequestPolicy

_STREAM_USAGE_PATHS = frozenset({"/chat/completions", "/completions"})
MODEL_MAX_LENGTH = 200
_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')
# When the model must be read: any spelling a multipart parser might take for the field, any length of value.
_MULTIPART_ANY_MODEL = re.compile(rb'(?i)\bname\s*=\s*"?model"?[ \t;]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n')
_MODEL_KEY = re.compile(rb'"model"|\\u')  # a body with neither cannot hold two `model` keys
# What a model name may not hold, since it is stored and logged: NUL (PostgreSQL text refuses it) and lone surrogates
# (`"\ud800"` is valid JSON, but has no UTF-8 form).
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Payload:
    body: bytes
    model: str = ""  # the model sent upstream (an alias resolved)
    usage_injected: bool = False  # the client did not ask for the usage event: remove it from the stream
    duplicate_model: bool = False  # the body names its model more than once (refused when the policy reads models)
    model_too_long: bool = False  # longer than a model name may be: `model` holds only its start (no rule allows it)
    document: dict | None = None  # the JSON object read from the body, if it was (as sent: rewrites applied)


def inspect(body: bytes, content_type: str, api_path: str, policy: RequestPolicy = UNRESTRICTED) -> Payload:
    """`api_path` is the path after `/v1`."""
    must_read = policy.reads_model
    if not body or (len(body) > settings.PROXY_INSPECT_MAX_BYTES and not must_read):
        return Payload(body)
    if content_type.startswith("multipart/form-data"):
        return _inspect_multipart(body, policy, must_read)
    if content_type.startswith("application/json") or must_read:
        return _inspect_json(body, api_path, policy, must_read)
    return Payload(body)


def _inspect_multipart(body: bytes, policy: RequestPolicy, must_read: bool) -> Payload:
    pattern = _MULTIPART_ANY_MODEL if must_read else _MULTIPART_MODEL
    found = pattern.search(body)
    if found is None:
        return Payload(body)
    if must_read and pattern.search(body, found.end(1)):
        return Payload(body, duplicate_model=True)
    value = found.group(1)
    model = _text(value[:MODEL_MAX_LENGTH].decode("utf-8", "replace"))
    target = policy.resolve(model)
    if target != model:
        body = body[: found.start(1)] + target.encode() + body[found.end(1) :]
    return Payload(body, model=target, model_too_long=len(value) > MODEL_MAX_LENGTH)


class _Pairs(dict):
    """A JSON object that remembers whether a key came twice (json's `object_pairs_hook` builds it)."""

    duplicate_model = False

    @classmethod
    def of(cls, pairs: list[tuple[str, object]]) -> "_Pairs":
        document = cls(pairs)
        document.duplicate_model = sum(1 for key, _ in pairs if key == "model") > 1
        return document


def _inspect_json(body: bytes, api_path: str, policy: RequestPolicy, must_read: bool) -> Payload:
    try:
        if must_read and _MODEL_KEY.search(body):
            # Only the outermost object's keys matter: the hook builds it last, so its flag is the one returned.
            document = json.loads(body, object_pairs_hook=_Pairs.of)
        else:
            document = json.loads(body)
    except (ValueError, RecursionError):
        return Payload(body)  # the upstream will say what is wrong with it
    if not isinstance(document, dict):
        return Payload(body)
    if getattr(document, "duplicate_model", False):
        return Payload(body, duplicate_model=True)
    model = document.get("model")
    too_long = isinstance(model, str) and len(model) > MODEL_MAX_LENGTH
    model = _text(model[:MODEL_MAX_LENGTH]) if isinstance(model, str) else ""
    rewrite = False
    target = policy.resolve(model)
    if target != model:
        document["model"], model, rewrite = target, target, True
    options = document.get("stream_options")
    injected = (
        document.get("stream") is True
        and api_path in _STREAM_USAGE_PATHS
        and (options is None or isinstance(options, dict))
        and (options or {}).get("include_usage") is not True
    )
    if injected:
        document["stream_options"] = {**(options or {}), "include_usage": True}
        rewrite = True
    if rewrite:
        # A lone surrogate cannot be encoded: it goes on as the JSON escape the client sent (`\ud800`).
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")
    return Payload(body, model=model, usage_injected=injected, model_too_long=too_long, document=document)


def _text(value: str) -> str:
    return _NOT_TEXT.sub("\ufffd", value)
