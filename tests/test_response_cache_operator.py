"""The response cache for operators: its settings and purge through the admin, the management API (a minting key
for its own project only) and the commands, audited; hits and savings on the token and project pages and the
dashboard."""

import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from auditlog.models import LogEntry
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from projects.models import Project
from proxy.models import CacheEntry, UsageDaily
from tokens.minting import minting_key_create
from tokens.models import Token

pytestmark = pytest.mark.django_db

MANAGEMENT_TOKEN = "test-management-token-0123456789"


@pytest.fixture(autouse=True)
def management_token(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN


def api(client, method: str, path: str, body: dict, token: str = MANAGEMENT_TOKEN):
    response = client.generic(
        method, path, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    return response.status_code, json.loads(response.content)


def keep(project: Project, *, model: str = "gpt-4o", path: str = "/chat/completions", expired: bool = False) -> None:
    """An answer in the database backend, as the proxy stores it."""
    now = timezone.now()
    CacheEntry.objects.create(
        key=f"{project.pk.hex}:{model}:{path}:{CacheEntry.objects.count()}",
        project_id=project.pk,
        model=model,
        path=path,
        content_type="application/json",
        body=b"{}",
        created_at=now,
        expires_at=now + timedelta(seconds=-1 if expired else 600),
    )


def test_the_api_sets_the_cache_and_purges_by_project_model_or_path(client, make_project):
    status, created = api(
        client, "POST", "/manage/projects", {"name": "Evals", "api_key": "sk-" + "a" * 40, "cache_mode": "on"}
    )
    assert status == 201 and created["cache_mode"] == "on" and created["cache_ttl_seconds"] == 3600
    project = Project.objects.get(pk=created["id"])
    status, changed = api(client, "PATCH", f"/manage/projects/{project.pk}", {"cache_ttl_seconds": 60})
    assert status == 200 and changed["cache_ttl_seconds"] == 60
    status, refused = api(client, "PATCH", f"/manage/projects/{project.pk}", {"cache_mode": "always"})
    assert status == 400 and refused["field"] == "cache_mode"

    other = make_project()
    keep(project), keep(project, model="gpt-4o-mini"), keep(project, path="/embeddings"), keep(other)
    assert api(client, "POST", "/manage/cache/purge", {"project_id": str(project.pk), "model": "gpt-4o-mini"}) == (
        200,
        {"removed": 1},
    )
    purged = {"project_id": str(project.pk), "path": "/v1/embeddings"}
    assert api(client, "POST", "/manage/cache/purge", purged) == (200, {"removed": 1})
    assert api(client, "POST", "/manage/cache/purge", {"project_id": str(project.pk)}) == (200, {"removed": 1})
    assert CacheEntry.objects.filter(project_id=other.pk).count() == 1
    entry = LogEntry.objects.filter(object_pk=str(project.pk), changes__has_key="response_cache").first()
    assert entry is not None and entry.additional_data["via"] == "api"


def test_a_minting_key_purges_only_its_own_project(client, make_project, operator):
    own, other = make_project(), make_project()
    key = minting_key_create(project=own, name="ci", actor=operator).plaintext
    keep(own), keep(other)
    assert api(client, "POST", "/manage/cache/purge", {"project_id": str(own.pk)}, token=key) == (200, {"removed": 1})
    status, body = api(client, "POST", "/manage/cache/purge", {"project_id": str(other.pk)}, token=key)
    assert status == 403 and body["code"] == "forbidden"
    assert CacheEntry.objects.filter(project_id=other.pk).count() == 1


def test_the_commands_set_the_cache_and_purge(make_project):
    project = make_project(name="Evals")
    out = StringIO()
    call_command("set_project_cache", "Evals", "--mode", "opt-in", "--ttl", "120", stdout=out)
    project.refresh_from_db()
    assert (project.cache_mode, project.cache_ttl_seconds) == ("opt-in", 120)
    keep(project), keep(project, expired=True)
    call_command("purge_cache", "--expired", stdout=out)
    assert "removed 1 expired cached answers" in out.getvalue()
    call_command("purge_cache", "Evals", stdout=out)
    assert "removed 1 cached answers of project 'Evals'" in out.getvalue()
    assert CacheEntry.objects.count() == 0


def test_purge_usage_removes_expired_answers_too(make_project):
    project = make_project()
    keep(project), keep(project, expired=True)
    out = StringIO()
    call_command("purge_usage", stdout=out)
    assert "1 expired cached answers" in out.getvalue() and CacheEntry.objects.count() == 1


def test_the_admin_sets_the_mode_and_purges_after_confirming(admin_client, make_project):
    project = make_project(name="Evals")
    edit = reverse("admin:projects_project_edit", args=[project.pk])
    form = admin_client.get(edit).context["form"]
    data = {name: value for name, value in form.initial.items() if value is not None}
    data |= {"cache_mode": "on", "cache_ttl_seconds": "900", "budget_period": "month"}
    for name in ("allowed_models", "model_aliases", "allowed_endpoints", "allowed_origins", "allowed_ips"):
        data.setdefault(name, "")
    assert admin_client.post(edit, data).status_code == 302
    project.refresh_from_db()
    assert (project.cache_mode, project.cache_ttl_seconds) == ("on", 900)

    keep(project)
    page = admin_client.get(reverse("admin:projects_project_change", args=[project.pk])).content.decode()
    purge = reverse("admin:projects_project_purge_cache", args=[project.pk])
    assert purge in page
    confirm = admin_client.get(purge)
    assert "Yes, purge the cache" in confirm.content.decode() and CacheEntry.objects.count() == 1
    done = admin_client.post(purge, follow=True)
    assert "Removed 1 cached answer of “Evals”." in done.content.decode()
    assert CacheEntry.objects.count() == 0
    assert LogEntry.objects.filter(object_pk=str(project.pk), changes__has_key="response_cache").exists()


def test_hits_and_savings_show_on_the_token_and_project_pages_and_the_dashboard(admin_client, make_project, make_token):
    project = make_project(name="Evals", cache_mode="opt-in")
    token = make_token(project).token
    Token.objects.filter(pk=token.pk).update(cache_hit_count=42)
    UsageDaily.objects.create(
        day=timezone.now().date(),
        project_id=project.pk,
        token_id=token.pk,
        model="gpt-4o",
        requests=50,
        cache_hits=40,
        saved_usd=Decimal("12.5"),
    )
    pages = {
        "project": reverse("admin:projects_project_change", args=[project.pk]),
        "token": reverse("admin:tokens_token_change", args=[token.pk]),
        "dashboard": reverse("admin:index"),
    }
    for name, url in pages.items():
        html = admin_client.get(url).content.decode()
        assert 'class="cache-hits">40<' in html, name
        assert "$12.50" in html, name
    token_page = admin_client.get(pages["token"]).content.decode()
    assert 'class="cache-hits-total">42<' in token_page


def test_the_request_log_says_which_requests_came_from_the_cache(admin_client, make_project):
    from proxy.models import UsageRecord

    project = make_project()
    UsageRecord.objects.create(
        method="POST",
        path="/v1/chat/completions",
        status=200,
        duration_ms=1,
        request_id="req-cached-1",
        project_id=project.pk,
        cached=True,
        cost_usd=0,
        saved_usd=Decimal("0.18"),
    )
    html = admin_client.get(reverse("admin:proxy_usagerecord_changelist")).content.decode()
    assert "from cache" in html
    export = admin_client.get(reverse("admin:proxy_usagerecord_export"))
    lines = b"".join(export.streaming_content).decode().splitlines()
    assert lines[0].endswith("cached,saved_usd") and lines[1].endswith("True,0.180000000000")
