"""Admin login throttling: the whole rule.

- A user name with `LOGIN_MAX_FAILURES_PER_USER` failed logins within `LOGIN_FAILURE_WINDOW_MINUTES`, or a client
  address with `LOGIN_MAX_FAILURES_PER_ADDRESS`, is locked for `LOGIN_LOCKOUT_MINUTES`; a lockout that begins within
  `LOGIN_LOCKOUT_REPEAT_HOURS` of the end of the previous one lasts twice as long as that one, up to
  `LOGIN_LOCKOUT_MAX_MINUTES`. While locked, every attempt is refused (the right password too) before a password is
  hashed. A successful login clears the user name's failures (not the address's, nor the lockout series).
- The counts are rows of `LoginThrottle`, changed by atomic upserts inside the failed login's transaction, so they
  are exact across workers and instances; a lockout is set, and recorded as a security event, in that transaction.
- The hashing done for logins is bounded per worker process (`PasswordCheckGate`), so a flood of attempts cannot
  take the CPU the proxy needs; an attempt over the bound is refused without hashing.

The client address is `REMOTE_ADDR` (the server resolves X-Forwarded-For of trusted proxies, never the app); an IPv6
address counts as its /64, which one client usually holds whole. Hooked in by `llmproxy.security.backends`.
"""

import ipaddress
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .events import normalise_ip, record_security_event
from .models import LoginThrottle, LoginThrottleScope, SecurityEventKind
from .scrub import scrub_secrets

BUSY_MESSAGE = "Too many login attempts, try again in a moment."
KEY_MAX_LENGTH = LoginThrottle._meta.get_field("key").max_length
REFUSAL_ATTRIBUTE = "login_refusal"


class LoginRefused(Exception):
    """A login refused before its password was checked; the message is for the login page."""


@dataclass(frozen=True)
class Attempt:
    """Who tries to log in: the user name as typed and the peer address, as the throttle keys them."""

    username: str
    client_ip: str

    @classmethod
    def of(cls, request: HttpRequest, username: str) -> "Attempt":
        return cls(
            username=scrub_secrets(str(username))[:KEY_MAX_LENGTH],
            client_ip=normalise_ip(request.META.get("REMOTE_ADDR")),
        )

    @property
    def address(self) -> str:
        """The address key: the IP address, or the /64 of an IPv6 one ("" when unknown)."""
        if not self.client_ip:
            return ""
        address = ipaddress.ip_address(self.client_ip)
        if address.version == 6:
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return self.client_ip

    def counters(self) -> list[tuple[str, str, int]]:
        """(scope, key, failure limit) for each thing this attempt counts against, user name first."""
        keys = [(LoginThrottleScope.USER.value, self.username, settings.LOGIN_MAX_FAILURES_PER_USER)]
        if self.address:
            keys.append((LoginThrottleScope.ADDRESS.value, self.address, settings.LOGIN_MAX_FAILURES_PER_ADDRESS))
        return keys


def check(attempt: Attempt) -> bool:
    """Raise `LoginRefused` while the user name or the address is locked (one indexed read, no hashing); otherwise
    return whether the user name has failures a success would clear."""
    now = timezone.now()
    query = Q()
    for scope, key, _ in attempt.counters():
        query |= Q(scope=scope, key=key)
    has_failures, locked_until = False, None
    for scope, failures, until in LoginThrottle.objects.filter(query).values_list("scope", "failures", "locked_until"):
        if until is not None and until > now:
            locked_until = max(until, locked_until or until)
        has_failures |= scope == LoginThrottleScope.USER and failures > 0
    if locked_until is not None:
        raise LoginRefused(f"Too many failed login attempts. Try again in {_duration(locked_until - now)}.")
    return has_failures


def record_failure(attempt: Attempt) -> None:
    """Count a failed login against its user name and its address; lock whichever reaches its limit.

    Each count is one atomic upsert and the lockout is set in the same transaction (the upsert holds the row), so of
    concurrent failures exactly one locks, and records the lockout as a security event.
    """
    now = timezone.now()
    window_start = now - timedelta(minutes=settings.LOGIN_FAILURE_WINDOW_MINUTES)
    series_after = now - timedelta(hours=settings.LOGIN_LOCKOUT_REPEAT_HOURS)
    prep = connection.ops.adapt_datetimefield_value
    with transaction.atomic(), connection.cursor() as cursor:
        for scope, key, limit in attempt.counters():
            cursor.execute(
                _upsert_sql(connection.alias),
                [scope, key, prep(now), prep(window_start), prep(window_start), prep(now), prep(series_after)],
            )
            pk, failures, locked, previous_lockouts = cursor.fetchone()
            if failures >= limit and not locked:
                _lock(attempt, pk, scope, now, previous_lockouts)


def clear_failures(attempt: Attempt) -> None:
    """A successful login: the user name's failures start again from zero."""
    LoginThrottle.objects.filter(scope=LoginThrottleScope.USER, key=attempt.username, failures__gt=0).update(failures=0)


def unlock(*, username: str = "", client_ip: str = "") -> int:
    """Lift the lockout of a user name and/or a client address and forget their failures and lockout series (for an
    operator locked out by someone else's attempts); how many rows were cleared."""
    attempt = Attempt(username=username, client_ip=normalise_ip(client_ip))
    query = Q()
    for scope, key, _ in attempt.counters():
        if key:
            query |= Q(scope=scope, key=key)
    return LoginThrottle.objects.filter(query).delete()[0] if query else 0


def refuse(request: HttpRequest, refusal: LoginRefused) -> None:
    """Mark the request as refused by the throttle, so the login form can say why and no failure is counted."""
    setattr(request, REFUSAL_ATTRIBUTE, str(refusal))


def refusal(request: HttpRequest | None) -> str | None:
    """Why the throttle refused this request's login, or None."""
    return getattr(request, REFUSAL_ATTRIBUTE, None)


def stale_throttles(now: datetime | None = None) -> QuerySet[LoginThrottle]:
    """Rows that no longer change anything: their window has passed, and they are unlocked and past the time in
    which another lockout would double (for `purge_usage`)."""
    now = now or timezone.now()
    return LoginThrottle.objects.filter(
        Q(locked_until__isnull=True) | Q(locked_until__lte=now - timedelta(hours=settings.LOGIN_LOCKOUT_REPEAT_HOURS)),
        window_start__lte=now - timedelta(minutes=settings.LOGIN_FAILURE_WINDOW_MINUTES),
    ).order_by("window_start")


class PasswordCheckGate:
    """The bound on password hashing for logins in this process: one check at a time, and a token bucket of
    `LOGIN_PASSWORD_CHECKS_BURST` refilled at `LOGIN_PASSWORD_CHECKS_PER_MINUTE`. Over it, `LoginRefused`."""

    def __init__(self) -> None:
        self._busy = threading.Lock()
        self._tokens = float(settings.LOGIN_PASSWORD_CHECKS_BURST)
        self._updated = time.monotonic()

    @contextmanager
    def admit(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise LoginRefused(BUSY_MESSAGE)
        try:
            now = time.monotonic()
            refill = (now - self._updated) * settings.LOGIN_PASSWORD_CHECKS_PER_MINUTE / 60
            self._tokens, self._updated = min(settings.LOGIN_PASSWORD_CHECKS_BURST, self._tokens + refill), now
            if self._tokens < 1:
                raise LoginRefused(BUSY_MESSAGE)
            self._tokens -= 1
            yield
        finally:
            self._busy.release()


password_checks = PasswordCheckGate()


def _lock(attempt: Attempt, pk: int, scope: str, now: datetime, previous_lockouts: int) -> None:
    """Lock a row that reached its limit: twice as long as the previous lockout of its series, up to the cap."""
    minutes = min(settings.LOGIN_LOCKOUT_MINUTES * 2**previous_lockouts, settings.LOGIN_LOCKOUT_MAX_MINUTES)
    duration = timedelta(minutes=minutes)
    LoginThrottle.objects.filter(pk=pk).update(
        failures=0, window_start=now, locked_until=now + duration, lockouts=previous_lockouts + 1
    )
    what = "user name" if scope == LoginThrottleScope.USER else f"address {attempt.address}"
    record_security_event(
        kind=SecurityEventKind.ADMIN_LOGIN_LOCKED,
        client_ip=attempt.client_ip,
        username=attempt.username if scope == LoginThrottleScope.USER else "",
        detail=f"{what} locked for {_duration(duration)} (lockout {previous_lockouts + 1} in a row)",
    )


@cache
def _upsert_sql(alias: str) -> str:
    """Count one failure: INSERT … ON CONFLICT DO UPDATE … RETURNING, the same statement on SQLite and PostgreSQL.

    A window that has passed starts again at this failure. Returns the row's id, its failures, whether it is locked
    now, and how many lockouts of its series came before (0 once the last one ended before the repeat period).
    Parameters: scope, key, now, window start, window start, now, series start.
    """
    qn = connections[alias].ops.quote_name
    meta = LoginThrottle._meta

    def col(name: str) -> str:
        return qn(meta.get_field(name).column)

    table = qn(meta.db_table)
    failures, window_start, locked_until = col("failures"), col("window_start"), col("locked_until")
    return (
        f"INSERT INTO {table} ({col('scope')}, {col('key')}, {failures}, {window_start}, {col('lockouts')}) "
        "VALUES (%s, %s, 1, %s, 0) "
        f"ON CONFLICT ({col('scope')}, {col('key')}) DO UPDATE SET "
        f"{failures} = CASE WHEN {table}.{window_start} > %s THEN {table}.{failures} + 1 ELSE 1 END, "
        f"{window_start} = CASE WHEN {table}.{window_start} > %s THEN {table}.{window_start} "
        f"ELSE excluded.{window_start} END "
        f"RETURNING {col('id')}, {failures}, "
        f"CASE WHEN {locked_until} > %s THEN 1 ELSE 0 END, "
        f"CASE WHEN {locked_until} > %s THEN {col('lockouts')} ELSE 0 END"
    )


def _duration(delta: timedelta) -> str:
    """A wait, rounded up to the minute: "1 minute", "15 minutes", "2 hours", "1 hour 30 minutes"."""
    minutes = max(1, math.ceil(delta.total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} hour{'s' * (hours != 1)}"] if hours else []
    if minutes:
        parts.append(f"{minutes} minute{'s' * (minutes != 1)}")
    return " ".join(parts)
