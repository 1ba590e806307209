"""The management API, as a script or an integration uses it: JSON in, JSON out, refusals explained."""

import json
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.utils import timezone

from projects.models import Project
from tests.conftest import OTHER_KEY, VALID_KEY
from tokens import secret
from tokens.minting import minting_key_create
from tokens.models import MintingKey, Token

pytestmark = pytest.mark.django_db

MANAGEMENT_TOKEN = "test-management-token-0123456789"
CLIENT_ADDR = "203.0.113.7"


@pytest.fixture(autouse=True)
def management_token(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN


@pytest.fixture
def api(client):
    """Call the API: returns (status, parsed JSON or None, response)."""

    def call(method: str, path: str, body=None, *, token: str | None = MANAGEMENT_TOKEN, raw: bytes | None = None):
        headers = {"REMOTE_ADDR": CLIENT_ADDR}
        if token is not None:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        response = client.generic(method, path, data=data, content_type="application/json", **headers)
        payload = json.loads(response.content) if response.content else None
        if response.status_code != 204:
            assert response["Content-Type"] == "application/json", response.content
        return response.status_code, payload, response

    return call


@pytest.fixture
def minting_key(make_project, operator):
    project = make_project(name="Web")
    return minting_key_create(project=project, name="web backend", actor=operator)


# --- Authentication --------------------------------------------------------------------------------------------


def test_without_a_management_token_configured_every_call_is_refused(api, settings, minting_key):
    settings.MANAGEMENT_TOKEN = ""
    for path in ["/manage/projects", "/manage/tokens", "/manage/audit"]:
        status, body, _ = api("GET", path, token="anything")
        assert status == 503
        assert body == {
            "error": "management API disabled: MANAGEMENT_TOKEN is not set",
            "code": "management_api_disabled",
        }
    assert api("GET", "/manage/tokens", token=minting_key.plaintext)[0] == 503


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing or invalid Authorization header"),
        ("Basic dXNlcjpwYXNz", "missing or invalid Authorization header"),
        ("Bearer", "missing or invalid Authorization header"),
        ("Bearer wrong-token", "invalid management token"),
        (f"Bearer {MANAGEMENT_TOKEN}x", "invalid management token"),
        ("Bearer mk-" + "a" * 40, "invalid minting key"),
    ],
)
def test_missing_or_wrong_credentials_get_401(client, authorization, message):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = client.get("/manage/projects", **headers)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {"error": message, "code": "unauthorized"}


def test_the_openapi_document_needs_no_credentials(client):
    response = client.get("/manage/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert "/manage/tokens/{token_id}" in document["paths"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_unknown_paths_get_a_json_404(api):
    for path in ["/manage/", "/manage/nope", "/manage/projects/", "/manage/tokens/a/b"]:
        status, body, _ = api("GET", path)
        assert status == 404, path
        assert body["code"] == "not_found"


def test_an_unexpected_error_is_still_a_json_answer_without_details(api, monkeypatch):
    from llmproxy.manage_api import views

    def broken():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views, "projects_by_name", broken)
    status, body, response = api("GET", "/manage/projects")
    assert (status, body) == (500, {"error": "internal error", "code": "internal_error"})
    assert b"secret internals" not in response.content


# --- Projects --------------------------------------------------------------------------------------------------


def test_create_a_project_answers_201_with_the_key_masked(api):
    status, body, response = api("POST", "/manage/projects", {"name": "Demo", "api_key": VALID_KEY})
    assert status == 201
    assert VALID_KEY not in response.content.decode()
    assert body["name"] == "Demo" and body["is_active"] is True and body["deactivated_at"] is None
    assert body["api_key"].endswith("ABCD") and "…" in body["api_key"]
    assert Project.objects.get(pk=body["id"]).api_key == VALID_KEY


def test_list_and_read_projects_never_show_the_key(api, make_project):
    for name in ["b", "a", "c"]:
        make_project(name=name)
    status, body, response = api("GET", "/manage/projects?page_size=2")
    assert status == 200
    assert [p["name"] for p in body["projects"]] == ["a", "b"]
    assert body["pagination"] == {
        "page": 1,
        "page_size": 2,
        "total_count": 3,
        "total_pages": 2,
        "has_next": True,
        "has_prev": False,
    }
    assert VALID_KEY not in response.content.decode()
    assert [p["name"] for p in api("GET", "/manage/projects?page=2&page_size=2")[1]["projects"]] == ["c"]
    project_id = body["projects"][0]["id"]
    status, one, response = api("GET", f"/manage/projects/{project_id}")
    assert status == 200 and one["id"] == project_id and VALID_KEY not in response.content.decode()


def test_a_duplicate_project_name_is_409(api, make_project):
    make_project(name="Production")
    status, body, _ = api("POST", "/manage/projects", {"name": "production", "api_key": VALID_KEY})
    assert status == 409
    assert body == {"error": "A project with this name already exists.", "code": "duplicate_name", "field": "name"}


@pytest.mark.parametrize(
    ("payload", "field", "code"),
    [
        ({"name": "x", "api_key": "sk-short"}, "api_key", "invalid_format"),
        ({"name": "x", "api_key": "sk-abcd...wxyzabcdefghijklmnop"}, "api_key", "invalid_format"),
        ({"name": "x"}, "api_key", "required"),
        ({"api_key": VALID_KEY}, "name", "required"),
        ({"name": "   ", "api_key": VALID_KEY}, "name", "blank"),
        ({"name": "a\u0000b", "api_key": VALID_KEY}, "name", "invalid_format"),
        ({"name": "x" * 201, "api_key": VALID_KEY}, "name", "too_long"),
        ({"name": 5, "api_key": VALID_KEY}, "name", "invalid_type"),
        ({"name": "x", "api_key": VALID_KEY, "owner": "me"}, "owner", "unknown_field"),
    ],
)
def test_invalid_projects_are_refused_naming_the_field(api, payload, field, code):
    status, body, _ = api("POST", "/manage/projects", payload)
    assert status == 400
    assert body["field"] == field and body["code"] == code
    if field == "api_key" and code == "invalid_format":
        assert body["error"] == "Invalid API key format"
    assert not Project.objects.exists()


def test_patch_renames_and_rotates_the_key_and_never_echoes_it(api, make_project):
    project = make_project(name="Old")
    status, body, response = api("PATCH", f"/manage/projects/{project.pk}", {"name": "New", "api_key": OTHER_KEY})
    assert status == 200
    assert body["name"] == "New" and body["api_key"].endswith("zyxw")
    assert OTHER_KEY not in response.content.decode()
    assert Project.objects.get(pk=project.pk).api_key == OTHER_KEY
    # An empty api_key keeps the current one.
    assert api("PATCH", f"/manage/projects/{project.pk}", {"api_key": ""})[0] == 200
    assert Project.objects.get(pk=project.pk).api_key == OTHER_KEY


def test_patch_deactivates_and_reactivates(api, make_project, make_token):
    project = make_project()
    make_token(project)
    status, body, _ = api("PATCH", f"/manage/projects/{project.pk}", {"is_active": False})
    assert status == 200 and body["is_active"] is False and body["deactivated_at"] is not None
    assert "tokens_revoked" not in body
    assert Token.objects.filter(revoked_at__isnull=True).count() == 1  # blocked, not revoked
    status, body, _ = api("PATCH", f"/manage/projects/{project.pk}", {"is_active": True})
    assert status == 200 and body["is_active"] is True and body["deactivated_at"] is None


def test_deactivating_with_revoke_tokens_revokes_them_even_if_already_inactive(api, make_project, make_token, operator):
    from tokens.services import project_set_active

    bystander = make_token(make_project()).token
    project = make_project()
    make_token(project)
    make_token(project)
    project_set_active(active=False, project=project, actor=operator)
    payload = {"is_active": False, "revoke_tokens": True}
    status, body, _ = api("PATCH", f"/manage/projects/{project.pk}", payload)
    assert status == 200
    assert body["tokens_revoked"] == 2  # the original skipped this for an already-inactive project
    assert not Token.objects.filter(project=project, revoked_at__isnull=True).exists()
    assert Token.objects.get(pk=bystander.pk).revoked_at is None


def test_revoke_tokens_requires_is_active_false(api, make_project):
    project = make_project()
    for payload in [{"revoke_tokens": True}, {"revoke_tokens": True, "is_active": True}]:
        status, body, _ = api("PATCH", f"/manage/projects/{project.pk}", payload)
        assert status == 400
        assert body == {
            "error": "revoke_tokens requires is_active=false",
            "code": "requires_is_active_false",
            "field": "revoke_tokens",
        }
    assert Project.objects.get(pk=project.pk).is_active


def test_a_failing_patch_changes_nothing(api, make_project):
    make_project(name="Taken")
    project = make_project(name="Mine")
    status, _, _ = api("PATCH", f"/manage/projects/{project.pk}", {"is_active": False, "name": "taken"})
    assert status == 409
    project.refresh_from_db()
    assert project.name == "Mine" and project.is_active


def test_patch_with_nothing_to_change_is_400(api, make_project):
    status, body, _ = api("PATCH", f"/manage/projects/{make_project().pk}", {})
    assert status == 400 and body["code"] == "no_fields"


def test_projects_cannot_be_deleted(api, make_project):
    project = make_project()
    status, body, response = api("DELETE", f"/manage/projects/{project.pk}")
    assert status == 405
    assert response["Allow"] == "GET, PATCH"
    assert body == {"error": "project deletion is not permitted", "code": "method_not_allowed"}
    assert Project.objects.filter(pk=project.pk).exists()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/manage/projects", "GET, POST"),
        ("DELETE", "/manage/tokens", "GET, POST"),
        ("POST", "/manage/tokens/00000000-0000-0000-0000-000000000000", "GET, PATCH, DELETE"),
        ("GET", "/manage/projects/00000000-0000-0000-0000-000000000000/tokens/revoke", "POST"),
        ("POST", "/manage/audit", "GET"),
        ("HEAD", "/manage/tokens", "GET, POST"),
    ],
)
def test_unsupported_methods_are_405_with_allow(api, method, path, allow):
    status, _, response = api(method, path)
    assert status == 405 and response["Allow"] == allow


@pytest.mark.parametrize("project_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "1234"])
def test_unknown_or_malformed_ids_are_404(api, project_id):
    for method, path in [
        ("GET", f"/manage/projects/{project_id}"),
        ("PATCH", f"/manage/projects/{project_id}"),
        ("POST", f"/manage/projects/{project_id}/tokens/revoke"),
        ("GET", f"/manage/tokens/{project_id}"),
        ("DELETE", f"/manage/tokens/{project_id}"),
    ]:
        status, body, _ = api(method, path, {"is_active": True} if method == "PATCH" else None)
        assert status == 404, (method, path)
        assert body["code"] == "not_found"


def test_revoke_all_tokens_of_a_project_reports_counts(api, make_project, make_token):
    project = make_project()
    issued = [make_token(project) for _ in range(3)]
    api("DELETE", f"/manage/tokens/{issued[0].token.pk}")
    status, body, _ = api("POST", f"/manage/projects/{project.pk}/tokens/revoke")
    assert status == 200
    assert body == {"revoked_count": 2, "already_revoked_count": 1, "total_tokens": 3}
    assert api("POST", f"/manage/projects/{project.pk}/tokens/revoke")[1]["revoked_count"] == 0


# --- Tokens ----------------------------------------------------------------------------------------------------


def test_create_a_token_returns_it_once(api, make_project):
    project = make_project()
    payload = {"project_id": str(project.pk), "duration_hours": 2, "max_requests": 10, "label": "ci run 42"}
    before = timezone.now()
    status, body, _ = api("POST", "/manage/tokens", payload)
    assert status == 201
    assert set(body) == {
        *("id", "token", "expires_at", "max_requests", "project_id", "label"),
        *("requests_per_minute", "tokens_per_minute", "budget_usd", "allowed_models", "allowed_ips"),
    }
    assert secret.TOKEN.is_well_formed(body["token"])
    assert body["max_requests"] == 10 and body["label"] == "ci run 42" and body["project_id"] == str(project.pk)
    token = Token.objects.get(pk=body["id"])
    assert token.digest == secret.digest(body["token"])
    assert before + timedelta(hours=2) <= token.expires_at <= timezone.now() + timedelta(hours=2)
    # Never again: reading it shows only the display prefix.
    status, again, response = api("GET", f"/manage/tokens/{body['id']}")
    assert body["token"] not in response.content.decode() and token.digest not in response.content.decode()
    assert again["token"] == f"{token.prefix}…"


def test_create_a_token_in_minutes_with_unlimited_requests(api, make_project):
    project = make_project()
    payload = {"project_id": str(project.pk), "duration_minutes": 15, "max_requests": 0}
    status, body, _ = api("POST", "/manage/tokens", payload)
    assert status == 201 and body["max_requests"] is None and body["label"] == ""
    token = Token.objects.get(pk=body["id"])
    assert timedelta(minutes=14) < token.expires_at - timezone.now() <= timedelta(minutes=15)


def test_tokens_cannot_be_created_for_an_inactive_project(api, make_project):
    project = make_project(active=False)
    status, body, _ = api("POST", "/manage/tokens", {"project_id": str(project.pk), "duration_hours": 1})
    assert status == 403
    assert body == {
        "error": "Cannot generate tokens for inactive project",
        "code": "project_inactive",
        "field": "project_id",
    }
    assert not Token.objects.exists()


def test_tokens_for_an_unknown_project_are_404(api):
    payload = {"project_id": "00000000-0000-0000-0000-000000000000", "duration_hours": 1}
    status, body, _ = api("POST", "/manage/tokens", payload)
    assert status == 404 and body == {"error": "project not found", "code": "not_found"}


@pytest.mark.parametrize(
    ("extra", "field", "code"),
    [
        ({}, "duration_hours", "required"),
        ({"duration_hours": 1, "duration_minutes": 30}, "duration_hours", "exactly_one"),
        ({"duration_hours": 0}, "duration_hours", "out_of_range"),
        ({"duration_hours": -1}, "duration_hours", "out_of_range"),
        ({"duration_hours": 24 * 365 + 1}, "duration_hours", "out_of_range"),
        ({"duration_minutes": 60 * 24 * 365 + 1}, "duration_minutes", "out_of_range"),
        ({"duration_hours": 10**400}, "duration_hours", "out_of_range"),
        ({"duration_hours": True}, "duration_hours", "invalid_type"),
        ({"duration_hours": "1"}, "duration_hours", "invalid_type"),
        ({"duration_hours": 1.5}, "duration_hours", "invalid_type"),
        ({"duration_hours": None}, "duration_hours", "invalid_type"),
        ({"duration_hours": 1, "max_requests": -1}, "max_requests", "out_of_range"),
        ({"duration_hours": 1, "max_requests": 10**30}, "max_requests", "out_of_range"),
        ({"duration_hours": 1, "max_requests": False}, "max_requests", "invalid_type"),
        ({"duration_hours": 1, "label": ["x"]}, "label", "invalid_type"),
        ({"duration_hours": 1, "label": "x" * 201}, "label", "too_long"),
        ({"duration_hours": 1, "expires_at": "2030-01-01T00:00:00Z"}, "expires_at", "unknown_field"),
    ],
)
def test_invalid_token_requests_are_400_naming_the_field(api, make_project, extra, field, code):
    project = make_project()
    status, body, _ = api("POST", "/manage/tokens", {"project_id": str(project.pk), **extra})
    assert status == 400, body
    assert body["field"] == field and body["code"] == code
    assert field in body["error"] or code == "unknown_field"
    assert not Token.objects.exists()


def test_a_json_body_is_read_whatever_its_content_type_says(client, make_project):
    """As curl sends it with plain `-d` (form-encoded Content-Type)."""
    project = make_project()
    response = client.post(
        "/manage/tokens",
        data=json.dumps({"project_id": str(project.pk), "duration_hours": 1}),
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=f"Bearer {MANAGEMENT_TOKEN}",
    )
    assert response.status_code == 201


def test_a_whole_float_is_an_integer_as_in_json_schema(api, make_project):
    project = make_project()
    assert api("POST", "/manage/tokens", {"project_id": str(project.pk), "duration_hours": 2.0})[0] == 201


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'"text"',
        b'{"project_id": NaN}',
        b'{"duration_hours": Infinity}',
        b'{"duration_hours": 1e400}',
        b"[" * 20_000 + b"]" * 20_000,
        b"\xff\xfe{",
        b'{"label": "\\ud800"}',
        b'{"project_id": "\\u0000"}',
    ],
)
def test_junk_bodies_are_400_never_500(api, raw):
    status, body, _ = api("POST", "/manage/tokens", raw=raw)
    assert status in (400, 413), body
    assert body["code"] in {"invalid_json", "invalid_type", "invalid_format", "invalid", "required", "body_too_large"}


def test_a_huge_body_is_413(api):
    status, body, _ = api("POST", "/manage/projects", raw=b'{"name": "' + b"x" * 100_000 + b'"}')
    assert status == 413 and body["code"] == "body_too_large"


def test_list_tokens_filters_and_paginates(api, make_project, make_token):
    web, ci = make_project(name="web"), make_project(name="ci")
    for _ in range(3):
        make_token(web)
    revoked = make_token(ci).token
    api("DELETE", f"/manage/tokens/{revoked.pk}")
    make_token(ci, max_requests=1)
    Token.objects.filter(project=ci, max_requests=1).update(request_count=1)

    status, body, _ = api("GET", f"/manage/tokens?project_id={web.pk}&page_size=2")
    assert status == 200
    assert len(body["tokens"]) == 2 and body["pagination"]["total_count"] == 3 and body["pagination"]["has_next"]
    assert api("GET", f"/manage/tokens?projectId={web.pk}")[1]["pagination"]["total_count"] == 3
    assert api("GET", "/manage/tokens")[1]["pagination"]["total_count"] == 5
    revoked_list = api("GET", "/manage/tokens?status=revoked")[1]["tokens"]
    assert [t["id"] for t in revoked_list] == [str(revoked.pk)]
    assert revoked_list[0]["status"] == "revoked" and revoked_list[0]["is_active"] is False
    assert [t["status"] for t in api("GET", "/manage/tokens?status=limit_reached")[1]["tokens"]] == ["limit_reached"]
    assert api("GET", "/manage/tokens?status=active")[1]["pagination"]["total_count"] == 3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=paused", "status"),
        ("project_id=nope", "project_id"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=99999999999999999999999999999999999", "page"),
        ("page_size=101", "page_size"),
        ("active_only=true", "active_only"),
    ],
)
def test_invalid_list_queries_are_400(api, query, field):
    status, body, _ = api("GET", f"/manage/tokens?{query}")
    assert status == 400 and body["field"] == field


def test_read_a_token_shows_usage_and_status(api, make_project, make_token):
    token = make_token(make_project(), max_requests=100, label="app").token
    Token.objects.filter(pk=token.pk).update(request_count=7, cache_hit_count=3, last_used_at=timezone.now())
    status, body, _ = api("GET", f"/manage/tokens/{token.pk}")
    assert status == 200
    assert body["request_count"] == 7 and body["cache_hit_count"] == 3 and body["max_requests"] == 100
    assert body["status"] == "active" and body["is_active"] is True and body["label"] == "app"
    assert body["last_used_at"] is not None and body["revoked_at"] is None


def test_patch_changes_the_limit_and_keeps_it_when_not_given(api, make_project, make_token):
    token = make_token(make_project(), max_requests=5).token
    status, body, _ = api("PATCH", f"/manage/tokens/{token.pk}", {"max_requests": 50})
    assert status == 200 and body["max_requests"] == 50
    status, body, _ = api("PATCH", f"/manage/tokens/{token.pk}", {"is_active": False})
    assert status == 200 and body["max_requests"] == 50 and body["status"] == "revoked"
    status, body, _ = api("PATCH", f"/manage/tokens/{token.pk}", {"is_active": True})
    assert status == 200 and body["max_requests"] == 50 and body["status"] == "active" and body["revoked_at"] is None
    status, body, _ = api("PATCH", f"/manage/tokens/{token.pk}", {"max_requests": 0})
    assert status == 200 and body["max_requests"] is None
    assert api("PATCH", f"/manage/tokens/{token.pk}", {"max_requests": 3})[1]["max_requests"] == 3
    assert api("PATCH", f"/manage/tokens/{token.pk}", {"max_requests": None})[1]["max_requests"] is None


def test_an_expired_token_cannot_be_reactivated(api, make_project, make_token):
    token = make_token(make_project()).token
    api("DELETE", f"/manage/tokens/{token.pk}")
    Token.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    status, body, _ = api("PATCH", f"/manage/tokens/{token.pk}", {"is_active": True})
    assert status == 409 and body["code"] == "token_expired" and body["field"] == "is_active"
    assert Token.objects.get(pk=token.pk).revoked_at is not None


def test_patch_token_refuses_junk(api, make_project, make_token):
    token = make_token(make_project()).token
    for payload, field in [({"is_active": "yes"}, "is_active"), ({"expires_at": 1}, "expires_at")]:
        status, body, _ = api("PATCH", f"/manage/tokens/{token.pk}", payload)
        assert status == 400 and body["field"] == field
    assert api("PATCH", f"/manage/tokens/{token.pk}", {})[1]["code"] == "no_fields"


def test_delete_revokes_idempotently(api, make_project, make_token):
    token = make_token(make_project()).token
    status, body, response = api("DELETE", f"/manage/tokens/{token.pk}")
    assert status == 204 and response.content == b""
    revoked_at = Token.objects.get(pk=token.pk).revoked_at
    assert revoked_at is not None
    assert api("DELETE", f"/manage/tokens/{token.pk}")[0] == 204
    assert Token.objects.get(pk=token.pk).revoked_at == revoked_at


# --- Audit -----------------------------------------------------------------------------------------------------


def test_api_changes_are_audited_with_the_actor_and_client_address(api):
    project_id = api("POST", "/manage/projects", {"name": "Audited", "api_key": VALID_KEY})[1]["id"]
    token_id = api("POST", "/manage/tokens", {"project_id": project_id, "duration_hours": 1})[1]["id"]
    api("DELETE", f"/manage/tokens/{token_id}")
    entries = LogEntry.objects.filter(object_pk__in=[project_id, token_id]).order_by("pk")
    assert [(e.object_pk, e.action) for e in entries] == [
        (project_id, LogEntry.Action.CREATE),
        (token_id, LogEntry.Action.CREATE),
        (token_id, LogEntry.Action.UPDATE),
    ]
    for entry in entries:
        assert entry.actor_email == "management token"
        assert entry.remote_addr == CLIENT_ADDR
        assert entry.additional_data["via"] == "api"
    assert VALID_KEY not in json.dumps([e.changes for e in entries])
    assert Token.objects.get(pk=token_id).created_by_label == "management token"


def test_audit_list_filters_and_paginates(api, make_project, make_token):
    web = make_project(name="web")
    other = make_project(name="other")
    token = make_token(web).token
    make_token(other)
    api("DELETE", f"/manage/tokens/{token.pk}")

    status, body, _ = api("GET", f"/manage/audit?project_id={web.pk}")
    assert status == 200
    ids = {(e["object_type"], e["object_id"], e["action"]) for e in body["events"]}
    assert ids == {
        ("project", str(web.pk), "create"),
        ("token", str(token.pk), "create"),
        ("token", str(token.pk), "update"),
    }
    assert {e["project_id"] for e in body["events"]} == {str(web.pk)}

    revoke = api("GET", f"/manage/audit?token_id={token.pk}&action=update")[1]["events"]
    assert len(revoke) == 1 and revoke[0]["actor"] == "management token" and revoke[0]["via"] == "api"
    assert revoke[0]["client_ip"] == CLIENT_ADDR and "revoked_at" in revoke[0]["changes"]

    by_operator = api("GET", "/manage/audit?actor=operat&object_type=project")[1]
    assert by_operator["pagination"]["total_count"] == 2 and {e["actor"] for e in by_operator["events"]} == {"operator"}

    page = api("GET", "/manage/audit?page_size=2&page=2")[1]
    assert page["pagination"]["total_count"] == 5 and page["pagination"]["has_prev"] and len(page["events"]) == 2

    future = (timezone.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert api("GET", f"/manage/audit?start_time={future}")[1]["events"] == []
    assert api("GET", f"/manage/audit?to={future}")[1]["pagination"]["total_count"] == 5
    assert api("GET", "/manage/audit?from=2000-01-01T00:00:00%2B02:00")[1]["pagination"]["total_count"] == 5

    event = body["events"][0]
    status, one, _ = api("GET", f"/manage/audit/{event['id']}")
    assert status == 200 and one == event


@pytest.mark.parametrize(
    "query",
    ["action=access2", "object_type=user", "start_time=yesterday", "end_time=9999-12-31T23:59:59-23:59", "page=-1"],
)
def test_invalid_audit_queries_are_400(api, query):
    assert api("GET", f"/manage/audit?{query}")[0] == 400


def test_unknown_audit_events_are_404(api):
    for event_id in ["999999", "abc", "99999999999999999999999"]:
        assert api("GET", f"/manage/audit/{event_id}")[0] == 404


# --- Minting keys ----------------------------------------------------------------------------------------------


def test_a_minting_key_mints_lists_reads_and_revokes_its_own_tokens(api, minting_key):
    key, project = minting_key.plaintext, minting_key.key.project
    payload = {"project_id": str(project.pk), "duration_minutes": 15, "label": "session 1"}
    status, created, _ = api("POST", "/manage/tokens", payload, token=key)
    assert status == 201 and secret.TOKEN.is_well_formed(created["token"])
    listed = api("GET", "/manage/tokens", token=key)[1]
    assert [t["id"] for t in listed["tokens"]] == [created["id"]]
    assert api("GET", f"/manage/tokens?project_id={project.pk}", token=key)[0] == 200
    assert api("GET", f"/manage/tokens/{created['id']}", token=key)[0] == 200
    assert api("DELETE", f"/manage/tokens/{created['id']}", token=key)[0] == 204
    assert api("POST", f"/manage/projects/{project.pk}/tokens/revoke", token=key)[0] == 200
    assert MintingKey.objects.get(pk=minting_key.key.pk).last_used_at is not None

    label = f"minting key web backend ({minting_key.key.prefix}…)"
    entries = LogEntry.objects.filter(object_pk=created["id"]).order_by("pk")
    assert [e.actor_email for e in entries] == [label, label]
    assert {e.remote_addr for e in entries} == {CLIENT_ADDR}
    assert Token.objects.get(pk=created["id"]).created_by_label == label


def test_a_minting_key_cannot_touch_other_projects_or_anything_else(api, minting_key, make_project, make_token):
    key = minting_key.plaintext
    own = minting_key.key.project
    other = make_project(name="Other")
    other_token = make_token(other).token
    own_token = make_token(own).token
    forbidden = {
        "error": "minting keys may only create, list, read and revoke tokens of their own project (and purge its "
        "response cache)",
        "code": "forbidden",
    }

    # Another project's tokens: 404, exactly like a token that does not exist.
    for method in ["GET", "DELETE"]:
        status, body, _ = api(method, f"/manage/tokens/{other_token.pk}", token=key)
        assert (status, body) == (404, {"error": "token not found", "code": "not_found"})
    assert Token.objects.get(pk=other_token.pk).revoked_at is None
    assert [t["id"] for t in api("GET", "/manage/tokens", token=key)[1]["tokens"]] == [str(own_token.pk)]

    # Naming another project (existing or not): 403.
    for project_id in [other.pk, "00000000-0000-0000-0000-000000000000"]:
        status, body, _ = api("POST", "/manage/tokens", {"project_id": str(project_id), "duration_hours": 1}, token=key)
        assert (status, body) == (403, forbidden)
        assert api("GET", f"/manage/tokens?project_id={project_id}", token=key)[0] == 403
        assert api("POST", f"/manage/projects/{project_id}/tokens/revoke", token=key)[0] == 403

    # Everything that is not its own tokens: 403.
    for method, path, body in [
        ("GET", "/manage/projects", None),
        ("POST", "/manage/projects", {"name": "x", "api_key": VALID_KEY}),
        ("GET", f"/manage/projects/{own.pk}", None),
        ("PATCH", f"/manage/projects/{own.pk}", {"is_active": False}),
        ("PATCH", f"/manage/tokens/{own_token.pk}", {"max_requests": 1000}),
        ("GET", "/manage/audit", None),
        ("GET", "/manage/audit/1", None),
    ]:
        assert api(method, path, body, token=key)[:2] == (403, forbidden), (method, path)
    assert Token.objects.filter(project=other).count() == 1
    assert Project.objects.get(pk=own.pk).is_active


def test_a_revoked_minting_key_is_refused(api, minting_key, operator):
    from tokens.minting import minting_key_revoke

    assert minting_key_revoke(key=minting_key.key, actor=operator) is True
    status, body, _ = api("GET", "/manage/tokens", token=minting_key.plaintext)
    assert (status, body) == (401, {"error": "invalid minting key", "code": "unauthorized"})


def test_a_minting_key_is_stored_only_as_a_digest(minting_key):
    stored = MintingKey.objects.values().get(pk=minting_key.key.pk)
    assert minting_key.plaintext not in json.dumps(stored, default=str)
    assert minting_key.plaintext.startswith("mk-") and stored["prefix"] == minting_key.plaintext[:9]


def test_failed_authentications_are_counted_as_security_events(client):
    from llmproxy.security.models import SecurityEvent, SecurityEventKind

    for _ in range(3):
        client.get("/manage/projects", HTTP_AUTHORIZATION="Bearer wrong-token", REMOTE_ADDR="198.51.100.7")
    client.get("/manage/tokens", HTTP_AUTHORIZATION="Bearer mk-" + "b" * 40, REMOTE_ADDR="198.51.100.7")
    events = {e.reason: e for e in SecurityEvent.objects.filter(kind=SecurityEventKind.MANAGEMENT_AUTH_FAILED)}
    assert events["unknown"].count == 4 and events["unknown"].client_ip == "198.51.100.7"
    assert "wrong-token" not in str(SecurityEvent.objects.values())
