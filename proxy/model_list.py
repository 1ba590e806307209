"""`GET /v1/models` under a policy: only the models the token may use, and its project's aliases beside them.

OpenAI, Azure OpenAI's v1 API, Anthropic and the OpenAI-compatible servers all answer a list object whose `data`
holds entries with an `id`; Anthropic's also names the first and last ids of the page.
"""

import json
from collections.abc import Callable

from projects.policy import RequestPolicy


def rewriter(policy: RequestPolicy) -> Callable[[bytes], bytes]:
    """What the relay applies to the upstream's list (a body that is no such list goes on unchanged: an error)."""

    def rewrite(body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return body
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            return body
        listed = {
            entry["id"]: entry
            for entry in document["data"]
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
        }
        kept = [entry for model, entry in listed.items() if policy.allows_model(model)]
        for alias, target in (policy.aliases or {}).items():
            if target in listed and policy.allows_model(target) and alias not in listed:
                kept.append({**listed[target], "id": alias})
        document["data"] = kept
        for key, index in (("first_id", 0), ("last_id", -1)):
            if key in document:
                document[key] = kept[index]["id"] if kept else None
        return json.dumps(document, separators=(",", ":")).encode()

    return rewrite
