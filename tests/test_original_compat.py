"""What the Go LLM Proxy's scripts and monitors expect, answered here: `GET /health`, `/ready` and `/live` as it
answered them (its reference, §4.12); with MANAGE_API_LIST_FORMAT=array, the bare JSON arrays its CLI and `for t in
r.json()` scripts read from `GET /manage/projects` and `/manage/tokens` (the default stays our paginated object);
`activeOnly` and `expires_in_days` as its API document (`api/openapi.yaml`) gives them."""

import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.utils import timezone

from llmproxy import health
from tests.test_settings import run_check
from tokens.models import Token

MANAGEMENT_TOKEN = "compat-management-token-0123456789"


@pytest.fixture(autouse=True)
def management_token(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN


@pytest.fixture
def api(client):
    """(status, parsed JSON) of a management API call."""

    def call(method: str, path: str, body=None, **query):
        response = client.generic(
            method,
            path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""),
            data=json.dumps(body) if body is not None else "",
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {MANAGEMENT_TOKEN}",
        )
        return response.status_code, json.loads(response.content)

    return call


# --- probes -----------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # /ready closes its connection, as in a server
def test_health_ready_and_live_answer_as_the_originals(client):
    answer = client.get("/health")
    assert answer.status_code == 200 and answer["Content-Type"] == "application/json"
    body = answer.json()
    assert body.keys() == {"status", "timestamp", "version"} and body["status"] == "ok"
    assert body["version"] == "0.1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])  # RFC 3339, as Go writes it
    stamped = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert abs(stamped - datetime.now(UTC)) < timedelta(seconds=5)

    for path, text in (("/ready", b"ready"), ("/live", b"alive")):
        answer = client.get(path)
        assert (answer.status_code, answer.content) == (200, text), path
        assert answer["Content-Type"].startswith("text/plain")


def test_ready_says_not_ready_while_the_database_is_away(client, monkeypatch):
    """Unlike the original's, which checked nothing: a balancer should stop sending requests then."""
    monkeypatch.setattr(health, "_ready", lambda: False)
    answer = client.get("/ready")
    assert (answer.status_code, answer.content) == (503, b"not ready")
    assert client.get("/live").status_code == 200 and client.get("/health").status_code == 200


def test_the_probes_through_the_real_server(proxy_server):
    assert httpx.get(f"{proxy_server.url}/health").json()["status"] == "ok"
    assert httpx.get(f"{proxy_server.url}/ready").text == "ready"
    assert httpx.get(f"{proxy_server.url}/live").text == "alive"


# --- the list format --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_lists_answer_the_originals_bare_array_when_set(api, settings, make_project, make_token):
    beta, alpha = make_project(name="Beta"), make_project(name="alpha")
    first, second = make_token(alpha).token, make_token(beta).token
    status, body = api("GET", "/manage/projects")
    assert status == 200 and list(body) == ["projects", "pagination"]  # the default: ours

    settings.MANAGE_API_LIST_FORMAT = "array"
    status, projects = api("GET", "/manage/projects")
    assert status == 200 and [p["name"] for p in projects] == ["Beta", "alpha"]  # by name, as the original
    status, tokens = api("GET", "/manage/tokens")
    assert [t["id"] for t in tokens] == [str(second.pk), str(first.pk)]  # newest first, as the original
    assert {"id", "token", "project_id", "expires_at", "is_active", "request_count", "max_requests"} <= tokens[0].keys()
    assert [t["project_id"] for t in api("GET", "/manage/tokens", projectId=alpha.pk)[1]] == [str(alpha.pk)]
    assert len(api("GET", "/manage/tokens", page_size=1)[1]) == 1  # paging, when asked for
    assert api("GET", "/manage/tokens", page=2, page_size=1)[1][0]["id"] == str(first.pk)
    assert api("GET", "/manage/projects/" + str(alpha.pk))[1]["name"] == "alpha"  # single objects are unchanged

    listed = api("GET", "/manage/openapi.json")[1]["paths"]["/manage/tokens"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Token"},
    }


def test_the_list_format_is_checked_when_the_process_starts():
    result = run_check(DEBUG="1", MANAGE_API_LIST_FORMAT="bare")
    assert result.returncode != 0
    reason = "MANAGE_API_LIST_FORMAT must be 'paginated' or 'array'."
    assert result.stderr.strip() == f"llm-proxy: refusing to start: {reason}"
    assert run_check(DEBUG="1", MANAGE_API_LIST_FORMAT="array").returncode == 0


# --- the original's parameters ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_active_only_lists_only_active_tokens(api, make_project, make_token, operator):
    from tokens.services import token_revoke

    project = make_project()
    active, revoked, expired = (make_token(project).token for _ in range(3))
    token_revoke(token=revoked, actor=operator)
    Token.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    def ids(**query) -> set[str]:
        status, body = api("GET", "/manage/tokens", **query)
        assert status == 200, body
        return {t["id"] for t in body["tokens"]}

    assert ids(activeOnly="true") == {str(active.pk)}
    assert ids(activeOnly="false") == {str(t.pk) for t in (active, revoked, expired)}
    assert ids(activeOnly="true", status="revoked") == set()  # filters narrow together
    status, body = api("GET", "/manage/tokens", activeOnly="yes")
    assert (status, body["code"], body["field"]) == (400, "invalid_type", "activeOnly")


@pytest.mark.django_db
def test_expires_in_days_as_the_original_documented_it(api, make_project, settings):
    project = make_project()

    def create(**body):
        return api("POST", "/manage/tokens", {"project_id": str(project.pk), **body})

    status, body = create(expires_in_days=7, max_requests=100)
    assert status == 201 and body["token"].startswith("sk-wt-")
    expires = datetime.fromisoformat(body["expires_at"])
    assert abs(expires - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    # Its 0, "never expires": the longest lifetime allowed here, since tokens here always expire.
    status, body = create(expires_in_days=0)
    longest = timezone.now() + timedelta(hours=settings.TOKEN_MAX_DURATION_HOURS)
    assert status == 201 and abs(datetime.fromisoformat(body["expires_at"]) - longest) < timedelta(minutes=1)

    for payload, field, code in [
        ({"expires_in_days": 366}, "expires_in_days", "out_of_range"),
        ({"expires_in_days": -1}, "expires_in_days", "out_of_range"),
        ({"expires_in_days": "7"}, "expires_in_days", "invalid_type"),
        ({"expires_in_days": 7, "duration_hours": 1}, "duration_hours", "exactly_one"),
    ]:
        status, body = create(**payload)
        assert (status, body["field"], body["code"]) == (400, field, code), payload
