"""The mock upstream's auth modes (OpenAI's bearer, Azure's api-key, Anthropic's x-api-key) and its Anthropic routes,
checked against the real mock with httpx and the official anthropic SDK (no proxy in between)."""

import json
import subprocess
import sys
import time

import anthropic
import httpx
import pytest

from proxy.counting import StreamUsage, TokenCounts
from tests.live import BASE_DIR, free_port
from tests.mock_upstream import MockUpstream

KEY = "sk-ant-api03-" + "k" * 40
TOKEN = "sk-wt-" + "A" * 32
VERSION = {"anthropic-version": "2023-06-01"}
# Each mode's own way to send the key.
CREDENTIALS = {
    "bearer": {"Authorization": f"Bearer {KEY}"},
    "api-key": {"api-key": KEY},
    "x-api-key": {"x-api-key": KEY, **VERSION},
}
HEADER = {"bearer": "authorization", "api-key": "api-key", "x-api-key": "x-api-key"}
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


def unauthorized(mode: str, body: dict) -> bool:
    """Whether `body` is the 401 body of the provider `mode` stands for."""
    if mode == "x-api-key":
        return body["type"] == "error" and body["error"]["type"] == "authentication_error"
    if mode == "api-key":
        return body["error"]["code"] == "401" and "Access denied" in body["error"]["message"]
    return body["error"]["code"] == "invalid_api_key"


@pytest.fixture(autouse=True)
def no_anthropic_credentials_from_the_environment(monkeypatch):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def mocks():
    started = {mode: MockUpstream(auth=mode).start_in_thread() for mode in CREDENTIALS}
    yield started
    for mock in started.values():
        mock.stop()


@pytest.fixture
def mock(request, mocks):
    """The mock of the mode the test is parametrized with, its record clean."""
    found = mocks[request.param]
    found.reset()
    return found


@pytest.fixture
def anthropic_mock(mocks):
    found = mocks["x-api-key"]
    found.reset()
    yield found
    assert found.violations == []


def sdk(mock: MockUpstream, **kwargs) -> anthropic.Anthropic:
    """The SDK pointed straight at the mock (it adds `/v1/messages` itself), the key in `x-api-key`."""
    return anthropic.Anthropic(
        base_url=mock.base_url.removesuffix("/v1"),
        api_key=None,
        default_headers={"x-api-key": KEY},
        max_retries=0,
        timeout=10,
        **kwargs,
    )


# --- auth modes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mock", list(CREDENTIALS), indirect=True)
def test_each_mode_accepts_its_own_header_and_records_which_carried_the_key(mock):
    response = httpx.get(f"{mock.base_url}/models", headers=CREDENTIALS[mock.auth])

    assert response.status_code == 200
    assert mock.last().credentials == {HEADER[mock.auth]: KEY}
    assert mock.last().auth_header == HEADER[mock.auth]
    assert mock.violations == []


@pytest.mark.parametrize(
    ("mock", "other"),
    [(mode, other) for mode in CREDENTIALS for other in CREDENTIALS if other != mode],
    indirect=["mock"],
)
def test_each_mode_refuses_the_others_headers_in_its_providers_shape(mock, other):
    response = httpx.get(f"{mock.base_url}/models", headers=CREDENTIALS[other] | VERSION)

    assert response.status_code == 401 and unauthorized(mock.auth, response.json())
    assert f"/v1/models: {HEADER[mock.auth]} is not an upstream key" in mock.violations
    assert f"/v1/models: a credential in {HEADER[other]}, which {mock.auth} does not use" in mock.violations


@pytest.mark.parametrize("mock", ["api-key", "x-api-key"], indirect=True)
def test_authorization_beside_the_right_key_is_refused(mock):
    headers = CREDENTIALS[mock.auth] | {"Authorization": f"Bearer {KEY}"}
    response = httpx.get(f"{mock.base_url}/models", headers=headers)

    assert response.status_code == 401 and unauthorized(mock.auth, response.json())
    assert mock.last().credentials == {HEADER[mock.auth]: KEY, "authorization": KEY}
    assert mock.last().auth_header is None
    assert f"/v1/models: a credential in authorization, which {mock.auth} does not use" in mock.violations


@pytest.mark.parametrize("mock", list(CREDENTIALS), indirect=True)
@pytest.mark.parametrize("key", [None, "", "not-a-key", TOKEN])
def test_a_missing_or_wrong_key_gets_the_providers_401(mock, key):
    headers = VERSION.copy()
    if key is not None:
        value = f"Bearer {key}".strip() if mock.auth == "bearer" else key
        headers[HEADER[mock.auth]] = value
    response = httpx.get(f"{mock.base_url}/models", headers=headers)

    assert response.status_code == 401 and unauthorized(mock.auth, response.json())
    assert f"/v1/models: {HEADER[mock.auth]} is not an upstream key" in mock.violations
    if key == TOKEN:
        assert f"/v1/models: token in header {HEADER[mock.auth]}" in mock.violations


@pytest.mark.parametrize("mock", list(CREDENTIALS), indirect=True)
def test_a_token_anywhere_is_a_violation_even_with_the_right_key(mock):
    response = httpx.post(
        f"{mock.base_url}/messages",
        headers=CREDENTIALS[mock.auth] | {"x-note": f"from {TOKEN}"},
        json=MESSAGE | {"metadata": {"user_id": TOKEN}},
    )

    assert response.status_code == 200
    assert mock.violations == ["/v1/messages: token in header x-note", "/v1/messages: token in body"]


def test_only_the_keys_given_are_accepted():
    mock = MockUpstream(auth="x-api-key", keys={KEY}).start_in_thread()
    try:
        other = "sk-ant-api03-" + "o" * 40
        assert httpx.get(f"{mock.base_url}/models", headers=CREDENTIALS["x-api-key"]).status_code == 200
        refused = httpx.get(f"{mock.base_url}/models", headers={"x-api-key": other, **VERSION})
        assert refused.status_code == 401 and unauthorized("x-api-key", refused.json())
        assert [r.credentials for r in mock.requests] == [{"x-api-key": KEY}, {"x-api-key": other}]
        assert mock.violations == ["/v1/models: x-api-key is not an upstream key"]
    finally:
        mock.stop()


def test_the_default_mode_is_bearer_and_unchanged():
    mock = MockUpstream()
    assert mock.auth == "bearer"
    with pytest.raises(ValueError):
        MockUpstream(auth="basic")


def test_anthropic_mode_requires_anthropic_version(anthropic_mock):
    response = httpx.post(f"{anthropic_mock.base_url}/messages", headers={"x-api-key": KEY}, json=MESSAGE)

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


@pytest.mark.parametrize("mock", ["bearer", "api-key"], indirect=True)
def test_models_keep_openais_shape_outside_anthropic_mode(mock):
    body = httpx.get(f"{mock.base_url}/models", headers=CREDENTIALS[mock.auth]).json()
    assert body["object"] == "list" and body["data"][0]["object"] == "model"


def test_the_auth_flag_of_the_command_line():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "tests/mock_upstream.py", "--port", str(port), "--auth", "x-api-key"],
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/models"
        deadline = time.monotonic() + 10
        while True:
            try:
                answered = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the mock did not start"
                time.sleep(0.05)
        assert answered.status_code == 401 and unauthorized("x-api-key", answered.json())
        assert httpx.get(url, headers=CREDENTIALS["x-api-key"]).json()["has_more"] is False
    finally:
        process.terminate()
        process.wait(5)


# --- Anthropic's routes, through the official SDK ----------------------------------------------------------------
def test_a_message_with_its_usage(anthropic_mock):
    message = sdk(anthropic_mock).messages.create(
        **MESSAGE, extra_headers={"x-mock-cache-read": "5", "x-mock-cache-creation": "3"}
    )

    assert message.type == "message" and message.role == "assistant" and message.model == MESSAGE["model"]
    assert message.content[0].text == "Hello from the mock." and message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (11, 7)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (5, 3)
    assert anthropic_mock.last().credentials == {"x-api-key": KEY}
    assert anthropic_mock.last().header("anthropic-version")


def test_usage_first_puts_usage_before_the_content(anthropic_mock):
    response = httpx.post(
        f"{anthropic_mock.base_url}/messages",
        headers=CREDENTIALS["x-api-key"] | {"x-mock-usage-first": "1"},
        json=MESSAGE,
    )
    keys = list(response.json())
    assert keys.index("usage") < keys.index("content")


def test_a_streamed_message_is_anthropics_event_sequence(anthropic_mock):
    client = sdk(anthropic_mock)
    events = list(client.messages.create(**MESSAGE, stream=True, extra_headers={"x-mock-chunks": "4"}))

    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.usage.input_tokens == 11 and events[0].message.usage.output_tokens == 1
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "part0 part1 part2 part3 "
    assert events[-2].usage.output_tokens == 4 and events[-2].delta.stop_reason == "end_turn"


@pytest.mark.parametrize("delta_usage", ["", "full"])
def test_the_sdks_final_message_from_a_stream(anthropic_mock, delta_usage):
    headers = {"x-mock-chunks": "3", "x-mock-cache-read": "20", "x-mock-delta-usage": delta_usage}
    with sdk(anthropic_mock).messages.stream(**MESSAGE, extra_headers=headers) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "part0 part1 part2 "
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (11, 20, 3)


@pytest.mark.parametrize("delta_usage", ["", "full"])
def test_the_mocks_stream_counts_through_stream_usage(anthropic_mock, delta_usage):
    headers = CREDENTIALS["x-api-key"] | {"x-mock-chunks": "5", "x-mock-cache-read": "4", "x-mock-cache-creation": "2"}
    reader = StreamUsage(strip=False, hold=True)
    with httpx.stream(
        "POST",
        f"{anthropic_mock.base_url}/messages",
        headers=headers | {"x-mock-delta-usage": delta_usage},
        json=MESSAGE | {"stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        passed = b"".join(reader.feed(chunk) for chunk in response.iter_raw()) + reader.finish()
    held = reader.release()

    assert reader.counts == TokenCounts(prompt_tokens=17, completion_tokens=5, total_tokens=22, cached_tokens=4)
    assert held.startswith(b"event: message_delta") and held.endswith(b'{"type":"message_stop"}\n\n')
    assert b"message_delta" not in passed


def test_count_tokens(anthropic_mock):
    counted = sdk(anthropic_mock).messages.count_tokens(model=MESSAGE["model"], messages=MESSAGE["messages"])
    assert counted.input_tokens == 11


def test_models_in_anthropics_list_shape(anthropic_mock):
    page = sdk(anthropic_mock).models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    assert page.has_more is False and page.first_id == "claude-sonnet-4-5" and page.last_id == "claude-haiku-4-5"
    assert sdk(anthropic_mock).models.retrieve("claude-haiku-4-5").display_name == "Claude Haiku 4 5"


@pytest.mark.parametrize(
    ("status", "exception", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
    ],
)
def test_mock_status_in_anthropics_shape(anthropic_mock, status, exception, kind):
    with pytest.raises(exception) as raised:
        sdk(anthropic_mock).messages.create(**MESSAGE, extra_headers={"x-mock-status": str(status)})

    assert raised.value.status_code == status
    assert raised.value.body == {
        "type": "error",
        "error": {"type": kind, "message": f"mock failure {status}"},
        "request_id": "req_mock_anthropic",
    }
    assert raised.value.request_id == "req_mock_anthropic"  # the SDK reads the request-id header


def test_an_unknown_route_and_a_bad_body_in_anthropics_shape(anthropic_mock):
    with pytest.raises(anthropic.NotFoundError) as raised:
        sdk(anthropic_mock).get("/v1/nothing-here", cast_to=object)
    assert raised.value.body["error"]["type"] == "not_found_error"

    response = httpx.post(f"{anthropic_mock.base_url}/messages", headers=CREDENTIALS["x-api-key"], content=b"[not json")
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("mock", ["bearer", "api-key"], indirect=True)
def test_anthropics_routes_are_served_in_every_mode(mock):
    """In Anthropic's shape, whatever the mode: a project whose upstream speaks Anthropic's API with a bearer key."""
    response = httpx.post(f"{mock.base_url}/messages", headers=CREDENTIALS[mock.auth], json=MESSAGE)
    assert response.json()["usage"]["cache_read_input_tokens"] == 0
    failed = httpx.post(
        f"{mock.base_url}/messages/count_tokens",
        headers=CREDENTIALS[mock.auth] | {"x-mock-status": "503"},
        json=MESSAGE,
    )
    assert failed.status_code == 503 and failed.json()["error"]["type"] == "api_error"
    streamed = httpx.post(f"{mock.base_url}/messages", headers=CREDENTIALS[mock.auth], json=MESSAGE | {"stream": True})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert mock.violations == []
