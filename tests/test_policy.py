"""Upstreams and policy per project, through the real server (2 workers), real mock upstreams and the official SDK:
each project goes to its own upstream with its own key; allowed models (after aliases), endpoints, origins and
client addresses, narrowed per token; every refusal recorded, none reaching an upstream, none using up quota; a
policy change seen on the very next request."""

import httpx
import openai
import pytest

from llmproxy.errors import ServiceError
from projects.services import project_set_policy
from tests.live import wait_for_usage
from tests.mock_upstream import MockUpstream
from tokens.models import Token

pytestmark = pytest.mark.usefixtures("live_db")

OTHER_KEY = "sk-other-upstream-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def local_upstreams_allowed(settings):
    """As the tests' server allows (tests.live): a project may point at a mock on this machine."""
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8"]


@pytest.fixture(scope="module")
def second_mock():
    mock = MockUpstream().start_in_thread()
    yield mock
    mock.stop()


@pytest.fixture
def second(second_mock):
    second_mock.reset()
    yield second_mock
    assert second_mock.violations == [], "a token reached the second upstream"


def client(server, token: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key=token, base_url=server.base_url, max_retries=0, **kwargs)


def chat(server, token: str, model: str = "gpt-4o-mini", **kwargs):
    return client(server, token, **kwargs).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}]
    )


def refused(server, token: str, code: str, **kwargs) -> openai.APIStatusError:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(server, token, **kwargs)
    assert caught.value.code == code, caught.value.body
    return caught.value


def test_each_project_goes_to_its_own_upstream_with_its_own_key(
    proxy_server, upstream, second, make_project, make_token
):
    default = make_project(name="Default upstream")
    own = make_project(name="Own upstream", upstream_url=second.base_url, api_key=OTHER_KEY)
    chat(proxy_server, make_token(default).plaintext)
    chat(proxy_server, make_token(own).plaintext)
    assert [r.header("authorization") for r in upstream.requests] == [
        "Bearer sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"
    ]
    assert [r.header("authorization") for r in second.requests] == [f"Bearer {OTHER_KEY}"]
    records = wait_for_usage(2, status=200)
    assert {r.project_id for r in records} == {default.id, own.id}


def test_a_model_outside_the_list_is_refused_before_it_leaves_and_uses_no_quota(
    proxy_server, upstream, make_project, make_token
):
    project = make_project(allowed_models=["gpt-4o-mini", "o3*"])
    issued = make_token(project, max_requests=5)
    assert chat(proxy_server, issued.plaintext, model="gpt-4o-mini").choices
    assert chat(proxy_server, issued.plaintext, model="o3-mini").choices
    error = refused(proxy_server, issued.plaintext, "model_not_allowed", model="gpt-4o")
    assert error.body["param"] == "model"
    assert "gpt-4o" in error.message
    assert [r.json()["model"] for r in upstream.requests] == ["gpt-4o-mini", "o3-mini"]
    assert Token.objects.get(pk=issued.token.pk).request_count == 2  # the refused one was given back
    (record,) = wait_for_usage(1, refusal_code="model_not_allowed")
    assert (record.status, record.model, record.token_id) == (403, "gpt-4o", issued.token.pk)


def test_an_alias_is_rewritten_and_allowed_when_its_target_is(proxy_server, upstream, make_project, make_token):
    project = make_project(allowed_models=["gpt-4o-mini"], model_aliases={"fast": "gpt-4o-mini", "smart": "gpt-4o"})
    token = make_token(project).plaintext
    answer = chat(proxy_server, token, model="fast")
    assert answer.model == "gpt-4o-mini"
    assert upstream.last("/chat/completions").json()["model"] == "gpt-4o-mini"
    refused(proxy_server, token, "model_not_allowed", model="smart")  # its target is not allowed
    (record,) = wait_for_usage(1, status=200)
    assert record.model == "gpt-4o-mini"  # usage, prices and budgets use the model sent


def test_the_model_list_shows_only_allowed_models_and_aliases(proxy_server, upstream, make_project, make_token):
    project = make_project(allowed_models=["gpt-4o-mini"], model_aliases={"fast": "gpt-4o-mini"})
    models = client(proxy_server, make_token(project).plaintext).models.list()
    assert sorted(m.id for m in models.data) == ["fast", "gpt-4o-mini"]
    assert client(proxy_server, make_token(project).plaintext).models.retrieve("fast").id == "gpt-4o-mini"
    with pytest.raises(openai.PermissionDeniedError):
        client(proxy_server, make_token(project).plaintext).models.retrieve("gpt-4o")
    unrestricted = client(proxy_server, make_token(make_project()).plaintext).models.list()
    assert sorted(m.id for m in unrestricted.data) == ["gpt-4o", "gpt-4o-mini"]


def test_a_token_narrows_its_projects_models_and_may_not_widen_them(proxy_server, upstream, make_project, make_token):
    project = make_project(allowed_models=["gpt-4o*"])
    narrow = make_token(project, allowed_models=["gpt-4o-mini"]).plaintext
    assert chat(proxy_server, narrow, model="gpt-4o-mini").choices
    refused(proxy_server, narrow, "model_not_allowed", model="gpt-4o")
    with pytest.raises(ServiceError) as wider:
        make_token(project, allowed_models=["gpt-4.1"])
    assert wider.value.field == "allowed_models"
    with pytest.raises(ServiceError):
        make_token(project, allowed_models=["gpt-*"])  # a prefix wider than the project's


def test_a_body_naming_its_model_twice_is_refused_when_models_are_restricted(
    proxy_server, upstream, make_project, make_token
):
    token = make_token(make_project(allowed_models=["gpt-4o-mini"])).plaintext
    body = b'{"model": "gpt-4o-mini", "messages": [], "mod\\u0065l": "gpt-4o"}'
    response = httpx.post(
        f"{proxy_server.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "duplicate_model"
    # A body the proxy would not read otherwise (not declared as JSON) is read all the same.
    response = httpx.post(
        f"{proxy_server.base_url}/chat/completions",
        content=b'{"model": "gpt-4o", "messages": []}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
    )
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert upstream.requests == []


def test_endpoints_outside_the_projects_list_are_refused(proxy_server, upstream, make_project, make_token):
    token = make_token(make_project(allowed_endpoints=["POST /embeddings"])).plaintext
    assert client(proxy_server, token).embeddings.create(model="text-embedding-3-small", input="hi").data
    error = refused(proxy_server, token, "endpoint_not_allowed")
    assert "POST /v1/chat/completions" in error.message
    assert [r.path for r in upstream.requests] == ["/v1/embeddings"]


def test_endpoint_entries_must_lie_within_the_proxys_list(make_project):
    with pytest.raises(ServiceError) as outside:
        make_project(allowed_endpoints=["POST /fine_tuning/jobs/x/cancel", "DELETE /everything"])
    assert outside.value.field == "allowed_endpoints"
    project = make_project(allowed_endpoints=["post /v1/embeddings/", "GET /models/*"])
    assert project.allowed_endpoints == ["POST /embeddings", "GET /models/*"]


def test_client_addresses_outside_the_ranges_are_refused(proxy_server, upstream, make_project, make_token):
    elsewhere = make_token(make_project(allowed_ips=["10.0.0.0/8", "2001:db8::/32"])).plaintext
    refused(proxy_server, elsewhere, "ip_not_allowed")
    here = make_project(allowed_ips=["127.0.0.0/8"])
    assert chat(proxy_server, make_token(here).plaintext).choices
    narrowed = make_token(here, allowed_ips=["127.0.0.2/32"]).plaintext
    refused(proxy_server, narrowed, "ip_not_allowed")
    with pytest.raises(ServiceError) as wider:
        make_token(here, allowed_ips=["0.0.0.0/0"])
    assert wider.value.field == "allowed_ips"
    assert len(upstream.requests) == 1
    records = wait_for_usage(2, refusal_code="ip_not_allowed")
    assert len(records) == 2


def test_origins_a_project_allows_get_cors_and_others_are_refused(proxy_server, upstream, make_project, make_token):
    import time

    project = make_project(allowed_origins=["https://team.example.org"])
    token = make_token(project).plaintext
    time.sleep(0.3)  # the workers read the projects' origins for preflights again after a short while in tests
    preflight = httpx.options(
        f"{proxy_server.base_url}/chat/completions",
        headers={"Origin": "https://team.example.org", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://team.example.org"
    stranger = httpx.options(
        f"{proxy_server.base_url}/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in stranger.headers
    allowed = chat(proxy_server, token, default_headers={"Origin": "https://team.example.org"})
    assert allowed.choices
    raw = httpx.post(
        f"{proxy_server.base_url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"Authorization": f"Bearer {token}", "Origin": "https://team.example.org"},
    )
    assert raw.headers["Access-Control-Allow-Origin"] == "https://team.example.org"
    # The globally allowed origin of the tests' server is not this project's.
    refused(proxy_server, token, "origin_not_allowed", default_headers={"Origin": "https://app.example.com"})
    # A server-side client sends no Origin: not affected.
    assert chat(proxy_server, token).choices


def test_a_policy_change_bites_on_the_very_next_request(proxy_server, upstream, make_project, make_token, operator):
    project = make_project()
    token = make_token(project).plaintext
    assert chat(proxy_server, token, model="gpt-4o").choices
    project_set_policy(project=project, actor=operator, allowed_models=["gpt-4o-mini"])
    refused(proxy_server, token, "model_not_allowed", model="gpt-4o")
    project_set_policy(project=project, actor=operator, allowed_models=None)
    assert chat(proxy_server, token, model="gpt-4o").choices


def test_the_token_is_also_accepted_in_x_api_key_and_never_forwarded(proxy_server, upstream, make_project, make_token):
    token = make_token(make_project()).plaintext
    response = httpx.post(
        f"{proxy_server.base_url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"x-api-key": token},
    )
    assert response.status_code == 200
    assert upstream.last().header("x-api-key") is None
