"""The request log: every proxied request, read-only, filterable, exportable as CSV; fast at millions of rows.

Nothing here counts the table: the list reads one page at a time and only knows whether another follows, filters
take typed input instead of listing every token, and the CSV export streams the filtered rows in chunks.
"""

from collections.abc import Iterator
from datetime import date, datetime, timedelta

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters, ShowFacets
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from llmproxy.admin_toolkit import (
    FULL_TIME_FORMAT,
    InputFilter,
    LookaheadPaginator,
    ReadOnlyMixin,
    compact_time,
    csv_response,
    truncated,
)
from projects.limits import usd
from tokens.models import Token
from tokens.selectors import token_search_filter

from ..models import UsageRecord
from ..templatetags.usage import status_badge

STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")


class RequestLogChangeList(ChangeList):
    """Django's list, with the rows the paginator read reused, and links to the previous and next pages."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        paginator = self.paginator
        if not self.multi_page and paginator.page_number == 1:
            self.result_list = paginator.rows  # Django would run the same query again
        shown = len(paginator.rows[: self.list_per_page])
        self.first_row, self.last_row = (paginator.offset + 1, paginator.offset + shown) if shown else (0, 0)
        self.previous_url = self.get_query_string({PAGE_VAR: self.page_num - 1}) if self.page_num > 1 else None
        has_next = len(paginator.rows) > self.list_per_page
        self.next_url = self.get_query_string({PAGE_VAR: self.page_num + 1}) if has_next else None


class TokenFilter(InputFilter):
    """By token ID or display prefix (`sk-wt-…`): a list of 100,000 tokens would help no one."""

    title = "token"
    parameters = ("token",)
    placeholder = "Token ID or sk-wt-… prefix"

    @property
    def value(self) -> str:
        return self.used_parameters.get("token", "")

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        if not self.value:
            return queryset
        return queryset.filter(token_id__in=Token.objects.filter(token_search_filter(self.value)).values("pk"))


class TimeRangeFilter(InputFilter):
    """Presets (today, 7 and 30 days) plus a custom range of dates, both ends included, in the site's time zone."""

    title = "time"
    parameters = ("since", "until")
    template = "admin/proxy/usagerecord/time_filter.html"
    presets = (("Today", 0), ("Past 7 days", 6), ("Past 30 days", 29))

    def __init__(self, request: HttpRequest, params: dict, model, model_admin) -> None:
        super().__init__(request, params, model, model_admin)
        try:
            self.since = self._date("since")
            self.until = self._date("until")
        except ValueError as error:
            raise IncorrectLookupParameters(error) from error

    def _date(self, name: str) -> date | None:
        value = self.used_parameters.get(name)
        return date.fromisoformat(value) if value else None

    @staticmethod
    def _start_of(day: date) -> datetime:
        return timezone.make_aware(datetime.combine(day, datetime.min.time()))

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        if self.since:
            queryset = queryset.filter(time__gte=self._start_of(self.since))
        if self.until:
            queryset = queryset.filter(time__lt=self._start_of(self.until + timedelta(days=1)))
        return queryset

    def choices(self, changelist) -> Iterator[dict]:
        yield from super().choices(changelist)
        today = timezone.localdate()
        for label, days_back in self.presets:
            since = (today - timedelta(days=days_back)).isoformat()
            yield {
                "selected": self.used_parameters == {"since": since},
                "query_string": changelist.get_query_string({"since": since}, remove=list(self.parameters)),
                "display": label,
            }


class StatusClassFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status_class"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(c, c) for c in STATUS_CLASSES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        if self.value() in STATUS_CLASSES:
            low = int(self.value()[0]) * 100
            return queryset.filter(status__gte=low, status__lt=low + 100)
        return queryset


class ModelFilter(admin.SimpleListFilter):
    """The models named by the latest requests (a bounded look, not a DISTINCT over millions of rows)."""

    title = "model"
    parameter_name = "model"
    recent_window = 10_000

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        latest = UsageRecord.objects.order_by("-time").values("pk")[: self.recent_window]
        names = set(
            UsageRecord.objects.filter(pk__in=latest)
            .exclude(model="")
            .order_by()
            .values_list("model", flat=True)
            .distinct()
        )
        if self.value():
            names.add(self.value())
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        return queryset.filter(model=self.value()) if self.value() else queryset


# (CSV column, what it reads): plain values, not model instances, so a million rows export in seconds.
CSV_COLUMNS = [
    ("time", "time"),
    ("request_id", "request_id"),
    ("project_id", "project_id"),
    ("project", "project__name"),
    ("token_id", "token_id"),
    ("token_prefix", "token_prefix"),
    ("token_label", "token__label"),
    ("method", "method"),
    ("path", "path"),
    ("model", "model"),
    ("status", "status"),
    ("streamed", "streamed"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("total_tokens", "total_tokens"),
    ("cached_tokens", "cached_tokens"),
    ("cost_usd", "cost_usd"),
    ("duration_ms", "duration_ms"),
    ("ttfb_ms", "ttfb_ms"),
    ("upstream_ms", "upstream_ms"),
    ("client_ip", "client_ip"),
    ("refusal_code", "refusal_code"),
    ("client_aborted", "client_aborted"),
    ("upstream_aborted", "upstream_aborted"),
    ("cached", "cached"),
    ("saved_usd", "saved_usd"),
]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def _rows_in_chunks(records: QuerySet[UsageRecord], fields: list[str], chunk_size: int) -> Iterator[list[tuple]]:
    """The rows, a chunk at a time, each chunk one short query resuming after the last row seen (by time, then id).

    Unlike a cursor, nothing stays open between chunks (PostgreSQL would copy a whole result out for a cursor that
    outlives its transaction before sending a row), and each query starts where the time index left off.
    """
    ordering = records.query.order_by
    if ordering and ordering[0] == "time":
        order = ("time", "pk")

        def after(time: datetime, pk: int) -> Q:
            return Q(time__gte=time) & (Q(time__gt=time) | Q(pk__gt=pk))
    else:
        order = ("-time", "-pk")

        def after(time: datetime, pk: int) -> Q:
            return Q(time__lte=time) & (Q(time__lt=time) | Q(pk__lt=pk))

    query = records.order_by(*order).values_list("time", "pk", *fields)
    position = Q()
    while chunk := list(query.filter(position)[:chunk_size]):
        yield [row[2:] for row in chunk]
        if len(chunk) < chunk_size:
            return
        position = after(*chunk[-1][:2])


def csv_rows(records: QuerySet[UsageRecord], chunk_size: int = 2000) -> Iterator[list[tuple]]:
    """Every row of the export, a chunk at a time."""
    return _rows_in_chunks(records, [field for _, field in CSV_COLUMNS], chunk_size)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    # Read like a log: time, status, model, tokens, duration and cost first; the method and path, whether it was
    # streamed, the time to first byte, the client address and the request ID are on each request's page.
    list_display = [
        "when",
        "coloured_status",
        "model_cell",
        "tokens_in_out",
        "duration",
        "cost",
        "project_link",
        "token_link",
        "outcome",
    ]
    list_display_links = ["when"]
    # The request's page: every field, grouped, in the units people read.
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "full_time",
                    "coloured_status",
                    "refusal_code",
                    "method",
                    "path",
                    "model",
                    "streamed",
                    "cached",
                    "client_aborted",
                    "upstream_aborted",
                ]
            },
        ),
        ("Who", {"fields": ["project", "token", "token_prefix", "client_ip", "request_id"]}),
        (
            "Tokens and cost",
            {
                "fields": [
                    "prompt_tokens",
                    "cached_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "cost_exact",
                    "saved_usd",
                ]
            },
        ),
        ("Timing", {"fields": ["duration_exact", "ttfb_exact", "upstream_exact"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]
    list_filter = [
        TimeRangeFilter,
        "project",
        TokenFilter,
        StatusClassFilter,
        ModelFilter,
        "streamed",
    ]
    list_select_related = ["project", "token"]
    search_fields = ["request_id"]  # shows the box; the match is exact, see get_search_results
    search_help_text = "A request ID (exact), as sent back in the X-Request-ID header."
    ordering = ["-time"]
    sortable_by = ["when"]
    list_per_page = 50
    list_max_show_all = 0
    show_full_result_count = False
    show_facets = ShowFacets.NEVER
    actions = None
    view_on_site = False

    # --- list ------------------------------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return RequestLogChangeList

    def get_paginator(self, request: HttpRequest, queryset: QuerySet, per_page: int, **kwargs) -> LookaheadPaginator:
        try:
            page_number = int(request.GET.get(PAGE_VAR, 1))
        except ValueError:
            page_number = 1  # as Django's ChangeList reads it
        return LookaheadPaginator(queryset, per_page, page_number=page_number, **kwargs)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        query = request.GET.copy()
        query.pop("p", None)
        query.pop("e", None)
        export_url = reverse("admin:proxy_usagerecord_export")
        context = {
            "title": "Requests",
            "export_url": f"{export_url}?{query.urlencode()}" if query else export_url,
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageRecord], search_term: str
    ) -> tuple[QuerySet[UsageRecord], bool]:
        term = search_term.strip()
        return (queryset.filter(request_id=term) if term else queryset), False

    @admin.display(description="Project")
    def project_link(self, record: UsageRecord) -> SafeString | str:
        if record.project is None:
            return str(record.project_id or "—")
        url = reverse("admin:projects_project_change", args=[record.project_id])
        return format_html('<a href="{}">{}</a>', url, truncated(record.project.name, "narrow"))

    @admin.display(description="Token")
    def token_link(self, record: UsageRecord) -> SafeString | str:
        """The display prefix; the token's label in the tooltip."""
        if record.token is None:
            return format_html("<code>{}…</code>", record.token_prefix) if record.token_prefix else "—"
        url = reverse("admin:tokens_token_change", args=[record.token_id])
        return format_html('<a href="{}" title="{}"><code>{}…</code></a>', url, record.token.label, record.token.prefix)

    @admin.display(description="Time", ordering="time")
    def when(self, record: UsageRecord) -> SafeString:
        return compact_time(record.time, seconds=True)  # requests come many a minute

    @admin.display(description="Status")
    def coloured_status(self, record: UsageRecord) -> SafeString:
        return status_badge(record)

    @admin.display(description="Model")
    def model_cell(self, record: UsageRecord) -> SafeString | str:
        return truncated(record.model, "narrow") if record.model else "—"

    @admin.display(description="In / out")
    def tokens_in_out(self, record: UsageRecord) -> str:
        if record.prompt_tokens is None and record.completion_tokens is None:
            return "—"
        return f"{record.prompt_tokens if record.prompt_tokens is not None else '—'} / " + (
            f"{record.completion_tokens if record.completion_tokens is not None else '—'}"
        )

    @admin.display(description="Duration")
    def duration(self, record: UsageRecord) -> str:
        """Milliseconds, or seconds from 10 s (streams run long)."""
        ms = record.duration_ms
        return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"

    @admin.display(description="Cost")
    def cost(self, record: UsageRecord) -> str:
        return "—" if record.cost_usd is None else usd(record.cost_usd)

    @admin.display(description="Refusal")
    def outcome(self, record: UsageRecord) -> SafeString | str:
        parts = [record.refusal_code] if record.refusal_code else []
        if record.client_aborted:
            parts.append("client aborted")
        if record.upstream_aborted:
            parts.append("upstream broke off")
        if record.cached:
            parts.append("from cache")
        return truncated(", ".join(parts), "narrow") if parts else ""

    @admin.display(description="Time")
    def full_time(self, record: UsageRecord) -> str:
        return formats.date_format(timezone.localtime(record.time), FULL_TIME_FORMAT)

    @admin.display(description="Cost")
    def cost_exact(self, record: UsageRecord) -> str:
        """Exact, as kept (to 12 decimal places); a dash when the model had no price."""
        return "— (the model had no price)" if record.cost_usd is None else f"${record.cost_usd.normalize():f}"

    @admin.display(description="Duration")
    def duration_exact(self, record: UsageRecord) -> str:
        return _ms(record.duration_ms)

    @admin.display(description="Time to first byte")
    def ttfb_exact(self, record: UsageRecord) -> str:
        return _ms(record.ttfb_ms)

    @admin.display(description="Upstream time")
    def upstream_exact(self, record: UsageRecord) -> str:
        return _ms(record.upstream_ms)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        """One request, every field, read-only."""
        return super().change_view(request, object_id, form_url, {"title": "Request", **(extra_context or {})})

    # --- CSV export of the filtered set ----------------------------------------------------------------------

    def get_urls(self) -> list:
        export = path("export/", self.admin_site.admin_view(self.export_view), name="proxy_usagerecord_export")
        return [export, *super().get_urls()]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """Every row the list shows with the same filters and search, not just one page, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:proxy_usagerecord_changelist") + "?e=1")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        header = [column for column, _ in CSV_COLUMNS]
        return csv_response(request, f"requests-{stamp}.csv", header, csv_rows(changelist.queryset))
