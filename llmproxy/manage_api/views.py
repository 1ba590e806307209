"""The management API's views: authenticate, parse, call a service, present JSON. No rule lives here."""

import logging
import re
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from llmproxy.errors import ServiceError
from projects.models import Project
from projects.selectors import project_get, projects_by_name
from projects.services import (
    project_create,
    project_set_cache,
    project_set_limits,
    project_set_policy,
    project_update,
)
from proxy.models import ModelPrice
from proxy.prices import model_price_for, model_prices
from proxy.probe import project_upstream_test
from proxy.selectors import DOLLARS, usage_summary
from proxy.services import cache_purge, price_delete, price_set
from tokens.models import Token, TokenStatus
from tokens.selectors import token_get, tokens_newest_first
from tokens.services import (
    project_set_active,
    project_tokens_revoke,
    token_generate,
    token_reactivate,
    token_revoke,
    token_set_limits,
)

from . import inputs, selectors
from .auth import Caller, authenticate
from .errors import ApiError, from_service_error, not_found
from .openapi import build_document
from .serializers import audit_event_json, decimal_text, issued_token_json, price_json, project_json, token_json
from .validation import MAX_BODY_BYTES, UUID_RE

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = ApiError(
    503,
    "the database is unavailable; try again shortly",
    "service_unavailable",
    headers={"Retry-After": "5"},
)


def _uuid_or_404(value: str, what: str) -> uuid.UUID:
    if not UUID_RE.fullmatch(value):
        raise not_found(what)
    return uuid.UUID(value)


def _body(request: HttpRequest) -> bytes:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    too_large = ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
    if declared > MAX_BODY_BYTES:
        raise too_large
    try:
        return request.body
    except RequestDataTooBig:
        raise too_large from None


def _page(query: dict) -> dict:
    return {"page": query.get("page", 1), "page_size": query.get("page_size", inputs.DEFAULT_PAGE_SIZE)}


def _list(key: str, items: QuerySet, present: Callable, query: dict) -> JsonResponse:
    """A list answer in the form MANAGE_API_LIST_FORMAT names: a page and its pagination, or (the original tool's
    form) a bare array of every item, or of the page asked for with `page` or `page_size`."""
    if settings.MANAGE_API_LIST_FORMAT == "array":
        if {"page", "page_size"} & query.keys():
            paging = _page(query)
            start = (paging["page"] - 1) * paging["page_size"]
            items = items[start : start + paging["page_size"]]
        return JsonResponse([present(item) for item in items], safe=False)
    page = selectors.paginate(items, **_page(query))
    return JsonResponse({key: [present(item) for item in page.items], "pagination": page.pagination()})


class ApiView(View):
    """JSON in, JSON out: authentication first, then the method, then the handler; every error is JSON."""

    methods: tuple[str, ...] = ()
    public = False
    not_allowed_messages: dict[str, str] = {}

    @classmethod
    def as_view(cls, **initkwargs):
        """Exempt from CSRF (callers authenticate with a bearer token, never a cookie), here rather than on
        `dispatch`, where a subclass overriding `dispatch` would lose it and answer Django's HTML 403."""
        return csrf_exempt(super().as_view(**initkwargs))

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            caller = None if self.public else authenticate(request)
            if request.method not in self.methods:
                raise ApiError(
                    405,
                    self.not_allowed_messages.get(request.method, "method not allowed"),
                    "method_not_allowed",
                    headers={"Allow": ", ".join(self.methods)},
                )
            return getattr(self, request.method.lower())(request, caller, **kwargs)
        except ApiError as e:
            return e.response()
        except ServiceError as e:
            return from_service_error(e).response()
        except (OperationalError, InterfaceError):
            logger.warning("management API: database unavailable on %s %s", request.method, request.path)
            return DATABASE_UNAVAILABLE.response()
        except Exception:
            # Still JSON for the client; the traceback goes to the log, never into the response.
            logger.exception("management API: unexpected error on %s %s", request.method, request.path)
            return ApiError(500, "internal error", "internal_error").response()


def _project_or_404(project_id: uuid.UUID) -> Project:
    project = project_get(project_id)
    if project is None:
        raise not_found("project")
    return project


class ProjectsView(ApiView):
    methods = ("GET", "POST")

    def get(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        caller.require_management_token()
        return _list("projects", projects_by_name(), project_json, inputs.PROJECT_LIST.parse(request.GET))

    def post(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        caller.require_management_token()
        data = inputs.PROJECT_CREATE.parse(_body(request))
        fields = (*inputs.UPSTREAM, *inputs.PROJECT_LIMITS, *inputs.PROJECT_POLICY, *inputs.PROJECT_CACHE)
        options = {name: data[name] for name in fields if name in data}
        project = project_create(name=data["name"], api_key=data["api_key"], actor=caller.actor, **options)
        return JsonResponse(project_json(project), status=201)


class ProjectDetailView(ApiView):
    methods = ("GET", "PATCH")
    not_allowed_messages = {"DELETE": "project deletion is not permitted"}  # kept for the audit trail

    def _project(self, caller: Caller, project_id: str) -> Project:
        caller.require_management_token()
        return _project_or_404(_uuid_or_404(project_id, "project"))

    def get(self, request: HttpRequest, caller: Caller, project_id: str) -> JsonResponse:
        return JsonResponse(project_json(self._project(caller, project_id)))

    def patch(self, request: HttpRequest, caller: Caller, project_id: str) -> JsonResponse:
        project = self._project(caller, project_id)
        data = inputs.PROJECT_UPDATE.parse(_body(request))
        revoked = None
        with transaction.atomic():
            if {"name", "api_key", *inputs.UPSTREAM} & data.keys():
                project = project_update(
                    project=project,
                    name=data.get("name"),
                    api_key=data.get("api_key"),
                    upstream_url=data.get("upstream_url"),
                    upstream_auth=data.get("upstream_auth"),
                    actor=caller.actor,
                )
            if limits := {name: data[name] for name in inputs.PROJECT_LIMITS if name in data}:
                project = project_set_limits(project=project, actor=caller.actor, **limits)
            if policy := {name: data[name] for name in inputs.PROJECT_POLICY if name in data}:
                project = project_set_policy(project=project, actor=caller.actor, **policy)
            if caching := {name: data[name] for name in inputs.PROJECT_CACHE if name in data}:
                project = project_set_cache(project=project, actor=caller.actor, **caching)
            if "is_active" in data:
                done = project_set_active(
                    project=project,
                    active=data["is_active"],
                    revoke_tokens=data.get("revoke_tokens", False),
                    actor=caller.actor,
                )
                project, revoked = done.project, done.revoked
        body = project_json(project)
        if revoked is not None:
            body["tokens_revoked"] = revoked.revoked
        return JsonResponse(body)


class ProjectTokensRevokeView(ApiView):
    methods = ("POST",)

    def post(self, request: HttpRequest, caller: Caller, project_id: str) -> JsonResponse:
        project_uuid = _uuid_or_404(project_id, "project")
        caller.require_project(project_uuid)
        report = project_tokens_revoke(project=_project_or_404(project_uuid), actor=caller.actor)
        return JsonResponse(
            {
                "revoked_count": report.revoked,
                "already_revoked_count": report.already_revoked,
                "total_tokens": report.total,
            }
        )


class ProjectTestConnectionView(ApiView):
    methods = ("POST",)

    def post(self, request: HttpRequest, caller: Caller, project_id: str) -> JsonResponse:
        caller.require_management_token()
        result = project_upstream_test(project=_project_or_404(_uuid_or_404(project_id, "project")))
        return JsonResponse(
            {"ok": result.ok, "status": result.status, "message": result.message, "model_count": result.model_count}
        )


class CachePurgeView(ApiView):
    methods = ("POST",)

    def post(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        data = inputs.CACHE_PURGE.parse(_body(request))
        caller.require_project(data["project_id"])
        project = _project_or_404(data["project_id"])
        removed = cache_purge(project=project, actor=caller.actor, model=data.get("model"), path=data.get("path"))
        return JsonResponse({"removed": removed})


TOKEN_LIMITS = ("max_requests", *inputs.TOKEN_LIMITS)
TOKEN_OPTIONS = (*TOKEN_LIMITS, *inputs.TOKEN_POLICY)  # a token's policy is set when it is generated


class TokensView(ApiView):
    methods = ("GET", "POST")

    def get(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        query = inputs.TOKEN_LIST.parse(request.GET)
        project_ids = [query[name] for name in ("project_id", "projectId") if name in query]
        for project_id in project_ids:
            caller.require_project(project_id)
        if caller.project_id is not None:
            project_ids.append(caller.project_id)
        statuses = [query["status"]] if "status" in query else []
        if query.get("activeOnly"):
            statuses.append(TokenStatus.ACTIVE)
        tokens = tokens_newest_first(project_ids=project_ids, statuses=statuses)
        return _list("tokens", tokens, token_json, query)

    def post(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        data = inputs.TOKEN_CREATE.parse(_body(request))
        caller.require_project(data["project_id"])
        project = _project_or_404(data["project_id"])
        if "duration_hours" in data:
            duration_field, duration = "duration_hours", timedelta(hours=data["duration_hours"])
        elif "duration_minutes" in data:
            duration_field, duration = "duration_minutes", timedelta(minutes=data["duration_minutes"])
        else:  # the original tool's; its 0, "never", is the longest lifetime allowed
            days = data["expires_in_days"]
            duration_field = "expires_in_days"
            duration = timedelta(days=days) if days else timedelta(hours=settings.TOKEN_MAX_DURATION_HOURS)
        try:
            issued = token_generate(
                project=project,
                duration=duration,
                label=data.get("label", ""),
                actor=caller.actor,
                # A program with a minting key hands out no more than its project has.
                within_project_limits=caller.minting_key is not None,
                **{name: data[name] for name in TOKEN_OPTIONS if name in data},
            )
        except ServiceError as e:
            raise from_service_error(e, {"duration": duration_field}) from None
        return JsonResponse(issued_token_json(issued), status=201)


class TokenDetailView(ApiView):
    methods = ("GET", "PATCH", "DELETE")

    def _token(self, caller: Caller, token_id: str) -> Token:
        # A minting key sees another project's token exactly as a missing one: 404, so existence does not leak.
        token = token_get(_uuid_or_404(token_id, "token"), project_id=caller.project_id)
        if token is None:
            raise not_found("token")
        return token

    def get(self, request: HttpRequest, caller: Caller, token_id: str) -> JsonResponse:
        return JsonResponse(token_json(self._token(caller, token_id)))

    def patch(self, request: HttpRequest, caller: Caller, token_id: str) -> JsonResponse:
        caller.require_management_token()
        token = self._token(caller, token_id)
        data = inputs.TOKEN_UPDATE.parse(_body(request))
        with transaction.atomic():
            if limits := {name: data[name] for name in TOKEN_LIMITS if name in data}:
                token = token_set_limits(token=token, actor=caller.actor, **limits)
            if data.get("is_active") is True:
                token = token_reactivate(token=token, actor=caller.actor)
            elif data.get("is_active") is False:
                token_revoke(token=token, actor=caller.actor)
                token.refresh_from_db()
        return JsonResponse(token_json(token))

    def delete(self, request: HttpRequest, caller: Caller, token_id: str) -> HttpResponse:
        token_revoke(token=self._token(caller, token_id), actor=caller.actor)
        return HttpResponse(status=204)


class AuditView(ApiView):
    methods = ("GET",)

    def get(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        caller.require_management_token()
        query = inputs.AUDIT_LIST.parse(request.GET)
        entries = selectors.audit_events(
            action=query.get("action"),
            actor=query.get("actor"),
            object_type=query.get("object_type"),
            object_id=query.get("object_id"),
            project_id=query.get("project_id"),
            token_id=query.get("token_id"),
            start=query.get("start_time", query.get("from")),
            end=query.get("end_time", query.get("to")),
        )
        page = selectors.paginate(entries, **_page(query))
        projects = selectors.audit_project_ids(page.items)
        return JsonResponse(
            {
                "events": [audit_event_json(e, projects.get(e.pk)) for e in page.items],
                "pagination": page.pagination(),
            }
        )


class AuditDetailView(ApiView):
    methods = ("GET",)

    def get(self, request: HttpRequest, caller: Caller, event_id: str) -> JsonResponse:
        caller.require_management_token()
        entry = selectors.audit_event_get(int(event_id)) if re.fullmatch(r"[0-9]{1,18}", event_id) else None
        if entry is None:
            raise not_found("audit event")
        return JsonResponse(audit_event_json(entry, selectors.audit_project_ids([entry]).get(entry.pk)))


class UsageView(ApiView):
    methods = ("GET",)

    def get(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        query = inputs.USAGE_SUMMARY.parse(request.GET)
        if "project_id" in query:
            caller.require_project(query["project_id"])
        start, end = inputs.usage_period(query)
        group_by = query.get("group_by", "day")
        summary = usage_summary(
            start=start,
            end=end,
            group_by=group_by,
            project=query.get("project_id", caller.project_id),
            token=query.get("token_id"),
        )
        rows = [{**row, **{name: decimal_text(row[name]) for name in DOLLARS}} for row in summary.rows]
        totals = {**summary.totals, **{name: decimal_text(summary.totals[name]) for name in DOLLARS}}
        return JsonResponse({"from": start, "to": end, "group_by": group_by, "rows": rows, "totals": totals})


class PricesView(ApiView):
    """The model price table: any credential may read it (a program may want to know what its requests cost)."""

    methods = ("GET",)

    def get(self, request: HttpRequest, caller: Caller) -> JsonResponse:
        query = inputs.PRICE_LIST.parse(request.GET)
        if "model" in query:
            found = model_price_for(query["model"])
            prices = model_prices().filter(pk=found.pk) if found else model_prices().none()
        else:
            prices = model_prices()
        page = selectors.paginate(prices, **_page(query))
        return JsonResponse({"prices": [price_json(p) for p in page.items], "pagination": page.pagination()})


class PriceDetailView(ApiView):
    """One entry, by its model (a name or a pattern, URL-encoded in the path: `gpt-4o%2A`)."""

    methods = ("GET", "PUT", "DELETE")

    def _entry(self, model: str) -> ModelPrice:
        price = model_prices().filter(model=model).first()
        if price is None:
            raise not_found("price")
        return price

    def get(self, request: HttpRequest, caller: Caller, model: str) -> JsonResponse:
        return JsonResponse(price_json(self._entry(model)))

    def put(self, request: HttpRequest, caller: Caller, model: str) -> JsonResponse:
        caller.require_management_token()
        model = inputs.PRICE_MODEL.parse("model", model)
        data = inputs.PRICE_SET.parse(_body(request))
        saved = price_set(
            model=model,
            input_per_million=data["input_per_million"],
            cached_input_per_million=data.get("cached_input_per_million"),
            output_per_million=data["output_per_million"],
            source=data.get("source", ""),
            actor=caller.actor,
        )
        return JsonResponse(price_json(saved.price), status=201 if saved.created else 200)

    def delete(self, request: HttpRequest, caller: Caller, model: str) -> HttpResponse:
        caller.require_management_token()
        if not price_delete(model=model, actor=caller.actor):
            raise not_found("price")
        return HttpResponse(status=204)


class OpenApiView(ApiView):
    """The OpenAPI document: public, like any API reference; it holds no secrets."""

    methods = ("GET",)
    public = True

    def get(self, request: HttpRequest, caller: None) -> JsonResponse:
        return JsonResponse(build_document())


class NotFoundView(ApiView):
    """Any other path under /manage/: a JSON 404, not Django's HTML page."""

    public = True

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return ApiError(404, "not found", "not_found").response()
