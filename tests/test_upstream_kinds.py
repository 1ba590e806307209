"""One deployment serving an OpenAI project, an Azure OpenAI project, an Anthropic project and a self-hosted
(vLLM-like) project side by side, through the real server and the official `openai` and `anthropic` SDKs, against
real mock upstreams that each accept only their own key in their own header; each request's usage, cost and refusals
in the same log; and an upstream whose name resolves to a refused address, refused when the proxy connects."""

import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from proxy.services import price_set
from tests.conftest import VALID_KEY
from tests.live import TEST_SERVER_ENV, database_url, start_server, wait_for_usage
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.usefixtures("live_db")

AZURE_KEY = "0123456789abcdef0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-mock-key-0123456789"
VLLM_KEY = "vllm-local-key"
CLAUDE = "claude-sonnet-4-5"
MESSAGE = {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def local_upstreams_allowed(settings, monkeypatch):
    """As the tests' server allows (tests.live): a project may point at a mock on this machine."""
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["127.0.0.1", "localhost"]
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8", "::1/128"]
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def mocks():
    started = {
        "azure": MockUpstream(auth="api-key", keys=[AZURE_KEY]).start_in_thread(),
        "anthropic": MockUpstream(auth="x-api-key", keys=[ANTHROPIC_KEY]).start_in_thread(),
        "vllm": MockUpstream(auth="bearer", keys=[VLLM_KEY]).start_in_thread(),
    }
    yield started
    for mock in started.values():
        mock.stop()


@pytest.fixture
def upstreams(mocks, upstream):
    for mock in mocks.values():
        mock.reset()
    yield {"openai": upstream, **mocks}
    for name, mock in mocks.items():
        assert mock.violations == [], f"{name}: {mock.violations}"


@pytest.fixture
def projects(upstreams, make_project):
    return {
        "openai": make_project(name="OpenAI"),
        "azure": make_project(
            name="Azure", upstream_url=upstreams["azure"].base_url, upstream_auth="api-key", api_key=AZURE_KEY
        ),
        "anthropic": make_project(
            name="Anthropic",
            upstream_url=upstreams["anthropic"].base_url,
            upstream_auth="x-api-key",
            api_key=ANTHROPIC_KEY,
        ),
        "vllm": make_project(name="vLLM", upstream_url=upstreams["vllm"].base_url, api_key=VLLM_KEY),
    }


def openai_client(server, token: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=token, base_url=server.base_url, max_retries=0)


def anthropic_client(server, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=token, base_url=server.url, max_retries=0)


def test_four_kinds_of_upstream_side_by_side_each_with_its_own_key(proxy_server, upstreams, projects, make_token):
    tokens = {name: make_token(project).plaintext for name, project in projects.items()}
    for name in ("openai", "azure", "vllm"):
        answer = openai_client(proxy_server, tokens[name]).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
        assert answer.choices, name
    message = anthropic_client(proxy_server, tokens["anthropic"]).messages.create(**MESSAGE)
    assert message.content[0].text

    assert upstreams["openai"].last().credentials == {"authorization": VALID_KEY}
    assert upstreams["azure"].last().credentials == {"api-key": AZURE_KEY}
    assert upstreams["anthropic"].last().credentials == {"x-api-key": ANTHROPIC_KEY}
    assert upstreams["anthropic"].last().header("anthropic-version")
    assert upstreams["vllm"].last().credentials == {"authorization": VLLM_KEY}
    for mock in upstreams.values():
        assert len(mock.requests) == 1

    records = {r.project_id: r for r in wait_for_usage(4, status=200)}
    assert set(records) == {p.id for p in projects.values()}
    claude = records[projects["anthropic"].id]
    assert (claude.model, claude.prompt_tokens, claude.completion_tokens) == (CLAUDE, 11, 7)


def test_anthropic_streams_are_counted_with_their_cache_reads_and_charged(
    proxy_server, upstreams, projects, make_token, operator
):
    price_set(
        model=CLAUDE,
        input_per_million=3_000,
        cached_input_per_million=300,
        output_per_million=9_000,
        source="test",
        actor=operator,
    )
    time.sleep(0.3)  # the workers read prices again after PRICE_CACHE_SECONDS (short in the tests' server)
    issued = make_token(projects["anthropic"], budget_usd=100)
    client = anthropic_client(proxy_server, issued.plaintext)
    with client.messages.stream(**MESSAGE, extra_headers={"x-mock-cache-read": "5", "x-mock-chunks": "4"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens == 4
    (record,) = wait_for_usage(1, status=200)
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens) == (16, 5, 4)
    # 11 input at $3,000/M + 5 cache reads at $300/M + 4 output at $9,000/M
    assert record.cost_usd == Decimal("0.033") + Decimal("0.0015") + Decimal("0.036")
    issued.token.refresh_from_db()
    assert issued.token.spent_usd == record.cost_usd  # charged before the stream ended


def test_policy_refusals_on_the_messages_api_raise_anthropics_exceptions(
    proxy_server, upstreams, make_project, make_token
):
    project = make_project(
        upstream_url=upstreams["anthropic"].base_url,
        upstream_auth="x-api-key",
        api_key=ANTHROPIC_KEY,
        allowed_models=["claude-haiku*"],
        model_aliases={"fast": "claude-haiku-4-5"},
    )
    client = anthropic_client(proxy_server, make_token(project).plaintext)
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        client.messages.create(**MESSAGE)
    assert caught.value.body["error"]["type"] == "permission_error"
    assert "claude-sonnet-4-5" in caught.value.body["error"]["message"]
    assert client.messages.create(**{**MESSAGE, "model": "fast"}).content
    assert upstreams["anthropic"].last().json()["model"] == "claude-haiku-4-5"
    (record,) = wait_for_usage(1, refusal_code="model_not_allowed")
    assert record.status == 403


def test_an_upstream_resolving_to_a_refused_address_is_refused_when_the_proxy_connects(
    live_db, upstreams, make_project, make_token, tmp_path
):
    """Saved while `localhost` was allowed; the server's own settings allow no private network: the guard checks
    the address at connect time, so the request is refused there (502) and nothing reaches the upstream."""
    from django.db import connection

    mock = upstreams["vllm"]
    project = make_project(upstream_url=f"http://localhost:{mock.port}/v1", api_key=VLLM_KEY)
    token = make_token(project).plaintext
    strict = {**TEST_SERVER_ENV, "UPSTREAM_ALLOW_HTTP_HOSTS": "localhost", "UPSTREAM_ALLOW_PRIVATE_NETWORKS": ""}
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=upstreams["openai"].base_url,
        log=tmp_path / "gunicorn.log",
        env=strict,
        workers=1,
    )
    try:
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
    finally:
        server.stop()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_address_refused"
    assert mock.requests == []
    (record,) = wait_for_usage(1, refusal_code="upstream_address_refused")
    assert record.project_id == project.id


def test_test_connection_uses_each_upstreams_own_header(upstreams, projects):
    from proxy.probe import project_upstream_test

    for name in ("azure", "anthropic", "vllm"):
        result = project_upstream_test(project=projects[name])
        assert result.ok, (name, result.message)
    assert upstreams["anthropic"].last().header("anthropic-version")
