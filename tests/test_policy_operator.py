"""A project's upstream and policy set the three ways (admin, API, commands), validated alike and audited; the test
connection against a real mock upstream, reporting its error and never the key."""

import io
import json

import pytest
from auditlog.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from projects.models import Project
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.django_db
MANAGEMENT_TOKEN = "test-management-token-policy-0123"
KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"
WRONG_KEY = "not-an-openai-key-but-fine-elsewhere"


@pytest.fixture(autouse=True)
def local_upstreams_allowed(settings):
    settings.MANAGEMENT_TOKEN = MANAGEMENT_TOKEN
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8"]


@pytest.fixture(scope="module")
def mock():
    server = MockUpstream().start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def api(client):
    def call(method: str, path: str, body: dict | None = None):
        response = getattr(client, method.lower())(
            path,
            json.dumps(body) if body is not None else None,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {MANAGEMENT_TOKEN}",
        )
        return response.status_code, response.json() if response.content else None

    return call


# --- the admin ----------------------------------------------------------------------------------------------------


def test_the_admin_creates_a_project_with_its_upstream_and_policy(admin_client, mock):
    response = admin_client.post(
        reverse("admin:projects_project_add"),
        {
            "name": "Self-hosted",
            "api_key": WRONG_KEY,
            "upstream_url": mock.base_url + "/",
            "upstream_auth": "",
            "allowed_models": "llama-3*\nqwen-2.5",
            "model_aliases": "fast = llama-3.1-8b\n",
            "allowed_endpoints": "POST /chat/completions\npost /v1/embeddings",
            "allowed_origins": "https://app.example.com/",
            "allowed_ips": "10.0.0.1/8\n2001:db8::/32",
        },
    )
    project = Project.objects.get()
    assert response.status_code == 302, response.context["form"].errors
    assert (project.upstream_url, project.upstream_auth) == (mock.base_url, "bearer")
    assert project.allowed_models == ["llama-3*", "qwen-2.5"]
    assert project.model_aliases == {"fast": "llama-3.1-8b"}
    assert project.allowed_endpoints == ["POST /chat/completions", "POST /embeddings"]
    assert project.allowed_origins == ["https://app.example.com"]
    assert project.allowed_ips == ["10.0.0.0/8", "2001:db8::/32"]
    page = admin_client.get(response.url).content.decode()
    for shown in (mock.base_url, "llama-3*", "fast = llama-3.1-8b", "10.0.0.0/8", "Test connection"):
        assert shown in page
    assert WRONG_KEY not in page


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("allowed_ips", "10.0.0.0/33", "not valid"),
        ("allowed_models", "gpt-*-mini", "a prefix ending in a single *"),
        ("allowed_endpoints", "DELETE /everything", "PROXY_ALLOWED_ENDPOINTS"),
        ("allowed_origins", "app.example.com", "scheme://host"),
        ("model_aliases", "fast gpt-4o-mini", "alias = model"),
        ("upstream_url", "http://api.example.com/v1", "https"),
        ("upstream_url", "https://169.254.169.254/latest", "169.254.169.254"),
    ],
)
def test_the_admin_names_the_field_and_entry_it_refuses_and_saves_nothing(admin_client, field, value, says):
    response = admin_client.post(
        reverse("admin:projects_project_add"), {"name": "Refused", "api_key": KEY, field: value}
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field], errors
    assert says in errors[field][0]
    assert not Project.objects.exists()


def test_the_admin_edits_the_policy_and_the_audit_trail_has_it(admin_client, make_project):
    project = make_project(allowed_models=["gpt-4o"])
    edit = reverse("admin:projects_project_edit", args=[project.pk])
    form = admin_client.get(edit).context["form"]
    assert form.initial["allowed_models"] == "gpt-4o"
    response = admin_client.post(
        edit, {"name": project.name, "api_key": "", "allowed_models": "gpt-4o\ngpt-4o-mini", "allowed_ips": ""}
    )
    assert response.status_code == 302, response.context["form"].errors
    project.refresh_from_db()
    assert project.allowed_models == ["gpt-4o", "gpt-4o-mini"]
    change = LogEntry.objects.get_for_object(project).filter(action=LogEntry.Action.UPDATE).latest("timestamp")
    assert "allowed_models" in change.changes_dict


def test_moving_to_openai_with_a_key_that_does_not_fit_asks_for_its_key(admin_client, make_project, mock):
    project = make_project(api_key=WRONG_KEY, upstream_url=mock.base_url)
    response = admin_client.post(
        reverse("admin:projects_project_edit", args=[project.pk]),
        {"name": project.name, "api_key": "", "upstream_url": "", "upstream_auth": ""},
    )
    assert "enter its key" in response.context["form"].errors["api_key"][0]
    project.refresh_from_db()
    assert project.upstream_url == mock.base_url


def test_the_token_form_refuses_a_list_wider_than_the_projects(admin_client, make_project):
    project = make_project(allowed_models=["gpt-4o*"], allowed_ips=["10.0.0.0/8"])
    response = admin_client.post(
        reverse("admin:tokens_token_add"),
        {"project": project.pk, "duration_hours": 1, "allowed_models": "gpt-4.1", "allowed_ips": "10.1.0.0/16"},
    )
    assert "not within the project's allowed models" in response.context["form"].errors["allowed_models"][0]
    response = admin_client.post(
        reverse("admin:tokens_token_add"),
        {"project": project.pk, "duration_hours": 1, "allowed_models": "gpt-4o-mini", "allowed_ips": "10.1.0.0/16"},
    )
    assert response.status_code == 200 and "sk-wt-" in response.content.decode()  # the show-once page
    token = project.tokens.get()
    assert (token.allowed_models, token.allowed_ips) == (["gpt-4o-mini"], ["10.1.0.0/16"])
    assert "gpt-4o-mini" in admin_client.get(reverse("admin:tokens_token_change", args=[token.pk])).content.decode()


def test_test_connection_reports_success_and_the_upstreams_error_never_the_key(admin_client, make_project, mock):
    good = make_project(upstream_url=mock.base_url, api_key=KEY)
    test = reverse("admin:projects_project_test_connection", args=[good.pk])
    page = admin_client.post(test, follow=True).content.decode()
    assert "The upstream answered with the project&#x27;s key. It lists 2 models." in page
    refused = make_project(upstream_url=mock.base_url, api_key=WRONG_KEY)  # the mock wants sk-…
    page = admin_client.post(
        reverse("admin:projects_project_test_connection", args=[refused.pk]), follow=True
    ).content.decode()
    assert "The upstream test failed" in page and "Incorrect API key provided" in page
    assert WRONG_KEY not in page
    assert mock.requests[-1].header("authorization") == f"Bearer {WRONG_KEY}"


# --- the API ------------------------------------------------------------------------------------------------------


def test_the_api_takes_the_upstream_and_policy_and_names_a_refused_field(api, mock):
    status, body = api(
        "POST",
        "/manage/projects",
        {
            "name": "Anthropic",
            "api_key": "sk-ant-api03-abcdef",
            "upstream_url": mock.base_url,
            "upstream_auth": "x-api-key",
            "allowed_models": ["claude-*"],
            "model_aliases": {"smart": "claude-sonnet-4-5"},
        },
    )
    assert status == 201, body
    assert body["upstream_url"] == mock.base_url and body["upstream_auth"] == "x-api-key"
    assert body["allowed_models"] == ["claude-*"] and body["model_aliases"] == {"smart": "claude-sonnet-4-5"}
    assert body["allowed_ips"] is None
    for field, value in (
        ("allowed_ips", ["10.0.0.0/33"]),
        ("allowed_models", ["a*b"]),
        ("upstream_auth", "basic"),
        ("upstream_url", "ftp://example.com"),
        ("model_aliases", {"x": "x"}),
    ):
        status, error = api("PATCH", f"/manage/projects/{body['id']}", {field: value})
        assert (status, error["field"]) == (400, field), error
    status, body = api("PATCH", f"/manage/projects/{body['id']}", {"allowed_ips": ["127.0.0.1"]})
    assert body["allowed_ips"] == ["127.0.0.1/32"]


def test_the_api_refuses_a_token_wider_than_its_project(api, make_project):
    project = make_project(allowed_ips=["10.0.0.0/8"])
    status, error = api(
        "POST", "/manage/tokens", {"project_id": str(project.pk), "duration_hours": 1, "allowed_ips": ["0.0.0.0/0"]}
    )
    assert (status, error["field"]) == (400, "allowed_ips")
    status, token = api(
        "POST", "/manage/tokens", {"project_id": str(project.pk), "duration_hours": 1, "allowed_ips": ["10.2.0.0/16"]}
    )
    assert status == 201 and token["allowed_ips"] == ["10.2.0.0/16"]


def test_the_api_tests_a_projects_connection(api, make_project, mock):
    project = make_project(upstream_url=mock.base_url, api_key=KEY)
    status, body = api("POST", f"/manage/projects/{project.pk}/test-connection")
    assert (status, body["ok"], body["status"], body["model_count"]) == (200, True, 200, 2)


# --- the commands -------------------------------------------------------------------------------------------------


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_commands_set_the_upstream_and_policy(mock):
    project_id = run(
        "create_project",
        "--name",
        "vLLM",
        "--api-key",
        WRONG_KEY,
        "--upstream-url",
        mock.base_url,
        "--allowed-models",
        "llama-3*,qwen-2.5",
    ).strip()
    project = Project.objects.get(pk=project_id)
    assert project.allowed_models == ["llama-3*", "qwen-2.5"]
    out = run("set_project_policy", "vLLM", "--model-aliases", "fast=llama-3.1-8b", "--allowed-models", "none")
    assert "model_aliases: fast=llama-3.1-8b" in out and "allowed_models: any" in out
    with pytest.raises(CommandError, match="allowed_ips"):
        run("set_project_policy", "vLLM", "--allowed-ips", "10.0.0.0/99")
    token = run("generate_token", "--project", "vLLM", "--hours", "1", "--allowed-ips", "10.0.0.0/8").strip()
    assert token.startswith("sk-wt-")
    with pytest.raises(CommandError, match="test failed|Incorrect API key"):
        run("test_upstream", "vLLM")  # the mock wants an sk-… key
    run("set_project_upstream", "vLLM", "--api-key", KEY)
    assert "OK (HTTP 200, 2 models listed)" in run("test_upstream", "vLLM")
    with pytest.raises(CommandError, match="api_key"):
        run("set_project_upstream", "vLLM", "--upstream-url", "", "--api-key", WRONG_KEY)
