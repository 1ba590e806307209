"""The proxy against what it was not built for: bodies it cannot read, paths that say one thing raw and another
decoded, failures of its own; and what its log and its streams show then."""

import json
import time
import uuid

import httpx
import openai
import pytest
from django.db import connection

from tests.conftest import VALID_KEY
from tests.live import TEST_SERVER_ENV, database_url, settle_usage, start_server, wait_for_usage
from tests.raw_http import raw_request

pytestmark = pytest.mark.usefixtures("live_db")

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def issued(make_project, make_token):
    return make_token(make_project())


def log_after(server, offset: int, request_id: str, timeout: float = 5) -> str:
    """What the server logged from `offset` on, once the access line of the request with this ID is there."""
    deadline = time.monotonic() + timeout
    while True:
        with server.log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        if f"request_id={request_id}" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.parametrize("status", ["500", "503"])
def test_an_upstream_5xx_passed_on_is_logged_by_the_access_line_alone(
    proxy_server, upstream, issued, openai_client, status
):
    offset = proxy_server.log.stat().st_size
    request_id = uuid.uuid4().hex
    with pytest.raises(openai.InternalServerError) as raised:
        openai_client(issued.plaintext).chat.completions.create(
            **CHAT, extra_headers={"x-mock-status": status, "X-Request-ID": request_id}
        )

    assert raised.value.status_code == int(status)
    logged = log_after(proxy_server, offset, request_id)
    assert f"proxy.access POST /v1/chat/completions {status} request_id={request_id}" in logged
    assert "django.request" not in logged, "Django's own error line repeats the access line"


# --- bodies the proxy cannot read, or cannot re-encode --------------------------------------------------------------
def post_raw(server, token: str, body: bytes) -> httpx.Response:
    """A chat completion with a body the SDK would not write (it cannot encode a lone surrogate, for one)."""
    return httpx.post(
        f"{server.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b'{"model":"gpt-4o","messages":' + b"[" * 100_000], ids=["array", "in-an-object"]
)
def test_a_body_nested_deeper_than_the_parser_goes_is_forwarded_as_it_came(proxy_server, upstream, issued, body):
    response = post_raw(proxy_server, issued.plaintext, body)

    assert response.status_code == 400, response.text[:200]
    assert response.json()["error"]["message"].startswith("We could not parse the JSON body")
    assert upstream.last("/chat/completions").body == body
    (record,) = wait_for_usage(1)
    assert (record.status, record.refusal_code, record.model) == (400, "", "")


def test_a_lone_surrogate_in_a_streamed_request_goes_on_as_written_and_the_stream_is_metered(
    proxy_server, upstream, issued
):
    body = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"\\ud800 caf\xc3\xa9"}]}'
    response = post_raw(proxy_server, issued.plaintext, body)

    assert response.status_code == 200, response.text[:200]
    assert response.text.endswith("data: [DONE]\n\n") and '"completion_tokens"' not in response.text
    sent = upstream.last("/chat/completions")
    assert b'"content":"\\ud800 caf\xc3\xa9"' in sent.body
    assert sent.json()["stream_options"] == {"include_usage": True}
    (record,) = wait_for_usage(1)
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (200, 11, 3)


def test_a_model_name_that_is_not_valid_text_is_recorded_cleaned(proxy_server, upstream, issued):
    response = post_raw(proxy_server, issued.plaintext, b'{"model":"gpt-4o\\ud800\\u0000","messages":[]}')

    assert response.status_code == 200
    (record,) = wait_for_usage(1)
    assert record.model == "gpt-4o\ufffd\ufffd" and record.completion_tokens == 7


# --- the last guard -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def misconfigured_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """A server whose UPSTREAM_BASE_URL has its port typed twice: building the upstream request fails every time."""
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url="http://127.0.0.1:8080:8080/v1",
        log=tmp_path_factory.mktemp("misconfigured") / "server.log",
        env=TEST_SERVER_ENV,
        workers=1,
    )
    yield server
    server.stop()


def test_an_unexpected_failure_is_a_500_in_openais_envelope_logged_once_and_recorded(misconfigured_server, issued):
    client = openai.OpenAI(base_url=misconfigured_server.base_url, api_key=issued.plaintext, timeout=10)
    request_id = uuid.uuid4().hex
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(**CHAT, extra_headers={"X-Request-ID": request_id})

    error = raised.value
    assert (error.status_code, error.code, error.type) == (500, "internal_error", "server_error")
    assert error.body["message"] == "The proxy failed to handle this request."
    assert error.response.headers["x-should-retry"] == "false"
    wait_for_usage(1)
    settle_usage()  # the record of any retry the SDK made (it makes two by default) is in too
    (record,) = wait_for_usage(1)
    assert (record.status, record.refusal_code, record.request_id, record.token_id) == (
        500,
        "internal_error",
        request_id,
        issued.token.pk,
    )
    logged = log_after(misconfigured_server, 0, request_id)
    assert logged.count(" ERROR ") == 1, "logged once"
    assert f"ERROR proxy.views unexpected error on request {request_id}\nTraceback" in logged
    assert "httpx.InvalidURL" in logged
    assert issued.plaintext not in logged


# --- paths that say one thing raw and another decoded ---------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "/v1/files/..%5c..%5cfine_tuning%5cjobs",  # checked as GET /files/*
        "/v1/files/..\\..\\fine_tuning\\jobs",  # the same with plain backslashes
        "/v1/files/file-abc%2fcontent",  # checked as GET /files/*/content, one segment upstream
        "/v1/files/file-abc%2Fcontent",
        "/v1/models/%2E%2E",
        "/v1/models/%2e%2e/files",
        "/v1/models/%2E/gpt-4o",
        "/v1/models/../files",
        "/v1/models/./gpt-4o",
    ],
)
def test_a_path_whose_raw_segments_differ_from_the_decoded_ones_is_refused_before_anything_leaves(
    proxy_server, upstream, issued, target
):
    response = raw_request(proxy_server.url, target, headers={"Authorization": f"Bearer {issued.plaintext}"})

    assert response.status == 400, response.body[:200]
    assert json.loads(response.body)["error"]["code"] == "invalid_path"
    assert response.headers["x-should-retry"] == "false"
    assert upstream.requests == []
    (record,) = wait_for_usage(1)
    assert (record.status, record.refusal_code, record.token_id) == (400, "invalid_path", None)


def test_a_percent_encoded_path_with_the_same_segments_is_forwarded_as_sent(proxy_server, upstream, issued):
    response = raw_request(
        proxy_server.url, "/v1/models/gpt%2D4o%2Bx", headers={"Authorization": f"Bearer {issued.plaintext}"}
    )

    assert response.status == 200
    assert json.loads(response.body)["id"] == "gpt%2D4o%2Bx"
    assert upstream.last().path == "/v1/models/gpt%2D4o%2Bx"


# --- streams: what the proxy asked for on the client's behalf does not show ------------------------------------------
def test_a_stream_reads_as_it_would_have_without_the_usage_the_proxy_asked_for(proxy_server, upstream, issued):
    chat = {**CHAT, "stream": True}
    direct = httpx.post(
        f"{upstream.base_url}/chat/completions", json=chat, headers={"Authorization": f"Bearer {VALID_KEY}"}
    )
    proxied = httpx.post(
        f"{proxy_server.base_url}/chat/completions", json=chat, headers={"Authorization": f"Bearer {issued.plaintext}"}
    )

    assert upstream.last().json()["stream_options"] == {"include_usage": True}
    assert proxied.status_code == 200 and proxied.content.count(b"data: ") == 5
    assert proxied.content == direct.content, "the chunks differ from what the upstream sends when not asked for usage"
    (record,) = wait_for_usage(1)
    assert (record.prompt_tokens, record.completion_tokens) == (11, 3)
