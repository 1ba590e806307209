"""The response cache through the real server (2 workers), the mock upstream (it counts what reaches it) and the
official SDK, on the database backend: modes, the key, streams replayed, admission and counters on hits."""

import time
from decimal import Decimal

import httpx
import openai
import pytest

from projects.services import project_set_cache
from proxy.models import CacheEntry, UsageRecord
from proxy.services import price_set
from tests.live import wait_for_usage
from tokens.models import Token
from tokens.services import token_revoke

pytestmark = pytest.mark.usefixtures("live_db")

MODEL = "cache-test-model"
MESSAGES = [{"role": "user", "content": "Hi"}]
CHAT = {"model": MODEL, "messages": MESSAGES}
KEEP = {"Cache-Control": "max-age=600"}


def calls(upstream, suffix: str = "/chat/completions") -> int:
    return sum(1 for request in upstream.requests if request.path.endswith(suffix))


def chat(client: openai.OpenAI, headers: dict | None = None, **body):
    """(the completion, the answer's headers)."""
    raw = client.chat.completions.with_raw_response.create(**(CHAT | body), extra_headers=headers or {})
    return raw.parse(), raw.headers


def entries_settled(count: int, timeout: float = 3) -> None:
    """Answers are stored just after they end, off the client's path."""
    deadline = time.monotonic() + timeout
    while CacheEntry.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def cached_project(make_project):
    return make_project(cache_mode="opt-in")


@pytest.fixture
def client(openai_client, cached_project, make_token):
    return openai_client(make_token(cached_project).plaintext)


def test_opt_in_caches_only_what_the_client_asks_for(client, upstream):
    first, first_headers = chat(client)
    assert first_headers["x-cache"] == "BYPASS"
    stored, stored_headers = chat(client, KEEP)
    assert stored_headers["x-cache"] == "STORED"
    entries_settled(1)
    hit, hit_headers = chat(client, KEEP)

    assert hit_headers["x-cache"] == "HIT"
    assert hit.model_dump() == stored.model_dump()
    assert int(hit_headers["age"]) >= 0
    assert hit_headers["x-request-id"] != stored_headers["x-request-id"]
    assert "openai-processing-ms" not in hit_headers
    assert calls(upstream) == 2


def test_a_project_with_the_cache_off_says_nothing_and_keeps_nothing(openai_client, make_project, make_token, upstream):
    client = openai_client(make_token(make_project()).plaintext)
    for _ in range(2):
        _, headers = chat(client, KEEP)
        assert "x-cache" not in headers
    assert calls(upstream) == 2 and CacheEntry.objects.count() == 0


def test_mode_on_caches_deterministic_requests_and_embeddings(openai_client, make_project, make_token, upstream):
    client = openai_client(make_token(make_project(cache_mode="on")).plaintext)
    assert chat(client, temperature=0)[1]["x-cache"] == "STORED"
    assert chat(client, seed=7)[1]["x-cache"] == "STORED"
    assert chat(client, temperature=1)[1]["x-cache"] == "BYPASS"
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello")
    assert raw.headers["x-cache"] == "STORED"
    entries_settled(3)
    assert chat(client, temperature=0)[1]["x-cache"] == "HIT"
    assert chat(client, seed=7)[1]["x-cache"] == "HIT"
    assert chat(client, temperature=1)[1]["x-cache"] == "BYPASS"
    again = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello")
    assert again.headers["x-cache"] == "HIT"
    assert again.parse().data[0].embedding == raw.parse().data[0].embedding
    assert calls(upstream) == 4 and calls(upstream, "/embeddings") == 1


def test_no_cache_refreshes_and_no_store_neither_reads_nor_writes(client, upstream):
    chat(client, KEEP)
    entries_settled(1)
    assert chat(client, {"Cache-Control": "no-cache, max-age=600"})[1]["x-cache"] == "STORED"
    assert chat(client, {"Cache-Control": "no-store, max-age=600"})[1]["x-cache"] == "BYPASS"
    assert chat(client, KEEP)[1]["x-cache"] == "HIT"
    assert calls(upstream) == 3


def test_two_projects_never_share_an_answer_and_tokens_of_one_do(
    openai_client, cached_project, make_project, make_token, upstream
):
    other = make_project(cache_mode="opt-in")
    first = openai_client(make_token(cached_project).plaintext)
    same_project = openai_client(make_token(cached_project).plaintext)
    other_project = openai_client(make_token(other).plaintext)
    assert chat(first, KEEP)[1]["x-cache"] == "STORED"
    entries_settled(1)
    assert chat(other_project, KEEP)[1]["x-cache"] == "STORED"
    assert chat(same_project, KEEP)[1]["x-cache"] == "HIT"
    assert calls(upstream) == 2


def test_the_key_ignores_key_order_whitespace_user_and_stream_options(proxy_server, client, upstream, make_token):
    chat(client, KEEP, user="alice")
    entries_settled(1)
    token = client.api_key
    body = b'{ "messages" : [ {"content":"Hi", "role":"user"} ],\n "user": "bob", "model": "cache-test-model" }'
    answer = httpx.post(
        f"{proxy_server.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **KEEP},
    )
    assert answer.status_code == 200 and answer.headers["x-cache"] == "HIT"
    # A different message, or another model, is another request.
    assert chat(client, KEEP, messages=[{"role": "user", "content": "Hello"}])[1]["x-cache"] == "STORED"
    assert chat(client, KEEP, model="cache-test-model-2")[1]["x-cache"] == "STORED"
    assert calls(upstream) == 3


def _stream(client: openai.OpenAI, headers: dict | None = None, **options) -> tuple[list, dict]:
    raw = client.chat.completions.with_raw_response.create(
        **CHAT, stream=True, extra_headers=(headers or {}) | {"x-mock-chunks": "4"} | KEEP, **options
    )
    return [chunk.model_dump() for chunk in raw.parse()], raw.headers


def test_a_stream_is_stored_and_replayed_as_a_stream_with_the_same_content(client, upstream):
    live, live_headers = _stream(client)
    entries_settled(1)
    replayed, headers = _stream(client)

    assert live_headers["x-cache"] == "STORED" and headers["x-cache"] == "HIT"
    assert headers["content-type"].startswith("text/event-stream")
    assert replayed == live and len(live) == 5  # 4 parts and the end, no usage chunk (not asked for)
    assert all(chunk.get("usage") is None for chunk in replayed)
    # A client that asks for usage gets it, from the same entry.
    with_usage, usage_headers = _stream(client, stream_options={"include_usage": True})
    assert usage_headers["x-cache"] == "HIT"
    assert with_usage[-1]["usage"]["total_tokens"] > 0 and [c["choices"] for c in with_usage[:-1]] == [
        c["choices"] for c in live
    ]
    assert calls(upstream) == 1
    records = wait_for_usage(2, cached=True, streamed=True)
    assert len(records) == 2 and all(r.total_tokens for r in records)


def test_a_stream_replayed_through_the_raw_socket_keeps_its_framing(proxy_server, client, upstream):
    token = client.api_key
    request = {
        "url": f"{proxy_server.base_url}/chat/completions",
        "json": CHAT | {"stream": True},
        "headers": {"Authorization": f"Bearer {token}", "x-mock-chunks": "3", **KEEP},
    }
    live = httpx.post(**request).content
    entries_settled(1)
    replayed = httpx.post(**request)
    assert replayed.headers["x-cache"] == "HIT"
    assert replayed.content == live and live.endswith(b"data: [DONE]\n\n")


def test_a_cut_stream_and_errors_are_not_stored(client, upstream):
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        _stream(client, {"x-mock-drop": "mid-body"})
    with pytest.raises(openai.BadRequestError):
        chat(client, KEEP | {"x-mock-status": "400"})
    _, headers = chat(client, KEEP | {"x-mock-cache-control": "no-store"})
    assert headers["x-cache"] == "MISS"
    _, headers = chat(client, KEEP | {"x-mock-cache-control": "private, max-age=60"})
    assert headers["x-cache"] == "MISS"
    time.sleep(0.3)
    assert CacheEntry.objects.count() == 0


def test_an_answer_above_the_size_cap_is_not_stored(client, upstream):
    many = ["a"] * 32_000  # the mock's answer: about 2.4 MB, above CACHE_MAX_ENTRY_BYTES (2 MiB)
    for _ in range(2):
        raw = client.embeddings.with_raw_response.create(model="e", input=many, extra_headers=KEEP)
        assert raw.headers["x-cache"] == "MISS" and len(raw.parse().data) == 32_000
    time.sleep(0.3)
    assert CacheEntry.objects.count() == 0 and calls(upstream, "/embeddings") == 2


def test_a_revoked_token_is_refused_even_with_an_answer_cached(openai_client, cached_project, make_token, operator):
    token = make_token(cached_project)
    client = openai_client(token.plaintext)
    chat(client, KEEP)
    entries_settled(1)
    token_revoke(token=token.token, actor=operator)
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(client, KEEP)
    assert refused.value.code == "token_revoked"


def test_a_hit_uses_no_request_quota_nor_budget_but_counts_per_minute(
    openai_client, make_project, make_token, operator, upstream
):
    price_set(
        model=MODEL,
        input_per_million=10_000,
        cached_input_per_million=None,
        output_per_million=10_000,
        source="test",
        actor=operator,
    )
    time.sleep(0.3)  # the workers read prices again after PRICE_CACHE_SECONDS
    project = make_project(cache_mode="opt-in")
    issued = make_token(project, max_requests=2, budget_usd=Decimal("0.20"), requests_per_minute=6)
    client = openai_client(issued.plaintext)
    chat(client, KEEP)  # costs $0.18 of the $0.20
    entries_settled(1)
    for _ in range(5):
        assert chat(client, KEEP)[1]["x-cache"] == "HIT"
    with pytest.raises(openai.RateLimitError) as limited:  # the 7th request this minute
        chat(client, KEEP)
    assert limited.value.code == "rate_limit_exceeded"

    assert calls(upstream) == 1
    token = Token.objects.get(pk=issued.token.pk)
    assert token.request_count == 1 and token.cache_hit_count == 5
    records = wait_for_usage(7, token=token)
    hits = [r for r in records if r.cached]
    assert len(hits) == 5
    assert all(r.cost_usd == 0 and r.saved_usd == Decimal("0.18") and r.total_tokens == 18 for r in hits)
    assert Token.objects.get(pk=token.pk).spent_usd == Decimal("0.18")


def test_a_token_at_its_request_limit_is_refused_on_a_hit_too(openai_client, cached_project, make_token):
    issued = make_token(cached_project, max_requests=1)
    client = openai_client(issued.plaintext)
    chat(client, KEEP)
    entries_settled(1)
    # Spent: its next request would be a hit, but the limit still holds (only hits themselves are free).
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client, KEEP)
    assert refused.value.code == "request_limit_reached"


def test_turning_the_cache_off_stops_hits_at_once(client, cached_project, operator, upstream):
    chat(client, KEEP)
    entries_settled(1)
    project_set_cache(project=cached_project, actor=operator, cache_mode="off")
    _, headers = chat(client, KEEP)
    assert "x-cache" not in headers and calls(upstream) == 2


def test_model_list_hits_are_filtered_by_each_tokens_policy(openai_client, cached_project, make_token, upstream):
    wide = openai_client(make_token(cached_project).plaintext)
    narrow = openai_client(make_token(cached_project, allowed_models=["gpt-4o-mini"]).plaintext)
    listed = wide.models.with_raw_response.list(extra_headers=KEEP)
    assert listed.headers["x-cache"] == "STORED"
    entries_settled(1)
    hit = narrow.models.with_raw_response.list(extra_headers=KEEP)
    assert hit.headers["x-cache"] == "HIT"
    assert [m.id for m in hit.parse()] == ["gpt-4o-mini"]
    assert sorted(m.id for m in listed.parse()) == ["gpt-4o", "gpt-4o-mini"]
    assert calls(upstream, "/models") == 1
    assert UsageRecord.objects.filter(cached=True).count() in (0, 1)


def test_purge_by_project_sends_the_next_request_upstream(client, cached_project, make_project, make_token, operator):
    other = make_project(cache_mode="opt-in")
    other_client_token = make_token(other).plaintext
    chat(client, KEEP)
    httpx.post(
        f"{client.base_url}chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {other_client_token}", **KEEP},
    )
    entries_settled(2)

    from proxy.services import cache_purge

    assert cache_purge(project=cached_project, actor=operator) == 1
    assert chat(client, KEEP)[1]["x-cache"] == "STORED"
    assert CacheEntry.objects.filter(project_id=other.pk).count() == 1  # the other project's answer stays


def test_cache_results_are_counted_in_the_metrics(proxy_server, openai_client, make_project, make_token):
    name = f"Metrics {time.time_ns()}"  # the server's counters outlive each test's projects
    client = openai_client(make_token(make_project(name=name, cache_mode="opt-in")).plaintext)

    def count(result: str) -> float:
        text = httpx.get(f"{proxy_server.url}/metrics", timeout=5).text
        line = f'llmproxy_cache_requests_total{{project="{name}",result="{result}"}}'
        return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)

    chat(client, KEEP)
    entries_settled(1)
    chat(client, KEEP), chat(client, KEEP), chat(client)
    wait_for_usage(4)
    time.sleep(0.1)  # the metrics are counted by the writer, beside the records
    assert (count("stored"), count("hit"), count("bypass")) == (1, 2, 1)
