"""The allow-list of endpoints: `METHOD /path` entries from settings, where `*` stands for one path segment.

Checked before anything else (no database), so a request for an endpoint the proxy does not serve never costs a
query and never reaches the upstream. The list is checked against the decoded path, but the path is forwarded as
the client sent it, so first the two must have the same segments (`plain_path`).
"""

from dataclasses import dataclass

from llmproxy.endpoint_rules import proxy_allow_list


@dataclass(frozen=True)
class EndpointCheck:
    allowed: bool
    known_path: bool  # the path is served, with other methods (→ 405 rather than 404)
    methods: tuple[str, ...]  # the methods the path allows, for the `Allow` header


def check(method: str, path: str) -> EndpointCheck:
    """`path` is the part after `/v1`, decoded, e.g. `/chat/completions`."""
    segments = path.split("/")[1:]
    if not path.startswith("/") or any(s in ("", ".", "..") for s in segments):
        return EndpointCheck(allowed=False, known_path=False, methods=())
    methods = proxy_allow_list().methods_for(path)
    return EndpointCheck(allowed=method in methods, known_path=bool(methods), methods=tuple(sorted(methods)))


def plain_path(raw_path: bytes, path: str) -> bool:
    """Whether the raw path (as sent, and as forwarded) has the same segments as the decoded one (as checked).

    An encoded slash (`%2f`) is one segment to the upstream but two to the check; a backslash, plain or encoded, is
    a separator to some servers; a dot segment, plain or encoded (`%2e%2e`), climbs out of the path that was
    allowed. Any of them would let the upstream, or a server between, read another path than the one allowed.
    """
    if "\\" in path or path.count("/") != raw_path.count(b"/"):
        return False
    return "/." not in path or not any(segment in (".", "..") for segment in path.split("/"))
