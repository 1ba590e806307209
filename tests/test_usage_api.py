"""GET /manage/usage, as a billing script uses it: sums per day, token or model over a period, scoped for minting
keys, refusals explained."""

import datetime
import uuid
from decimal import Decimal

import pytest

from proxy.counting import TokenCounts
from proxy.models import UsageDaily
from proxy.selectors import utc_today
from proxy.writer import Record, UsageWriter
from tokens.minting import minting_key_create

MANAGEMENT_TOKEN = "test-management-token-usage-0123"
ZERO = {
    "requests": 0,
    "errors": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "cost_usd": "0",
    "total_tokens": 0,
    "cache_hits": 0,
    "saved_usd": "0",
}


@pytest.fixture(autouse=True)
def management_token(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN


@pytest.fixture
def usage(client):
    """GET /manage/usage with these query parameters: (status, JSON)."""

    def call(token: str | None = MANAGEMENT_TOKEN, **query):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
        response = client.get("/manage/usage", query, **headers)
        assert response["Content-Type"] == "application/json"
        return response.status_code, response.json()

    return call


def day(offset: int) -> datetime.date:
    return utc_today() - datetime.timedelta(days=offset)


def sums(requests: int, errors: int = 0) -> dict[str, int | str]:
    return {
        "requests": requests,
        "errors": errors,
        "prompt_tokens": 10 * requests,
        "completion_tokens": 2 * requests,
        "cost_usd": format((Decimal("0.01") * requests).normalize(), "f"),  # as the API writes it: exact, no zeros
        "total_tokens": 12 * requests,
        "cache_hits": 0,
        "saved_usd": "0",
    }


def add(offset: int, *, project=None, token=None, model: str = "gpt-4o", requests: int = 1, errors: int = 0) -> None:
    UsageDaily.objects.create(
        day=day(offset), project=project, token=token, model=model, **sums(requests, errors), streamed=0
    )


@pytest.fixture
def seeded(make_project, make_token):
    """Two projects: "web" with two tokens and several models over a few days, "batch" busy 40 days ago."""
    web, batch = make_project(name="web"), make_project(name="batch")
    alice = make_token(web, label="alice").token
    bob = make_token(web, label="bob").token
    robot = make_token(batch, label="robot").token
    add(0, project=web, token=alice, requests=3, errors=1)
    add(0, project=web, token=alice, model="o3", requests=2)
    add(1, project=web, token=bob, requests=4)
    add(5, project=web, token=None, model="", requests=6, errors=6)  # refused: project inactive, no token
    add(40, project=batch, token=robot, model="text-embedding-3-small", requests=100)
    add(0, requests=7, errors=7, model="")  # refused credentials: no project, no token
    return {"web": web, "batch": batch, "alice": alice, "bob": bob, "robot": robot}


@pytest.mark.django_db
def test_by_default_the_last_30_days_day_by_day(usage, seeded):
    status, body = usage()

    assert status == 200
    assert (body["from"], body["to"], body["group_by"]) == (day(29).isoformat(), day(0).isoformat(), "day")
    assert [row["day"] for row in body["rows"]] == [day(n).isoformat() for n in range(29, -1, -1)]
    by_day = {row.pop("day"): row for row in body["rows"]}
    assert by_day[day(0).isoformat()] == sums(12, 8)
    assert by_day[day(1).isoformat()] == sums(4)
    assert by_day[day(5).isoformat()] == sums(6, 6)
    assert by_day[day(2).isoformat()] == ZERO
    assert body["totals"] == sums(22, 14)


@pytest.mark.django_db
def test_filter_by_project_token_and_an_inclusive_period(usage, seeded):
    web, alice = seeded["web"], seeded["alice"]

    status, body = usage(project_id=str(web.pk), **{"from": day(5).isoformat(), "to": day(1).isoformat()})
    assert status == 200
    assert [(row["day"], row["requests"]) for row in body["rows"]] == [
        (day(5).isoformat(), 6),
        (day(4).isoformat(), 0),
        (day(3).isoformat(), 0),
        (day(2).isoformat(), 0),
        (day(1).isoformat(), 4),
    ]
    assert body["totals"] == sums(10, 6)

    assert usage(token_id=str(alice.pk))[1]["totals"] == sums(5, 1)
    assert usage(project_id=str(web.pk), token_id=str(seeded["robot"].pk))[1]["totals"] == ZERO
    assert usage(project_id=str(uuid.uuid4()))[1]["totals"] == ZERO


@pytest.mark.django_db
def test_older_periods_read_the_same_sums(usage, seeded):
    """Over a year back: what the retention purge leaves (it keeps the per-day sums)."""
    period = {"from": day(365).isoformat(), "to": day(0).isoformat()}
    status, body = usage(project_id=str(seeded["batch"].pk), group_by="model", **period)
    assert status == 200
    assert body["rows"] == [{"model": "text-embedding-3-small", **sums(100)}]


@pytest.mark.django_db
def test_group_by_token(usage, seeded):
    web, alice, bob = seeded["web"], seeded["alice"], seeded["bob"]

    status, body = usage(project_id=str(web.pk), group_by="token")

    assert status == 200 and body["group_by"] == "token"
    assert body["rows"] == [
        {"token_id": None, "token_prefix": None, "label": None, **sums(6, 6)},
        {"token_id": str(alice.pk), "token_prefix": alice.prefix, "label": "alice", **sums(5, 1)},
        {"token_id": str(bob.pk), "token_prefix": bob.prefix, "label": "bob", **sums(4)},
    ]
    assert body["totals"] == sums(15, 7)


@pytest.mark.django_db
def test_group_by_model(usage, seeded):
    status, body = usage(group_by="model", **{"from": day(1).isoformat()})

    assert status == 200
    assert body["rows"] == [
        {"model": "", **sums(7, 7)},
        {"model": "gpt-4o", **sums(7, 1)},
        {"model": "o3", **sums(2)},
    ]
    assert body["totals"] == sums(16, 8)


@pytest.mark.django_db(transaction=True)
def test_requests_written_by_the_proxy_writer_are_summed(usage, make_project, make_token):
    project = make_project()
    token = make_token(project, label="ci").token
    now = datetime.datetime.now(datetime.UTC)

    def record(**fields) -> Record:
        return Record(
            time=now,
            method="POST",
            path="/v1/chat/completions",
            duration_ms=5.0,
            request_id=uuid.uuid4().hex,
            client_ip="10.0.0.1",
            project_id=project.pk,
            token_id=token.pk,
            model="gpt-4o",
            **fields,
        )

    UsageWriter().write([record(status=200, counts=TokenCounts(5, 7, 12)), record(status=429)])
    UsageWriter().write([record(status=200, streamed=True, counts=TokenCounts(1, 1, 2))])

    status, body = usage(token_id=str(token.pk), group_by="model")
    assert status == 200
    assert body["rows"] == [
        {
            "model": "gpt-4o",
            "requests": 3,
            "errors": 1,
            "prompt_tokens": 6,
            "completion_tokens": 8,
            "cost_usd": "0",
            "total_tokens": 14,
            "cache_hits": 0,
            "saved_usd": "0",
        }
    ]


@pytest.mark.django_db
def test_a_period_of_366_days_is_the_longest(usage):
    status, body = usage(**{"from": day(365).isoformat(), "to": day(0).isoformat()})
    assert status == 200 and len(body["rows"]) == 366

    status, body = usage(**{"from": day(366).isoformat(), "to": day(0).isoformat()})
    assert (status, body["code"], body["field"]) == (400, "range_too_long", "to")
    # Only `from`: until today; only `to`: the 30 days ending then.
    assert usage(**{"from": day(366).isoformat()})[0] == 400
    status, body = usage(to="2024-03-10")
    assert (status, body["from"], len(body["rows"])) == (200, "2024-02-10", 30)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field", "code"),
    [
        ({"from": "2026-02-01", "to": "2026-01-31"}, "from", "invalid_range"),
        ({"from": "2026-02-30"}, "from", "invalid_format"),
        ({"to": "2026-01-31T00:00:00Z"}, "to", "invalid_format"),
        ({"to": "31/01/2026"}, "to", "invalid_format"),
        ({"from": "20260131"}, "from", "invalid_format"),
        ({"to": "0000-01-01"}, "to", "invalid_format"),
        ({"group_by": "project"}, "group_by", "invalid_choice"),
        ({"project_id": "web"}, "project_id", "invalid_format"),
        ({"token_id": "123"}, "token_id", "invalid_format"),
        ({"days": "7"}, "days", "unknown_field"),
        ({"project": str(uuid.uuid4())}, "project", "unknown_field"),
    ],
)
def test_invalid_queries_are_400_naming_the_field(usage, query, field, code):
    status, body = usage(**query)
    assert status == 400
    assert (body["field"], body["code"]) == (field, code)
    assert body["error"]


@pytest.mark.django_db
def test_the_earliest_dates_do_not_overflow(usage):
    status, body = usage(to="0001-01-03")
    assert (status, body["from"], len(body["rows"])) == (200, "0001-01-01", 3)


@pytest.mark.django_db
def test_a_minting_key_sees_its_own_project_only(usage, seeded, operator):
    web, batch = seeded["web"], seeded["batch"]
    key = minting_key_create(project=web, name="billing", actor=operator).plaintext

    status, body = usage(token=key)
    assert status == 200 and body["totals"] == sums(15, 7)  # its project, not the refusals of no project
    assert usage(token=key, project_id=str(web.pk), group_by="token")[1]["totals"] == sums(15, 7)

    status, body = usage(token=key, project_id=str(batch.pk))
    assert (status, body["code"]) == (403, "forbidden")
    status, body = usage(token=key, project_id=str(uuid.uuid4()))
    assert (status, body["code"]) == (403, "forbidden")
    # Another project's token: nothing of it shows.
    status, body = usage(token=key, token_id=str(seeded["robot"].pk), group_by="token", **{"from": day(60).isoformat()})
    assert (status, body["rows"], body["totals"]) == (200, [], ZERO)


@pytest.mark.django_db
def test_credentials_are_required(usage, client, settings):
    status, body = usage(token=None)
    assert (status, body["code"]) == (401, "unauthorized")
    assert usage(token="wrong")[0] == 401
    assert client.post("/manage/usage", HTTP_AUTHORIZATION=f"Bearer {MANAGEMENT_TOKEN}").status_code == 405
    settings.MANAGEMENT_TOKEN = ""
    assert usage(token="anything")[0] == 503
