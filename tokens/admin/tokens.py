"""The operator's token screens: generate (the secret shown once), list, details, revoke, change the limit.

Thin by design: forms parse, `tokens.services` decide and audit (with the operator as actor), templates present.
Tokens are never edited field by field and never deleted.
"""

from datetime import timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from django.utils.safestring import SafeString

from llmproxy.admin_toolkit import (
    DetailPageMixin,
    NeverDeletedMixin,
    add_service_error,
    compact_time,
    csv_response,
    truncated,
)
from llmproxy.audit import Actor
from llmproxy.audit.history import AuditHistoryMixin
from llmproxy.errors import ServiceError
from projects.limits import usd

from ..forms import LIMITS, TokenGenerateForm, TokenLimitsForm
from ..models import Token, TokenStatus
from ..selectors import BLOCKED_STATUS, token_search_filter, tokens_for_list, tokens_with_display_status
from ..services import token_generate, token_revoke, token_set_limits, tokens_revoke

# Badge classes come from templates/admin/base_site.html, shared with the project screens.
BADGE_CLASSES = {
    TokenStatus.ACTIVE: "badge-success",
    TokenStatus.EXPIRED: "badge-muted",
    TokenStatus.REVOKED: "badge-danger",
    TokenStatus.LIMIT_REACHED: "badge-warning",
    BLOCKED_STATUS: "badge-warning",
}
BLOCKED_LABEL = "Active (project inactive)"
NOT_REVOKED_HELP = "Revoked tokens stop working at once, for good; this cannot be undone."
ROTATE = "Imported from the Go LLM Proxy, with the secret made there: rotate it (a new token, then revoke this one)."


def status_label(token: Token) -> tuple[str, str]:
    """(key, label) of a token's status as the operator sees it: an active token of an inactive project is blocked."""
    if token.blocked_by_project:
        return BLOCKED_STATUS, BLOCKED_LABEL
    status = token.status
    return status.value, status.label


def status_badge(token: Token) -> SafeString:
    key, label = status_label(token)
    badge = format_html('<span class="badge {} token-status-{}">{}</span>', BADGE_CLASSES[key], key, label)
    if token.imported:
        imported = '<span class="badge badge-muted token-imported" title="{}">Imported</span>'
        return format_html("{} " + imported, badge, ROTATE)
    return badge


def requests_display(token: Token) -> str:
    return f"{token.request_count} / {token.max_requests if token.max_requests is not None else '∞'}"


class TokenStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [*TokenStatus.choices, (BLOCKED_STATUS, BLOCKED_LABEL)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Token]) -> QuerySet[Token]:
        if self.value() in {*TokenStatus.values, BLOCKED_STATUS}:
            return tokens_with_display_status(queryset, self.value())
        return queryset


CSV_COLUMNS = [
    "id",
    "prefix",
    "project",
    "label",
    "status",
    "created_at",
    "expires_at",
    "request_count",
    "max_requests",
    "spent_usd",
    "last_used_at",
    "revoked_at",
]


@admin.register(Token)
class TokenAdmin(NeverDeletedMixin, DetailPageMixin, AuditHistoryMixin, admin.ModelAdmin):
    # What an operator scans first (status, use, spend) near the left; the creation time is on the token's page.
    list_display = (
        "short_id",
        "status",
        "requests",
        "spend",
        "project_link",
        "label_cell",
        "expires",
        "last_used",
        "row_actions",
    )
    list_display_links = ("short_id",)
    list_filter = ("project", TokenStatusFilter)
    sortable_by = ("expires", "requests", "spend")
    # The box is shown because search_fields is set; what it matches is decided by token_search_filter.
    search_fields = ("id",)
    search_help_text = "Search by ID (whole or first characters), display prefix (sk-wt-…), a whole token, or label."
    actions = ("export_csv", "revoke_selected")
    list_per_page = 50
    view_on_site = False
    detail_template = "admin/tokens/token/detail.html"
    not_deletable_message = "Tokens are never deleted; revoke them instead."

    # --- list ------------------------------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Token]:
        return tokens_for_list()

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Tokens", **(extra_context or {})})

    def get_list_display(self, request: HttpRequest) -> tuple[str, ...]:
        if self.has_change_permission(request):
            return self.list_display
        return tuple(name for name in self.list_display if name != "row_actions")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Token], search_term: str
    ) -> tuple[QuerySet[Token], bool]:
        condition = token_search_filter(search_term)
        return (queryset if condition is None else queryset.filter(condition)), False

    @admin.display(description="ID")
    def short_id(self, obj: Token) -> SafeString:
        return format_html('<code title="{}">{}</code>', obj.pk, str(obj.pk)[:8])

    @admin.display(description="Project")
    def project_link(self, obj: Token) -> SafeString:
        url = reverse("admin:projects_project_change", args=[obj.project_id])
        return format_html('<a href="{}">{}</a>', url, truncated(obj.project.name))

    @admin.display(description="Label", empty_value="")
    def label_cell(self, obj: Token) -> SafeString | str:
        return truncated(obj.label, "narrow") if obj.label else ""

    @admin.display(description="Status")
    def status(self, obj: Token) -> SafeString:
        return status_badge(obj)

    @admin.display(description="Expires", ordering="expires_at")
    def expires(self, obj: Token) -> SafeString:
        return compact_time(obj.expires_at)

    @admin.display(description="Requests", ordering="request_count")
    def requests(self, obj: Token) -> str:
        return requests_display(obj)

    @admin.display(description="Spend", ordering="spent_usd")
    def spend(self, obj: Token) -> str:
        return usd(obj.spent_usd) if obj.budget_usd is None else f"{usd(obj.spent_usd)} / {usd(obj.budget_usd)}"

    @admin.display(description="Last used")
    def last_used(self, obj: Token) -> SafeString | str:
        return compact_time(obj.last_used_at, empty="Never")

    @admin.display(description="Actions")
    def row_actions(self, obj: Token) -> SafeString:
        links = [format_html('<a href="{}">Limits</a>', reverse("admin:tokens_token_limit", args=[obj.pk]))]
        if obj.revoked_at is None:
            links.append(format_html('<a href="{}">Revoke</a>', reverse("admin:tokens_token_revoke", args=[obj.pk])))
        return format_html(" · ".join(["{}"] * len(links)), *links)

    # --- bulk actions ----------------------------------------------------------------------------------------

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Token]) -> HttpResponse:
        rows = (
            [
                token.pk,
                token.prefix,
                token.project.name,
                token.label,
                status_label(token)[1],
                token.created_at,
                token.expires_at,
                token.request_count,
                token.max_requests,
                token.spent_usd,
                token.last_used_at,
                token.revoked_at,
            ]
            for token in queryset.select_related("project").order_by("-created_at")
        )
        return csv_response(request, "tokens.csv", CSV_COLUMNS, [rows])

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Token]) -> TemplateResponse | None:
        if request.POST.get("post") == "yes":
            count = tokens_revoke(tokens=queryset, actor=Actor.from_request(request)).revoked
            self.message_user(request, f"Revoked {count} token{'' if count == 1 else 's'}.", messages.SUCCESS)
            return None
        tokens = list(queryset.select_related("project"))
        context = self.page_context(
            request,
            "Revoke tokens: are you sure?",
            tokens=tokens,
            to_revoke=[t for t in tokens if t.revoked_at is None],
            already_revoked=[t for t in tokens if t.revoked_at is not None],
            action_checkbox_name=admin.helpers.ACTION_CHECKBOX_NAME,
            warning=NOT_REVOKED_HELP,
        )
        return TemplateResponse(request, "admin/tokens/token/revoke_selected_confirmation.html", context)

    # --- views -----------------------------------------------------------------------------------------------

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/revoke/", wrap(self.revoke_view), name="tokens_token_revoke"),
            path("<path:object_id>/limit/", wrap(self.limit_view), name="tokens_token_limit"),
            *super().get_urls(),
        ]

    def _detail_url(self, token: Token) -> str:
        return reverse("admin:tokens_token_change", args=[token.pk])

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        """Generate a token. Success answers directly with the show-once page: no redirect, session or message."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = TokenGenerateForm(request.POST)
            if form.is_valid():
                try:
                    issued = token_generate(
                        project=form.cleaned_data["project"],
                        duration=timedelta(hours=form.cleaned_data["duration_hours"]),
                        label=form.cleaned_data["label"],
                        actor=Actor.from_request(request),
                        **form.limits(),
                        **form.policy(),
                    )
                except ServiceError as error:
                    add_service_error(form, error, {"duration": "duration_hours"})
                else:
                    context = self.page_context(
                        request,
                        "Token generated",
                        token=issued.token,
                        plaintext=issued.plaintext,
                        proxy_base_url=request.build_absolute_uri("/v1"),
                    )
                    response = TemplateResponse(request, "admin/tokens/token/show_once.html", context)
                    add_never_cache_headers(response)  # Cache-Control: no-store, …: the secret is in this page
                    return response
        else:
            form = TokenGenerateForm(initial={"project": request.GET.get("project")})
        return TemplateResponse(
            request, "admin/tokens/token/generate.html", self.page_context(request, "Generate token", form=form)
        )

    def detail_context(self, request: HttpRequest, token: Token) -> tuple[str, dict]:
        """The token's details: read-only (only the limit can change, and a token can be revoked)."""
        return f"Token {token.prefix}…", {
            "token": token,
            "status_badge": status_badge(token),
            "has_change_permission": self.has_change_permission(request, token),
        }

    def revoke_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        token = self.get_object_or_404(request, object_id, change=True)
        if request.method == "POST":
            if token_revoke(token=token, actor=Actor.from_request(request)):
                self.message_user(request, f"Token {token} revoked. It stops working immediately.", messages.SUCCESS)
            else:
                self.message_user(request, f"Token {token} was already revoked; nothing changed.", messages.WARNING)
            return HttpResponseRedirect(self._detail_url(token))
        if token.revoked_at is not None:
            self.message_user(request, f"Token {token} is already revoked.", messages.WARNING)
            return HttpResponseRedirect(self._detail_url(token))
        context = self.page_context(request, "Revoke token: are you sure?", token=token, warning=NOT_REVOKED_HELP)
        return TemplateResponse(request, "admin/tokens/token/revoke_confirmation.html", context)

    def limit_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The token's own limits: request limit, per-minute limits and budget."""
        token = self.get_object_or_404(request, object_id, change=True)
        if request.method == "POST":
            form = TokenLimitsForm(request.POST)
            if form.is_valid():
                try:
                    token = token_set_limits(token=token, actor=Actor.from_request(request), **form.limits())
                except ServiceError as error:
                    add_service_error(form, error)
                else:
                    limit = "removed (unlimited)" if token.max_requests is None else f"set to {token.max_requests}"
                    self.message_user(request, f"Limits of {token} saved; request limit {limit}.", messages.SUCCESS)
                    return HttpResponseRedirect(self._detail_url(token))
        else:
            form = TokenLimitsForm(initial={name: getattr(token, name) for name in LIMITS})
        context = self.page_context(request, f"Change limits of {token.prefix}…", token=token, form=form)
        return TemplateResponse(request, "admin/tokens/token/limit.html", context)
