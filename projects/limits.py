"""Spend control: the limits a token or a project may carry, and the counters the proxy keeps against them.

Every limit is optional (null: none). Per-minute limits count in fixed one-minute windows of UTC clock time: a
window is its minute number (`minute_key`), and a counter whose stored minute is not the current one counts as 0. A
project's dollar budget counts in calendar periods in UTC (`BudgetPeriod`): the spend belongs to the period whose key
is stored with it, and a new period starts from 0. Fixed windows keep each check and count to a comparison and an
addition inside the admission statement itself (proxy.admission), so the limits are exact however many workers and
instances serve the traffic.
"""

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from types import MappingProxyType

from django.db import models

from llmproxy.errors import ServiceError

# A budget: US dollars, at least a cent, at most a trillion; spend is kept finer (a request can cost 10⁻⁷ $).
BUDGET_MIN = Decimal("0.01")
BUDGET_MAX = Decimal("1000000000000")
BUDGET_PLACES = 6
SPEND_PLACES = 12  # a cost has at most 12 (prices per million with 6: proxy.prices)
PER_MINUTE_MAX = 1_000_000_000


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week (from Monday)"
    MONTH = "month", "Month"
    TOTAL = "total", "Total (never resets)"


def usd(amount: Decimal | int | None) -> str:
    """Dollars as an operator reads them: cents, or finer when less than a cent."""
    if amount is None:
        return "—"
    amount = Decimal(amount)
    if amount and abs(amount) < Decimal("0.01"):
        return f"${amount.normalize():f}"
    return f"${amount.quantize(Decimal('0.01')):,}"


def minute_key(now: datetime) -> int:
    """The one-minute window `now` falls in (minutes since the epoch, UTC)."""
    return int(now.timestamp() // 60)


def minute_reset_seconds(now: datetime) -> int:
    """Whole seconds until the next window (at least 1): what Retry-After says for a per-minute limit."""
    return max(int(60 - now.timestamp() % 60 + 0.999), 1)


def period_start(period: str, now: datetime) -> date | None:
    """The first day of the budget period `now` falls in (None: the total never resets)."""
    today = now.astimezone(UTC).date()
    if period == BudgetPeriod.DAY:
        return today
    if period == BudgetPeriod.WEEK:
        return today - timedelta(days=today.weekday())
    if period == BudgetPeriod.MONTH:
        return today.replace(day=1)
    return None


def period_key(period: str, now: datetime) -> int:
    """The period's number, stored with the spend it holds (0 for the total)."""
    start = period_start(period, now)
    return start.toordinal() if start is not None else 0


def period_keys(now: datetime) -> Mapping[str, int]:
    """Every period's number at `now` (admission and settlement bind them to each statement), worked out once a day:
    per request it cost about 10 µs."""
    return _period_keys_of(now.astimezone(UTC).date())


@lru_cache(maxsize=4)
def _period_keys_of(day: date) -> Mapping[str, int]:
    now = datetime.combine(day, time.min, tzinfo=UTC)
    return MappingProxyType({period: period_key(period, now) for period in BudgetPeriod.values})


def period_resets_at(period: str, now: datetime) -> datetime | None:
    """When the next period starts (UTC midnight), or None for a total budget."""
    start = period_start(period, now)
    if start is None:
        return None
    if period == BudgetPeriod.DAY:
        following = start + timedelta(days=1)
    elif period == BudgetPeriod.WEEK:
        following = start + timedelta(days=7)
    else:
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime.combine(following, time.min, tzinfo=UTC)


class SpendLimits(models.Model):
    """The limits and counters a token and a project share. The counters are written only by the proxy's own
    statements (admission, settlement, the usage writer), never by a form."""

    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests admitted in a clock minute; blank for no limit."
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Prompt + completion tokens the upstream reported, in a clock minute; blank for no limit.",
    )
    budget_usd = models.DecimalField(
        max_digits=19, decimal_places=BUDGET_PLACES, null=True, blank=True, verbose_name="budget (USD)"
    )
    spent_usd = models.DecimalField(
        max_digits=26, decimal_places=SPEND_PLACES, default=Decimal(0), editable=False, verbose_name="spent (USD)"
    )
    rpm_minute = models.BigIntegerField(default=0, editable=False)
    rpm_count = models.PositiveIntegerField(default=0, editable=False)
    tpm_minute = models.BigIntegerField(default=0, editable=False)
    tpm_count = models.PositiveBigIntegerField(default=0, editable=False)

    # What the audit trail leaves out: usage, not operator actions.
    COUNTERS = ("spent_usd", "rpm_minute", "rpm_count", "tpm_minute", "tpm_count")

    class Meta:
        abstract = True

    def requests_this_minute(self, now: datetime) -> int:
        return self.rpm_count if self.rpm_minute == minute_key(now) else 0

    def tokens_this_minute(self, now: datetime) -> int:
        return self.tpm_count if self.tpm_minute == minute_key(now) else 0


def clean_per_minute(value: int | None, field: str) -> int | None:
    """None removes the limit; 0 is refused (it is not "unlimited")."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceError("invalid_type", f"{field} must be a whole number (or null for no limit).", field=field)
    if not 1 <= value <= PER_MINUTE_MAX:
        raise ServiceError("out_of_range", f"{field} must be from 1 to {PER_MINUTE_MAX} (or null).", field=field)
    return value


def clean_budget(value: Decimal | int | str | None, field: str = "budget_usd") -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value)) if not isinstance(value, bool) else None
    except ArithmeticError:
        amount = None
    if amount is None or not amount.is_finite():
        raise ServiceError("invalid_type", f"{field} must be an amount in US dollars (or null).", field=field)
    amount = amount.quantize(Decimal(1).scaleb(-BUDGET_PLACES), rounding=ROUND_HALF_UP)
    if not BUDGET_MIN <= amount <= BUDGET_MAX:
        raise ServiceError("out_of_range", f"{field} must be from {BUDGET_MIN} to {BUDGET_MAX} (or null).", field=field)
    return amount


def clean_period(value: str) -> str:
    if value not in BudgetPeriod.values:
        choices = ", ".join(BudgetPeriod.values)
        raise ServiceError("invalid_choice", f"budget_period must be one of: {choices}.", field="budget_period")
    return value


SHARED_LIMITS = ("requests_per_minute", "tokens_per_minute", "budget_usd")


def clean_limits(limits: dict) -> dict:
    """The limits given, checked (a name not among a token's or a project's limits is a bug of the caller)."""
    cleaned = {}
    for name, value in limits.items():
        if name == "budget_usd":
            cleaned[name] = clean_budget(value)
        elif name == "budget_period":
            cleaned[name] = clean_period(value)
        elif name in ("requests_per_minute", "tokens_per_minute"):
            cleaned[name] = clean_per_minute(value, name)
        else:
            raise TypeError(f"not a limit: {name}")
    return cleaned
