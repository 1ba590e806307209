"""What a project's tokens may do: which models (and under which other names), endpoints, browser origins and client
addresses. A token may carry its own `allowed_models` and `allowed_ips`, within its project's; the policy in force
for a request is the intersection of both.

Every list empty or null means no restriction. The lists are stored as JSON on the project and the token, and read
by the admission statement with the row it admits, so a change bites on the very next request on every worker and
instance; `request_policy` compiles them once per distinct content (an LRU keyed by the stored text itself, so it
can never serve a stale policy).

Entries:
- models: an exact name, or a prefix ending in a single `*` (`gpt-4o*`); applied after alias resolution.
- aliases: `{"fast": "gpt-4o-mini"}`: the request's `model` is rewritten before it is forwarded.
- endpoints: `METHOD /path` as in PROXY_ALLOWED_ENDPOINTS (`*` stands for one path segment), each within that list.
- origins: `https://app.example.com` (scheme, host and port, as a browser sends `Origin`).
- addresses: an IPv4 or IPv6 address or CIDR range (`10.0.0.0/8`, `2001:db8::/32`).
"""

import ipaddress
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.db import models

from llmproxy.endpoint_rules import AllowList, EndpointRuleError, parse_rule, rules_allow
from llmproxy.errors import ServiceError

MAX_ENTRIES = 500
MODEL_MAX_LENGTH = 200
ORIGIN_MAX_LENGTH = 300
# A model entry: no whitespace or control characters; a `*` only as the last character.
_MODEL_ENTRY = re.compile(r"[^\s*\x00-\x1f\x7f]{1,199}\*?|[^\s*\x00-\x1f\x7f]{1,200}")
_ALIAS_NAME = re.compile(r"[^\s*\x00-\x1f\x7f]{1,200}")

POLICY_FIELDS = ("allowed_models", "model_aliases", "allowed_endpoints", "allowed_origins", "allowed_ips")
TOKEN_POLICY_FIELDS = ("allowed_models", "allowed_ips")


class AccessPolicy(models.Model):
    """The lists a token and a project share (null: no restriction)."""

    allowed_models = models.JSONField(
        null=True,
        blank=True,
        help_text="Model names, or prefixes ending in * (gpt-4o*); applied after alias resolution. Empty: any.",
    )
    allowed_ips = models.JSONField(
        null=True,
        blank=True,
        verbose_name="allowed client addresses",
        help_text="Client IP addresses or CIDR ranges (IPv4 and IPv6). Empty: any.",
    )

    class Meta:
        abstract = True


# --- checking what an operator enters ------------------------------------------------------------------------------


def _entries(value, field: str) -> list:
    """A list given (None or empty: none); a string is taken as one entry per line or comma."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [part for part in re.split(r"[\n,]", value)]
    if not isinstance(value, list | tuple):
        raise ServiceError("invalid_type", f"{field} must be a list (or null for no restriction).", field=field)
    entries = []
    for entry in value:
        if not isinstance(entry, str):
            raise ServiceError("invalid_type", f"{field} must be a list of strings.", field=field)
        entry = entry.strip()
        if entry and entry not in entries:
            entries.append(entry)
    if len(entries) > MAX_ENTRIES:
        raise ServiceError("too_many", f"{field} may hold at most {MAX_ENTRIES} entries.", field=field)
    return entries


def _refuse(field: str, entry: str, rule: str) -> ServiceError:
    shown = entry if len(entry) <= 80 else entry[:80] + "…"
    return ServiceError("invalid_entry", f"{field}: {shown!r} is not valid: {rule}.", field=field)


def clean_models(value, field: str = "allowed_models") -> list[str] | None:
    entries = _entries(value, field)
    for entry in entries:
        if not _MODEL_ENTRY.fullmatch(entry):
            raise _refuse(field, entry, "a model name, or a prefix ending in a single * (no spaces, * only at the end)")
    return entries or None


def clean_aliases(value, field: str = "model_aliases") -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = _aliases_from_text(value, field)
    if not isinstance(value, dict):
        raise ServiceError("invalid_type", f"{field} must be an object of alias: model (or null).", field=field)
    if len(value) > MAX_ENTRIES:
        raise ServiceError("too_many", f"{field} may hold at most {MAX_ENTRIES} entries.", field=field)
    aliases = {}
    for alias, target in value.items():
        if not isinstance(target, str):
            raise ServiceError("invalid_type", f"{field}: the model for {alias!r} must be a string.", field=field)
        alias, target = alias.strip(), target.strip()
        for name in (alias, target):
            if not _ALIAS_NAME.fullmatch(name):
                raise _refuse(field, name, "a model name (no spaces, no *)")
        if alias == target:
            raise _refuse(field, alias, "an alias must name another model")
        aliases[alias] = target
    return aliases or None


def _aliases_from_text(text: str, field: str) -> dict[str, str]:
    """`fast = gpt-4o-mini`, one per line (the admin's textarea)."""
    aliases = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        alias, sep, target = line.partition("=")
        if not sep:
            raise _refuse(field, line.strip(), "one alias per line, written alias = model")
        aliases[alias.strip()] = target.strip()
    return aliases


def clean_endpoints(value, field: str = "allowed_endpoints") -> list[str] | None:
    entries = []
    for entry in _entries(value, field):
        try:
            rule = parse_rule(entry)
        except EndpointRuleError as exc:
            raise _refuse(field, entry, str(exc)) from None
        if not rules_allow(rule):
            raise _refuse(field, entry, "it must be within the proxy's PROXY_ALLOWED_ENDPOINTS")
        if rule not in entries:
            entries.append(rule)
    return entries or None


def clean_origins(value, field: str = "allowed_origins") -> list[str] | None:
    origins = []
    for entry in _entries(value, field):
        parts = urlsplit(entry)
        plain = (
            parts.scheme in ("http", "https")
            and parts.hostname
            and not parts.username
            and parts.path in ("", "/")
            and not parts.query
            and not parts.fragment
            and len(entry) <= ORIGIN_MAX_LENGTH
        )
        try:
            port = parts.port
        except ValueError:
            plain = False
        if not plain:
            raise _refuse(field, entry, "an origin, scheme://host[:port], as https://app.example.com")
        origin = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
        if origin not in origins:
            origins.append(origin)
    return origins or None


def clean_ips(value, field: str = "allowed_ips") -> list[str] | None:
    networks = []
    for entry in _entries(value, field):
        try:
            network = str(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise _refuse(
                field, entry, "an IPv4 or IPv6 address or CIDR range, as 10.0.0.0/8 or 2001:db8::/32"
            ) from None
        if network not in networks:
            networks.append(network)
    return networks or None


_CLEANERS = {
    "allowed_models": clean_models,
    "model_aliases": clean_aliases,
    "allowed_endpoints": clean_endpoints,
    "allowed_origins": clean_origins,
    "allowed_ips": clean_ips,
}


def clean_policy(policy: dict, names: tuple[str, ...] = POLICY_FIELDS) -> dict:
    """The lists given, checked and normalised (a name not among `names` is a bug of the caller)."""
    cleaned = {}
    for name, value in policy.items():
        if name not in names:
            raise TypeError(f"not a policy field: {name}")
        cleaned[name] = _CLEANERS[name](value)
    return cleaned


def check_within(project_models: list[str] | None, project_ips: list[str] | None, token_policy: dict) -> None:
    """A token's lists must lie within its project's: a wider list is refused, naming the field."""
    models_ = token_policy.get("allowed_models")
    if models_ and project_models:
        rule = ModelRule.of(project_models)
        for entry in models_:
            if not rule.covers(entry):
                raise ServiceError(
                    "wider_than_project",
                    f"allowed_models: {entry!r} is not within the project's allowed models.",
                    field="allowed_models",
                )
    ips = token_policy.get("allowed_ips")
    if ips and project_ips:
        project_networks = [ipaddress.ip_network(n) for n in project_ips]
        for entry in ips:
            network = ipaddress.ip_network(entry)
            if not any(network.version == p.version and network.subnet_of(p) for p in project_networks):
                raise ServiceError(
                    "wider_than_project",
                    f"allowed_ips: {entry} is not within the project's allowed addresses.",
                    field="allowed_ips",
                )


# --- the policy in force for a request -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRule:
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, entries: list[str]) -> "ModelRule":
        return cls(
            exact=frozenset(e for e in entries if not e.endswith("*")),
            prefixes=tuple(e[:-1] for e in entries if e.endswith("*")),
        )

    def allows(self, model: str) -> bool:
        return model in self.exact or model.startswith(self.prefixes)

    def covers(self, entry: str) -> bool:
        """Whether every model an entry names is allowed here (a prefix is covered by a shorter or equal prefix)."""
        if entry.endswith("*"):
            return entry[:-1].startswith(self.prefixes)
        return self.allows(entry)


@dataclass(frozen=True)
class RequestPolicy:
    """The policy in force for one request: its project's lists, narrowed by its token's."""

    models: tuple[ModelRule, ...] = ()  # each must allow the model (the project's, the token's)
    aliases: dict[str, str] | None = None
    endpoints: AllowList | None = None
    origins: frozenset[str] | None = None
    networks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], ...] = ()  # each must contain the IP

    @property
    def restricts_models(self) -> bool:
        return bool(self.models)

    @property
    def reads_model(self) -> bool:
        """Whether the request's model must be read even from a body the proxy would otherwise pass unread."""
        return bool(self.models or self.aliases)

    def resolve(self, model: str) -> str:
        """The model an alias stands for (the name itself when it is none)."""
        return self.aliases.get(model, model) if self.aliases else model

    def allows_model(self, model: str) -> bool:
        return all(rule.allows(model) for rule in self.models)

    def allows_endpoint(self, method: str, path: str) -> bool:
        return self.endpoints is None or method in self.endpoints.methods_for(path)

    def allows_origin(self, origin: str) -> bool:
        return self.origins is None or origin.rstrip("/") in self.origins

    def allows_ip(self, address: str | None) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False  # no address known (a Unix socket): nothing to match a range
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return all(any(ip in network for network in level) for level in self.networks)


UNRESTRICTED = RequestPolicy()


def _load(text) -> object:
    """A stored JSON column as the database returned it: text (SQLite, or PostgreSQL cast to text) or None."""
    if text is None:
        return None
    return json.loads(text) if isinstance(text, str | bytes) else text


@lru_cache(maxsize=4096)
def request_policy(
    project_models: str | None,
    aliases: str | None,
    endpoints: str | None,
    origins: str | None,
    project_ips: str | None,
    token_models: str | None,
    token_ips: str | None,
) -> RequestPolicy:
    """The compiled policy for the stored lists (as their JSON text), cached by that text."""
    if not any((project_models, aliases, endpoints, origins, project_ips, token_models, token_ips)):
        return UNRESTRICTED
    model_lists = [m for m in (_load(project_models), _load(token_models)) if m]
    ip_lists = [n for n in (_load(project_ips), _load(token_ips)) if n]
    endpoint_list = _load(endpoints)
    origin_list = _load(origins)
    return RequestPolicy(
        models=tuple(ModelRule.of(m) for m in model_lists),
        aliases=_load(aliases) or None,
        endpoints=AllowList.of(endpoint_list) if endpoint_list else None,
        origins=frozenset(origin_list) if origin_list else None,
        networks=tuple(tuple(ipaddress.ip_network(n) for n in level) for level in ip_lists),
    )
