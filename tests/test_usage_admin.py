"""Usage in the admin: the request log (columns, filters, search, read-only, bounded counting, CSV export of the
filtered set), the usage panels of project and token pages, the dashboard's chart and busiest lists."""

import csv
import io
import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.db import connection
from django.template import Context, Template
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from proxy.admin import UsageRecordAdmin
from proxy.counting import TokenCounts
from proxy.models import UsageRecord
from proxy.selectors import DayUsage, utc_today
from proxy.writer import Record, UsageWriter

# The usage writer commits (records and per-day sums in one transaction), as it does in production.
pytestmark = pytest.mark.django_db(transaction=True)

LOG = reverse("admin:proxy_usagerecord_changelist")
EXPORT = reverse("admin:proxy_usagerecord_export")


def scene_now() -> datetime:
    """Now, or two minutes past midnight if it is earlier than that: the scene's requests a minute apart both fall on
    today whenever its test runs (a time taken at import had turned into yesterday when a long run crossed midnight)."""
    now = timezone.now()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(now, midnight + timedelta(minutes=2))


def record(*, project=None, token=None, time=None, status: int = 200, **fields) -> Record:
    return Record(
        time=time or timezone.now(),
        method=fields.pop("method", "POST"),
        path=fields.pop("path", "/v1/chat/completions"),
        status=status,
        duration_ms=fields.pop("duration_ms", 120.4),
        request_id=fields.pop("request_id", uuid.uuid4().hex),
        client_ip=fields.pop("client_ip", "10.0.0.9"),
        project_id=project.pk if project else None,
        token_id=token.pk if token else None,
        token_prefix=token.prefix if token else fields.pop("token_prefix", ""),
        **fields,
    )


def write(*records: Record) -> None:
    """Through the real usage writer: usage records and their per-day aggregates."""
    UsageWriter().write(list(records))


@pytest.fixture
def scene(make_project, make_token):
    """Two projects, a labelled token and another, and requests of many kinds."""
    alpha, beta = make_project("Alpha"), make_project("Beta")
    now = scene_now()
    alice = make_token(alpha, label="alice").token
    bob = make_token(beta).token
    write(
        record(
            project=alpha,
            token=alice,
            model="gpt-4o",
            request_id="req-alpha-ok",
            counts=TokenCounts(11, 22, 33),
            cost_usd=Decimal("0.0123"),
            ttfb_ms=45.6,
            streamed=True,
            client_ip="203.0.113.7",
            time=now - timedelta(minutes=1),
        ),
        record(project=alpha, token=alice, model="gpt-4o-mini", status=502, request_id="req-alpha-502", time=now),
        record(
            project=beta,
            token=bob,
            model="text-embedding-3-small",
            status=429,
            refusal_code="limit_reached",
            request_id="req-beta-429",
            time=now - timedelta(days=3),
        ),
        record(
            token_prefix="sk-wt-Zz9Yy8",
            status=401,
            refusal_code="invalid_token",
            request_id="req-unknown",
            time=now - timedelta(days=40),
        ),
        record(
            project=beta,
            token=bob,
            model="gpt-4o",
            status=200,
            client_aborted=True,
            request_id="req-beta-aborted",
            time=now - timedelta(days=10),
        ),
    )
    return {"alpha": alpha, "beta": beta, "alice": alice, "bob": bob}


def rows(response) -> list[str]:
    """The request IDs of the listed rows, in order."""
    return [record.request_id for record in response.context["cl"].result_list]


def row_of(html: str, request_id: str) -> str:
    """The row of the list that links to this request's page."""
    url = reverse("admin:proxy_usagerecord_change", args=[UsageRecord.objects.get(request_id=request_id).pk])
    return html.split(f'href="{url}"', 1)[1].split("</tr>", 1)[0]


def test_request_log_shows_every_column(admin_client, scene):
    response = admin_client.get(LOG)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Requests</h1>" in html
    assert rows(response) == ["req-alpha-502", "req-alpha-ok", "req-beta-429", "req-beta-aborted", "req-unknown"]

    # A log: time, coloured status, model, tokens in / out, duration, cost, then who; the rest on the request's page.
    ok = row_of(html, "req-alpha-ok")
    alpha, alice = scene["alpha"], scene["alice"]
    assert re.search(r'<time datetime="[^"]+" title="[^"]+ UTC">\d{1,2} \w{3}( \d{4})? \d\d:\d\d:\d\d</time>', ok)
    assert f'href="{reverse("admin:projects_project_change", args=[alpha.pk])}">' in ok and 'title="Alpha">Alpha<' in ok
    assert (
        f'href="{reverse("admin:tokens_token_change", args=[alice.pk])}" title="alice"><code>{alice.prefix}…</code>'
        in ok
    )
    assert 'title="gpt-4o">gpt-4o</span>' in ok
    assert '<span class="badge badge-success status-2xx">200</span>' in ok
    assert '<td class="field-tokens_in_out">11 / 22</td>' in ok
    assert '<td class="field-duration">120 ms</td>' in ok
    assert '<td class="field-cost">$0.01</td>' in ok
    for moved in ("field-client_ip", "field-request_id", "field-ttfb", "field-method", "field-streamed"):
        assert moved not in html

    assert '<span class="badge badge-danger status-5xx">502</span>' in html
    assert 'title="limit_reached">limit_reached</span>' in row_of(html, "req-beta-429")
    assert '<span class="badge badge-warning status-4xx">429</span>' in html
    unknown = row_of(html, "req-unknown")
    assert "<code>sk-wt-Zz9Yy8…</code>" in unknown and "tokens/token/" not in unknown
    assert 'title="client aborted">client aborted</span>' in row_of(html, "req-beta-aborted")

    # The request's page has every field.
    url = reverse("admin:proxy_usagerecord_change", args=[UsageRecord.objects.get(request_id="req-alpha-ok").pk])
    detail = admin_client.get(url).content.decode()
    for value in ("req-alpha-ok", "203.0.113.7", "/v1/chat/completions", "POST"):
        assert value in detail
    assert "Requests 1–5<" in html


def test_request_log_is_read_only(admin_client, scene):
    html = admin_client.get(LOG).content.decode()
    assert reverse("admin:proxy_usagerecord_add") not in html and 'name="action"' not in html
    record = UsageRecord.objects.get(request_id="req-alpha-ok")
    change = reverse("admin:proxy_usagerecord_change", args=[record.pk])
    detail = admin_client.get(change)
    text = detail.content.decode()
    assert detail.status_code == 200
    assert 'name="_save"' not in text and "deletelink" not in text
    assert "<h1>Request</h1>" in text and f'<a href="{LOG}">Requests</a>' in text
    assert f'href="{reverse("admin:tokens_token_change", args=[scene["alice"].pk])}"' in text
    for value in ["req-alpha-ok", "203.0.113.7", "gpt-4o", "/v1/chat/completions", "45.6", "Alpha"]:
        assert value in text
    assert admin_client.post(change, {"status": "500"}).status_code == 403
    assert admin_client.get(reverse("admin:proxy_usagerecord_add")).status_code == 403
    assert admin_client.post(reverse("admin:proxy_usagerecord_delete", args=[record.pk])).status_code == 403
    assert UsageRecord.objects.get(pk=record.pk).status == 200


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status_class=5xx", ["req-alpha-502"]),
        ("status_class=4xx", ["req-beta-429", "req-unknown"]),
        ("status_class=2xx", ["req-alpha-ok", "req-beta-aborted"]),
        ("model=gpt-4o", ["req-alpha-ok", "req-beta-aborted"]),
        ("streamed__exact=1", ["req-alpha-ok"]),
        ("streamed__exact=0&status_class=2xx", ["req-beta-aborted"]),
        ("q=req-beta-429", ["req-beta-429"]),
        ("q=req-beta", []),  # the request ID search is exact
        ("q=+req-unknown+", ["req-unknown"]),
    ],
)
def test_request_log_filters(admin_client, scene, query, expected):
    response = admin_client.get(f"{LOG}?{query}")
    assert response.status_code == 200
    assert rows(response) == expected


def test_request_log_filters_by_project_and_token(admin_client, scene):
    alpha, alice, bob = scene["alpha"], scene["alice"], scene["bob"]
    assert rows(admin_client.get(f"{LOG}?project__id__exact={alpha.pk}")) == ["req-alpha-502", "req-alpha-ok"]
    assert rows(admin_client.get(f"{LOG}?token={bob.pk}")) == ["req-beta-429", "req-beta-aborted"]
    assert rows(admin_client.get(f"{LOG}?token={alice.prefix}")) == ["req-alpha-502", "req-alpha-ok"]
    assert rows(admin_client.get(f"{LOG}?token=sk-wt-nobody")) == []

    html = admin_client.get(f"{LOG}?token={bob.pk}&status_class=4xx").content.decode()
    token_filter = html.split('data-filter-title="token"', 1)[1].split("</details>", 1)[0]
    assert f'name="token" value="{bob.pk}"' in token_filter
    assert '<input type="hidden" name="status_class" value="4xx">' in token_filter  # the form keeps the others
    assert "sk-wt-" in token_filter and "<option" not in token_filter  # typed, not a list of every token


def test_request_log_filters_by_time(admin_client, scene):
    today = timezone.localdate()
    assert rows(admin_client.get(f"{LOG}?since={today}")) == ["req-alpha-502", "req-alpha-ok"]
    week = (today - timedelta(days=6)).isoformat()
    assert rows(admin_client.get(f"{LOG}?since={week}")) == ["req-alpha-502", "req-alpha-ok", "req-beta-429"]
    from_ = (today - timedelta(days=12)).isoformat()
    until = (today - timedelta(days=2)).isoformat()
    assert rows(admin_client.get(f"{LOG}?since={from_}&until={until}")) == ["req-beta-429", "req-beta-aborted"]
    assert rows(admin_client.get(f"{LOG}?until={(today - timedelta(days=30)).isoformat()}")) == ["req-unknown"]

    html = admin_client.get(LOG).content.decode()
    time_filter = html.split('data-filter-title="time"', 1)[1].split("</details>", 1)[0]
    assert f'href="?since={week}">Past 7 days</a>' in time_filter
    assert 'type="date" id="filter-since" name="since"' in time_filter

    bad = admin_client.get(f"{LOG}?since=yesterday")
    assert bad.status_code == 302 and bad["Location"].endswith("?e=1")


def test_model_filter_lists_the_models_seen_lately(admin_client, scene):
    html = admin_client.get(LOG).content.decode()
    models = html.split('data-filter-title="model"', 1)[1].split("</details>", 1)[0]
    assert re.findall(r'\?model=([^"]+)"', models) == ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]


def test_pages_without_counting(admin_client, scene, monkeypatch):
    monkeypatch.setattr(UsageRecordAdmin, "list_per_page", 2)
    with CaptureQueriesContext(connection) as queries:
        first = admin_client.get(LOG)
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    log_reads = [
        q["sql"] for q in queries if q["sql"].startswith('SELECT "proxy_usagerecord"."id", "proxy_usagerecord"."time"')
    ]
    assert len(log_reads) == 1 and "LIMIT 3" in log_reads[0]  # the page and one row more
    html = first.content.decode()
    assert rows(first) == ["req-alpha-502", "req-alpha-ok"]
    assert "Requests 1–2 (more follow)" in html and "previous-page" not in html
    assert '<a href="?p=2" class="next-page">Next ›</a>' in html

    second = admin_client.get(f"{LOG}?p=2")
    assert rows(second) == ["req-beta-429", "req-beta-aborted"]
    html = second.content.decode()
    assert '<a href="?p=1" class="previous-page">‹ Previous</a>' in html and '<a href="?p=3"' in html

    last = admin_client.get(f"{LOG}?p=3&status_class=4xx")
    assert last.status_code == 302 and last["Location"].endswith("?e=1")  # past the end
    last = admin_client.get(f"{LOG}?p=3")
    assert rows(last) == ["req-unknown"] and "Requests 5–5" in last.content.decode()
    assert "next-page" not in last.content.decode()

    filtered = admin_client.get(f"{LOG}?status_class=5xx")
    assert "Requests 1–1<" in filtered.content.decode() and "next-page" not in filtered.content.decode()
    assert "No requests" in admin_client.get(f"{LOG}?status_class=3xx").content.decode()


def test_request_log_query_count_does_not_grow_with_rows(admin_client, scene, django_assert_max_num_queries):
    alpha, alice = scene["alpha"], scene["alice"]
    write(*[record(project=alpha, token=alice, model=f"m-{i % 3}") for i in range(150)])
    with django_assert_max_num_queries(8):
        response = admin_client.get(f"{LOG}?status_class=2xx&model=m-1&token={alice.prefix}")
    assert len(rows(response)) == 50
    with django_assert_max_num_queries(8):
        response = admin_client.get(f"{LOG}?p=4")
    assert len(rows(response)) == 5  # 155 rows, 50 a page


def export(client, query: str = "") -> tuple[object, list[dict]]:
    response = client.get(f"{EXPORT}?{query}" if query else EXPORT)
    assert response.status_code == 200 and response.streaming
    body = b"".join(response.streaming_content).decode()
    return response, list(csv.DictReader(io.StringIO(body)))


def test_export_link_carries_the_current_filters(admin_client, scene):
    html = admin_client.get(f"{LOG}?status_class=4xx&q=req-beta-429&p=1").content.decode()
    link = re.search(r'<a href="([^"]+)" class="export-csv">Export as CSV</a>', html).group(1)
    url = urlsplit(unescape(link))
    assert url.path == EXPORT and parse_qs(url.query) == {"status_class": ["4xx"], "q": ["req-beta-429"]}


def test_export_streams_the_filtered_rows(admin_client, scene):
    alice, bob = scene["alice"], scene["bob"]
    response, records = export(admin_client, f"token={bob.pk}")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="requests-')
    assert [r["request_id"] for r in records] == ["req-beta-429", "req-beta-aborted"]
    first = records[0]
    assert first["project"] == "Beta" and first["token_prefix"] == bob.prefix and first["status"] == "429"
    assert first["refusal_code"] == "limit_reached" and first["model"] == "text-embedding-3-small"

    _, records = export(admin_client, "status_class=2xx&streamed__exact=1")
    assert [r["request_id"] for r in records] == ["req-alpha-ok"]
    ok = records[0]
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["total_tokens"]) == ("11", "22", "33")
    assert ok["token_label"] == "alice" and ok["token_prefix"] == alice.prefix and ok["streamed"] == "True"
    assert ok["client_ip"] == "203.0.113.7" and ok["ttfb_ms"] == "45.6"
    assert Decimal(ok["cost_usd"]) == Decimal("0.0123")

    _, records = export(admin_client, f"o=0&project__id__exact={scene['alpha'].pk}")  # oldest first, as listed
    assert [r["request_id"] for r in records] == ["req-alpha-ok", "req-alpha-502"]

    _, records = export(admin_client, "q=req-unknown")
    assert records[0]["token_prefix"] == "sk-wt-Zz9Yy8" and records[0]["project"] == ""


def test_export_has_no_size_limit_and_comes_in_chunks(admin_client, scene):
    alpha, alice = scene["alpha"], scene["alice"]
    write(*[record(project=alpha, token=alice, request_id=f"bulk-{i}", model="bulk") for i in range(2500)])
    response = admin_client.get(f"{EXPORT}?model=bulk")
    chunks = list(response.streaming_content)
    assert len(chunks) == 3  # the header, then the rows a chunk of 2,000 at a time, not built whole
    records = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    # All written at the same instant: the chunks resume after the last row by time and then ID, losing none.
    assert len(records) == 2500 and {r["request_id"] for r in records} == {f"bulk-{i}" for i in range(2500)}


def test_export_under_asgi_streams_an_async_iterator(async_client, admin_user, scene):
    async def fetch():
        await async_client.aforce_login(admin_user)
        response = await async_client.get(f"{EXPORT}?project__id__exact={scene['alpha'].pk}")
        assert response.is_async
        return b"".join([chunk async for chunk in response.streaming_content])

    body = async_to_sync(fetch)().decode()
    assert [r["request_id"] for r in csv.DictReader(io.StringIO(body))] == ["req-alpha-502", "req-alpha-ok"]


def test_request_log_needs_its_permission(client, django_user_model, scene):
    staff = django_user_model.objects.create_user(username="staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(LOG).status_code == 403
    assert client.get(EXPORT).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    assert client.get(LOG).status_code == 200
    assert client.get(EXPORT).status_code == 200


def panel(html: str) -> str:
    return html.split('<div class="module usage-panel" id="usage">', 1)[1].split("\n</div>", 1)[0]


def test_project_page_usage_panel(admin_client, scene, django_assert_max_num_queries):
    alpha = scene["alpha"]
    with django_assert_max_num_queries(20):
        html = admin_client.get(reverse("admin:projects_project_change", args=[alpha.pk])).content.decode()
    usage = panel(html)
    assert 'class="usage-panel-requests">2<' in usage
    assert 'class="usage-panel-errors">1 ' in usage
    assert 'class="usage-panel-prompt-tokens">11<' in usage and 'class="usage-panel-completion-tokens">22<' in usage
    assert "<svg" in usage and "Requests and errors per day, last 30 days" in usage
    assert "2 requests, 1 error" in usage or ": 2 requests" in usage
    models = usage.split('class="usage-panel-models"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<code>([^<]+)</code>", models) == ["gpt-4o", "gpt-4o-mini"]
    recent = usage.split('class="usage-panel-recent"', 1)[1].split("</table>", 1)[0]
    ids = [r.pk for r in UsageRecord.objects.filter(project_id=alpha.pk).order_by("-time")]
    links = re.findall(r'href="(/admin/proxy/usagerecord/\d+/change/)"', recent)
    assert links == [reverse("admin:proxy_usagerecord_change", args=[pk]) for pk in ids]
    assert f"<code>{scene['alice'].prefix}…</code>" in recent
    assert f'href="{LOG}?project__id__exact={alpha.pk}" class="all-requests">All requests<' in usage


def test_token_page_usage_panel(admin_client, scene):
    bob = scene["bob"]
    html = admin_client.get(reverse("admin:tokens_token_change", args=[bob.pk])).content.decode()
    usage = panel(html)
    assert 'class="usage-panel-requests">2<' in usage and 'class="usage-panel-errors">1 ' in usage
    assert "<svg" in usage
    assert re.findall(
        r"<code>([^<]+)</code>", usage.split('class="usage-panel-models"', 1)[1].split("</table>")[0]
    ) == [
        "gpt-4o",
        "text-embedding-3-small",
    ]
    assert "limit_reached" in usage
    assert f'href="{LOG}?token={bob.pk}" class="all-requests">All requests<' in usage
    assert rows(admin_client.get(f"{LOG}?token={bob.pk}")) == ["req-beta-429", "req-beta-aborted"]


def test_usage_panel_of_an_unused_token(admin_client, make_project, make_token):
    token = make_token(make_project("Quiet")).token
    usage = panel(admin_client.get(reverse("admin:tokens_token_change", args=[token.pk])).content.decode())
    assert 'class="usage-panel-requests">0<' in usage
    assert "No requests in these 30 days." in usage and "<svg" not in usage
    assert "No requests yet." in usage and "No model named in these 30 days." in usage


def test_panel_links_to_the_log_only_with_its_permission(client, django_user_model, scene):
    viewer = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_project"))
    client.force_login(viewer)
    usage = panel(client.get(reverse("admin:projects_project_change", args=[scene["alpha"].pk])).content.decode())
    assert 'class="usage-panel-requests">2<' in usage
    assert "All requests" not in usage and "/admin/proxy/usagerecord/" not in usage


def test_dashboard_chart_and_busiest(admin_client, scene, make_project, make_token, django_assert_max_num_queries):
    gamma = make_project("Gamma")
    carol = make_token(gamma, label="carol").token
    write(*[record(project=gamma, token=carol, status=500 if i < 2 else 200) for i in range(4)])
    with django_assert_max_num_queries(24):  # a fixed number: counts, spend, alerts, chart, lists, activity
        html = admin_client.get(reverse("admin:index")).content.decode()
    usage = html.split('<div class="module usage-dashboard" id="usage">', 1)[1]
    assert "<svg" in usage and "across all projects, last 14 days" in usage
    assert "8 requests, 4 errors in 14 days" in usage  # the 40- and 10-day-old requests are out of the window
    projects = usage.split('id="busiest-projects"', 1)[1].split("</table>", 1)[0]
    busiest = re.findall(r'">([^<]+)</a></span></td><td class="num">(\d+)</td><td class="num">(\d+)</td>', projects)
    assert busiest[0] == ("Gamma", "4", "2") and sorted(busiest[1:]) == [("Alpha", "2", "1"), ("Beta", "2", "1")]
    assert f'href="{reverse("admin:projects_project_change", args=[gamma.pk])}"' in projects
    tokens = usage.split('id="busiest-tokens"', 1)[1].split("</table>", 1)[0]
    assert (
        f'<td title="carol"><a href="{reverse("admin:tokens_token_change", args=[carol.pk])}"><code>{carol.prefix}…'
        in tokens
    )
    assert tokens.index(carol.prefix) < tokens.index(scene["alice"].prefix)
    assert tokens.index(carol.prefix) < tokens.index(scene["bob"].prefix)


def test_dashboard_without_usage(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    usage = html.split('<div class="module usage-dashboard" id="usage">', 1)[1].split('id="recent-actions-module"')[0]
    assert "No requests in these 14 days." in usage and "<svg" not in usage
    assert usage.count("<p>No requests in these days.</p>") == 2


def render_chart(series: list[DayUsage]) -> str:
    return Template("{% load usage %}{% usage_chart series %}").render(Context({"series": series}))


def day(offset: int, requests: int, errors: int = 0) -> DayUsage:
    return DayUsage(
        day=utc_today() - timedelta(days=offset), requests=requests, errors=errors, prompt_tokens=0, completion_tokens=0
    )


def test_chart_is_accessible_inline_svg():
    html = render_chart([day(2, 3), day(1, 0), day(0, 17, 4)])
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    chart_id = re.search(r'aria-labelledby="(chart-\w+)-title chart-\w+-desc"', svg).group(1)
    assert 'role="img"' in svg and f'<title id="{chart_id}-title">Requests and errors per day</title>' in svg
    assert "20 requests, 4 errors. Busiest day" in svg
    assert svg.count('class="usage-chart-requests"') == 3 and svg.count('class="usage-chart-errors"') == 1
    tooltips = re.findall(r"<title>([^<]+)</title>", svg)
    assert len(tooltips) == 3 and tooltips[2].endswith(": 17 requests, 4 errors") and "no errors" in tooltips[0]
    assert 'class="usage-chart-max">20<' in svg  # a round top for the value axis
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    table = html.split("<table>", 1)[1]
    assert re.findall(r"<td>(\d+)</td><td>(\d+)</td>", table) == [("3", "0"), ("0", "0"), ("17", "4")]


def test_chart_with_no_requests_says_so():
    assert "No requests in these 2 days." in render_chart([day(1, 0), day(0, 0)])
