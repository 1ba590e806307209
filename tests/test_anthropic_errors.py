"""Refusals on Anthropic's Messages API (`/v1/messages` and under it) in Anthropic's error shape, so its official SDK
raises its usual exception for each; everywhere else OpenAI's envelope, byte for byte as before."""

import json
import time
from datetime import timedelta
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone

from proxy import errors
from proxy.services import price_set
from tests.conftest import VALID_KEY
from tests.live import wait_for_usage
from tokens.models import Token
from tokens.services import project_set_active, token_revoke

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
MALFORMED = "sk-wt-short"
UNKNOWN = "sk-wt-" + "A" * 32

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}

EVERY_REFUSAL = [
    errors.missing_token(),
    errors.invalid_token_format(),
    errors.unknown_token(),
    errors.token_revoked(),
    errors.token_expired(),
    errors.project_inactive(),
    errors.request_limit_reached(3),
    errors.endpoint_not_allowed("POST", "/v1/messages/batches"),
    errors.invalid_path(),
    errors.method_not_allowed("GET", "/v1/messages", ("POST",)),
    errors.body_too_large(1024 * 1024),
    errors.upstream_unreachable(),
    errors.upstream_timeout(),
    errors.database_unavailable(),
    errors.upstream_key_unusable(),
    errors.rate_limit_exceeded("token", "requests", 5, 12),
    errors.rate_limit_exceeded("project", "tokens", None, 3),
    errors.token_budget_exceeded(Decimal("1.5")),
    errors.project_budget_exceeded(Decimal("10"), "month", None),
    errors.model_not_priced("claude-unpriced"),
    errors.model_not_allowed("claude-opus-4"),
    errors.duplicate_model(),
    errors.endpoint_not_allowed_for_project("POST", "/v1/messages/count_tokens"),
    errors.origin_not_allowed("https://evil.example"),
    errors.ip_not_allowed(),
    errors.upstream_address_refused(),
    errors.internal_error(),
]


@pytest.fixture(autouse=True)
def no_anthropic_credentials_from_the_environment(monkeypatch):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# --- the two shapes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("refusal", EVERY_REFUSAL, ids=lambda r: f"{r.status}-{r.code}")
def test_openais_envelope_is_unchanged(refusal):
    expected = json.dumps(
        {"error": {"message": refusal.message, "type": refusal.type, "param": refusal.param, "code": refusal.code}}
    ).encode()
    assert errors.refusal_body(refusal) == expected
    assert errors.refusal_body(refusal, anthropic=False, request_id="req-1") == expected
    assert errors.refusal_response(refusal).content == expected


@pytest.mark.parametrize("refusal", EVERY_REFUSAL, ids=lambda r: f"{r.status}-{r.code}")
def test_anthropics_shape_keeps_the_status_message_and_headers(refusal):
    body = json.loads(errors.refusal_body(refusal, anthropic=True, request_id="req-1"))

    assert body == {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES[refusal.status], "message": refusal.message},
        "request_id": "req-1",
    }
    response = errors.refusal_response(refusal, anthropic=True, request_id="req-1")
    assert response.status_code == refusal.status and json.loads(response.content) == body
    plain = errors.refusal_response(refusal)
    assert dict(response.items()) == dict(plain.items()), "the same headers in both shapes"
    assert "request_id" not in json.loads(errors.refusal_body(refusal, anthropic=True))


@pytest.mark.parametrize(
    ("status", "kind"), [(402, "billing_error"), (409, "invalid_request_error"), (529, "overloaded_error")]
)
def test_statuses_the_proxy_does_not_send_map_as_anthropic_documents(status, kind):
    assert errors.anthropic_type(status) == kind


@pytest.mark.parametrize(
    ("path", "anthropic_shaped"),
    [
        ("/v1/messages", True),
        ("/v1/messages/count_tokens", True),
        ("/v1/messages/batches/msgbatch_01/results", True),
        ("/messages", True),  # the path after /v1 is read the same
        ("/messages/count_tokens", True),
        ("/v1/chat/completions", False),
        ("/v1/models", False),
        ("/v1/messagesx", False),
        ("/v1/message", False),
        ("/v1/v1/messages", False),
        ("/v1/responses/messages", False),
    ],
)
def test_which_paths_take_anthropics_shape(path, anthropic_shaped):
    assert errors.anthropic_path(path) is anthropic_shaped


# --- through the real server, with the official SDKs ---------------------------------------------------------------
live = pytest.mark.usefixtures("live_db")


@pytest.fixture
def anthropic_client(proxy_server):
    """`anthropic_client(token)`: the official SDK pointed at the proxy (it adds `/v1/messages`), without retries.
    The token goes in `Authorization: Bearer` (`x_api_key=True`: in `x-api-key`, as Anthropic's own keys go)."""

    def make(token: str, x_api_key: bool = False, **kwargs) -> anthropic.Anthropic:
        auth = {"default_headers": {"x-api-key": token}} if x_api_key else {"auth_token": token}
        options = {"max_retries": 0, "timeout": 10} | kwargs
        return anthropic.Anthropic(base_url=proxy_server.url, api_key=None, **auth, **options)

    return make


@pytest.fixture
def project(make_project):
    return make_project()


@pytest.fixture
def issued(project, make_token):
    return make_token(project)


def refused(client: anthropic.Anthropic, exception, call=None, **kwargs) -> anthropic.APIStatusError:
    """The SDK's exception for a refused message, checked to be Anthropic's shape and to carry no secret."""
    with pytest.raises(exception) as raised:
        if call is None:
            client.messages.create(**(MESSAGE | kwargs))
        else:
            call(client)
    error = raised.value
    body = error.body
    assert isinstance(body, dict) and set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == ANTHROPIC_TYPES[error.status_code]
    assert body["request_id"] == error.response.headers["x-request-id"]
    text = f"{error} {body}"
    assert VALID_KEY not in text and "Traceback" not in text
    for token in (client.auth_token, client.default_headers.get("x-api-key")):
        assert not isinstance(token, str) or token not in text
    return error


@live
def test_a_malformed_token(anthropic_client, upstream):
    error = refused(anthropic_client(MALFORMED), anthropic.AuthenticationError)

    assert error.status_code == 401
    assert error.body["error"]["message"] == errors.invalid_token_format().message
    assert error.response.headers["x-should-retry"] == "false"
    assert upstream.requests == []


@live
def test_an_unknown_token_is_refused_and_recorded(anthropic_client, upstream):
    error = refused(
        anthropic_client(UNKNOWN), anthropic.AuthenticationError, extra_headers={"x-request-id": "anthropic-refusal-1"}
    )

    assert error.body["error"]["message"].startswith("Unknown token")
    assert error.body["request_id"] == "anthropic-refusal-1"
    (record,) = wait_for_usage(1)
    assert (record.status, record.refusal_code, record.path, record.token_prefix) == (
        401,
        "invalid_token",
        "/v1/messages",
        "sk-wt-AAAAAA",
    )


@live
def test_a_token_in_x_api_key_is_refused_in_anthropics_shape(anthropic_client, upstream):
    """The proxy reads the token from `x-api-key` too: an unknown one is refused as such, in Anthropic's shape."""
    error = refused(anthropic_client(UNKNOWN, x_api_key=True), anthropic.AuthenticationError)

    assert error.body["error"]["message"] == errors.unknown_token().message
    assert upstream.requests == []


@live
def test_an_admitted_message_goes_through(anthropic_client, issued, upstream):
    """The SDK's request reaches the upstream (Anthropic's headers passed, the token not) and its answer returns."""
    message = anthropic_client(issued.plaintext).messages.create(**MESSAGE)

    assert message.content[0].text == "Hello from the mock."
    received = upstream.last("/v1/messages")
    assert received.credentials == {"authorization": VALID_KEY}
    assert received.header("anthropic-version")


@live
def test_a_revoked_token(anthropic_client, issued, operator):
    token_revoke(token=issued.token, actor=operator)
    error = refused(anthropic_client(issued.plaintext), anthropic.AuthenticationError)
    assert error.body["error"]["message"] == errors.token_revoked().message


@live
def test_an_expired_token(anthropic_client, issued):
    Token.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    error = refused(anthropic_client(issued.plaintext), anthropic.AuthenticationError)
    assert error.body["error"]["message"] == errors.token_expired().message


@live
def test_an_inactive_project(anthropic_client, project, issued, operator, upstream):
    project_set_active(active=False, project=project, actor=operator)
    error = refused(anthropic_client(issued.plaintext), anthropic.PermissionDeniedError)
    assert error.status_code == 403 and error.body["error"]["message"] == errors.project_inactive().message
    assert upstream.requests == []


@live
def test_the_request_limit_is_not_retried_by_the_sdk(anthropic_client, project, make_token, upstream):
    issued = make_token(project, max_requests=1)
    client = anthropic_client(issued.plaintext, max_retries=3)
    client.messages.create(**MESSAGE)

    error = refused(client, anthropic.RateLimitError)
    assert error.body["error"]["message"] == errors.request_limit_reached(1).message
    assert error.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 1
    assert [r.refusal_code for r in wait_for_usage(2)] == ["", "request_limit_reached"]  # the SDK did not retry


@live
def test_a_per_minute_limit_says_when_to_retry(anthropic_client, project, make_token):
    issued = make_token(project, requests_per_minute=1)
    client = anthropic_client(issued.plaintext)
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.2)  # a fresh minute, so the limit is not reset between the two requests
    client.messages.create(**MESSAGE)

    error = refused(client, anthropic.RateLimitError)
    assert error.body["error"]["message"].startswith("This token has reached its limit of 1 requests per minute")
    assert int(error.response.headers["retry-after"]) > 0
    assert error.response.headers["x-ratelimit-limit-requests"] == "1"


@live
def test_a_spent_budget_refuses_the_next_message(anthropic_client, project, make_token, operator, upstream):
    """The mock's message reports 11 input and 7 output tokens: $0.18 at these prices, over a $0.10 budget."""
    price_set(
        model=MESSAGE["model"],
        input_per_million=10_000,
        cached_input_per_million=None,
        output_per_million=10_000,
        source="test",
        actor=operator,
    )
    time.sleep(0.3)  # the workers read prices again after PRICE_CACHE_SECONDS
    issued = make_token(project, budget_usd=Decimal("0.10"))
    client = anthropic_client(issued.plaintext, max_retries=3)
    client.messages.create(**MESSAGE)

    error = refused(client, anthropic.RateLimitError)
    assert error.body["error"]["message"] == errors.token_budget_exceeded(Decimal("0.10")).message
    assert Token.objects.get(pk=issued.token.pk).spent_usd == Decimal("0.18")
    assert len(upstream.requests) == 1


@live
def test_an_unpriced_model_under_a_budget(anthropic_client, project, make_token, upstream):
    issued = make_token(project, budget_usd=Decimal("5"))
    error = refused(anthropic_client(issued.plaintext), anthropic.PermissionDeniedError, model="claude-unpriced")
    assert error.body["error"]["message"] == errors.model_not_priced("claude-unpriced").message
    assert upstream.requests == []


@live
def test_an_endpoint_under_messages_that_is_not_served(anthropic_client, issued, upstream):
    def batches(client):
        client.post("/v1/messages/batches", body={"requests": []}, cast_to=object)

    error = refused(anthropic_client(issued.plaintext), anthropic.NotFoundError, call=batches)
    assert error.body["error"]["message"] == "This proxy does not serve POST /v1/messages/batches."
    assert upstream.requests == []


@live
def test_a_method_not_allowed(anthropic_client, issued, upstream):
    def get(client):
        client.get("/v1/messages", cast_to=object)

    error = refused(anthropic_client(issued.plaintext), anthropic.APIStatusError, call=get)
    assert error.status_code == 405 and error.response.headers["allow"] == "POST, OPTIONS"


@live
def test_an_invalid_path(anthropic_client, issued, upstream):
    def encoded_slash(client):
        client.post("/v1/messages%2Fcount_tokens", body=MESSAGE, cast_to=object)

    error = refused(anthropic_client(issued.plaintext), anthropic.BadRequestError, call=encoded_slash)
    assert error.body["error"]["message"] == errors.invalid_path().message
    assert upstream.requests == []


@live
def test_a_body_over_the_limit(anthropic_client, issued, upstream):
    big = [{"role": "user", "content": "x" * (1024 * 1024)}]  # the test server's limit is 1 MiB
    error = refused(anthropic_client(issued.plaintext), anthropic.APIStatusError, messages=big, model="m", max_tokens=1)
    assert error.status_code == 413 and error.body["error"]["message"] == errors.body_too_large(1024 * 1024).message
    assert upstream.requests == []


@live
def test_the_upstream_unreachable(anthropic_client, issued):
    error = refused(
        anthropic_client(issued.plaintext),
        anthropic.InternalServerError,
        extra_headers={"x-mock-drop": "before-headers"},
    )
    assert error.status_code == 502 and error.body["error"]["message"] == errors.upstream_unreachable().message


@live
def test_the_upstream_timing_out(anthropic_client, issued):
    error = refused(
        anthropic_client(issued.plaintext), anthropic.InternalServerError, extra_headers={"x-mock-delay": "3"}
    )
    assert error.status_code == 504 and error.body["error"]["message"] == errors.upstream_timeout().message


@live
def test_count_tokens_is_served_and_refused_alike(anthropic_client, issued, upstream):
    client = anthropic_client(issued.plaintext)
    assert client.messages.count_tokens(model=MESSAGE["model"], messages=MESSAGE["messages"]).input_tokens == 11

    def count(c):
        c.messages.count_tokens(model=MESSAGE["model"], messages=MESSAGE["messages"])

    error = refused(anthropic_client(UNKNOWN), anthropic.AuthenticationError, call=count)
    assert error.body["error"]["message"] == errors.unknown_token().message


@live
def test_other_paths_keep_openais_envelope(proxy_server, openai_client, upstream):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(MALFORMED).chat.completions.create(model="gpt-4o", messages=[])
    assert raised.value.code == "invalid_token_format"
    assert set(raised.value.body) == {"message", "type", "param", "code"}

    response = httpx.post(f"{proxy_server.base_url}/fine_tuning/jobs", headers={"Authorization": f"Bearer {UNKNOWN}"})
    assert response.content == errors.refusal_body(errors.endpoint_not_allowed("POST", "/v1/fine_tuning/jobs"))
    response = httpx.get(f"{proxy_server.base_url}/models", headers={"Authorization": f"Bearer {UNKNOWN}"})
    assert response.content == errors.refusal_body(errors.unknown_token())
