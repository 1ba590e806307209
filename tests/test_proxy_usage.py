"""Usage: read from the bytes as they pass (whatever the chunking), recorded once per request, never the token."""

import json

import pytest

from proxy import endpoints, payload
from proxy.counting import StreamUsage, TokenCounts, counts_from_json_tail
from tests.live import wait_for_usage


def sse(document) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


DELTAS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"content": 'Hel "usage": null,'}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
]
STREAM = b"".join(
    [
        *(sse(delta | {"usage": None}) for delta in DELTAS),
        sse({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        b"data: [DONE]\n\n",
    ]
)
WITHOUT_USAGE = b"".join([*(sse(delta) for delta in DELTAS), b"data: [DONE]\n\n"])  # as had usage not been asked for


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 64, len(STREAM)])
@pytest.mark.parametrize("strip", [True, False])
def test_the_usage_event_is_found_across_any_chunk_boundaries(size, strip):
    parser = StreamUsage(strip=strip)
    out = b"".join(parser.feed(STREAM[i : i + size]) for i in range(0, len(STREAM), size)) + parser.finish()

    assert parser.counts == TokenCounts(3, 2, 5)
    assert out == (WITHOUT_USAGE if strip else STREAM)


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
@pytest.mark.parametrize("hold", [True, False])
@pytest.mark.parametrize("strip", [True, False])
def test_a_stream_fed_one_event_at_a_time_is_counted_and_passed_as_any_other_way(strip, hold, separators):
    """One whole event per chunk is how upstreams send (and OpenAI's compact chunks have a shorter way through): the
    same bytes leave, the same counts are found, and with `hold` the usage event and what follows wait for
    `release`."""

    def event(document) -> bytes:
        return b"data: " + json.dumps(document, separators=separators).encode() + b"\n\n"

    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    events = [*(event(delta | {"usage": None}) for delta in DELTAS)]
    events += [event({"id": "c", "choices": [], "usage": usage}), b"data: [DONE]\n\n"]
    without_usage = b"".join([*(event(delta) for delta in DELTAS), b"data: [DONE]\n\n"])
    parser = StreamUsage(strip=strip, hold=hold)
    sent = [parser.feed(each) for each in events]
    out = b"".join(sent) + parser.finish()
    released = parser.release()

    assert parser.counts == TokenCounts(3, 2, 5)
    assert out + released == (without_usage if strip else b"".join(events))
    if hold:
        assert released == (b"data: [DONE]\n\n" if strip else b"".join(events[-2:]))
    assert sent[0] == (event(DELTAS[0]) if strip else events[0])


def test_complete_events_are_passed_on_at_once_when_stripping():
    first, second = sse({"id": "c", "choices": []}), sse({"id": "d", "choices": []})
    parser = StreamUsage(strip=True)
    assert parser.feed(first + second[:10]) == first
    assert parser.feed(second[10:]) == second


@pytest.mark.parametrize(
    ("event", "stripped"),
    [
        # The chunk's own null usage, after its other members (as OpenAI writes it): cut when stripping.
        (b'data: {"id":"c","choices":[],"usage":null}\n\n', b'data: {"id":"c","choices":[]}\n\n'),
        (b'data: {"id":"c", "usage" : null }\r\n\r\n', b'data: {"id":"c" }\r\n\r\n'),
        # First, it never was cut (the member cut is the one after a comma).
        (b'data: {"usage":null,"id":"c"}\n\n', None),
        # A null usage that is not the chunk's own (nested) stays; so does one in text.
        (b'data: {"id":"c","x":{"a":1,"usage":null}}\n\n', None),
        (b'data: {"id":"c","x":"\\"usage\\": null,"}\n\n', None),
        # Two data lines make one document: decoded, as before (and left as it is).
        (b'data: {"id":"c",\ndata: "usage":null}\n\n', None),
    ],
)
def test_null_usage_chunks_are_passed_or_cut_as_decoding_them_would(event, stripped):
    """Such chunks are not decoded (proxy.counting: StreamUsage._pass): what leaves is what decoding them gave."""
    for strip in (False, True):
        parser = StreamUsage(strip=strip)
        assert parser.feed(event) + parser.finish() == (stripped or event if strip else event)
        assert parser.counts is None


def test_crlf_events_and_the_responses_api_completed_event():
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}}
    stream = (
        b"event: response.created\r\ndata: {}\r\n\r\nevent: response.completed\r\ndata: "
        + json.dumps(completed).encode()
        + b"\r\n\r\n"
    )
    parser = StreamUsage(strip=False)
    assert parser.feed(stream) == stream
    assert parser.counts == TokenCounts(prompt_tokens=4, completion_tokens=6)


def test_usage_from_the_tail_of_a_json_body():
    body = json.dumps(
        {
            "choices": [{"message": {"content": 'it said "usage": {"prompt_tokens": 999}'}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8, "details": {"cached": 0}},
        }
    ).encode()
    assert counts_from_json_tail(body) == counts_from_json_tail(body[-120:]) == TokenCounts(7, 1, 8)
    assert counts_from_json_tail(b'{"data": []}') is None


def test_the_proxy_asks_for_usage_only_when_the_client_did_not():
    asked = payload.inspect(
        b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}', "application/json", "/chat/completions"
    )
    assert not asked.usage_injected and asked.body.startswith(b'{"model":"m"')
    silent = payload.inspect('{"model": "m", "stream": true, "x": "é"}'.encode(), "application/json", "/completions")
    assert silent.usage_injected and silent.model == "m"
    assert json.loads(silent.body) == {
        "model": "m",
        "stream": True,
        "x": "é",
        "stream_options": {"include_usage": True},
    }
    plain = payload.inspect(b'{"model": "m"}', "application/json; charset=utf-8", "/chat/completions")
    assert plain.body == b'{"model": "m"}' and not plain.usage_injected


def test_the_model_of_a_multipart_upload():
    body = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b--\r\n'
    assert payload.inspect(body, "multipart/form-data; boundary=b", "/audio/transcriptions").model == "whisper-1"


@pytest.mark.parametrize(
    ("method", "path", "allowed", "known"),
    [
        ("POST", "/chat/completions", True, True),
        ("GET", "/chat/completions", False, True),
        ("GET", "/models/gpt-4o", True, True),
        ("GET", "/models/a/b", False, False),
        ("GET", "/models/", False, False),
        ("GET", "/models/..", False, False),
        ("GET", "/files/file-1/content", True, True),
        ("DELETE", "/files/file-1", True, True),
        ("POST", "/fine_tuning/jobs", False, False),
    ],
)
def test_the_allow_list(method, path, allowed, known):
    check = endpoints.check(method, path)
    assert (check.allowed, check.known_path) == (allowed, known)


@pytest.mark.usefixtures("live_db")
def test_stream_usage_is_recorded_whether_or_not_the_client_saw_it(openai_client, make_project, make_token):
    project = make_project()
    issued = make_token(project, label="ci")
    client = openai_client(issued.plaintext)
    messages = [{"role": "user", "content": "Hi"}]
    list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True))
    list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )

    records = wait_for_usage(2)
    assert [(r.model, r.streamed, r.prompt_tokens, r.completion_tokens, r.total_tokens) for r in records] == [
        ("gpt-4o", True, 11, 3, 14),
        ("gpt-4o-mini", True, 11, 3, 14),
    ]
    for record in records:
        assert (record.project_id, record.token_id, record.token_prefix) == (
            project.pk,
            issued.token.pk,
            issued.plaintext[:12],
        )
        assert record.status == 200 and record.refusal_code == "" and not record.client_aborted
        assert 0 < record.ttfb_ms <= record.duration_ms and 0 < record.upstream_ms <= record.duration_ms
        assert record.method == "POST" and record.path == "/v1/chat/completions"


@pytest.mark.usefixtures("live_db")
def test_a_path_with_an_encoded_nul_is_recorded(proxy_server, make_project, make_token, upstream):
    """`%00` decodes to a NUL, which PostgreSQL cannot store in text: the record keeps a replacement character."""
    import httpx

    token = make_token(make_project()).plaintext
    response = httpx.get(f"{proxy_server.base_url}/models/a%00b", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    (record,) = wait_for_usage(1)
    assert record.path == "/v1/models/a\ufffdb"
