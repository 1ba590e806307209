"""Usage reads for the admin: every figure comes from the per-day aggregate (`UsageDaily`), never from a count over
the usage records, so pages stay fast at millions of records and figures survive the retention purge.

"Errors" are requests answered with a status of 400 or more (the proxy's refusals included). Days are UTC dates.
"""

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from projects.models import Project
from tokens.models import Token

from .models import BudgetAlert, UsageDaily, UsageRecord


@dataclass(frozen=True)
class DayUsage:
    day: datetime.date
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal = Decimal(0)


SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")


def utc_today() -> datetime.date:
    return timezone.now().astimezone(datetime.UTC).date()


def first_day(days: int) -> datetime.date:
    """The first of the last `days` days, today included."""
    return utc_today() - datetime.timedelta(days=max(days, 1) - 1)


def _daily(
    *, project: Project | UUID | None = None, token: Token | UUID | None = None, since: datetime.date | None = None
) -> QuerySet[UsageDaily]:
    rows = UsageDaily.objects.order_by()
    if project is not None:
        rows = rows.filter(project_id=getattr(project, "pk", project))
    if token is not None:
        rows = rows.filter(token_id=getattr(token, "pk", token))
    if since is not None:
        rows = rows.filter(day__gte=since)
    return rows


def _sums() -> dict[str, Sum]:
    return {f"sum_{name}": Sum(name) for name in SUMMED}


def usage_daily(
    *, project: Project | UUID | None = None, token: Token | UUID | None = None, days: int = 30
) -> list[DayUsage]:
    """One entry per day for the last `days` days ending today, oldest first; days without requests are zeros."""
    start = first_day(days)
    found = {
        row["day"]: row for row in _daily(project=project, token=token, since=start).values("day").annotate(**_sums())
    }
    result = []
    for offset in range(max(days, 1)):
        day = start + datetime.timedelta(days=offset)
        row = found.get(day, {})
        result.append(DayUsage(day=day, **{name: row.get(f"sum_{name}") or 0 for name in SUMMED}))
    return result


def usage_totals(
    *, project: Project | UUID | None = None, token: Token | UUID | None = None, days: int | None = None
) -> UsageTotals:
    """Sums over the last `days` days, today included, or over all time when `days` is None."""
    since = first_day(days) if days is not None else None
    row = _daily(project=project, token=token, since=since).aggregate(**_sums())
    return UsageTotals(**{name: row[f"sum_{name}"] or 0 for name in SUMMED})


def top_models(
    *, project: Project | UUID | None = None, token: Token | UUID | None = None, days: int = 30, limit: int = 5
) -> list[tuple[str, int]]:
    """(model, requests), most requests first; requests that named no model are left out."""
    rows = (
        _daily(project=project, token=token, since=first_day(days))
        .exclude(model="")
        .values("model")
        .annotate(total=Sum("requests"))
        .order_by("-total", "model")[:limit]
    )
    return [(row["model"], row["total"]) for row in rows]


def _busiest(key: str, objects: QuerySet, days: int, limit: int) -> list[tuple[Any, int, int]]:
    """(object, requests, errors) of the `key` ("project_id"/"token_id") with the most requests in `days` days."""
    rows = list(
        _daily(since=first_day(days))
        .filter(**{f"{key}__isnull": False})
        .values(key)
        .annotate(total=Sum("requests"), failed=Sum("errors"))
        .order_by("-total", key)[:limit]
    )
    found = objects.in_bulk([row[key] for row in rows])
    return [(found[r[key]], r["total"], r["failed"]) for r in rows if r[key] in found]


def busiest_projects(*, days: int = 14, limit: int = 5) -> list[tuple[Project, int, int]]:
    """(project, requests, errors) of the projects with the most requests in the last `days` days."""
    return _busiest("project_id", Project.objects.all(), days, limit)


def busiest_tokens(*, days: int = 14, limit: int = 5) -> list[tuple[Token, int, int]]:
    """(token, requests, errors) of the tokens with the most requests in the last `days` days (with their project)."""
    return _busiest("token_id", Token.objects.select_related("project"), days, limit)


def recent_requests(
    *, project: Project | UUID | None = None, token: Token | UUID | None = None, limit: int = 10
) -> list[UsageRecord]:
    """The newest usage records, newest first (served by the (project, time) and (token, time) indexes)."""
    records = UsageRecord.objects.select_related("project", "token")
    if project is not None:
        records = records.filter(project_id=getattr(project, "pk", project))
    if token is not None:
        records = records.filter(token_id=getattr(token, "pk", token))
    return list(records.order_by("-time")[:limit])


USAGE_GROUPS = ("day", "token", "model")
REPORTED = (*SUMMED, "total_tokens", "cache_hits", "saved_usd")
DOLLARS = frozenset({"cost_usd", "saved_usd"})


@dataclass(frozen=True)
class UsageSummary:
    """Rows of sums (one per day, token or model) and their totals, for the management API's billing scripts."""

    rows: list[dict[str, Any]]
    totals: dict[str, int]


def usage_summary(
    *,
    start: datetime.date,
    end: datetime.date,
    group_by: str = "day",
    project: Project | UUID | None = None,
    token: Token | UUID | None = None,
) -> UsageSummary:
    """Sums over the days from `start` to `end`, both included, grouped by `group_by` (one of `USAGE_GROUPS`).

    By day: every day of the period, oldest first, zero-filled. By token or model: those with requests, most requests
    first; requests that named no token (refused credentials) or no model form one row with `null` / `""`.
    """
    sums = {f"sum_{name}": Sum(name) for name in REPORTED}
    rows = _daily(project=project, token=token, since=start).filter(day__lte=end)
    if group_by == "day":
        found = {row["day"]: row for row in rows.values("day").annotate(**sums)}
        days = (start + datetime.timedelta(days=n) for n in range((end - start).days + 1))
        result = [{"day": day, **_reported(found.get(day, {}))} for day in days]
    elif group_by == "token":
        grouped = rows.values("token_id", "token__prefix", "token__label").annotate(**sums)
        result = [
            {
                "token_id": row["token_id"],
                "token_prefix": row["token__prefix"],
                "label": row["token__label"],
                **_reported(row),
            }
            for row in grouped.order_by("-sum_requests", "token_id")
        ]
    elif group_by == "model":
        grouped = rows.values("model").annotate(**sums).order_by("-sum_requests", "model")
        result = [{"model": row["model"], **_reported(row)} for row in grouped]
    else:
        raise ValueError(f"group_by must be one of {USAGE_GROUPS}")
    totals = {name: sum((row[name] for row in result), Decimal(0) if name in DOLLARS else 0) for name in REPORTED}
    return UsageSummary(rows=result, totals=totals)


def _reported(row: dict[str, Any]) -> dict[str, int | Decimal]:
    return {name: row.get(f"sum_{name}") or (Decimal(0) if name in DOLLARS else 0) for name in REPORTED}


# --- the response cache -----------------------------------------------------------------------------------------

CACHE_SAVINGS_DAYS = 30


@dataclass(frozen=True)
class CacheSavings:
    """Requests answered from the response cache over the last `days` days, and what they would have cost."""

    hits: int
    saved_usd: Decimal
    days: int


def cache_savings(
    *, project: Project | UUID | None = None, token: Token | UUID | None = None, days: int = CACHE_SAVINGS_DAYS
) -> CacheSavings:
    row = _daily(project=project, token=token, since=first_day(days)).aggregate(
        hits=Sum("cache_hits"), saved=Sum("saved_usd")
    )
    return CacheSavings(hits=row["hits"] or 0, saved_usd=row["saved"] or Decimal(0), days=days)


# --- spend ------------------------------------------------------------------------------------------------------

NEAR_BUDGET = Decimal("0.8")


def top_spenders(key: str, objects: QuerySet, since: datetime.date, limit: int = 5) -> list[tuple[Any, Decimal]]:
    """(object, cost) of the `key` ("project_id"/"token_id") that cost the most since `since`."""
    rows = list(
        _daily(since=since)
        .filter(**{f"{key}__isnull": False, "cost_usd__gt": 0})
        .values(key)
        .annotate(spent=Sum("cost_usd"))
        .order_by("-spent", key)[:limit]
    )
    found = objects.in_bulk([row[key] for row in rows])
    return [(found[r[key]], r["spent"]) for r in rows if r[key] in found]


def spend_overview(limit: int = 5) -> dict:
    """For the dashboard: who is past 80 % of a budget, and who spent the most this month (UTC)."""
    now = timezone.now()
    projects = [
        (project, project.spent_in_period(now))
        for project in Project.objects.filter(budget_usd__isnull=False).order_by("name")
        if project.spent_in_period(now) >= project.budget_usd * NEAR_BUDGET
    ]
    tokens = list(
        Token.objects.usable(now)
        .filter(budget_usd__isnull=False, spent_usd__gte=F("budget_usd") * NEAR_BUDGET)
        .select_related("project")
        .order_by("-spent_usd")[:limit]
    )
    month = utc_today().replace(day=1)
    return {
        "near_budget_projects": projects,
        "near_budget_tokens": tokens,
        "month": month,
        "top_projects": top_spenders("project_id", Project.objects.all(), month, limit),
        "top_tokens": top_spenders("token_id", Token.objects.select_related("project"), month, limit),
    }


@dataclass(frozen=True)
class SpendTotals:
    today: Decimal
    month: Decimal
    month_start: datetime.date


def spend_totals() -> SpendTotals:
    """What all requests cost today and this calendar month (UTC days), from the per-day sums."""
    today = utc_today()
    month_start = today.replace(day=1)
    rows = {
        row["day"]: row["spent"]
        for row in _daily(since=month_start).values("day").annotate(spent=Sum("cost_usd")).order_by()
    }
    return SpendTotals(
        today=rows.get(today) or Decimal(0),
        month=sum((spent or Decimal(0) for spent in rows.values()), Decimal(0)),
        month_start=month_start,
    )


def budget_alerts_recent(
    *, days: int | None = 7, project: Project | UUID | None = None, limit: int = 5
) -> list[BudgetAlert]:
    """The budget alerts of the last `days` days (None: ever), of one project or all, newest first (with their
    project)."""
    alerts = BudgetAlert.objects.select_related("project").order_by("-created_at")
    if days is not None:
        alerts = alerts.filter(created_at__gte=timezone.now() - datetime.timedelta(days=days))
    if project is not None:
        alerts = alerts.filter(project_id=getattr(project, "pk", project))
    return list(alerts[:limit])
