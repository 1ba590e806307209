"""The OpenAPI 3.1 document for /manage/, built from the same declarations the views parse with (see inputs.py)."""

from typing import Any

from django.conf import settings

from projects.limits import BudgetPeriod
from proxy.prices import DECIMAL_PLACES
from tokens.models import TokenStatus

from . import inputs
from .auth import DISABLED, MINTING_KEY_SCOPE
from .selectors import AUDIT_ACTIONS

_DATETIME = {"type": "string", "format": "date-time"}
_NULLABLE_DATETIME = {"type": ["string", "null"], "format": "date-time"}
_UUID = {"type": "string", "format": "uuid"}
_DATE = {"type": "string", "format": "date"}
_PRICE = {
    "type": "string",
    "pattern": "^[0-9]+(\\.[0-9]+)?$",
    "description": f"US dollars per million tokens, exact (at most {DECIMAL_PLACES} decimal places), as a decimal "
    "string: `2.5`, `0.075`, `10`.",
}
_DOLLARS = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
_USAGE_SUMS = {
    "requests": {"type": "integer", "minimum": 0},
    "errors": {"type": "integer", "minimum": 0, "description": "Requests answered with status 400 or more."},
    "prompt_tokens": {"type": "integer", "minimum": 0, "description": "Reported by the upstream (not cache hits')."},
    "completion_tokens": {"type": "integer", "minimum": 0},
    "total_tokens": {"type": "integer", "minimum": 0},
    "cost_usd": {
        **_DOLLARS,
        "description": "US dollars, exact, as a decimal string: the reported usage at each model's price at the time "
        "(requests of models without a price count nothing).",
    },
    "cache_hits": {"type": "integer", "minimum": 0, "description": "Requests answered from the response cache."},
    "saved_usd": {
        **_DOLLARS,
        "description": "What the cache hits would have cost at the models' prices, in US dollars (a decimal string).",
    },
}


def _limits(budget_over: str) -> dict[str, Any]:
    per_minute = {"type": ["integer", "null"], "minimum": 1}
    return {
        "requests_per_minute": {**per_minute, "description": "Requests admitted in a clock minute; null: no limit."},
        "tokens_per_minute": {**per_minute, "description": "Tokens reported in a clock minute; null: no limit."},
        "budget_usd": {
            "type": ["string", "null"],
            "pattern": "^[0-9]+(\\.[0-9]+)?$",
            "description": f"Spend cap in US dollars {budget_over}, as a decimal string; null: no budget.",
        },
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def _list(item: str, key: str) -> dict[str, Any]:
    return _object({key: {"type": "array", "items": _ref(item)}, "pagination": _ref("Pagination")})


def _listing(item: str, what: str) -> dict[str, Any]:
    """The answer of GET /manage/projects and /manage/tokens, in the form MANAGE_API_LIST_FORMAT names."""
    if settings.MANAGE_API_LIST_FORMAT == "array":
        return _json(
            {"type": "array", "items": _ref(item)},
            f"Every {what} (or only the page asked for with page or page_size), as a bare array: the Go LLM Proxy's "
            "form, chosen with MANAGE_API_LIST_FORMAT=array.",
        )
    return _json(_ref(f"{item}List"), f"A page of {what}s (MANAGE_API_LIST_FORMAT=paginated, the default).")


_SCHEMAS: dict[str, Any] = {
    "Error": {
        **_object(
            {
                "error": {"type": "string", "description": "A message for people."},
                "code": {"type": "string", "description": "A stable code for programs."},
                "field": {"type": "string", "description": "The request field at fault, for validation errors."},
            },
            optional=("field",),
        ),
        "example": {"error": "max_requests must be an integer", "code": "invalid_type", "field": "max_requests"},
    },
    "Pagination": _object(
        {
            "page": {"type": "integer", "minimum": 1},
            "page_size": {"type": "integer", "minimum": 1},
            "total_count": {"type": "integer", "minimum": 0},
            "total_pages": {"type": "integer", "minimum": 0},
            "has_next": {"type": "boolean"},
            "has_prev": {"type": "boolean"},
        }
    ),
    "Project": _object(
        {
            "id": _UUID,
            "name": {"type": "string"},
            "api_key": {"type": "string", "description": "Masked, e.g. `sk-proj-Ab…wxyz`; never the key itself."},
            "is_active": {"type": "boolean"},
            "deactivated_at": _NULLABLE_DATETIME,
            "created_at": _DATETIME,
            "updated_at": _DATETIME,
            "api_key_updated_at": _DATETIME,
            **{name: field.schema() for name, field in inputs.UPSTREAM.items()},
            **_limits("per budget period"),
            "budget_period": {"type": "string", "enum": list(BudgetPeriod.values)},
            "spent_usd": {**_DOLLARS, "description": "Spent in the current budget period, in US dollars."},
            "budget_resets_at": {
                **_NULLABLE_DATETIME,
                "description": "When the current budget period ends (UTC); null for a total budget.",
            },
            **{name: field.schema() for name, field in inputs.PROJECT_POLICY.items()},
            **{name: field.schema() for name, field in inputs.PROJECT_CACHE.items()},
            "tokens_revoked": {
                "type": "integer",
                "minimum": 0,
                "description": "Only in the answer to a PATCH with revoke_tokens=true: how many tokens it revoked.",
            },
        },
        optional=("tokens_revoked",),
    ),
    "ProjectList": _list("Project", "projects"),
    "Token": _object(
        {
            "id": _UUID,
            "token": {
                "type": "string",
                "description": "The display prefix and an ellipsis (`sk-wt-AbC123…`; `sk-AbC123…` or, where the "
                "original stored only its SHA-256, `sk-…` for a token imported from the Go LLM Proxy).",
            },
            "project_id": _UUID,
            "label": {"type": "string"},
            "status": {"type": "string", "enum": list(TokenStatus.values)},
            "is_active": {"type": "boolean", "description": "false once revoked (expiry does not change it)."},
            "expires_at": _DATETIME,
            "request_count": {"type": "integer", "minimum": 0},
            "max_requests": {"type": ["integer", "null"], "minimum": 1, "description": "null: unlimited."},
            "cache_hit_count": {
                "type": "integer",
                "minimum": 0,
                "description": "Requests answered from the project's response cache (they do not count in "
                "request_count); a token imported from the original tool starts from the count it brought.",
            },
            "created_at": _DATETIME,
            "last_used_at": _NULLABLE_DATETIME,
            "revoked_at": _NULLABLE_DATETIME,
            "imported": {
                "type": "boolean",
                "description": "Imported from the Go LLM Proxy (manage.py import_llm_proxy): it works as it did "
                "there; rotate it (generate a new token, revoke this one).",
            },
            **_limits("over the token's life"),
            "spent_usd": {**_DOLLARS, "description": "Spent over the token's life, in US dollars."},
            **{name: field.schema() for name, field in inputs.TOKEN_POLICY.items()},
        }
    ),
    "TokenList": _list("Token", "tokens"),
    "TokenCreated": _object(
        {
            "id": _UUID,
            "token": {
                "type": "string",
                "pattern": "^sk-wt-[A-Za-z0-9]{32}$",
                "description": "The token itself, shown this once; only its digest is stored.",
            },
            "expires_at": _DATETIME,
            "max_requests": {"type": ["integer", "null"], "minimum": 1},
            "project_id": _UUID,
            "label": {"type": "string"},
            **_limits("over the token's life"),
            **{name: field.schema() for name, field in inputs.TOKEN_POLICY.items()},
        }
    ),
    "ConnectionTest": _object(
        {
            "ok": {"type": "boolean", "description": "The upstream listed its models with the project's key."},
            "status": {"type": ["integer", "null"], "description": "The upstream's HTTP status; null if none."},
            "message": {"type": "string", "description": "What happened, in words (the upstream's error if any)."},
            "model_count": {"type": ["integer", "null"], "minimum": 0, "description": "Models listed, if ok."},
        }
    ),
    "RevokeCounts": _object(
        {
            "revoked_count": {"type": "integer", "minimum": 0},
            "already_revoked_count": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        }
    ),
    "CachePurged": _object(
        {"removed": {"type": "integer", "minimum": 0, "description": "Cached answers removed."}},
    ),
    "AuditEvent": _object(
        {
            "id": {"type": "integer"},
            "timestamp": _DATETIME,
            "action": {"type": "string", "enum": list(AUDIT_ACTIONS)},
            "object_type": {
                "type": "string",
                "description": "project, token, minting_key, model_price (or another model: `import` for an import "
                "from the Go LLM Proxy, and its events that name no project here).",
            },
            "object_id": {"type": "string"},
            "object_repr": {"type": "string"},
            "project_id": {"type": ["string", "null"], "description": "The project the change concerns."},
            "actor": {
                "type": ["string", "null"],
                "description": "A username, or a label: `management token`, `minting key ci (mk-AbC123…)`, "
                "`command line (alice)`.",
            },
            "via": {
                "type": ["string", "null"],
                "description": "admin, api, cli or system; import for the Go LLM Proxy's own events, imported.",
            },
            "client_ip": {"type": ["string", "null"]},
            "changes": {
                "type": ["object", "null"],
                "description": "Field name → [old, new]. Upstream keys are never recorded.",
            },
        }
    ),
    "AuditEventList": _list("AuditEvent", "events"),
    "UsageTotals": _object(_USAGE_SUMS),
    "UsageByDay": _object({"day": _DATE, **_USAGE_SUMS}),
    "UsageByToken": _object(
        {
            "token_id": {
                "type": ["string", "null"],
                "format": "uuid",
                "description": "null: requests that named no token of ours (refused credentials).",
            },
            "token_prefix": {"type": ["string", "null"], "description": "The token's display prefix."},
            "label": {"type": ["string", "null"]},
            **_USAGE_SUMS,
        }
    ),
    "UsageByModel": _object(
        {"model": {"type": "string", "description": "Empty for requests that named no model."}, **_USAGE_SUMS}
    ),
    "ModelPrice": _object(
        {
            "model": {"type": "string", "description": "A model name, or a prefix pattern ending in `*`."},
            "input_per_million": _PRICE,
            "cached_input_per_million": {
                **_PRICE,
                "type": ["string", "null"],
                "description": "null: cached input tokens are priced as other input tokens.",
            },
            "output_per_million": _PRICE,
            "source": {"type": "string", "description": "Where the figures come from, and when."},
            "updated_at": _DATETIME,
        }
    ),
    "ModelPriceList": _list("ModelPrice", "prices"),
    "UsageSummary": _object(
        {
            "from": _DATE,
            "to": _DATE,
            "group_by": {"type": "string", "enum": list(inputs.USAGE_SUMMARY.fields["group_by"].choices)},
            "rows": {
                "type": "array",
                "items": {"oneOf": [_ref("UsageByDay"), _ref("UsageByToken"), _ref("UsageByModel")]},
            },
            "totals": _ref("UsageTotals"),
        }
    ),
}

_ERRORS = {
    "400": "Invalid input: the error names the field and the rule.",
    "401": "Missing or wrong credential.",
    "403": f"Not allowed for this caller. For minting keys: {MINTING_KEY_SCOPE}.",
    "404": "No such object (also for a malformed ID, and for another project's token seen with a minting key).",
    "409": "Conflict with the current state.",
    "413": "Request body too large.",
    "500": "Unexpected error (a bug): the details are in the server log, never in the response.",
    "503": f"{DISABLED}; or (code `service_unavailable`, with Retry-After) the database cannot be reached.",
}


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    errors: tuple[str, ...],
    parameters: list | None = None,
    body: str | None = None,
    description: str = "",
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": dict(responses)}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    for status in ("401", *errors, "500", "503"):
        operation["responses"][status] = {"$ref": f"#/components/responses/E{status}"}
    return operation


def _path_id(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema or _UUID}


def build_document() -> dict[str, Any]:
    project_id = _path_id("project_id", "Project ID.")
    token_id = _path_id("token_id", "Token ID.")
    event_id = _path_id("event_id", "Audit event ID.", {"type": "integer", "minimum": 1})
    price_model = _path_id(
        "model",
        "The entry's model, URL-encoded (`gpt-4o%2A` for `gpt-4o*`).",
        inputs.PRICE_MODEL.schema(),
    )
    body_errors = ("400", "413")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM Proxy management API",
            "version": "1",
            "description": "Projects, tokens, the audit trail, usage and model prices, for scripts and for programs "
            "that mint their own tokens. Authenticate with `Authorization: Bearer <MANAGEMENT_TOKEN>` for everything, "
            "or with a project's minting key (`mk-…`) to create, list, read and revoke that project's tokens, read its "
            "usage and read the model prices only.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/manage/projects": {
                "get": _operation(
                    "List projects (by name)",
                    {"200": _listing("Project", "project")},
                    errors=("400", "403"),
                    parameters=inputs.PROJECT_LIST.parameters(),
                ),
                "post": _operation(
                    "Create a project",
                    {"201": _json(_ref("Project"), "Created.")},
                    errors=(*body_errors, "403", "409"),
                    body="ProjectCreate",
                ),
            },
            "/manage/projects/{project_id}": {
                "parameters": [project_id],
                "get": _operation(
                    "Read a project", {"200": _json(_ref("Project"), "The project.")}, errors=("403", "404")
                ),
                "patch": _operation(
                    "Rename, change the upstream key, activate or deactivate a project",
                    {"200": _json(_ref("Project"), "The updated project.")},
                    errors=(*body_errors, "403", "404", "409"),
                    body="ProjectUpdate",
                    description="Projects cannot be deleted (DELETE answers 405): deactivate them instead. With "
                    "`revoke_tokens: true` (only together with `is_active: false`) every token of the project is "
                    "revoked, also when the project was already inactive. All changes apply together or not at all.",
                ),
            },
            "/manage/projects/{project_id}/tokens/revoke": {
                "parameters": [project_id],
                "post": _operation(
                    "Revoke every token of a project",
                    {"200": _json(_ref("RevokeCounts"), "What was revoked.")},
                    errors=("403", "404"),
                    description="Allowed to a minting key for its own project.",
                ),
            },
            "/manage/projects/{project_id}/test-connection": {
                "parameters": [project_id],
                "post": _operation(
                    "Test a project's upstream",
                    {"200": _json(_ref("ConnectionTest"), "What the upstream answered.")},
                    errors=("403", "404"),
                    description="Asks the project's upstream for its model list with the project's key, and says "
                    "whether the URL, the auth style and the key work together (200 either way; `ok` says which). "
                    "Nothing is written; the key is never in the answer.",
                ),
            },
            "/manage/cache/purge": {
                "post": _operation(
                    "Purge a project's response cache",
                    {"200": _json(_ref("CachePurged"), "How many answers were removed.")},
                    errors=("400", "403", "404"),
                    body="CachePurge",
                    description="Removes the project's cached answers (only a model's or a path's, when given); "
                    "the requests after it go upstream. Audited on the project. Allowed to a minting key for its "
                    "own project. 503 when the cache's Redis cannot be reached.",
                ),
            },
            "/manage/tokens": {
                "get": _operation(
                    "List tokens (newest first)",
                    {"200": _listing("Token", "token")},
                    errors=("400", "403"),
                    parameters=inputs.TOKEN_LIST.parameters(),
                    description="With a minting key, only its project's tokens (a filter naming another project "
                    "is refused with 403).",
                ),
                "post": _operation(
                    "Generate a token",
                    {"201": _json(_ref("TokenCreated"), "The token, shown this once.")},
                    errors=(*body_errors, "403", "404"),
                    body="TokenCreate",
                    description="403 `project_inactive` for an inactive project; 403 `forbidden` for a minting key "
                    "naming another project.",
                ),
            },
            "/manage/tokens/{token_id}": {
                "parameters": [token_id],
                "get": _operation("Read a token", {"200": _json(_ref("Token"), "The token.")}, errors=("404",)),
                "patch": _operation(
                    "Change a token's request limit, revoke or reactivate it",
                    {"200": _json(_ref("Token"), "The updated token.")},
                    errors=(*body_errors, "403", "404", "409"),
                    body="TokenUpdate",
                    description="409 `token_expired` when reactivating a token that has expired. Not for minting keys.",
                ),
                "delete": _operation(
                    "Revoke a token (idempotent)",
                    {"204": {"description": "Revoked (or already revoked)."}},
                    errors=("404",),
                ),
            },
            "/manage/audit": {
                "get": _operation(
                    "List audit events (newest first)",
                    {"200": _json(_ref("AuditEventList"), "A page of audit events.")},
                    errors=("400", "403"),
                    parameters=inputs.AUDIT_LIST.parameters(),
                ),
            },
            "/manage/audit/{event_id}": {
                "parameters": [event_id],
                "get": _operation(
                    "Read an audit event", {"200": _json(_ref("AuditEvent"), "The event.")}, errors=("403", "404")
                ),
            },
            "/manage/usage": {
                "get": _operation(
                    "Usage summary: requests, errors and token sums per day, token or model",
                    {"200": _json(_ref("UsageSummary"), "The sums over the period, and their totals.")},
                    errors=("400", "403"),
                    parameters=inputs.USAGE_SUMMARY.parameters(),
                    description="Days are UTC dates, `from` and `to` both included (at most "
                    f"{inputs.USAGE_MAX_DAYS} days; 400 `range_too_long` beyond, 400 `invalid_range` when `from` is "
                    "after `to`). By day, every day of the period is a row (zeros included), oldest first; by token "
                    "or model, those with requests, most first. Read from the per-day sums, which the retention "
                    "purge keeps, so older periods stay right. A minting key sees its own project only (the "
                    "default; another project_id is 403).",
                ),
            },
            "/manage/prices": {
                "get": _operation(
                    "List model prices (by model)",
                    {"200": _json(_ref("ModelPriceList"), "A page of price entries.")},
                    errors=("400",),
                    parameters=inputs.PRICE_LIST.parameters(),
                    description="Any credential, minting keys too. A request's model is priced by the entry of "
                    "exactly that name, else by the longest pattern (`gpt-4o*`) it starts with; `model=…` answers "
                    "just that entry (no entry if none matches). Every worker uses a change within "
                    "PRICE_CACHE_SECONDS.",
                ),
            },
            "/manage/prices/{model}": {
                "parameters": [price_model],
                "get": _operation(
                    "Read the entry of exactly this model or pattern",
                    {"200": _json(_ref("ModelPrice"), "The entry.")},
                    errors=("404",),
                ),
                "put": _operation(
                    "Set the prices of a model or pattern",
                    {
                        "200": _json(_ref("ModelPrice"), "Updated (or already so)."),
                        "201": _json(_ref("ModelPrice"), "Created."),
                    },
                    errors=(*body_errors, "403"),
                    body="PriceSet",
                    description="Creates the entry or replaces its prices and source (a field left out is "
                    "null or empty). Management token only.",
                ),
                "delete": _operation(
                    "Delete the entry of exactly this model or pattern",
                    {"204": {"description": "Deleted."}},
                    errors=("403", "404"),
                    description="Management token only.",
                ),
            },
            "/manage/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The MANAGEMENT_TOKEN setting, or a project's minting key (`mk-…`).",
                }
            },
            "schemas": {
                **_SCHEMAS,
                "ProjectCreate": inputs.PROJECT_CREATE.schema(),
                "ProjectUpdate": inputs.PROJECT_UPDATE.schema(),
                "TokenCreate": inputs.TOKEN_CREATE.schema(),
                "CachePurge": inputs.CACHE_PURGE.schema(),
                "TokenUpdate": inputs.TOKEN_UPDATE.schema(),
                "PriceSet": inputs.PRICE_SET.schema(),
            },
            "responses": {
                f"E{status}": {
                    **_json(_ref("Error"), description),
                    **({"headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}} if status == "401" else {}),
                }
                for status, description in _ERRORS.items()
            },
        },
    }
