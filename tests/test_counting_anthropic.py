"""Anthropic's usage, read as it passes: streams (message_start, then message_delta) split anywhere, held from
message_delta on, cut short; non-streamed Message bodies through the tail reader, wherever their usage stands; and
the usage records the real server leaves for messages the official SDK sent, streamed or not."""

import json
import random

import anthropic
import pytest

from proxy.counting import StreamUsage, TokenCounts, counts_from, counts_from_json_tail
from tests.live import wait_for_usage


def event(name: str, document: dict, *, pretty: bool = False) -> bytes:
    data = json.dumps(document) if pretty else json.dumps(document, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


def message_start(usage: dict, model: str = "claude-sonnet-4-5") -> bytes:
    message = {
        "id": "msg_01TestStreamUsage000000001",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return event("message_start", {"type": "message_start", "message": message})


def text_block(index: int, texts: list[str]) -> list[bytes]:
    start = {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
    deltas = [
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}},
        )
        for text in texts
    ]
    stop = event("content_block_stop", {"type": "content_block_stop", "index": index})
    return [event("content_block_start", start), *deltas, stop]


def tool_block(index: int, partial_json: list[str]) -> list[bytes]:
    block = {"type": "tool_use", "id": "toolu_01TestTool", "name": "get_usage_report", "input": {}}
    deltas = [
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": p}},
        )
        for p in partial_json
    ]
    stop = event("content_block_stop", {"type": "content_block_stop", "index": index})
    start = {"type": "content_block_start", "index": index, "content_block": block}
    return [event("content_block_start", start), *deltas, stop]


def message_delta(usage: dict, stop_reason: str = "end_turn") -> bytes:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})


PING = b'event: ping\ndata: {"type": "ping"}\n\n'  # Anthropic's own spacing
MESSAGE_STOP = event("message_stop", {"type": "message_stop"})


def stream(start: bytes, blocks: list[bytes], delta: bytes) -> tuple[bytes, bytes]:
    """(what comes before message_delta, message_delta and what follows it)."""
    return start + blocks[0] + PING + b"".join(blocks[1:]), delta + MESSAGE_STOP


# Without cache fields (older API versions, or no caching): message_delta gives only the output count.
PLAIN = stream(
    message_start({"input_tokens": 11, "output_tokens": 1}),
    text_block(0, ["Hello", " there", "!"]),
    message_delta({"output_tokens": 6}),
)
# With cache fields, a tool call whose arguments say "usage" (escaped in its JSON string), and text naming it.
CACHED = stream(
    message_start(
        {
            "input_tokens": 25,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 5,
            "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 1,
            "service_tier": "standard",
        }
    ),
    text_block(0, ['The "usage": {"input_tokens": 999} part is', " text."])
    + tool_block(1, ['{"usa', 'ge": {"output_tokens": 999}, ', '"usage": null}']),
    message_delta({"output_tokens": 65}, stop_reason="tool_use"),
)
# Newer API versions repeat the input and cache counts in message_delta, final there: those are taken.
REPEATED = stream(
    message_start(
        {"input_tokens": 25, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
    ),
    text_block(0, ["Hello there!"]),
    message_delta(
        {
            "input_tokens": 40,
            "cache_creation_input_tokens": 12,
            "cache_read_input_tokens": 7,
            "output_tokens": 8,
            "output_tokens_details": {"thinking_tokens": 3},
            "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
        }
    ),
)
# Cache fields present but null in message_delta: message_start's stand.
NULLS = stream(
    message_start(
        {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20, "output_tokens": 1}
    ),
    text_block(0, ["Hi"]),
    message_delta({"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 2}),
)

STREAMS = {
    "plain": (PLAIN, TokenCounts(prompt_tokens=11, completion_tokens=6, total_tokens=17, cached_tokens=None)),
    "cached": (CACHED, TokenCounts(prompt_tokens=40, completion_tokens=65, total_tokens=105, cached_tokens=5)),
    "repeated": (REPEATED, TokenCounts(prompt_tokens=59, completion_tokens=8, total_tokens=67, cached_tokens=7)),
    "nulls": (NULLS, TokenCounts(prompt_tokens=23, completion_tokens=2, total_tokens=25, cached_tokens=20)),
}


def run(chunks: list[bytes], *, hold: bool) -> tuple[bytes, bytes, StreamUsage]:
    """(what went on as the chunks came and at the end, what `hold` kept back, the reader)."""
    usage = StreamUsage(strip=False, hold=hold)
    passed = b"".join(usage.feed(chunk) for chunk in chunks) + usage.finish()
    return passed, usage.release(), usage


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, at = [], 0
    while at < len(data):
        size = rng.choice((1, 2, 3, 7, 16, 64, 200, 1000))
        chunks.append(data[at : at + size])
        at += size
    return chunks


@pytest.mark.parametrize("name", STREAMS)
def test_stream_split_at_every_byte(name):
    (before, after), expected = STREAMS[name]
    data = before + after
    for cut in range(len(data) + 1):
        for hold in (False, True):
            passed, held, usage = run([data[:cut], data[cut:]], hold=hold)
            assert usage.counts == expected, (cut, hold)
            if hold:
                assert (passed, held) == (before, after), cut
            else:
                assert (passed, held) == (data, b""), cut


@pytest.mark.parametrize("name", STREAMS)
def test_stream_in_random_chunks(name):
    (before, after), expected = STREAMS[name]
    data = before + after
    rng = random.Random(f"anthropic-{name}")
    for _ in range(300):
        hold = rng.random() < 0.5
        passed, held, usage = run(random_chunks(data, rng), hold=hold)
        assert usage.counts == expected
        assert passed + held == data
        assert held == (after if hold else b"")


@pytest.mark.parametrize("name", STREAMS)
def test_stream_with_crlf_line_ends(name):
    (before, after), expected = STREAMS[name]
    before, after = before.replace(b"\n", b"\r\n"), after.replace(b"\n", b"\r\n")
    passed, held, usage = run(random_chunks(before + after, random.Random(name)), hold=True)
    assert usage.counts == expected and (passed, held) == (before, after)


def test_every_event_before_message_delta_passes_at_once_and_nothing_after_it_before_release():
    (before, after), expected = STREAMS["cached"]
    events = [e + b"\n\n" for e in (before + after).split(b"\n\n") if e]
    usage = StreamUsage(strip=False, hold=True)
    delta_at = next(i for i, e in enumerate(events) if e.startswith(b"event: message_delta"))
    for index, data in enumerate(events):
        out = usage.feed(data)
        if index < delta_at:
            assert out == data, f"event {index} was kept back"
            assert usage.counts == TokenCounts(prompt_tokens=40, completion_tokens=1, total_tokens=41, cached_tokens=5)
        else:
            assert out == b"", f"event {index} went on before the charge"
    assert usage.counts == expected  # known before anything after message_delta went on: the charge can be made
    assert usage.finish() == b""
    assert usage.release() == after
    assert usage.release() == b""


def test_message_start_does_not_start_the_hold():
    """Holding from message_start would hold the whole answer: only message_delta, at the end, starts it."""
    (before, _), _ = STREAMS["plain"]
    start_event = before.split(b"\n\n")[0] + b"\n\n"
    usage = StreamUsage(strip=False, hold=True)
    assert usage.feed(start_event) == start_event
    rest = before[len(start_event) :]
    assert usage.feed(rest) == rest


@pytest.mark.parametrize("name", STREAMS)
def test_a_stream_cut_before_message_delta_keeps_what_message_start_said(name):
    (before, after), _ = STREAMS[name]
    start = json.loads(before.split(b"\n", 2)[1][len(b"data: ") :])["message"]["usage"]
    prompt = sum(start.get(k) or 0 for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    cached = start.get("cache_read_input_tokens")
    expected = TokenCounts(prompt_tokens=prompt, completion_tokens=1, total_tokens=prompt + 1, cached_tokens=cached)
    half_a_delta = after[: len(after) // 3]  # message_delta cut mid-JSON: it says nothing
    for cut_stream in (before.split(b"\n\n")[0] + b"\n\n", before, before + half_a_delta):
        passed, held, usage = run([cut_stream], hold=True)
        assert usage.counts == expected
        assert (passed, held) == (cut_stream, b""), "nothing is kept back when the final usage never came"


def test_an_unterminated_message_delta_at_the_very_end_still_counts_and_is_held():
    (before, after), expected = STREAMS["plain"]
    last = after.removesuffix(MESSAGE_STOP).rstrip(b"\n")  # message_delta, the stream's last bytes, no blank line
    passed, held, usage = run([before, last], hold=True)
    assert usage.counts == expected and (passed, held) == (before, last)


def test_a_stream_without_usage_anywhere_passes_untouched():
    data = b"".join(text_block(0, ["a", "b"])) + MESSAGE_STOP
    passed, held, usage = run([data], hold=True)
    assert (passed, held, usage.counts) == (data, b"", None)


def test_an_error_event_mid_stream_passes_and_counts_stay_message_starts():
    (before, _), _ = STREAMS["plain"]
    error = event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    passed, held, usage = run([before, error], hold=True)
    assert (passed, held) == (before + error, b"")
    assert usage.counts == TokenCounts(prompt_tokens=11, completion_tokens=1, total_tokens=12, cached_tokens=None)


# --- non-streamed Message bodies: the tail reader -----------------------------------------------------------------
USAGE = {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 1800,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 503,
    "service_tier": "standard",
}
EXPECTED = TokenCounts(prompt_tokens=3995, completion_tokens=503, total_tokens=4498, cached_tokens=1800)
TOOL_USE = {
    "type": "tool_use",
    "id": "toolu_01Report",
    "name": "report",
    "input": {"usage": {"input_tokens": 1, "output_tokens": 1}, "note": 'say "usage": {"output_tokens": 7}'},
}


def message(*members: tuple[str, object]) -> dict:
    """A Message, its members in the order given."""
    return dict(members)


HEAD = (("id", "msg_01Body"), ("type", "message"), ("role", "assistant"), ("model", "claude-sonnet-4-5"))
CONTENT = ("content", [{"type": "text", "text": "Here is the usage report."}, TOOL_USE])
STOP = (("stop_reason", "tool_use"), ("stop_sequence", None))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(message(*HEAD, CONTENT, *STOP, ("usage", USAGE)), id="usage-last"),
        pytest.param(
            message(
                *HEAD,
                CONTENT,
                *STOP,
                ("usage", USAGE),
                ("container", None),
                ("context_management", {"applied_edits": []}),
            ),
            id="newer-members-after-usage",
        ),
        pytest.param(message(*HEAD, ("usage", USAGE), CONTENT, *STOP), id="usage-before-content-naming-usage"),
        pytest.param(
            message(*HEAD, ("usage", USAGE), ("content", [TOOL_USE, TOOL_USE]), ("stop_reason", "tool_use")),
            id="usage-before-two-tool-inputs-naming-usage",
        ),
    ],
)
@pytest.mark.parametrize("indent", [None, 2])
def test_message_body_usage_wherever_it_stands(body, indent):
    data = json.dumps(body, indent=indent, separators=None if indent else (",", ":")).encode()
    assert counts_from_json_tail(data) == EXPECTED
    assert counts_from_json_tail(data + b"\n") == EXPECTED
    position = data.index(b'"usage"')
    assert counts_from_json_tail(data[position - 1 :]) == EXPECTED, "a tail that starts just before usage"


def test_message_body_without_cache_fields():
    """Without its cache counts, Anthropic's usage cannot be told from the Responses API's: read as that, the same
    prompt and completion (and the same `used`), only no total."""
    body = message(*HEAD, CONTENT, *STOP, ("usage", {"input_tokens": 12, "output_tokens": 30}))
    counts = counts_from_json_tail(json.dumps(body).encode())
    assert counts == TokenCounts(prompt_tokens=12, completion_tokens=30, total_tokens=None, cached_tokens=None)
    assert counts.used == 42


@pytest.mark.parametrize(
    "body",
    [
        {"input_tokens": 14},  # /v1/messages/count_tokens: no usage, nothing charged
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_01"},
    ],
)
def test_bodies_without_usage_count_nothing(body):
    assert counts_from_json_tail(json.dumps(body).encode()) is None


def test_a_cut_body_counts_nothing():
    data = json.dumps(message(*HEAD, CONTENT, *STOP, ("usage", USAGE))).encode()
    assert counts_from_json_tail(data[:-20]) is None


def test_many_usage_keys_after_the_real_one_are_not_all_tried():
    """A body whose tail is full of `"usage"` keys costs a bounded number of looks (then the last is read)."""
    noise = [{"usage": {"note": i}} for i in range(200)]
    data = json.dumps(message(*HEAD, ("usage", USAGE), ("content", noise))).encode()
    assert counts_from_json_tail(data) is None


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": 5, "output_tokens": 2}, TokenCounts(5, 2, None, None)),  # as the Responses API's
        ({"input_tokens": 5, "cache_read_input_tokens": 0, "output_tokens": 2}, TokenCounts(5, 2, 7, 0)),
        ({"input_tokens": 0, "cache_creation_input_tokens": 9, "output_tokens": 1}, TokenCounts(9, 1, 10, None)),
        ({"input_tokens": 5, "cache_read_input_tokens": None, "output_tokens": 2}, TokenCounts(5, 2, 7, None)),
        ({"input_tokens": -1, "cache_read_input_tokens": True, "output_tokens": 2}, TokenCounts(None, 2, 2, None)),
        ({"output_tokens": 15}, TokenCounts(None, 15, None, None)),  # a message_delta's alone: as before
        # OpenAI's shapes keep their meaning.
        (
            {"input_tokens": 9, "output_tokens": 5, "total_tokens": 14, "input_tokens_details": {"cached_tokens": 4}},
            TokenCounts(9, 5, 14, 4),
        ),
        (
            {
                "prompt_tokens": 11,
                "completion_tokens": 7,
                "total_tokens": 18,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
            TokenCounts(11, 7, 18, 3),
        ),
        ({"prompt_tokens": 5, "total_tokens": 5}, TokenCounts(5, None, 5, None)),
    ],
)
def test_counts_from_usage_objects(usage, expected):
    assert counts_from(usage) == expected


# --- through the real server: the usage record ---------------------------------------------------------------------
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
# The mock's message: 11 input tokens, and the cache counts these headers ask for.
CACHE = {"x-mock-cache-read": "5", "x-mock-cache-creation": "3"}
live = pytest.mark.usefixtures("live_db")


@pytest.fixture
def client_for(proxy_server, monkeypatch):
    """`client_for(token)`: the official anthropic SDK pointed at the proxy (it adds `/v1/messages`)."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)

    def make(token: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=proxy_server.url, api_key=None, auth_token=token, max_retries=0, timeout=10)

    return make


@pytest.fixture(params=[False, True], ids=["passed-on", "held-until-charged"])
def token(request, make_project, make_token):
    """A token without limits (the stream passes straight on), or with a token limit (its end is held until the
    request is charged)."""
    limits = {"tokens_per_minute": 1_000_000} if request.param else {}
    return make_token(make_project(), **limits).plaintext


def record_of(request_id: str):
    (record,) = wait_for_usage(1, request_id=request_id)
    return record


@live
@pytest.mark.parametrize("delta_usage", ["", "full"])
def test_a_streamed_message_is_recorded_with_its_usage(client_for, token, upstream, delta_usage):
    headers = CACHE | {"x-mock-chunks": "4", "x-mock-delta-usage": delta_usage, "x-request-id": "anthropic-stream-1"}
    with client_for(token).messages.stream(**MESSAGE, extra_headers=headers) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "part0 part1 part2 part3 " and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4 and final.usage.cache_read_input_tokens == 5
    record = record_of("anthropic-stream-1")
    assert (record.status, record.streamed, record.path, record.model) == (200, True, "/v1/messages", MESSAGE["model"])
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens, record.total_tokens) == (19, 5, 4, 23)


@live
def test_a_message_is_recorded_with_its_usage(client_for, token, upstream):
    message = client_for(token).messages.create(**MESSAGE, extra_headers=CACHE | {"x-request-id": "anthropic-plain-1"})

    assert message.usage.input_tokens == 11
    record = record_of("anthropic-plain-1")
    assert (record.status, record.streamed) == (200, False)
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens, record.total_tokens) == (19, 5, 7, 26)


@live
def test_a_stream_cut_short_is_recorded_with_what_message_start_said(client_for, token, upstream):
    headers = CACHE | {"x-mock-chunks": "4", "x-mock-drop": "mid-body", "x-request-id": "anthropic-cut-1"}
    # The SDK lets its HTTP client's error through (httpx2's, in anthropic 2.x): the body was cut.
    client = client_for(token)
    with (
        pytest.raises(Exception, match="incomplete|peer closed|Connection"),
        client.messages.stream(**MESSAGE, extra_headers=headers) as stream,
    ):
        for _ in stream:
            pass

    record = record_of("anthropic-cut-1")
    assert record.upstream_aborted and record.streamed
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens, record.total_tokens) == (19, 5, 1, 20)
