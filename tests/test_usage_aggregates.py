"""Per-day aggregates: written with the records, exact under concurrent writers, backfilled, and read by the
selectors behind the admin's charts."""

import datetime
import importlib
import threading
import uuid
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from proxy import selectors
from proxy.counting import TokenCounts
from proxy.models import UsageDaily, UsageRecord
from proxy.writer import Record, UsageWriter, _row, store, store_each
from tests.live import wait_for_usage

UTC = datetime.UTC
NOW = timezone.now()


def record(*, time: datetime.datetime = NOW, status: int = 200, **fields) -> Record:
    return Record(
        time=time,
        method="POST",
        path="/v1/chat/completions",
        status=status,
        duration_ms=12.5,
        request_id=uuid.uuid4().hex,
        client_ip="10.0.0.9",
        **fields,
    )


def daily() -> dict[tuple, tuple]:
    """Every aggregate row, by its key."""
    return {
        (row.day, row.project_id, row.token_id, row.model): (
            row.requests,
            row.errors,
            row.streamed,
            row.prompt_tokens,
            row.completion_tokens,
            row.total_tokens,
        )
        for row in UsageDaily.objects.all()
    }


def summed_from_records() -> dict[tuple, tuple]:
    """What the aggregate must hold: the same sums computed from the records themselves."""
    result = {}
    for record in UsageRecord.objects.all():
        key = (record.time.astimezone(UTC).date(), record.project_id, record.token_id, record.model)
        current = result.get(key, (0,) * 6)
        result[key] = tuple(
            a + b
            for a, b in zip(
                current,
                (
                    1,
                    int(record.status >= 400),
                    int(record.streamed),
                    record.prompt_tokens or 0,
                    record.completion_tokens or 0,
                    record.total_tokens or 0,
                ),
                strict=True,
            )
        )
    return result


@pytest.fixture
def project_and_token(make_project, make_token):
    project = make_project()
    return project, make_token(project).token


@pytest.mark.usefixtures("transactional_db")
def test_a_batch_is_summed_per_day_project_token_and_model(project_and_token, make_project):
    project, token = project_and_token
    other = make_project()
    midnight = datetime.datetime.combine(NOW.date(), datetime.time(), tzinfo=UTC)
    mine = {"project_id": project.pk, "token_id": token.pk}
    batch = [
        record(**mine, model="gpt-4o", counts=TokenCounts(10, 5, 15)),
        record(**mine, model="gpt-4o", counts=TokenCounts(1, 2, 3), streamed=True),
        record(**mine, model="gpt-4o", status=502),  # no usage known: counts as zero tokens
        record(**mine, model="gpt-4o-mini", counts=TokenCounts(prompt_tokens=7)),  # partial counts
        record(**mine, model="", status=404),  # no model named
        record(**mine, model="gpt-4o", time=midnight - datetime.timedelta(seconds=1), counts=TokenCounts(2, 2, 4)),
        record(project_id=other.pk, model="gpt-4o", status=403, refusal_code="project_inactive"),
        # refusals of unknown tokens name neither project nor token
        record(token_prefix="sk-wt-abcdef", status=401, refusal_code="invalid_token"),
        record(token_prefix="sk-wt-123456", status=401, refusal_code="invalid_token"),
        record(**mine, model="gpt-4o", json_tail=b'{"usage": {"prompt_tokens": 4, "completion_tokens": 1}}'),
    ]
    UsageWriter().write(batch)

    today, yesterday = midnight.date(), midnight.date() - datetime.timedelta(days=1)
    assert daily() == {
        (today, project.pk, token.pk, "gpt-4o"): (4, 1, 1, 15, 8, 18),
        (today, project.pk, token.pk, "gpt-4o-mini"): (1, 0, 0, 7, 0, 0),
        (today, project.pk, token.pk, ""): (1, 1, 0, 0, 0, 0),
        (yesterday, project.pk, token.pk, "gpt-4o"): (1, 0, 0, 2, 2, 4),
        (today, other.pk, None, "gpt-4o"): (1, 1, 0, 0, 0, 0),
        (today, None, None, ""): (2, 2, 0, 0, 0, 0),
    }
    assert daily() == summed_from_records()


@pytest.mark.usefixtures("transactional_db")
def test_later_batches_add_to_the_same_groups_including_those_without_project_or_token(project_and_token):
    project, token = project_and_token
    writer = UsageWriter()
    for _ in range(3):
        writer.write(
            [
                record(project_id=project.pk, token_id=token.pk, model="gpt-4o", counts=TokenCounts(1, 1, 2)),
                record(token_prefix="sk-wt-abcdef", status=401),
                record(project_id=project.pk, status=403),
            ]
        )

    today = NOW.astimezone(UTC).date()
    assert daily() == {
        (today, project.pk, token.pk, "gpt-4o"): (3, 0, 0, 3, 3, 6),
        (today, None, None, ""): (3, 3, 0, 0, 0, 0),
        (today, project.pk, None, ""): (3, 3, 0, 0, 0, 0),
    }
    assert UsageDaily.objects.count() == 3


@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.usefixtures("transactional_db")
def test_rows_stored_again_are_not_counted_again(project_and_token, size):
    """A batch written back from the spill file after its commit was in fact made (the connection dropped while
    the commit's answer was on its way) adds nothing. Small batches and large ones are inserted differently."""
    project, token = project_and_token
    rows = [
        _row(
            record(
                project_id=project.pk, token_id=token.pk, model="gpt-4o", counts=TokenCounts(2, 3, 5), count_later=True
            )
        )
        for _ in range(size)
    ]
    assert store([dict(row) for row in rows]) == size
    assert store([dict(row) for row in rows]) == 0
    fresh = _row(
        record(project_id=project.pk, token_id=token.pk, model="gpt-4o", counts=TokenCounts(2, 3, 5), count_later=True)
    )
    assert store([dict(row) for row in rows[: size - 1]] + [fresh]) == 1

    assert UsageRecord.objects.count() == size + 1
    n = size + 1
    assert daily() == {(NOW.astimezone(UTC).date(), project.pk, token.pk, "gpt-4o"): (n, 0, 0, 2 * n, 3 * n, 5 * n)}
    token.refresh_from_db()
    assert token.request_count == n  # each request counted with its record, once


@pytest.mark.usefixtures("transactional_db")
def test_concurrent_writers_keep_exact_sums(project_and_token):
    """Two writers (each with its own database connection, like two gunicorn workers) hit the same groups."""
    project, token = project_and_token
    rounds, failures = 25, []
    start = threading.Barrier(2)

    def write(model_order: list[str]) -> None:
        writer = UsageWriter()
        try:
            start.wait(10)
            for _ in range(rounds):
                writer.write(
                    [
                        record(project_id=project.pk, token_id=token.pk, model=model, counts=TokenCounts(2, 3, 5))
                        for model in model_order
                    ]
                    + [record(status=401)]
                )
        except Exception as error:  # pragma: no cover - reported below
            failures.append(error)
        finally:
            connection.close()

    models = ["gpt-4o", "gpt-4o-mini", "o3"]
    threads = [threading.Thread(target=write, args=(order,)) for order in (models, models[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert failures == []
    today = NOW.astimezone(UTC).date()
    expected = {
        (today, project.pk, token.pk, m): (2 * rounds, 0, 0, 4 * rounds, 6 * rounds, 10 * rounds) for m in models
    }
    expected[(today, None, None, "")] = (2 * rounds, 2 * rounds, 0, 0, 0, 0)
    assert daily() == expected
    assert UsageRecord.objects.count() == 2 * rounds * 4


@pytest.mark.usefixtures("transactional_db")
def test_a_failed_batch_leaves_no_half_written_sums(project_and_token, monkeypatch):
    """Records and sums commit together: a batch that fails leaves neither; written again (row by row, as the writer
    does after a failure of its own), each counts once, even a row written twice."""
    project, token = project_and_token
    real, calls = UsageDaily.objects.add, []

    def failing_once(rows, together=None):
        calls.append(len(rows))
        real(rows, together)
        if len(calls) == 1:
            raise RuntimeError("a row the database refuses")

    monkeypatch.setattr(UsageDaily.objects, "add", failing_once)
    rows = [_row(record(project_id=project.pk, token_id=token.pk, model="gpt-4o")) for _ in range(4)]
    with pytest.raises(RuntimeError):
        store(rows)
    assert UsageRecord.objects.count() == 0 and daily() == {}

    assert store_each(rows) == []
    assert store(rows[:2]) == 0  # written already: a retried or replayed batch adds nothing

    assert calls == [4, 1, 1, 1, 1, 0]
    assert UsageRecord.objects.count() == 4
    assert daily() == {(NOW.astimezone(UTC).date(), project.pk, token.pk, "gpt-4o"): (4, 0, 0, 0, 0, 0)}


@pytest.mark.django_db
def test_the_migration_backfills_records_written_before_the_aggregate(project_and_token):
    project, token = project_and_token
    base = datetime.datetime(2025, 3, 1, 22, 0, tzinfo=UTC)
    common = {"method": "POST", "path": "/v1/embeddings", "duration_ms": 3.0, "request_id": "r"}
    for hours, status, model, prompt in [(0, 200, "e", 5), (1, 200, "e", None), (3, 500, "e", 1), (24 * 9, 200, "", 2)]:
        UsageRecord.objects.create(
            time=base + datetime.timedelta(hours=hours),
            project=project,
            token=token,
            status=status,
            model=model,
            prompt_tokens=prompt,
            total_tokens=prompt,
            **common,
        )
    UsageRecord.objects.create(time=base, status=401, **common)
    backfill = importlib.import_module("proxy.migrations.0002_usage_daily").backfill

    backfill(apps, SimpleNamespace(connection=connection))

    day = base.date()
    assert daily() == {
        (day, project.pk, token.pk, "e"): (2, 0, 0, 5, 0, 5),
        (day + datetime.timedelta(days=1), project.pk, token.pk, "e"): (1, 1, 0, 1, 0, 1),
        (day + datetime.timedelta(days=9), project.pk, token.pk, ""): (1, 0, 0, 2, 0, 2),
        (day, None, None, ""): (1, 1, 0, 0, 0, 0),
    }
    assert daily() == summed_from_records()


@pytest.mark.usefixtures("live_db")
def test_requests_through_the_proxy_land_in_the_aggregate(openai_client, make_project, make_token):
    project = make_project()
    issued = make_token(project)
    client = openai_client(issued.plaintext)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    client.embeddings.create(model="text-embedding-3-small", input="Hi")

    wait_for_usage(2)
    assert daily() == summed_from_records()
    assert selectors.usage_totals(token=issued.token).requests == 2
    assert sorted(selectors.top_models(project=project)) == [("gpt-4o", 1), ("text-embedding-3-small", 1)]


# --- Selectors -------------------------------------------------------------------------------------------------


def add(day_offset: int, *, project=None, token=None, model: str = "gpt-4o", requests: int = 1, errors: int = 0):
    return UsageDaily.objects.create(
        day=selectors.utc_today() - datetime.timedelta(days=day_offset),
        project=project,
        token=token,
        model=model,
        requests=requests,
        errors=errors,
        prompt_tokens=requests * 10,
        completion_tokens=requests * 2,
        total_tokens=requests * 12,
    )


@pytest.mark.django_db
def test_daily_usage_is_one_entry_per_day_zero_filled(project_and_token, make_project):
    project, token = project_and_token
    add(0, project=project, token=token, requests=3, errors=1)
    add(0, project=project, token=token, model="o3", requests=2)
    add(2, project=project, token=None, model="", requests=4, errors=4)
    add(7, project=project, token=token, requests=100)  # outside a 7-day window
    add(1, project=make_project(), requests=50)

    days = selectors.usage_daily(project=project, days=7)

    today = selectors.utc_today()
    assert [d.day for d in days] == [today - datetime.timedelta(days=n) for n in range(6, -1, -1)]
    assert [(d.requests, d.errors) for d in days] == [(0, 0)] * 4 + [(4, 4), (0, 0), (5, 1)]
    assert days[-1] == selectors.DayUsage(day=today, requests=5, errors=1, prompt_tokens=50, completion_tokens=10)
    assert [d.requests for d in selectors.usage_daily(token=token, days=3)] == [0, 0, 5]
    assert [d.requests for d in selectors.usage_daily(days=2)] == [50, 5]


@pytest.mark.django_db
def test_totals_over_a_window_or_all_time(project_and_token):
    project, token = project_and_token
    add(0, project=project, token=token, requests=3, errors=1)
    add(40, project=project, token=token, requests=7, errors=2)
    add(0, requests=11, errors=11, model="")

    assert selectors.usage_totals(project=project) == selectors.UsageTotals(10, 3, 100, 20)
    assert selectors.usage_totals(token=token, days=30) == selectors.UsageTotals(3, 1, 30, 6)
    assert selectors.usage_totals().requests == 21
    assert selectors.usage_totals(days=1).requests == 14
    assert selectors.usage_totals(project=uuid.uuid4()) == selectors.UsageTotals(0, 0, 0, 0)


@pytest.mark.django_db
def test_top_models_leave_out_requests_without_a_model(project_and_token):
    project, token = project_and_token
    add(0, project=project, token=token, model="gpt-4o", requests=3)
    add(1, project=project, token=token, model="gpt-4o", requests=3)
    add(0, project=project, token=token, model="o3", requests=5)
    add(0, project=project, token=token, model="", requests=99)
    add(0, project=project, token=token, model="old", requests=50)
    UsageDaily.objects.filter(model="old").update(day=selectors.utc_today() - datetime.timedelta(days=30))

    assert selectors.top_models(project=project) == [("gpt-4o", 6), ("o3", 5)]
    assert selectors.top_models(token=token, limit=1) == [("gpt-4o", 6)]
    assert selectors.top_models(days=1) == [("o3", 5), ("gpt-4o", 3)]


@pytest.mark.django_db
def test_busiest_projects_and_tokens(make_project, make_token):
    quiet, busy, idle = make_project(), make_project(), make_project()
    quiet_token, busy_token = make_token(quiet).token, make_token(busy).token
    add(0, project=quiet, token=quiet_token, requests=2, errors=1)
    add(3, project=busy, token=busy_token, requests=5, errors=2)
    add(5, project=busy, token=busy_token, model="o3", requests=4)
    add(20, project=idle, requests=1000)  # outside the 14 days
    add(0, requests=500, errors=500, model="")  # refusals without a project or token

    assert selectors.busiest_projects() == [(busy, 9, 2), (quiet, 2, 1)]
    assert selectors.busiest_projects(limit=1) == [(busy, 9, 2)]
    tokens = selectors.busiest_tokens()
    assert tokens == [(busy_token, 9, 2), (quiet_token, 2, 1)]
    assert tokens[0][0].project == busy
    assert selectors.busiest_projects(days=30)[0] == (idle, 1000, 0)


@pytest.mark.django_db
def test_recent_requests_newest_first(project_and_token, make_project):
    project, token = project_and_token
    common = {"method": "POST", "path": "/v1/chat/completions", "status": 200, "duration_ms": 1.0}
    for minutes in (5, 1, 3):
        UsageRecord.objects.create(
            time=NOW - datetime.timedelta(minutes=minutes),
            project=project,
            token=token,
            request_id=f"r{minutes}",
            **common,
        )
    UsageRecord.objects.create(time=NOW, project=make_project(), request_id="elsewhere", **common)

    assert [r.request_id for r in selectors.recent_requests(project=project)] == ["r1", "r3", "r5"]
    assert [r.request_id for r in selectors.recent_requests(token=token, limit=2)] == ["r1", "r3"]
    assert selectors.recent_requests(limit=1)[0].request_id == "elsewhere"
    assert selectors.recent_requests(project=project)[0].token == token
