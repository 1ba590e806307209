"""The security-event list: read-only, newest first, filterable; events are recorded, never edited here."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from llmproxy.admin_toolkit import ReadOnlyMixin, compact_time, truncated

from .models import SecurityEvent
from .selectors import security_events, security_events_search


@admin.register(SecurityEvent)
class SecurityEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["last_seen_cell", "kind", "reason", "count", "client_ip", "token_link", "project_link", "username"]
    list_display_links = ["last_seen_cell"]
    list_filter = [
        "kind",
        "reason",
        ("last_seen", admin.DateFieldListFilter),
        ("project", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["client_ip", "token_prefix", "username"]  # shows the search box; see get_search_results
    search_help_text = "An IP address (exact), a token prefix (sk-wt-…) or a user name."
    show_full_result_count = False
    fields = [
        "kind",
        "reason",
        "count",
        "first_seen",
        "last_seen",
        "client_ip",
        "token_prefix",
        "token_link",
        "project_link",
        "username",
        "detail",
    ]
    readonly_fields = fields

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Security events", **(extra_context or {})})

    def get_queryset(self, request: HttpRequest) -> QuerySet[SecurityEvent]:
        return security_events()

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        return security_events_search(queryset, search_term), False

    @admin.display(description="Last seen", ordering="last_seen")
    def last_seen_cell(self, event: SecurityEvent) -> SafeString:
        return compact_time(event.last_seen)

    @admin.display(description="Token", ordering="token_prefix")
    def token_link(self, event: SecurityEvent) -> str:
        if event.token is None:
            return f"{event.token_prefix}…" if event.token_prefix else "-"
        url = reverse("admin:tokens_token_change", args=[event.token.pk])
        return format_html('<a href="{}">{}</a>', url, truncated(str(event.token), "narrow"))

    @admin.display(description="Project", ordering="project__name")
    def project_link(self, event: SecurityEvent) -> str:
        if event.project is None:
            return "-"
        url = reverse("admin:projects_project_change", args=[event.project.pk])
        return format_html('<a href="{}">{}</a>', url, truncated(event.project.name, "narrow"))
