"""Retention: `purge_usage` deletes old usage records and security events in small batches, keeps the per-day sums,
and a dry run changes nothing."""

import io
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from llmproxy.security.models import SecurityEvent, SecurityEventKind
from proxy import selectors
from proxy.counting import TokenCounts
from proxy.models import UsageDaily, UsageRecord
from proxy.writer import Record, UsageWriter

NOW = datetime.now(UTC)


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_usage", *args, stdout=out)
    return out.getvalue()


def write_usage(project, token, *, days_ago: float, count: int = 1) -> None:
    """Requests of `days_ago` days ago, written the way the proxy writes them (records and per-day sums)."""
    UsageWriter().write(
        [
            Record(
                time=NOW - timedelta(days=days_ago),
                method="POST",
                path="/v1/chat/completions",
                status=200,
                duration_ms=3.0,
                request_id=uuid.uuid4().hex,
                client_ip="10.0.0.1",
                project_id=project.pk,
                token_id=token.pk,
                model="gpt-4o",
                counts=TokenCounts(3, 4, 7),
            )
            for _ in range(count)
        ]
    )


def event(*, last_seen_days_ago: float, first_seen_days_ago: float | None = None, ip: str = "10.9.9.9"):
    last_seen = NOW - timedelta(days=last_seen_days_ago)
    first_seen = NOW - timedelta(days=first_seen_days_ago or last_seen_days_ago)
    return SecurityEvent.objects.create(
        kind=SecurityEventKind.PROXY_AUTH_FAILED,
        reason="unknown",
        client_ip=ip,
        hour=first_seen.replace(minute=0, second=0, microsecond=0),
        first_seen=first_seen,
        last_seen=last_seen,
        count=3,
    )


@pytest.fixture
def token(make_project, make_token):
    return make_token(make_project()).token


@pytest.mark.usefixtures("transactional_db")
def test_old_records_and_events_go_and_the_daily_sums_stay(token, settings):
    settings.USAGE_RETENTION_DAYS = 30
    project = token.project
    write_usage(project, token, days_ago=45, count=3)
    write_usage(project, token, days_ago=31)
    write_usage(project, token, days_ago=29, count=2)
    old_event = event(last_seen_days_ago=40)
    kept_event = event(last_seen_days_ago=1, first_seen_days_ago=50, ip="10.8.8.8")  # still active: kept
    sums_before = list(UsageDaily.objects.order_by("day").values_list("day", "requests", "total_tokens"))
    summary_before = selectors.usage_totals(project=project)

    output = purge()

    assert output.startswith("deleted 4 usage records and 1 security events older than ")
    assert UsageRecord.objects.count() == 2
    assert all(r.time > NOW - timedelta(days=30) for r in UsageRecord.objects.all())
    assert list(SecurityEvent.objects.values_list("pk", flat=True)) == [kept_event.pk]
    assert not SecurityEvent.objects.filter(pk=old_event.pk).exists()
    # The charts and the usage API read the sums, which are all still there.
    assert list(UsageDaily.objects.order_by("day").values_list("day", "requests", "total_tokens")) == sums_before
    assert selectors.usage_totals(project=project) == summary_before == selectors.UsageTotals(6, 0, 18, 24)
    assert purge().startswith("deleted 0 usage records and 0 security events")


@pytest.mark.usefixtures("transactional_db")
def test_a_dry_run_counts_and_changes_nothing(token):
    write_usage(token.project, token, days_ago=100, count=2)
    write_usage(token.project, token, days_ago=10)
    event(last_seen_days_ago=95)

    assert purge("--dry-run").startswith("would delete 2 usage records and 1 security events older than ")
    assert (UsageRecord.objects.count(), SecurityEvent.objects.count()) == (3, 1)
    assert purge("--dry-run", "--days", "5").startswith("would delete 3 usage records and 1 security events")
    assert (UsageRecord.objects.count(), SecurityEvent.objects.count()) == (3, 1)


@pytest.mark.usefixtures("transactional_db")
def test_days_overrides_the_setting(token, settings):
    settings.USAGE_RETENTION_DAYS = 365
    write_usage(token.project, token, days_ago=8, count=2)
    write_usage(token.project, token, days_ago=6)

    assert purge().startswith("deleted 0 usage records")
    assert purge("--days", "7").startswith("deleted 2 usage records")
    assert UsageRecord.objects.count() == 1


@pytest.mark.usefixtures("transactional_db")
def test_a_tiny_batch_size_deletes_everything_one_short_statement_at_a_time(token):
    write_usage(token.project, token, days_ago=200, count=7)
    write_usage(token.project, token, days_ago=1)
    for days in (120, 130, 140):
        event(last_seen_days_ago=days, ip=f"10.0.0.{days}")

    with CaptureQueriesContext(connection) as queries:
        output = purge("--batch-size", "2")

    assert output.startswith("deleted 7 usage records and 3 security events")
    assert UsageRecord.objects.count() == 1 and SecurityEvent.objects.count() == 0
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    deletes = [sql for sql in statements if sql.startswith("DELETE")]
    # 2 + 2 + 2 + 1 records, 2 + 1 events, then an empty batch of login throttles and one of expired cached answers:
    # each batch one DELETE of at most 2 rows picked by a subquery.
    assert len(deletes) == 8
    assert all("LIMIT 2" in sql for sql in deletes)
    assert not [sql for sql in statements if sql.startswith("SELECT")]  # rows are never loaded into memory


@pytest.mark.django_db
def test_one_log_line_says_who_purged_what(token, caplog, settings):
    settings.USAGE_RETENTION_DAYS = 90
    UsageRecord.objects.create(
        time=NOW - timedelta(days=400), method="GET", path="/v1/models", status=200, duration_ms=1, request_id="r"
    )
    with caplog.at_level(logging.INFO, logger="proxy.retention"):
        purge()
        purge("--dry-run")

    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.retention"]
    assert len(lines) == 1
    assert lines[0].startswith("usage purge by command line (")
    assert " via cli: deleted 1 usage records and 0 security events older than " in lines[0]
    assert lines[0].endswith("(90 days), and 0 login throttles no longer needed")


@pytest.mark.django_db
@pytest.mark.parametrize("args", [["--days", "0"], ["--batch-size", "0"], ["--days", "-3"], ["--days", "x"]])
def test_nonsense_arguments_are_refused(args):
    with pytest.raises(CommandError, match="must be a whole number of at least 1"):
        purge(*args)
