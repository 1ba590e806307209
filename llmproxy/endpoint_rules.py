"""Endpoint rules, `METHOD /path`: the grammar shared by the proxy's allow-list (PROXY_ALLOWED_ENDPOINTS) and a
project's own `allowed_endpoints`. Paths are those after `/v1`; a `*` stands for one path segment."""

import re
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class EndpointRuleError(ValueError):
    """An entry that is not `METHOD /path`; its text says what is wrong."""


@dataclass(frozen=True)
class AllowList:
    exact: dict[str, frozenset[str]]
    patterns: tuple[tuple[re.Pattern, frozenset[str]], ...]

    @classmethod
    def of(cls, entries) -> "AllowList":
        exact: dict[str, set[str]] = {}
        patterns: dict[str, set[str]] = {}
        for entry in entries:
            method, _, path = entry.strip().partition(" ")
            path = "/" + path.strip().strip("/")
            target = patterns if "*" in path else exact
            target.setdefault(path, set()).add(method.upper())
        compiled = tuple(
            (
                re.compile("/".join("[^/]+" if part == "*" else re.escape(part) for part in path.split("/"))),
                frozenset(methods),
            )
            for path, methods in patterns.items()
        )
        return cls(exact={p: frozenset(m) for p, m in exact.items()}, patterns=compiled)

    def methods_for(self, path: str) -> frozenset[str]:
        methods = set(self.exact.get(path, ()))
        for pattern, allowed in self.patterns:
            if pattern.fullmatch(path):
                methods |= allowed
        return frozenset(methods)


@lru_cache(maxsize=4)
def _global(entries: tuple[str, ...]) -> AllowList:
    return AllowList.of(entries)


def proxy_allow_list() -> AllowList:
    """PROXY_ALLOWED_ENDPOINTS, compiled (once per distinct setting)."""
    return _global(tuple(settings.PROXY_ALLOWED_ENDPOINTS))


def parse_rule(entry: str) -> str:
    """An entry, normalised (`post /v1/embeddings/` → `POST /embeddings`), or EndpointRuleError."""
    method, _, path = entry.strip().partition(" ")
    method, path = method.upper(), path.strip()
    if method not in METHODS:
        raise EndpointRuleError(f"write METHOD /path, the method one of {', '.join(METHODS)}")
    if not path.startswith("/") or " " in path or "?" in path:
        raise EndpointRuleError("write METHOD /path, the path after /v1 (as POST /embeddings)")
    path = path.rstrip("/")
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:]
    segments = path.split("/")[1:]
    if not segments or any(s in ("", ".", "..") or ("*" in s and s != "*") for s in segments):
        raise EndpointRuleError("the path's segments must be names, or * for any one segment")
    return f"{method} {path}"


def rules_allow(rule: str) -> bool:
    """Whether the proxy's allow-list admits everything a (normalised) rule names; a `*` segment is tried with a
    sample name, so a rule broader than the list's is refused when the list names only particular segments."""
    method, _, path = rule.partition(" ")
    sample = "/".join("sample-segment" if part == "*" else part for part in path.split("/"))
    return method in proxy_allow_list().methods_for(sample)
