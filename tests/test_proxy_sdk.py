"""The official OpenAI SDK, pointed at the proxy with an sk-wt- token, works as against OpenAI itself."""

import hashlib

import openai
import pytest

from tests.conftest import VALID_KEY
from tests.live import wait_for_usage
from tests.mock_upstream import speech_bytes

pytestmark = pytest.mark.usefixtures("live_db")


@pytest.fixture
def token(make_project, make_token):
    return make_token(make_project()).plaintext


@pytest.fixture
def client(openai_client, token):
    return openai_client(token)


def test_chat_completion_reaches_the_upstream_with_the_projects_key(client, upstream):
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])

    assert reply.choices[0].message.content == "Hello from the mock."
    assert reply.usage.total_tokens == 18
    received = upstream.last("/chat/completions")
    assert received.header("authorization") == f"Bearer {VALID_KEY}"
    assert received.json() == {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def test_streamed_chat_arrives_chunk_by_chunk(client, upstream):
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True, extra_headers={"x-mock-chunks": "4"}
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "part0 part1 part2 part3 "
    assert all(c.usage is None for c in chunks), "the client did not ask for usage, so it gets no usage chunk"
    assert upstream.last().json()["stream_options"] == {"include_usage": True}, "the proxy asked for it"


def test_streamed_chat_keeps_the_usage_chunk_when_the_client_asks_for_it(client, upstream):
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-chunks": "2"},
    )
    chunks = list(stream)

    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 13
    assert upstream.last().json()["stream_options"] == {"include_usage": True}


def test_text_completion(client):
    reply = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hello")
    assert reply.choices[0].text == " world"


def test_embeddings(client, upstream):
    reply = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])

    assert [e.embedding for e in reply.data] == [[0.25, -0.5, 0.75, 1.0]] * 2
    assert reply.usage.prompt_tokens == 10
    assert upstream.last().json()["encoding_format"] == "base64", "the SDK's default, forwarded as it was sent"


def test_models_list_and_retrieve(client, upstream):
    assert [m.id for m in client.models.list()] == ["gpt-4o", "gpt-4o-mini"]
    assert client.models.retrieve("ft:gpt-4o-mini:acme:v1").id == "ft:gpt-4o-mini:acme:v1"
    assert upstream.last().path == "/v1/models/ft:gpt-4o-mini:acme:v1"


def test_audio_speech_bytes_pass_through_intact(client):
    audio = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello there")

    assert audio.response.headers["content-type"] == "audio/mpeg"
    assert audio.content == speech_bytes("Hello there")


def test_file_upload_passes_the_multipart_body_unchanged(client, upstream):
    content = bytes(range(256)) * 1024 + b"\r\n--not-a-boundary\r\n"
    uploaded = client.files.create(file=("notes.jsonl", content, "application/jsonl"), purpose="batch")

    assert uploaded.filename == "notes.jsonl" and uploaded.bytes == len(content) and uploaded.purpose == "batch"
    assert uploaded.status_details == hashlib.sha256(content).hexdigest()
    assert client.files.delete(uploaded.id).deleted is True


def test_responses_api(client):
    reply = client.responses.create(model="gpt-4o", input="Hi")

    assert reply.output_text == "Hello from the mock."
    assert reply.usage.input_tokens == 9


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_upstream_errors_pass_through_unchanged(client, status, exception):
    with pytest.raises(exception) as raised:
        client.models.list(extra_headers={"x-mock-status": str(status)})

    assert raised.value.status_code == status
    assert raised.value.body == {
        "message": f"mock failure {status}",
        "type": "invalid_request_error",
        "param": None,
        "code": "mock_failure",
    }


def test_every_request_is_recorded_with_the_upstreams_usage(client, token):
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    client.embeddings.create(model="text-embedding-3-small", input=["a"])
    client.responses.create(model="gpt-4o-mini", input="Hi")

    records = wait_for_usage(3)
    assert [(r.path, r.model, r.prompt_tokens, r.completion_tokens, r.total_tokens) for r in records] == [
        ("/v1/chat/completions", "gpt-4o", 11, 7, 18),
        ("/v1/embeddings", "text-embedding-3-small", 5, None, 5),
        ("/v1/responses", "gpt-4o-mini", 9, 5, 14),
    ]
    assert {r.token_prefix for r in records} == {token[:12]}
