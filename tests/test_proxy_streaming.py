"""Streams: bytes arrive as the upstream sends them, a client going away cancels the upstream, and a stream holds
no database connection."""

import asyncio
import time

import httpx
import openai
import pytest

from tests.live import wait_for_usage

pytestmark = pytest.mark.usefixtures("live_db")

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


@pytest.fixture
def issued(make_project, make_token):
    return make_token(make_project())


def test_first_chunk_arrives_while_the_upstream_is_still_sending(openai_client, issued, upstream):
    client = openai_client(issued.plaintext)
    for _ in range(4):  # both workers warm (a worker's first request opens its connections), so time is buffering's
        list(client.chat.completions.create(**CHAT, extra_headers={"x-mock-chunks": "1"}))
    wait_for_usage(4)
    upstream.reset()
    started = time.monotonic()
    stream = client.chat.completions.create(
        **CHAT, extra_headers={"x-mock-chunks": "5", "x-mock-chunk-delay": "0.3", "x-request-id": "no-buffering-1"}
    )
    first = next(iter(stream))
    first_at = time.monotonic() - started

    assert first.choices[0].delta.content == "part0 "
    assert first_at < 0.5, f"first chunk after {first_at:.2f} s: buffered"
    assert "no-buffering-1" not in upstream.finished, "the upstream was still sending"
    rest = list(stream)
    assert time.monotonic() - started >= 1.2 and len(rest) == 5
    (record,) = wait_for_usage(1, request_id="no-buffering-1")
    assert record.ttfb_ms < 500 and record.duration_ms >= 1200


@pytest.mark.parametrize(
    ("limits", "include_usage"),
    [({}, False), ({}, True), ({"tokens_per_minute": 100_000}, True)],
    ids=["usage-stripped", "usage-asked", "tokens-per-minute"],
)
def test_a_stream_that_arrives_whole_with_its_head_is_passed_on_whole_and_counted(
    openai_client, make_project, make_token, limits, include_usage
):
    """A fast upstream's head and first events come in one read: they go on with the response's head, through the
    same usage scan (and, with a limit to settle, the same hold on the last events) as events that come later."""
    client = openai_client(make_token(make_project(), **limits).plaintext)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    steer = {"x-mock-chunks": "6", "x-mock-at-once": "1", "x-request-id": "whole-stream-1"}
    chunks = list(client.chat.completions.create(**CHAT, **options, extra_headers=steer))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
        f"part{i} " for i in range(6)
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert [u.completion_tokens for u in usage] == ([6] if include_usage else [])
    (record,) = wait_for_usage(1, request_id="whole-stream-1")
    assert (record.streamed, record.prompt_tokens, record.completion_tokens) == (True, 11, 6)


def test_client_disconnect_cancels_the_upstream_within_a_second(openai_client, issued, upstream):
    client = openai_client(issued.plaintext)
    stream = client.chat.completions.create(
        **CHAT, extra_headers={"x-mock-chunks": "100", "x-mock-chunk-delay": "0.1", "x-request-id": "disconnect-1"}
    )
    next(iter(stream))
    stream.close()
    closed_at = time.monotonic()

    deadline = closed_at + 3
    while "disconnect-1" not in upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "disconnect-1" in upstream.disconnects, "the upstream never saw the proxy hang up"
    assert upstream.disconnects["disconnect-1"] - closed_at < 1.0

    (record,) = wait_for_usage(1)
    assert record.client_aborted and record.streamed and record.status == 200
    assert record.request_id == "disconnect-1" and record.ttfb_ms is not None
    assert record.total_tokens is None, "the usage event never came"


def test_a_client_that_leaves_once_it_has_the_last_event_did_not_abort(openai_client, issued, upstream):
    """The synchronous SDK closes the connection at `data: [DONE]`, before the upstream's own end of the body (here
    half a second later) reaches the proxy: the stream is recorded whole, not as aborted, and the client had its end
    at once."""
    client = openai_client(issued.plaintext)
    started = time.monotonic()
    stream = client.chat.completions.create(
        **CHAT,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-end-delay": "0.5", "x-request-id": "left-at-done"},
    )
    chunks = list(stream)
    assert time.monotonic() - started < 0.4, "the last event waited for the upstream's end"
    assert [c.usage.completion_tokens for c in chunks if c.usage is not None] == [3]

    (record,) = wait_for_usage(1, request_id="left-at-done")
    assert record.streamed and not record.client_aborted and record.status == 200
    assert (record.prompt_tokens, record.completion_tokens) == (11, 3)


def test_an_upstream_breaking_off_mid_stream_cuts_the_client_too(openai_client, issued):
    client = openai_client(issued.plaintext)
    stream = client.chat.completions.create(**CHAT, extra_headers={"x-mock-drop": "mid-body", "x-mock-chunks": "5"})
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(stream)
    (record,) = wait_for_usage(1)
    assert record.streamed and not record.client_aborted


def test_a_silent_upstream_times_out_between_chunks(openai_client, issued):
    client = openai_client(issued.plaintext)
    stream = client.chat.completions.create(**CHAT, extra_headers={"x-mock-chunks": "3", "x-mock-chunk-delay": "3"})
    started = time.monotonic()
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(stream)
    assert time.monotonic() - started < 2.5, "cut after the read timeout (1.5 s), not after the upstream's 3 s"
    (record,) = wait_for_usage(1)
    assert record.streamed and 1500 <= record.duration_ms < 2500


def test_streams_do_not_hold_database_connections(proxy_server, issued, upstream):
    """Twenty concurrent streams against a database pool of four per worker; a new request is still admitted, and
    answered while every stream is still open (a stream holding a connection would keep it until its end)."""

    async def scenario() -> tuple[list[int], bool]:
        client = openai.AsyncOpenAI(base_url=proxy_server.base_url, api_key=issued.plaintext, max_retries=0)
        headers = {"x-mock-chunks": "10", "x-mock-chunk-delay": "0.2"}

        async def stream() -> int:
            chunks = await client.chat.completions.create(**CHAT, extra_headers=headers)
            return len([c async for c in chunks])

        async with client:
            streams = [asyncio.create_task(stream()) for _ in range(20)]
            await asyncio.sleep(0.4)
            models = await client.models.list()
            all_open = not any(task.done() for task in streams)
            assert [m.id for m in models.data]
            return await asyncio.gather(*streams), all_open

    counts, all_open = asyncio.run(scenario())
    assert counts == [11] * 20
    assert all_open, "the request waited for a stream to end"
    records = wait_for_usage(21)
    assert sum(r.streamed for r in records) == 20 and not any(r.client_aborted for r in records)
    assert {r.completion_tokens for r in records if r.streamed} == {10}, "usage read from each stream"


def test_a_client_that_reads_slowly_gets_every_chunk_in_order(proxy_server, issued):
    """Chunks are passed on from the upstream connection's callback while the client keeps up; once its socket is
    full they wait (and the upstream is read no faster than the client takes them), then go on in order."""
    chunks = 30_000  # about 7 MB of events: more than the sockets between hold
    with (
        httpx.Client(base_url=proxy_server.base_url, timeout=30) as client,
        client.stream(
            "POST",
            "/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {issued.plaintext}", "x-mock-chunks": str(chunks)},
        ) as response,
    ):
        parts = response.iter_raw()
        received = bytearray(next(parts))
        time.sleep(1.5)  # not reading: the proxy's writes to this client back up
        for part in parts:
            received += part
    contents = [
        line[len(b"data: ") :] for line in received.split(b"\n\n") if line.startswith(b"data: {") and b"part" in line
    ]
    assert len(contents) == chunks
    assert all(f'"part{i} "'.encode() in line for i, line in enumerate(contents)), "out of order"
    assert received.endswith(b"data: [DONE]\n\n")
    (record,) = wait_for_usage(1)
    assert record.streamed and record.completion_tokens == chunks and not record.client_aborted
