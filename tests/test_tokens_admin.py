"""The operator's token screens, driven through Django's test client as an operator would use them."""

import csv
import io
import re
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tokens import secret
from tokens.models import Token
from tokens.services import project_set_active

pytestmark = pytest.mark.django_db

TOKEN_LIKE = re.compile(r"sk-wt-[A-Za-z0-9]+")
CHANGELIST = "admin:tokens_token_changelist"


def add_url() -> str:
    return reverse("admin:tokens_token_add")


def detail_url(token: Token) -> str:
    return reverse("admin:tokens_token_change", args=[token.pk])


def generate(client, project, **fields):
    data = {"project": str(project.pk), "label": "", "duration_hours": "24", "max_requests": "", **fields}
    return client.post(add_url(), data)


def listed(response) -> list[Token]:
    return list(response.context["cl"].result_list)


def set_fields(token: Token, **fields) -> Token:
    Token.objects.filter(pk=token.pk).update(**fields)
    return Token.objects.select_related("project").get(pk=token.pk)


# --- generate -------------------------------------------------------------------------------------------------


def test_generate_form_offers_only_active_projects_with_duration_presets(admin_client, make_project):
    active = make_project(name="Visible Project")
    make_project(name="Dormant Project", active=False)
    response = admin_client.get(add_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<option value="{active.pk}">Visible Project</option>' in html
    assert "Dormant Project" not in html
    presets = re.search(r'<datalist id="duration-presets">(.*?)</datalist>', html, re.S).group(1)
    assert re.findall(r'value="(\d+)"', presets) == ["1", "4", "8", "24", "168", "720"]
    assert re.search(r'<input[^>]*name="duration_hours"[^>]*value="24"', html)
    assert 'list="duration-presets"' in html
    assert "Generate token" in html


def test_generate_preselects_the_project_from_the_query(admin_client, make_project):
    make_project()
    chosen = make_project(name="Chosen")
    html = admin_client.get(add_url() + f"?project={chosen.pk}").content.decode()
    assert f'<option value="{chosen.pk}" selected>Chosen</option>' in html


def test_any_whole_number_of_hours_within_the_maximum_is_accepted(admin_client, make_project):
    project = make_project()
    before = timezone.now()
    response = generate(admin_client, project, duration_hours="36", label="CI pipeline", max_requests="100")
    assert response.status_code == 200
    token = Token.objects.get()
    assert token.label == "CI pipeline" and token.max_requests == 100
    assert before + timedelta(hours=36) <= token.expires_at <= timezone.now() + timedelta(hours=36)
    response = generate(admin_client, project, duration_hours=str(settings.TOKEN_MAX_DURATION_HOURS))
    assert response.status_code == 200 and Token.objects.count() == 2


@pytest.mark.parametrize("hours", ["0", "-1", "-24", "1.5", "abc", "", "99999999", str(10**30)])
def test_out_of_range_or_non_numeric_duration_is_a_form_error(admin_client, make_project, hours):
    project = make_project()
    response = generate(admin_client, project, duration_hours=hours)
    assert response.status_code == 200
    html = response.content.decode()
    if hours:
        assert f"Duration must be a whole number of hours from 1 to {settings.TOKEN_MAX_DURATION_HOURS}." in html
    else:
        assert "This field is required." in html
    assert "errornote" in html and not TOKEN_LIKE.search(html)
    assert Token.objects.count() == 0


@pytest.mark.parametrize("limit", ["-1", "abc", "2.5", str(settings.TOKEN_MAX_REQUESTS + 1)])
def test_invalid_request_limit_is_a_form_error(admin_client, make_project, limit):
    project = make_project()
    response = generate(admin_client, project, max_requests=limit)
    assert response.status_code == 200
    assert "Request limit must be a whole number from 0 to" in response.content.decode()
    assert Token.objects.count() == 0


@pytest.mark.parametrize("limit", ["", "0"])
def test_blank_or_zero_limit_means_unlimited(admin_client, make_project, limit):
    generate(admin_client, make_project(), max_requests=limit)
    assert Token.objects.get().max_requests is None


def test_inactive_project_cannot_get_tokens(admin_client, make_project):
    project = make_project(active=False)
    response = generate(admin_client, project)
    assert response.status_code == 200
    assert "Cannot generate tokens for inactive project" in response.content.decode()
    assert Token.objects.count() == 0


def test_project_deactivated_after_the_form_was_loaded(admin_client, make_project, operator):
    project = make_project(name="Soon Off")
    assert f'value="{project.pk}"' in admin_client.get(add_url()).content.decode()
    project_set_active(active=False, project=project, actor=operator)
    response = generate(admin_client, project)
    assert "Cannot generate tokens for inactive project" in response.content.decode()
    assert Token.objects.count() == 0


# --- the show-once page ---------------------------------------------------------------------------------------


def test_the_token_is_shown_once_with_examples_and_never_again(admin_client, admin_user, make_project, settings):
    settings.ALLOWED_HOSTS = ["llm.example.com"]
    project = make_project(name="Shop")
    response = admin_client.post(
        add_url(),
        {"project": str(project.pk), "label": "Alice laptop", "duration_hours": "8", "max_requests": "50"},
        HTTP_HOST="llm.example.com",
        secure=True,
    )
    assert response.status_code == 200 and not response.has_header("Location")
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()

    found = {t for t in TOKEN_LIKE.findall(html) if len(t) > secret.TOKEN.display_length}
    assert len(found) == 1  # one secret (in the box and the examples); elsewhere only its display prefix
    plaintext = found.pop()
    assert secret.TOKEN.is_well_formed(plaintext)
    assert set(TOKEN_LIKE.findall(html)) == {plaintext, secret.display_prefix(plaintext)}
    assert html.count(f'<code id="token-value">{plaintext}</code>') == 1
    assert "Copy</button>" in html and "navigator.clipboard" in html
    assert "<script src=" not in html.split("</header>")[-1]  # inline copy code, no CDN

    base = "https://llm.example.com/v1"
    assert f"curl {base}/chat/completions" in html
    assert f"Authorization: Bearer {plaintext}" in html
    assert f'OpenAI(base_url="{base}", api_key="{plaintext}")' in html
    assert "Shop" in html and "Alice laptop" in html and "50" in html

    token = Token.objects.get()
    stored = " ".join(str(v) for v in Token.objects.values().get().values())
    assert plaintext not in stored
    assert token.digest == secret.digest(plaintext) and token.prefix == plaintext[:12]

    # Not carried by the session or the messages framework, and never shown again.
    assert plaintext not in str(dict(admin_client.session.items()))
    assert all(plaintext not in morsel.value for morsel in response.cookies.values())
    for url in (detail_url(token), reverse(CHANGELIST), add_url()):
        page = admin_client.get(url, HTTP_HOST="llm.example.com", secure=True).content.decode()
        assert plaintext not in page and token.digest not in page
    assert (
        token.prefix in admin_client.get(detail_url(token), HTTP_HOST="llm.example.com", secure=True).content.decode()
    )

    entry = LogEntry.objects.get_for_object(token).get(action=LogEntry.Action.CREATE)
    assert entry.actor == admin_user and entry.remote_addr == "127.0.0.1"
    assert plaintext not in str(entry.changes)


# --- the list -------------------------------------------------------------------------------------------------


@pytest.fixture
def token_zoo(make_project, make_token, operator):
    """One token in every status the operator can see."""
    from tokens.services import token_revoke

    project = make_project(name="Zoo")
    off = make_project(name="Paused")
    now = timezone.now()
    tokens = {
        "active": make_token(project, label="active one").token,
        "expired": set_fields(make_token(project, label="expired one").token, expires_at=now - timedelta(hours=1)),
        "revoked": make_token(project, label="revoked one").token,
        "limit": set_fields(make_token(project, max_requests=3, label="limit one").token, request_count=3),
        "blocked": make_token(off, label="blocked one").token,
    }
    token_revoke(token=tokens["revoked"], actor=operator)
    project_set_active(active=False, project=off, actor=operator)
    return {name: Token.objects.select_related("project").get(pk=t.pk) for name, t in tokens.items()}


def test_list_shows_every_column_and_coloured_status(admin_client, token_zoo):
    set_fields(token_zoo["active"], request_count=7, last_used_at=timezone.now())
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    table = re.search(r'<table id="result_list">.*?</thead>', html, re.S).group(0)
    headers = re.findall(r'<th scope="col"[^>]*>.*?<(?:a href="[^"]*"|span)>([^<]+)<', table, re.S)
    # Status, use and spend first; the creation time is on the token's page.
    assert headers == ["ID", "Status", "Requests", "Spend", "Project", "Label", "Expires", "Last used", "Actions"]
    active = token_zoo["active"]
    assert f'<a href="{detail_url(active)}"><code title="{active.pk}">{str(active.pk)[:8]}</code></a>' in html
    project_url = reverse("admin:projects_project_change", args=[active.project_id])
    assert f'<a href="{project_url}"><span class="truncate" title="Zoo">Zoo</span></a>' in html
    assert '<span class="badge badge-success token-status-active">Active</span>' in html
    assert '<span class="badge badge-muted token-status-expired">Expired</span>' in html
    assert '<span class="badge badge-danger token-status-revoked">Revoked</span>' in html
    assert '<span class="badge badge-warning token-status-limit_reached">Limit reached</span>' in html
    assert '<span class="badge badge-warning token-status-blocked">Active (project inactive)</span>' in html
    assert "7 / ∞" in html and "3 / 3" in html
    assert "Never" in html
    assert html.count("/revoke/") == 4  # every token but the revoked one
    assert reverse("admin:tokens_token_revoke", args=[token_zoo["revoked"].pk]) not in html
    assert "Generate token" in html and "Add token" not in html
    assert "<h1>Tokens</h1>" in html


@pytest.mark.parametrize(
    ("status", "expected"),
    [("active", "active"), ("expired", "expired"), ("revoked", "revoked"), ("limit_reached", "limit")],
)
def test_status_filter(admin_client, token_zoo, status, expected):
    response = admin_client.get(reverse(CHANGELIST), {"status": status})
    names = {name for name, t in token_zoo.items() if t in listed(response)}
    # A token of an inactive project is still Active by its own status; the badge says it is blocked.
    assert names == ({expected, "blocked"} if status == "active" else {expected})


def test_blocked_filter_and_project_filter(admin_client, token_zoo):
    response = admin_client.get(reverse(CHANGELIST), {"status": "blocked"})
    assert listed(response) == [token_zoo["blocked"]]
    response = admin_client.get(reverse(CHANGELIST), {"project__id__exact": str(token_zoo["blocked"].project_id)})
    assert listed(response) == [token_zoo["blocked"]]
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "By project" in html and "By status" in html


def test_search_by_id_prefix_or_whole_token(admin_client, make_project, make_token):
    project = make_project()
    issued = make_token(project, label="needle")
    others = [make_token(project).token for _ in range(3)]
    token = issued.token
    search_terms = [
        str(token.pk),
        str(token.pk)[:8],
        str(token.pk)[:13],  # with the first hyphen, as copied from the detail page
        str(token.pk).upper()[:8],
        str(token.pk).replace("-", "")[:14],  # without hyphens, as some tools print it
        token.prefix,
        issued.plaintext,
        f"  {issued.plaintext}  ",
    ]
    for term in search_terms:
        found = listed(admin_client.get(reverse(CHANGELIST), {"q": term}))
        assert found == [token], term
    assert listed(admin_client.get(reverse(CHANGELIST), {"q": "sk-wt-" + "Z" * 32})) == []
    assert len(listed(admin_client.get(reverse(CHANGELIST), {"q": ""}))) == 1 + len(others)


def test_sorting_by_requests_and_expires(admin_client, make_project, make_token):
    project = make_project()
    a = set_fields(make_token(project, hours=5).token, request_count=9)
    b = set_fields(make_token(project, hours=1).token, request_count=2)
    c = set_fields(make_token(project, hours=3).token, request_count=5)
    cl = admin_client.get(reverse(CHANGELIST)).context["cl"]
    column = {name: str(i) for i, name in enumerate(cl.list_display)}
    assert [t.pk for t in listed(admin_client.get(reverse(CHANGELIST)))] == [c.pk, b.pk, a.pk]  # newest first
    by = {o: [t.pk for t in listed(admin_client.get(reverse(CHANGELIST), {"o": o}))] for o in column.values()}
    assert by[column["requests"]] == [b.pk, c.pk, a.pk]
    assert [t.pk for t in listed(admin_client.get(reverse(CHANGELIST), {"o": "-" + column["requests"]}))] == [
        a.pk,
        c.pk,
        b.pk,
    ]
    assert by[column["expires"]] == [b.pk, c.pk, a.pk]
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    sortable = set(re.findall(r'<th scope="col" class="sortable column-(\w+)', html))
    assert sortable == {"expires", "requests", "spend"}


def test_list_query_count_does_not_grow_with_rows(admin_client, make_project, make_token, operator):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(reverse(CHANGELIST)).status_code == 200
        return len(ctx.captured_queries)

    first = make_project()
    make_token(first)
    few = queries()
    for i in range(12):
        project = make_project()
        make_token(project, max_requests=5)
        if i % 2:
            project_set_active(active=False, project=project, actor=operator)
    assert queries() <= few + 1  # the project filter lists one more project per query, not one query per row


# --- bulk actions ---------------------------------------------------------------------------------------------


def action(client, name: str, tokens: list[Token], **extra):
    data = {"action": name, "_selected_action": [str(t.pk) for t in tokens], **extra}
    return client.post(reverse(CHANGELIST), data)


def test_delete_is_not_offered_and_answers_405(admin_client, make_project, make_token):
    token = make_token(make_project()).token
    response = admin_client.get(reverse(CHANGELIST))
    choices = [value for value, _ in response.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in choices
    assert set(choices) >= {"export_csv", "revoke_selected"}
    delete_url = reverse("admin:tokens_token_delete", args=[token.pk])
    assert admin_client.get(delete_url).status_code == 405
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 405
    assert action(admin_client, "delete_selected", [token]).status_code in (200, 302)
    assert Token.objects.filter(pk=token.pk).exists()
    assert "Delete" not in admin_client.get(detail_url(token)).content.decode()


def test_export_selected_as_csv(admin_client, token_zoo):
    set_fields(token_zoo["active"], label="=HYPERLINK(evil)", last_used_at=timezone.now())
    chosen = [token_zoo["active"], token_zoo["revoked"], token_zoo["blocked"]]
    response = action(admin_client, "export_csv", chosen)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == [
        "id",
        "prefix",
        "project",
        "label",
        "status",
        "created_at",
        "expires_at",
        "request_count",
        "max_requests",
        "spent_usd",
        "last_used_at",
        "revoked_at",
    ]
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {str(t.pk) for t in chosen}
    active = by_id[str(token_zoo["active"].pk)]
    assert active["label"] == "'=HYPERLINK(evil)"  # a spreadsheet shows it, does not run it
    assert active["status"] == "Active" and active["project"] == "Zoo"
    assert active["max_requests"] == "" and active["last_used_at"]
    assert by_id[str(token_zoo["revoked"].pk)]["status"] == "Revoked"
    assert by_id[str(token_zoo["revoked"].pk)]["revoked_at"]
    assert by_id[str(token_zoo["blocked"].pk)]["status"] == "Active (project inactive)"
    for token in chosen:
        assert token.digest not in body
    assert not re.search(r"sk-wt-[A-Za-z0-9]{13,}", body)  # display prefixes only


def test_bulk_revoke_asks_first_then_revokes_and_audits_each(admin_client, admin_user, token_zoo):
    chosen = [token_zoo["active"], token_zoo["limit"], token_zoo["expired"], token_zoo["revoked"]]
    response = action(admin_client, "revoke_selected", chosen)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Are you sure you want to revoke 3 tokens?" in html
    assert "Already revoked, left as they are: 1." in html
    assert Token.objects.filter(revoked_at__isnull=True).count() == 4  # nothing happened yet

    response = action(admin_client, "revoke_selected", chosen, post="yes")
    assert response.status_code == 302
    page = admin_client.get(response["Location"]).content.decode()
    assert "Revoked 3 tokens." in page
    for name in ("active", "limit", "expired"):
        token = Token.objects.get(pk=token_zoo[name].pk)
        assert token.revoked_at is not None and token.revoked_by == admin_user
        entry = LogEntry.objects.get_for_object(token).filter(action=LogEntry.Action.UPDATE).latest("timestamp")
        assert entry.actor == admin_user and "revoked_at" in entry.changes
    assert Token.objects.get(pk=token_zoo["blocked"].pk).revoked_at is None


# --- details, revoke one, change limit ------------------------------------------------------------------------


def test_detail_page_shows_everything_and_edits_nothing(admin_client, make_project, make_token):
    issued = make_token(make_project(name="Detail Project"), max_requests=10, label="Bob's script")
    token = set_fields(issued.token, request_count=3)
    response = admin_client.get(detail_url(token))
    assert response.status_code == 200
    html = response.content.decode()
    assert str(token.pk) in html and f"{token.prefix}…" in html
    assert "Detail Project" in html and "Bob&#x27;s script" in html
    assert "token-status-active" in html and "by operator" in html and "Never" in html
    assert re.search(r'class="usage-upstream">3 ', html)
    assert re.search(r'class="cache-mode">Off ', html) and re.search(r'class="cache-hits-total">0<', html)
    assert re.search(r'class="usage-limit">10<', html)
    assert re.search(r'class="usage-remaining">7<', html)
    for url in (
        reverse("admin:tokens_token_revoke", args=[token.pk]),
        reverse("admin:tokens_token_limit", args=[token.pk]),
        reverse("admin:projects_project_change", args=[token.project_id]),
        reverse("admin:tokens_token_history", args=[token.pk]),
    ):
        assert f'href="{url}"' in html
    assert issued.plaintext not in html and token.digest not in html
    assert "<form" not in html.split('id="content-main"')[1]  # read-only
    response = admin_client.post(detail_url(token), {"label": "changed", "max_requests": "1"})
    assert response.status_code == 405
    assert Token.objects.get(pk=token.pk).label == "Bob's script"


def test_detail_page_of_unlimited_and_unknown_tokens(admin_client, make_project, make_token):
    token = make_token(make_project()).token
    html = admin_client.get(detail_url(token)).content.decode()
    assert re.search(r'class="usage-limit">∞', html) and re.search(r'class="usage-remaining">∞<', html)
    assert admin_client.get(reverse("admin:tokens_token_change", args=["not-a-uuid"])).status_code == 404


def test_history_tells_who_did_what_without_secrets(admin_client, make_project, make_token):
    issued = make_token(make_project())
    token = issued.token
    admin_client.post(reverse("admin:tokens_token_revoke", args=[token.pk]))
    response = admin_client.get(reverse("admin:tokens_token_history", args=[token.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "operator" in html and html.count('class="audit-entry"') == 2
    assert token.digest not in html and issued.plaintext not in html
    assert not any("digest" in entry.changes for entry in LogEntry.objects.get_for_object(token))


def test_revoke_one_token_with_confirmation(admin_client, admin_user, make_project, make_token):
    token = make_token(make_project()).token
    url = reverse("admin:tokens_token_revoke", args=[token.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    assert "Are you sure you want to revoke the token" in response.content.decode()
    assert Token.objects.get(pk=token.pk).revoked_at is None

    response = admin_client.post(url)
    assert response.status_code == 302 and response["Location"] == detail_url(token)
    revoked = Token.objects.get(pk=token.pk)
    assert revoked.revoked_by == admin_user and revoked.revoked_at is not None
    page = admin_client.get(detail_url(token)).content.decode()
    assert "revoked. It stops working immediately." in page and "token-status-revoked" in page
    assert "by operator" in page and 'class="revoke-link"' not in page
    entry = LogEntry.objects.get_for_object(token).filter(action=LogEntry.Action.UPDATE).get()
    assert entry.actor == admin_user and entry.remote_addr == "127.0.0.1"

    # Again: nothing changes, and the operator is told why.
    response = admin_client.post(url, follow=True)
    assert "was already revoked; nothing changed." in response.content.decode()
    assert Token.objects.get(pk=token.pk).revoked_at == revoked.revoked_at
    assert LogEntry.objects.get_for_object(token).filter(action=LogEntry.Action.UPDATE).count() == 1
    response = admin_client.get(url, follow=True)
    assert "is already revoked." in response.content.decode()


def test_revoke_needs_csrf(make_project, make_token, admin_user):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    token = make_token(make_project()).token
    assert client.post(reverse("admin:tokens_token_revoke", args=[token.pk])).status_code == 403
    assert Token.objects.get(pk=token.pk).revoked_at is None


@pytest.mark.parametrize(("value", "expected"), [("50", 50), ("2", 2), ("", None), ("0", None)])
def test_change_limit(admin_client, admin_user, make_project, make_token, value, expected):
    token = make_token(make_project(), max_requests=5).token
    url = reverse("admin:tokens_token_limit", args=[token.pk])
    assert 'value="5"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"max_requests": value}, follow=True)
    assert response.redirect_chain[-1][0] == detail_url(token)
    assert Token.objects.get(pk=token.pk).max_requests == expected
    html = response.content.decode()
    assert ("removed (unlimited)" if expected is None else f"set to {expected}") in html
    entry = LogEntry.objects.get_for_object(token).filter(action=LogEntry.Action.UPDATE).get()
    assert entry.actor == admin_user and "max_requests" in entry.changes


@pytest.mark.parametrize("value", ["-3", "abc", "1.5", str(settings.TOKEN_MAX_REQUESTS + 1)])
def test_invalid_limit_change_is_shown_on_the_form(admin_client, make_project, make_token, value):
    token = make_token(make_project(), max_requests=5).token
    response = admin_client.post(reverse("admin:tokens_token_limit", args=[token.pk]), {"max_requests": value})
    assert response.status_code == 200
    assert "Request limit must be a whole number from 0 to" in response.content.decode()
    assert Token.objects.get(pk=token.pk).max_requests == 5
    assert not LogEntry.objects.get_for_object(token).filter(action=LogEntry.Action.UPDATE).exists()


def test_screens_need_a_staff_login(client, make_project, make_token):
    token = make_token(make_project()).token
    for url in (
        reverse(CHANGELIST),
        add_url(),
        detail_url(token),
        reverse("admin:tokens_token_revoke", args=[token.pk]),
        reverse("admin:tokens_token_limit", args=[token.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.post(reverse("admin:tokens_token_revoke", args=[token.pk])).status_code == 302
    assert Token.objects.get(pk=token.pk).revoked_at is None


def test_view_only_staff_sees_tokens_but_cannot_change_them(client, django_user_model, make_project, make_token):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_token"))
    client.force_login(viewer)
    token = make_token(make_project()).token
    html = client.get(reverse(CHANGELIST)).content.decode()
    assert str(token.pk)[:8] in html and "/revoke/" not in html and "Generate token" not in html
    html = client.get(detail_url(token)).content.decode()
    assert token.prefix in html and "Change limit" not in html
    assert client.post(reverse("admin:tokens_token_revoke", args=[token.pk])).status_code == 403
    assert client.post(reverse("admin:tokens_token_limit", args=[token.pk]), {"max_requests": "1"}).status_code == 403
    assert client.get(add_url()).status_code == 403
    assert Token.objects.get(pk=token.pk).revoked_at is None
