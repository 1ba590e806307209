"""The response cache's rules: which requests may be answered from it, under which key, and which answers are kept.

A project's `cache_mode` decides (it is read by the admission statement with the token, so a change bites on the
next request):

- `off` (the default): nothing is looked up or stored, and answers carry no `X-Cache`.
- `opt-in`: a request is cacheable only when the client sends `Cache-Control: max-age=N` (or `s-maxage=N`), kept
  N seconds.
- `on`: embeddings, and requests with `"temperature": 0` or a `seed`, are cacheable for the project's
  `cache_ttl_seconds` without asking; other requests opt in as above.

The client can always say `Cache-Control: no-cache` (not read: forwarded, and the entry refreshed) or `no-store`
(neither read nor written). Cacheable are POST chat/completions, completions, embeddings, responses and GET models;
what is stored is a 200 answer that arrived whole, within CACHE_MAX_ENTRY_BYTES, that the upstream did not mark
`no-store` or `private`.

The key is the project, the method, the path, the query and a canonical form of the JSON body (keys sorted, no
whitespace; `stream_options` and `user` left out; the model as forwarded, an alias resolved), so two projects
never share an answer, and tokens of one project do. A stream is stored as the upstream sent it (with the usage
event the proxy asks for) and replayed through the same filter as a live stream, so the usage event reaches only a
client that asked for it.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from django.conf import settings

CACHEABLE = frozenset(
    {
        ("POST", "/chat/completions"),
        ("POST", "/completions"),
        ("POST", "/embeddings"),
        ("POST", "/responses"),
        ("GET", "/models"),
    }
)
IGNORED_KEYS = ("stream_options", "user")
MAX_TTL_SECONDS = 30 * 24 * 3600
_DIRECTIVE = re.compile(r"\s*([A-Za-z-]+)\s*(?:=\s*\"?([^\",]*)\"?)?\s*(?:,|$)")


class Result(StrEnum):
    """`X-Cache`: answered from the cache, looked up and not found (the answer not kept), not looked up (not
    cacheable, `no-store`, or the cache unavailable), or kept once it has arrived whole."""

    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"
    STORED = "STORED"


@dataclass(frozen=True)
class Plan:
    """What the cache does for one request of a project with the cache on: `key` None when not cacheable."""

    key: str | None = None
    read: bool = False  # look it up (not with no-cache)
    ttl: int = 0
    project_id: UUID | None = None
    model: str = ""
    path: str = ""


BYPASS = Plan()


def directives(value: str) -> dict[str, str]:
    """A Cache-Control header's directives, lower-cased, with their values (empty when they have none)."""
    return {name.lower(): argument or "" for name, argument in _DIRECTIVE.findall(value or "")}


def _seconds(value: str | None) -> int:
    try:
        return max(int(value), 0) if value is not None else 0
    except ValueError:
        return 0


def _is_zero(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def plan(
    *,
    mode: str,
    default_ttl: int,
    project_id: UUID,
    method: str,
    api_path: str,
    query: str,
    body: bytes,
    model: str,
    cache_control: str,
    document: dict | None = None,
) -> Plan:
    """The plan for a request of a project whose cache mode is not `off`. `document`: the body's JSON object when the
    caller has read it already (proxy.payload), so it is not parsed twice; it is not changed here."""
    route = "/models" if method == "GET" and api_path.startswith("/models") else api_path
    if (method, route) not in CACHEABLE:
        return BYPASS
    asked = directives(cache_control)
    if "no-store" in asked:
        return BYPASS
    if method != "POST":
        document = {}
    elif document is None:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return BYPASS
        if not isinstance(document, dict):
            return BYPASS
    else:
        document = dict(document)
    ttl = _seconds(asked.get("s-maxage")) or _seconds(asked.get("max-age"))
    deterministic = _is_zero(document.get("temperature")) or document.get("seed") is not None
    if not ttl and mode == "on" and (api_path == "/embeddings" or deterministic):
        ttl = default_ttl
    if not ttl:
        return BYPASS
    for name in IGNORED_KEYS:
        document.pop(name, None)
    if model and "model" in document:
        document["model"] = model  # as forwarded: an alias resolved
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(
        "\n".join((str(project_id), method, api_path, query, canonical)).encode("utf-8", "backslashreplace")
    ).hexdigest()
    return Plan(
        key=f"{project_id.hex}:{part(api_path)}:{part(model)}:{digest}",
        read="no-cache" not in asked,
        ttl=min(ttl, MAX_TTL_SECONDS),
        project_id=project_id,
        model=model,
        path=api_path,
    )


def part(value: str) -> str:
    """A key's part naming a path or a model: short hex, so a purge by either is a pattern on the key (Redis)."""
    return hashlib.sha256(value.encode("utf-8", "backslashreplace")).hexdigest()[:16]


def storable(status: int, headers, content_length: str | None = None) -> bool:
    """Whether an upstream answer may be kept (if it then arrives whole and within the size cap)."""
    if status != 200:
        return False
    said = directives(headers.get("cache-control", ""))
    if "no-store" in said or "private" in said:
        return False
    return content_length is None or not content_length.isdigit() or int(content_length) <= max_entry_bytes()


def max_entry_bytes() -> int:
    return settings.CACHE_MAX_ENTRY_BYTES


class Keeping:
    """The raw bytes of an answer being kept, as they pass; given up when they outgrow CACHE_MAX_ENTRY_BYTES."""

    def __init__(self, plan: Plan, content_type: str, streamed: bool) -> None:
        self.plan = plan
        self.content_type = content_type
        self.streamed = streamed
        self.body: bytearray | None = bytearray()
        self.limit = max_entry_bytes()

    def add(self, chunk: bytes) -> None:
        if self.body is None:
            return
        self.body += chunk
        if len(self.body) > self.limit:
            self.body = None
