"""What the operator screens share, whatever they show: page context and object lookup, service errors on forms,
records that are never deleted, a paginator that never counts, typed-in filters, and CSV exports.

It imports no app of the project, so every app's admin can use it.
"""

import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime
from functools import wraps

from asgiref.sync import sync_to_async
from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .errors import ServiceError

# --- pages --------------------------------------------------------------------------------------------------------


class OperatorPagesMixin:
    """For a ModelAdmin's own pages (confirmations, forms, details): their context and the object they act on."""

    def page_context(self, request: HttpRequest, title: str, **extra) -> dict:
        request.current_app = self.admin_site.name
        return {**self.admin_site.each_context(request), "title": title, "subtitle": None, "opts": self.opts, **extra}

    def get_object_or_404(self, request: HttpRequest, object_id: str, *, change: bool) -> Model:
        """The object, if it exists (else 404) and the operator may see it, or change it with `change` (else 403)."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No {self.opts.verbose_name} with this ID.")
        allowed = self.has_change_permission if change else self.has_view_or_change_permission
        if not allowed(request, obj):
            raise PermissionDenied
        return obj


class DetailPageMixin(OperatorPagesMixin):
    """The change page as a read-only page of details (`detail_template`, filled by `detail_context`): what changes
    an object goes through the screen's own pages, each behind its own permission."""

    detail_template = ""

    def detail_context(self, request: HttpRequest, obj: Model) -> tuple[str, dict]:
        """The page's title and what the template shows besides the object (`original`)."""
        raise NotImplementedError

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        obj = self.get_object_or_404(request, object_id, change=False)
        title, context = self.detail_context(request, obj)
        context = self.page_context(request, title, original=obj, **context, **(extra_context or {}))
        return TemplateResponse(request, self.detail_template, context)


def add_service_error(form: forms.Form, error: ServiceError, field_names: dict[str, str] | None = None) -> None:
    """Show a service's refusal on the form field it concerns (`field_names` maps a service's field names to the
    form's), or above the form when the form has no such field."""
    name = (field_names or {}).get(error.field, error.field)
    form.add_error(name if name in form.fields else None, error.text)


# --- list cells -------------------------------------------------------------------------------------------------

FULL_TIME_FORMAT = "D j M Y, H:i:s T"


def compact_time(value: datetime | None, empty: str = "—", *, seconds: bool = False) -> SafeString | str:
    """A time in a list row, short enough for a laptop's width: `1 Dec 22:40` (`1 Dec 2025` when not this year;
    `1 Dec 22:40:05` with `seconds`, for logs), in the site's time zone, with the full date and time in its
    tooltip."""
    if value is None:
        return empty
    local = timezone.localtime(value)
    if seconds:
        short = "j M H:i:s" if local.year == timezone.localtime().year else "j M Y H:i:s"
    else:
        short = "j M H:i" if local.year == timezone.localtime().year else "j M Y"
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        formats.date_format(local, FULL_TIME_FORMAT),
        formats.date_format(local, short),
    )


def truncated(text: str, size: str = "") -> SafeString:
    """A long value cut with an ellipsis by its cell (CSS `.truncate`, `-narrow` or `-wide`), whole in its tooltip."""
    css = f"truncate truncate-{size}" if size else "truncate"
    return format_html('<span class="{}" title="{}">{}</span>', css, text, text)


# --- never deleted ------------------------------------------------------------------------------------------------


class NeverDeletedMixin:
    """Projects and credentials are kept for the audit trail: no delete action, and the delete URL, like any DELETE
    request to the model's pages, answers 405 with `not_deletable_message`."""

    not_deletable_message = "This is never deleted; it is kept for the audit trail."

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @property
    def urls(self) -> list[URLPattern]:
        """Every URL of the model, the admin's own and those a subclass adds in `get_urls`."""
        delete_name = f"{self.opts.app_label}_{self.opts.model_name}_delete"
        return [
            URLPattern(
                pattern.pattern,
                self._refuse_delete(pattern.callback, always=pattern.name == delete_name),
                pattern.default_args,
                pattern.name,
            )
            for pattern in self.get_urls()
        ]

    def _refuse_delete(self, view: Callable, *, always: bool) -> Callable:
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if always or request.method == "DELETE":
                allowed = [] if always else ["GET", "HEAD", "POST"]
                return HttpResponseNotAllowed(allowed, self.not_deletable_message, content_type="text/plain")
            return view(request, *args, **kwargs)

        return wrapped


class ReadOnlyMixin:
    """Records the product writes (requests, security events): operators read them, nobody edits or deletes one."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


# --- lists at scale -----------------------------------------------------------------------------------------------


class LookaheadPaginator(Paginator):
    """Never counts: it reads the page asked for plus one row, which tells whether another page follows.

    A COUNT, even a capped one, scans every row a rare filter skips; this costs one page read at any table size.
    `count` is what it has seen (the rows before this page, this page's, one more if any), so the page after the
    current one is the last it knows of.
    """

    def __init__(self, object_list, per_page: int, *, page_number: int, **kwargs) -> None:
        super().__init__(object_list, per_page, **kwargs)
        self.page_number = max(page_number, 1)
        self.offset = (self.page_number - 1) * self.per_page

    @cached_property
    def rows(self) -> list:
        return list(self.object_list[self.offset : self.offset + self.per_page + 1])

    @cached_property
    def count(self) -> int:
        return self.offset + len(self.rows)

    def page(self, number):
        number = self.validate_number(number)
        if number == self.page_number:
            return self._get_page(self.rows[: self.per_page], number, self)
        return super().page(number)


class InputFilter(admin.ListFilter):
    """A filter the operator types into (a small GET form keeping the other filters), for values too many to list."""

    template = "admin/includes/input_filter.html"
    parameters: tuple[str, ...] = ()

    def __init__(self, request: HttpRequest, params: dict, model, model_admin) -> None:
        super().__init__(request, params, model, model_admin)
        for name in self.parameters:
            if name in params:
                value = params.pop(name)[-1].strip()
                if value:
                    self.used_parameters[name] = value
        self.hidden_params: list[tuple[str, str]] = []

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return list(self.parameters)

    def choices(self, changelist) -> Iterator[dict]:
        """Links (presets, "All"); also notes which other parameters the form must carry along."""
        self.hidden_params = [
            (name, value)
            for name, values in changelist.filter_params.items()
            if name not in self.parameters
            for value in values
        ]
        yield {
            "selected": not self.used_parameters,
            "query_string": changelist.get_query_string(remove=list(self.parameters)),
            "display": "All",
        }


# --- CSV exports --------------------------------------------------------------------------------------------------


# What makes a spreadsheet read a cell as a formula when it starts with it (OWASP's list, tab and CR included).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# What a spreadsheet may take as the separator instead of the comma: `;` in many locales, or a tab.
_OTHER_SEPARATOR = re.compile(r"(?<=[;\t])[^;\t]+")
# Cells quoted: those csv.writer quotes (separator, quote, line break), and those holding another separator, for a
# spreadsheet that reads several (a quote only counts at the start of a cell).
_QUOTED_CELL = re.compile(r'[,;"\t\r\n]')


def _neutralised(text: str) -> str:
    """With a leading `'` (spreadsheets read it as "this is text") when a spreadsheet would see a formula: judged
    with compatibility characters folded (NFKC: a fullwidth ＝ is an =) and leading spaces skipped, as they are."""
    return "'" + text if unicodedata.normalize("NFKC", text).lstrip(" ")[:1] in _FORMULA_START else text


def csv_safe(value: object) -> str:
    """A cell a spreadsheet will not run as a formula (labels, paths and models are typed by people).

    To a spreadsheet that splits lines at `;` or tabs, what follows one inside a cell starts a cell of its own
    (`x;=1+1` holds the cell `=1+1`; quoting does not help, it only counts at the start of a cell), so that part is
    neutralised too (`x;'=1+1`).
    """
    text = "" if value is None else value.isoformat() if isinstance(value, datetime) else str(value)
    if ";" in text or "\t" in text:
        text = _OTHER_SEPARATOR.sub(lambda part: _neutralised(part.group()), text)
    return _neutralised(text)


def _csv_line(cells: Iterable[str]) -> str:
    """One line of CSV (RFC 4180), written here rather than by csv.writer, which cannot be told to quote more."""
    return (
        ",".join('"' + cell.replace('"', '""') + '"' if _QUOTED_CELL.search(cell) else cell for cell in cells) + "\r\n"
    )


def _csv_text(header: list[str], chunks: Iterable[Iterable[Iterable[object]]]) -> Iterator[str]:
    yield _csv_line(header)
    for rows in chunks:
        yield "".join(_csv_line([csv_safe(value) for value in row]) for row in rows)


async def _async_chunks(chunks: Iterator[str]) -> AsyncIterator[str]:
    """For an ASGI server, which would otherwise read a synchronous iterator to its end before sending a byte."""
    step = sync_to_async(next)
    while (chunk := await step(chunks, None)) is not None:
        yield chunk


def csv_response(
    request: HttpRequest, filename: str, header: list[str], chunks: Iterable[Iterable[Iterable[object]]]
) -> StreamingHttpResponse:
    """A CSV download, streamed a chunk of rows at a time (constant memory at any size), every cell `csv_safe`."""
    text: Iterable[str] | AsyncIterator[str] = _csv_text(header, chunks)
    if isinstance(request, ASGIRequest):
        text = _async_chunks(iter(text))
    response = StreamingHttpResponse(text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
