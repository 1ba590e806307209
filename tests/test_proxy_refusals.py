"""Every refusal is exact, readable through the SDK, and never shows a secret; operator decisions bite at once."""

from datetime import timedelta

import httpx
import openai
import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from projects.models import Project
from projects.services import project_update
from tests.conftest import OTHER_KEY, VALID_KEY
from tests.live import wait_for_usage
from tokens.models import Token
from tokens.services import project_set_active, token_revoke, token_set_limits

pytestmark = pytest.mark.usefixtures("live_db")

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def project(make_project):
    return make_project()


@pytest.fixture
def issued(project, make_token):
    return make_token(project)


def refused(client, exception, **kwargs):
    """The SDK's exception for a refused chat completion, after checking it carries no secret."""
    with pytest.raises(exception) as raised:
        client.chat.completions.create(**CHAT, **kwargs)
    error = raised.value
    text = f"{error} {error.body}"
    assert client.api_key not in text and VALID_KEY not in text and "Traceback" not in text
    return error


def test_missing_token(proxy_server, upstream):
    response = httpx.post(f"{proxy_server.base_url}/chat/completions", json=CHAT)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_token"
    assert "Authorization: Bearer" in response.json()["error"]["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("value", ["sk-wt-short", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD", "x" * 40])
def test_malformed_token(openai_client, upstream, value):
    error = refused(openai_client(value), openai.AuthenticationError)

    assert error.status_code == 401 and error.code == "invalid_token_format"
    assert error.body["type"] == "invalid_request_error" and error.body["param"] is None
    assert upstream.requests == []


def test_unknown_token_is_recorded_by_its_prefix_only(openai_client, upstream):
    unknown = "sk-wt-" + "A" * 32
    error = refused(openai_client(unknown), openai.AuthenticationError)

    assert error.code == "invalid_token" and error.body["message"].startswith("Unknown token")
    (record,) = wait_for_usage(1)
    assert (record.status, record.refusal_code, record.token_prefix, record.token_id) == (
        401,
        "invalid_token",
        "sk-wt-AAAAAA",
        None,
    )


def test_revoked_token_is_refused_on_the_very_next_request(openai_client, issued, operator, upstream):
    client = openai_client(issued.plaintext)
    client.chat.completions.create(**CHAT)

    token_revoke(token=issued.token, actor=operator)

    error = refused(client, openai.AuthenticationError)
    assert error.code == "token_revoked" and "revoked" in error.message
    assert len(upstream.requests) == 1


def test_expired_token(openai_client, issued):
    Token.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    error = refused(openai_client(issued.plaintext), openai.AuthenticationError)
    assert error.code == "token_expired"


def test_deactivated_project_refuses_at_once_and_reactivation_restores(
    openai_client, project, issued, operator, upstream
):
    client = openai_client(issued.plaintext)
    project_set_active(active=False, project=project, actor=operator)

    error = refused(client, openai.PermissionDeniedError)
    assert error.status_code == 403 and error.code == "project_inactive"

    project_set_active(active=True, project=project, actor=operator)
    assert client.chat.completions.create(**CHAT).choices


def test_rotated_upstream_key_is_used_from_the_next_request(openai_client, project, issued, operator, upstream):
    client = openai_client(issued.plaintext)
    client.chat.completions.create(**CHAT)
    project_update(project=project, api_key=OTHER_KEY, actor=operator)
    client.chat.completions.create(**CHAT)

    assert [r.header("authorization") for r in upstream.requests] == [f"Bearer {VALID_KEY}", f"Bearer {OTHER_KEY}"]


def test_request_limit(openai_client, project, make_token, operator, upstream):
    issued = make_token(project, max_requests=2)
    client = openai_client(issued.plaintext)
    client.chat.completions.create(**CHAT)
    client.chat.completions.create(**CHAT)

    error = refused(client, openai.RateLimitError)
    assert error.status_code == 429 and error.code == "request_limit_reached"
    assert "2 requests" in error.message
    assert error.response.headers["x-should-retry"] == "false"

    token_set_limits(token=issued.token, max_requests=3, actor=operator)
    client.chat.completions.create(**CHAT)
    assert len(upstream.requests) == 3
    assert Token.objects.get(pk=issued.token.pk).request_count == 3


def test_endpoint_not_in_the_allow_list(openai_client, issued, upstream):
    client = openai_client(issued.plaintext)
    with pytest.raises(openai.NotFoundError) as raised:
        client.get("/fine_tuning/jobs", cast_to=object)

    assert raised.value.code == "endpoint_not_allowed"
    assert raised.value.body["message"] == "This proxy does not serve GET /v1/fine_tuning/jobs."
    assert upstream.requests == []


def test_method_not_allowed(openai_client, issued, upstream):
    client = openai_client(issued.plaintext)
    with pytest.raises(openai.APIStatusError) as raised:
        client.delete("/chat/completions", cast_to=object)

    assert raised.value.status_code == 405 and raised.value.code == "method_not_allowed"
    assert raised.value.response.headers["allow"] == "POST, OPTIONS"
    assert upstream.requests == []


def test_body_over_the_limit_by_content_length(openai_client, issued, upstream):
    client = openai_client(issued.plaintext)
    with pytest.raises(openai.APIStatusError) as raised:
        client.files.create(file=("big.jsonl", b"x" * (1024 * 1024 + 1)), purpose="batch")

    assert raised.value.status_code == 413 and raised.value.code == "request_too_large"
    assert raised.value.body["message"] == "The request body is larger than the limit of 1 MiB."
    assert upstream.requests == []
    assert Token.objects.get(pk=issued.token.pk).request_count == 0


def test_body_over_the_limit_without_content_length(proxy_server, issued, upstream):
    def chunks():
        for _ in range(20):
            yield b"y" * 65536

    response = httpx.post(
        f"{proxy_server.base_url}/files",
        content=chunks(),
        headers={"Authorization": f"Bearer {issued.plaintext}", "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []


def test_upstream_unreachable(openai_client, issued):
    error = refused(
        openai_client(issued.plaintext), openai.InternalServerError, extra_headers={"x-mock-drop": "before-headers"}
    )

    assert error.status_code == 502 and error.code == "upstream_unreachable"


def test_upstream_timeout_before_headers(openai_client, issued):
    error = refused(openai_client(issued.plaintext), openai.InternalServerError, extra_headers={"x-mock-delay": "3"})

    assert error.status_code == 504 and error.code == "upstream_timeout"


def test_undecryptable_upstream_key(openai_client, project, issued, upstream):
    stranger = Fernet(Fernet.generate_key()).encrypt(VALID_KEY.encode()).decode()
    Project.objects.filter(pk=project.pk).update(api_key_ciphertext=stranger)

    error = refused(openai_client(issued.plaintext), openai.InternalServerError)
    assert error.status_code == 503 and error.code == "upstream_key_unusable"
    assert upstream.requests == []


def test_refusals_are_recorded(openai_client, issued, project, operator):
    client = openai_client(issued.plaintext)
    project_set_active(active=False, project=project, actor=operator)
    refused(client, openai.PermissionDeniedError)

    (record,) = wait_for_usage(1)
    assert (record.status, record.refusal_code, record.project_id, record.token_id) == (
        403,
        "project_inactive",
        project.pk,
        issued.token.pk,
    )
    assert record.request_id and record.client_ip == "127.0.0.1" and record.path == "/v1/chat/completions"
