"""`{% limits_panel token_or_project %}`: each limit beside what was used against it ("$3.20 of $5.00", "this month
$412.00 of $500.00, resets 1 Jan"), and the spend."""

from dataclasses import dataclass

from django import template
from django.utils import formats, timezone

from ..limits import BudgetPeriod, SpendLimits, usd
from ..models import Project

register = template.Library()


@dataclass(frozen=True)
class Row:
    name: str
    used: str
    limit: str
    reached: bool


register.filter("usd", usd)


def _count(used: int, limit: int | None) -> Row:
    return Row(
        "", f"{used:,} this minute", f"{limit:,}" if limit is not None else "no limit", bool(limit and used >= limit)
    )


@register.inclusion_tag("admin/includes/limits_panel.html")
def limits_panel(owner: SpendLimits) -> dict:
    now = timezone.now()
    requests = _count(owner.requests_this_minute(now), owner.requests_per_minute)
    tokens = _count(owner.tokens_this_minute(now), owner.tokens_per_minute)
    rows = [
        Row("Requests per minute", requests.used, requests.limit, requests.reached),
        Row("Tokens per minute", tokens.used, tokens.limit, tokens.reached),
    ]
    if isinstance(owner, Project):
        spent = owner.spent_in_period(now)
        resets = owner.budget_resets_at(now)
        period = "in total" if owner.budget_period == BudgetPeriod.TOTAL else f"this {owner.budget_period}"
        note = f", resets {formats.date_format(resets, 'j M')}" if resets else ""
        used = f"{usd(spent)} {period}{note}"
    else:
        spent = owner.spent_usd
        used = f"{usd(spent)} over the token's life"
    budget = owner.budget_usd
    rows.append(
        Row("Budget (USD)", used, usd(budget) if budget is not None else "no budget", bool(budget and spent >= budget))
    )
    return {"rows": rows}
