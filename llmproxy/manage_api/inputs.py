"""What each endpoint accepts, declared once: views parse with these, and openapi.py documents them."""

from datetime import date

from django.conf import settings

from projects.limits import BUDGET_MAX, BUDGET_MIN, PER_MINUTE_MAX, BudgetPeriod
from projects.models import CacheMode
from projects.policy import MAX_ENTRIES, ORIGIN_MAX_LENGTH
from projects.policy import MODEL_MAX_LENGTH as POLICY_MODEL_MAX_LENGTH
from projects.services import CACHE_TTL_MAX
from projects.upstreams import INVALID_API_KEY, KEY_MAX_LENGTH, URL_MAX_LENGTH, UpstreamAuth
from proxy.prices import MAX_PRICE, MODEL_MAX_LENGTH, MODEL_PATTERN, MODEL_RULE, SOURCE_MAX_LENGTH
from proxy.selectors import USAGE_GROUPS, utc_today
from tokens.models import TokenStatus

from .errors import invalid
from .selectors import AUDIT_ACTIONS, AUDIT_OBJECT_TYPES
from .validation import (
    Body,
    Boolean,
    Choice,
    Date,
    DateTime,
    DecimalNumber,
    Integer,
    Query,
    String,
    StringList,
    StringMap,
    Uuid,
)

MAX_PAGE = 1_000_000
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def _max_hours() -> int:
    return settings.TOKEN_MAX_DURATION_HOURS


def _max_minutes() -> int:
    return settings.TOKEN_MAX_DURATION_HOURS * 60


def _max_days() -> int:
    return settings.TOKEN_MAX_DURATION_HOURS // 24


def _max_requests() -> int:
    return settings.TOKEN_MAX_REQUESTS


PAGING = {
    "page": Integer(description="Page number, from 1.", minimum=1, maximum=MAX_PAGE),
    "page_size": Integer(
        description=f"Items per page (default {DEFAULT_PAGE_SIZE}).", minimum=1, maximum=MAX_PAGE_SIZE
    ),
}

PROJECT_NAME = String(
    description="Unique (case-insensitively); surrounding spaces are trimmed.", max_length=200, not_blank=True
)
_KEY_TEXT = "[!-~]+"  # printable ASCII, no whitespace: every upstream's keys; OpenAI's own are checked further
API_KEY = String(
    description="The upstream's API key. For OpenAI itself (no upstream_url, or one on api.openai.com) a complete "
    "`sk-…` key; for any other upstream, printable characters without spaces. Stored encrypted; never returned, "
    "only a masked copy.",
    max_length=KEY_MAX_LENGTH,
    pattern=_KEY_TEXT,
    pattern_message=INVALID_API_KEY,
)
UPSTREAM = {
    "upstream_url": String(
        description="The upstream API's base URL (`https://api.anthropic.com/v1`, "
        "`https://my-resource.openai.azure.com/openai/v1`, `http://vllm.internal:8000/v1`); empty: the proxy's "
        "UPSTREAM_BASE_URL. https only, unless the host is in UPSTREAM_ALLOW_HTTP_HOSTS; link-local and cloud "
        "metadata addresses are refused, private ones unless in UPSTREAM_ALLOW_PRIVATE_NETWORKS.",
        max_length=URL_MAX_LENGTH,
    ),
    "upstream_auth": Choice(
        description="How the key is sent upstream: `bearer` (Authorization: Bearer; OpenAI and OpenAI-compatible "
        "servers), `api-key` (Azure OpenAI) or `x-api-key` (Anthropic). Default: what the URL implies (`api-key` "
        "on Azure's hosts, `x-api-key` on api.anthropic.com, else `bearer`).",
        choices=tuple(UpstreamAuth.values),
    ),
}


def _entry(max_length: int) -> String:
    return String(max_length=max_length, min_length=1)


def _list(description: str, max_length: int) -> StringList:
    return StringList(
        description=f"{description} Empty or null: no restriction.",
        item=_entry(max_length),
        max_items=MAX_ENTRIES,
        nullable=True,
    )


ALLOWED_MODELS = _list(
    "Models the tokens may use: exact names, or prefixes ending in a single `*` (`gpt-4o*`), applied after alias "
    "resolution; another model is refused (403 `model_not_allowed`), and GET /v1/models lists only these.",
    POLICY_MODEL_MAX_LENGTH,
)
ALLOWED_IPS = _list(
    "Client addresses or CIDR ranges, IPv4 and IPv6 (`10.0.0.0/8`, `2001:db8::/32`); others are refused (403 "
    "`ip_not_allowed`).",
    100,
)
PROJECT_POLICY = {
    "allowed_models": ALLOWED_MODELS,
    "model_aliases": StringMap(
        description='Other names for models, `{"fast": "gpt-4o-mini"}`: the request\'s model is rewritten before it '
        "is forwarded (on Azure, map to deployment names); usage, prices and budgets use the model sent. Empty or "
        "null: none.",
        item=_entry(POLICY_MODEL_MAX_LENGTH),
        max_items=MAX_ENTRIES,
        nullable=True,
    ),
    "allowed_endpoints": _list(
        "Endpoints the tokens may call, `METHOD /path` as in PROXY_ALLOWED_ENDPOINTS (`POST /embeddings`; `*` for "
        "one path segment), each within that list; others are refused (403 `endpoint_not_allowed`).",
        300,
    ),
    "allowed_origins": _list(
        "Browser origins the tokens may be used from (`https://app.example.com`); a request whose Origin is "
        "another is refused (403 `origin_not_allowed`). Requests without an Origin (servers) are not affected.",
        ORIGIN_MAX_LENGTH,
    ),
    "allowed_ips": ALLOWED_IPS,
}
TOKEN_POLICY = {
    "allowed_models": StringList(
        description=f"{ALLOWED_MODELS.description} Must lie within the project's (a wider list is refused).",
        item=ALLOWED_MODELS.item,
        max_items=MAX_ENTRIES,
        nullable=True,
    ),
    "allowed_ips": StringList(
        description=f"{ALLOWED_IPS.description} Must lie within the project's (a wider list is refused).",
        item=ALLOWED_IPS.item,
        max_items=MAX_ENTRIES,
        nullable=True,
    ),
}

PROJECT_LIST = Query(PAGING)

PROJECT_CACHE = {
    "cache_mode": Choice(
        description="The response cache: `off` (the default; nothing cached), `opt-in` (a request is answered from "
        "the cache when the client sends `Cache-Control: max-age=N`) or `on` (also embeddings and requests with "
        "`temperature` 0 or a `seed`, for cache_ttl_seconds). Answers are shared by the project's tokens, never "
        "with another project.",
        choices=tuple(CacheMode.values),
    ),
    "cache_ttl_seconds": Integer(
        description="How long an answer cached without the client's max-age is kept (mode `on`); default 3600.",
        minimum=1,
        maximum=CACHE_TTL_MAX,
    ),
}


def _per_minute(what: str) -> Integer:
    return Integer(
        description=f'{what} in a clock minute (UTC); null: no limit (0 is refused, not "unlimited").',
        minimum=1,
        maximum=PER_MINUTE_MAX,
        nullable=True,
    )


# From 0.01 to 10¹² written out: a whole part of 1 to 12 digits, or 0 and a fraction of at least a cent.
_BUDGET_TEXT = r"[1-9][0-9]{0,11}(?:\.[0-9]+)?|0\.(?:0[1-9]|[1-9])[0-9]*|1000000000000(?:\.0+)?"


def _budget(over: str) -> DecimalNumber:
    return DecimalNumber(
        description=f"Spend cap in US dollars {over}, from {BUDGET_MIN}, as a number or a decimal string (kept to 6 "
        "decimal places); null: no budget. Once reached, every request is refused (429 `budget_exceeded`).",
        minimum=BUDGET_MIN,
        maximum=BUDGET_MAX,
        pattern=_BUDGET_TEXT,
        nullable=True,
    )


PROJECT_LIMITS = {
    "requests_per_minute": _per_minute("Requests of all the project's tokens together"),
    "tokens_per_minute": _per_minute("Prompt + completion tokens of all the project's tokens together"),
    "budget_usd": _budget("per budget period"),
    "budget_period": Choice(
        description="Calendar periods in UTC the budget counts in (weeks start on Monday); default month.",
        choices=tuple(BudgetPeriod.values),
    ),
}
TOKEN_LIMITS = {
    "requests_per_minute": _per_minute("Requests of this token"),
    "tokens_per_minute": _per_minute("Prompt + completion tokens of this token"),
    "budget_usd": _budget("over the token's life"),
}

PROJECT_CREATE = Body(
    {"name": PROJECT_NAME, "api_key": API_KEY, **UPSTREAM, **PROJECT_LIMITS, **PROJECT_POLICY, **PROJECT_CACHE},
    required=("name", "api_key"),
)


def _check_revoke_tokens(data: dict) -> None:
    if data.get("revoke_tokens") and data.get("is_active") is not False:
        raise invalid("revoke_tokens", "revoke_tokens requires is_active=false", "requires_is_active_false")


PROJECT_UPDATE = Body(
    {
        "name": PROJECT_NAME,
        "api_key": String(
            description="A new upstream key; an empty string keeps the current one (which must then fit the "
            "upstream's key rule, if upstream_url changes).",
            max_length=KEY_MAX_LENGTH,
            pattern=f"(?:{_KEY_TEXT})?",
            pattern_message=INVALID_API_KEY,
        ),
        **UPSTREAM,
        "is_active": Boolean(description="false deactivates: the project's tokens stop working at the proxy."),
        "revoke_tokens": Boolean(
            description="With is_active=false: also revoke every token of the project (even if it was already "
            "inactive)."
        ),
        **PROJECT_LIMITS,
        **PROJECT_POLICY,
        **PROJECT_CACHE,
    },
    min_properties=1,
    rule_schema={
        "if": {"properties": {"revoke_tokens": {"const": True}}, "required": ["revoke_tokens"]},
        "then": {"properties": {"is_active": {"const": False}}, "required": ["is_active"]},
    },
    check=_check_revoke_tokens,
)

CACHE_PURGE = Body(
    {
        "project_id": Uuid(description="The project whose cached answers are removed."),
        "model": String(description="Only the answers of this model (as forwarded).", max_length=200, min_length=1),
        "path": String(
            description="Only the answers of this API path (`/chat/completions`, with or without `/v1`).",
            max_length=500,
            pattern="/.*",
            pattern_message="path must be an API path such as /chat/completions",
        ),
    },
    required=("project_id",),
)

TOKEN_LIST = Query(
    {
        "project_id": Uuid(description="Only tokens of this project."),
        "projectId": Uuid(description="The original tool's spelling of project_id."),
        "status": Choice(description="Only tokens with this status.", choices=tuple(TokenStatus.values)),
        "activeOnly": Boolean(
            description="The original tool's filter: true, only active tokens (as status=active); false, no filter."
        ),
        **PAGING,
    }
)

DURATIONS = ("duration_hours", "duration_minutes", "expires_in_days")


def _check_one_duration(data: dict) -> None:
    given = [name for name in DURATIONS if name in data]
    if len(given) != 1:
        code = "required" if not given else "exactly_one"
        raise invalid(
            "duration_hours", "give exactly one of duration_hours, duration_minutes and expires_in_days", code
        )


TOKEN_CREATE = Body(
    {
        "project_id": Uuid(),
        "duration_hours": Integer(description="Lifetime in hours.", minimum=1, maximum=_max_hours),
        "duration_minutes": Integer(description="Lifetime in minutes.", minimum=1, maximum=_max_minutes),
        "expires_in_days": Integer(
            description='Lifetime in days, as the original tool documented it; 0 (its "never expires") is the '
            "longest lifetime allowed here, TOKEN_MAX_DURATION_HOURS: tokens here always expire.",
            minimum=0,
            maximum=_max_days,
        ),
        "max_requests": Integer(
            description="Upstream requests allowed over the token's life; 0 or null means unlimited.",
            minimum=0,
            maximum=_max_requests,
            nullable=True,
        ),
        "label": String(description="Who or what holds the token.", max_length=200),
        **TOKEN_LIMITS,
        **TOKEN_POLICY,
    },
    required=("project_id",),
    rule_schema={"oneOf": [{"required": [name]} for name in DURATIONS]},
    check=_check_one_duration,
)

TOKEN_UPDATE = Body(
    {
        "max_requests": Integer(
            description="New request limit; 0 or null removes it.", minimum=0, maximum=_max_requests, nullable=True
        ),
        "is_active": Boolean(description="false revokes; true reactivates a revoked token that has not expired."),
        **TOKEN_LIMITS,
    },
    min_properties=1,
)

AUDIT_LIST = Query(
    {
        "action": Choice(description="Kind of change.", choices=tuple(AUDIT_ACTIONS)),
        "actor": String(description="Part of the actor's name or label.", max_length=200),
        "object_type": Choice(description="What was changed.", choices=tuple(AUDIT_OBJECT_TYPES)),
        "object_id": String(description="ID of the changed object.", max_length=100),
        "project_id": Uuid(description="Changes to this project, its tokens and its minting keys."),
        "token_id": Uuid(description="Changes to this token."),
        "start_time": DateTime(description="Not before this time (ISO 8601)."),
        "end_time": DateTime(description="Not after this time (ISO 8601)."),
        "from": DateTime(description="Same as start_time."),
        "to": DateTime(description="Same as end_time."),
        **PAGING,
    }
)

USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 366

USAGE_SUMMARY = Query(
    {
        "project_id": Uuid(description="Only this project's requests (a minting key: its own project, the default)."),
        "token_id": Uuid(description="Only this token's requests."),
        "from": Date(
            description=f"First day (UTC), included; default: the {USAGE_DEFAULT_DAYS} days ending with `to`."
        ),
        "to": Date(description="Last day (UTC), included; default: today."),
        "group_by": Choice(description="One row per day (the default), per token or per model.", choices=USAGE_GROUPS),
    }
)


def usage_period(query: dict) -> tuple[date, date]:
    """The first and last day a usage summary covers: at most `USAGE_MAX_DAYS` days, `from` not after `to`."""
    end = query.get("to") or utc_today()
    # (By ordinal, so a `to` in year 1 gives a shorter default period instead of an overflow.)
    start = query.get("from") or date.fromordinal(max(end.toordinal() - (USAGE_DEFAULT_DAYS - 1), 1))
    if start > end:
        raise invalid("from", "from must not be after to", "invalid_range")
    if (end - start).days >= USAGE_MAX_DAYS:
        raise invalid("to", f"the period from from to to must be at most {USAGE_MAX_DAYS} days", "range_too_long")
    return start, end


# The model of a price entry, as the path of /manage/prices/{model} names it (URL-encoded: `gpt-4o%2A`).
PRICE_MODEL = String(
    description=f"The entry's model: {MODEL_RULE}.",
    max_length=MODEL_MAX_LENGTH,
    pattern=MODEL_PATTERN,
    pattern_message=f"model must be {MODEL_RULE}",
)

PRICE_LIST = Query(
    {
        "model": String(
            description="Only the entry that prices this model: the one of its exact name, else the longest pattern "
            "it starts with (none if no entry matches).",
            max_length=MODEL_MAX_LENGTH,
        ),
        **PAGING,
    }
)


def _price(description: str, *, nullable: bool = False) -> DecimalNumber:
    return DecimalNumber(
        description=f"{description} US dollars per million tokens, as a number or a decimal string; stored rounded to "
        "6 decimal places.",
        maximum=MAX_PRICE,
        nullable=nullable,
    )


PRICE_SET = Body(
    {
        "input_per_million": _price("Input tokens:"),
        "cached_input_per_million": _price(
            "Cached input tokens (null or left out: priced as other input tokens):", nullable=True
        ),
        "output_per_million": _price("Output tokens:"),
        "source": String(
            description="Where the figures come from, and when (e.g. `openai.com/api/pricing, 2026-11-05`).",
            max_length=SOURCE_MAX_LENGTH,
        ),
    },
    required=("input_per_million", "output_per_million"),
)
