"""Retention: usage records and security events older than the retention period are deleted, in small batches, as
are login throttles that no longer change anything (`llmproxy.security.throttle.stale_throttles`) and expired answers
of the response cache's database backend.

Each batch is one short statement (`DELETE … WHERE id IN (SELECT id … ORDER BY time LIMIT n)`) in its own
transaction, so the proxy's writers never wait long behind a purge, whatever the size of the backlog. The per-day
sums (`UsageDaily`) are kept: charts and summaries over older periods stay right.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from llmproxy.audit import Actor
from llmproxy.security.models import SecurityEvent
from llmproxy.security.throttle import stale_throttles

from .models import CacheEntry, UsageRecord

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10_000


@dataclass(frozen=True)
class PurgeResult:
    cutoff: datetime
    usage_records: int
    security_events: int
    login_throttles: int
    dry_run: bool
    cache_entries: int = 0


def usage_purge(
    *,
    actor: Actor,
    days: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PurgeResult:
    """Delete usage records that arrived, and security events last seen, more than `days` days ago (default
    `USAGE_RETENTION_DAYS`), and login throttles no longer needed; with `dry_run`, only count them. Logs one line
    saying who purged what."""
    days = settings.USAGE_RETENTION_DAYS if days is None else days
    if days < 1 or batch_size < 1:
        raise ValueError("days and batch_size must be at least 1")
    cutoff = (now or timezone.now()) - timedelta(days=days)
    records = UsageRecord.objects.filter(time__lt=cutoff).order_by("time")
    events = SecurityEvent.objects.filter(last_seen__lt=cutoff).order_by("last_seen")
    throttles = stale_throttles(now)
    expired = expired_cache_entries(now)
    if dry_run:
        return PurgeResult(
            cutoff, records.count(), events.count(), throttles.count(), dry_run=True, cache_entries=expired.count()
        )
    result = PurgeResult(
        cutoff,
        _delete_in_batches(records, batch_size),
        _delete_in_batches(events, batch_size),
        _delete_in_batches(throttles, batch_size),
        dry_run=False,
        cache_entries=_delete_in_batches(expired, batch_size),
    )
    logger.info(
        "usage purge by %s via %s: deleted %d usage records and %d security events older than %s (%d days), "
        "and %d login throttles no longer needed",
        actor,
        actor.via,
        result.usage_records,
        result.security_events,
        cutoff.isoformat(timespec="seconds"),
        days,
        result.login_throttles,
    )
    if result.cache_entries:
        logger.info("usage purge: deleted %d expired cached answers", result.cache_entries)
    return result


def expired_cache_entries(now: datetime | None = None) -> QuerySet[CacheEntry]:
    """The database backend's answers past their expiry (never served; Redis expires its own)."""
    return CacheEntry.objects.filter(expires_at__lte=now or timezone.now()).order_by("expires_at")


def expired_cache_purge(batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    return _delete_in_batches(expired_cache_entries(), batch_size)


def _delete_in_batches(rows: QuerySet, batch_size: int) -> int:
    """Delete the rows, oldest first, `batch_size` at a time, each batch its own transaction."""
    total = 0
    while True:
        # Nothing refers to these rows and no signal watches them, so Django deletes with the one statement.
        deleted, _ = rows.model.objects.filter(pk__in=rows.values("pk")[:batch_size]).delete()
        total += deleted
        if deleted < batch_size:
            return total
