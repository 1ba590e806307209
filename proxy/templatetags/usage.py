"""Usage in the operator's pages: `{% usage_panel project=… %}` (or `token=…`) for a project or token page,
`{% cache_panel project=… %}` (or `token=…`) for what the response cache answered and saved,
`{% usage_chart series %}` for requests and errors per day, and `{{ record|status_badge }}`.

The chart is an inline SVG bar chart drawn on the server: no script and no network. A title and a description
(named by `aria-labelledby`), a tooltip per day and a data table make it readable without seeing the bars.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from django import template
from django.urls import reverse
from django.utils import formats
from django.utils.html import format_html
from django.utils.safestring import SafeString

from projects.models import Project
from tokens.models import Token

from ..models import UsageRecord
from ..selectors import cache_savings, recent_requests, top_models, usage_daily, usage_totals

register = template.Library()

STATUS_BADGES = {2: "badge-success", 3: "badge-muted", 4: "badge-warning", 5: "badge-danger"}
PANEL_DAYS = 30
PANEL_RECENT = 10


@register.filter
def status_badge(record: UsageRecord) -> SafeString:
    """The status, coloured by its class (badge classes from templates/admin/base_site.html)."""
    css = STATUS_BADGES.get(record.status // 100, "badge-muted")
    return format_html('<span class="badge {} status-{}xx">{}</span>', css, record.status // 100, record.status)


@register.inclusion_tag("admin/includes/usage_panel.html", takes_context=True)
def usage_panel(context, *, project: Project | None = None, token: Token | None = None) -> dict:
    """Totals, the last 30 days, top models and the last requests of a project or a token."""
    scope = {"project": project, "token": token}
    query = f"?token={token.pk}" if token is not None else f"?project__id__exact={project.pk}"
    return {
        "days": PANEL_DAYS,
        "totals": usage_totals(**scope),
        "daily": usage_daily(**scope, days=PANEL_DAYS),
        "top_models": top_models(**scope, days=PANEL_DAYS),
        "recent": recent_requests(**scope, limit=PANEL_RECENT),
        "show_token": token is None,
        "can_view_log": context["request"].user.has_perm("proxy.view_usagerecord"),
        "all_requests_url": reverse("admin:proxy_usagerecord_changelist") + query,
    }


@register.inclusion_tag("admin/includes/cache_panel.html")
def cache_panel(*, project: Project | None = None, token: Token | None = None, purge_url: str = "") -> dict:
    """The response cache of a project (its mode, a purge link) or of a token's project: hits and savings."""
    owner = project if project is not None else token.project
    return {
        "project": owner,
        "token": token,
        "savings": cache_savings(project=project, token=token),
        "purge_url": purge_url,
    }


WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 14, 30  # room for the value axis on the left and the dates below
DATE_LABEL_SPACE = 56  # the least room a date under the bars takes, so labels never overlap


class Day(Protocol):
    day: date
    requests: int
    errors: int


@dataclass(frozen=True)
class Bar:
    day: Day
    label: str
    x: str
    slot_x: str
    width: str
    slot_width: str
    requests_y: str
    requests_height: str
    errors_y: str
    errors_height: str


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, … that is at least `value`: a round top for the value axis."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _n(value: float) -> str:
    """An SVG coordinate: a plain dot decimal whatever the locale (templates would localise a float)."""
    return f"{value:.2f}"


def _day(day: date) -> str:
    return formats.date_format(day, "j M")


@register.inclusion_tag("admin/includes/usage_chart.html")
def usage_chart(series: Sequence[Day], title: str = "Requests and errors per day", width: int = WIDTH) -> dict:
    """`width`: of the drawing, in the units of its text; a wider one, shown as wide, keeps its labels as readable
    and dates every day or every few days, as many as fit."""
    days = list(series)
    total_requests = sum(d.requests for d in days)
    total_errors = sum(d.errors for d in days)
    context = {"title": title, "days": days, "total_requests": total_requests, "total_errors": total_errors}
    if not total_requests and not total_errors:
        return {**context, "empty": True}

    top = nice_ceiling(max(max(d.requests, d.errors) for d in days))
    plot_width, plot_height = width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height
    slot = plot_width / len(days)
    bar_width = max(slot * 0.7, 1.0)
    bars = []
    for index, day in enumerate(days):
        requests_height = day.requests / top * plot_height
        errors_height = day.errors / top * plot_height
        errors = f", {day.errors} error{'s' if day.errors != 1 else ''}" if day.errors else ", no errors"
        bars.append(
            Bar(
                day=day,
                label=f"{formats.date_format(day.day, 'D j M Y')}: {day.requests} "
                f"request{'s' if day.requests != 1 else ''}{errors}",
                x=_n(LEFT + index * slot + (slot - bar_width) / 2),
                slot_x=_n(LEFT + index * slot),
                width=_n(bar_width),
                slot_width=_n(slot),
                requests_y=_n(baseline - requests_height),
                requests_height=_n(requests_height),
                errors_y=_n(baseline - errors_height),
                errors_height=_n(errors_height) if day.errors else "",
            )
        )
    # Dates under every day, or every few days counted back from the last (today), as many as fit.
    step = max(1, -(-len(days) * DATE_LABEL_SPACE // plot_width))
    date_labels = [
        {"x": _n(LEFT + index * slot + slot / 2), "text": _day(days[index].day)}
        for index in range(len(days) - 1, -1, -step)
    ]
    busiest = max(days, key=lambda d: d.requests)
    return {
        **context,
        "empty": False,
        "id": f"chart-{uuid.uuid4().hex[:8]}",
        "width": width,
        "max_width": width * 4 // 3,  # text no larger than 4/3 of its size
        "height": HEIGHT,
        "top": top,
        "half": top // 2 if top % 2 == 0 else None,
        "half_y": _n(TOP + plot_height / 2),
        "left": LEFT,
        "right": width - RIGHT,
        "top_y": TOP,
        "baseline": baseline,
        "plot_height": plot_height,
        "label_x": LEFT - 6,
        "date_y": baseline + 18,
        "bars": bars,
        "date_labels": date_labels,
        "description": (
            f"{_day(days[0].day)} to {_day(days[-1].day)}: {total_requests} requests, {total_errors} errors. "
            f"Busiest day {_day(busiest.day)} with {busiest.requests} requests."
        ),
    }
