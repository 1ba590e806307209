"""The response cache on Redis (CACHE_URL) through the real server (2 workers), the mock upstream and the official
SDK: answers shared by both workers, streams replayed, projects apart, purge, and a Redis that goes away mid-run
degrading to no caching (requests still answered), then coming back.

Redis is the one at 127.0.0.1:6379, reached through a TCP relay the test can cut (as a stopped Redis looks to this
server) without stopping it for anyone else; keys carry a prefix of their own. Skipped with the reason when no
Redis answers there, unless REQUIRE_ALL_PARTS is set (CI), which makes it a failure.
"""

import socket
import time
import uuid

import httpx
import openai
import pytest
import redis

from projects.services import project_set_cache
from proxy.services import cache_purge
from tests.conftest import require_part
from tests.live import TEST_SERVER_ENV, database_url, start_server, wait_for_usage
from tests.tcp_relay import TcpRelay
from tokens.models import Token

pytestmark = pytest.mark.usefixtures("live_db")

REDIS = ("127.0.0.1", 6379)
MODEL = "cache-test-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
KEEP = {"Cache-Control": "max-age=600"}


def redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def prefix():
    return f"llmproxy-test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def relay():
    require_part(redis_answers(), "no Redis at 127.0.0.1:6379 (Debian: apt-get install redis-server)")
    relay = TcpRelay(REDIS)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def redis_server(django_db_setup, django_db_blocker, mock_upstream, tmp_path_factory, relay, prefix):
    from django.db import connection

    env = {**TEST_SERVER_ENV, "CACHE_URL": f"redis://127.0.0.1:{relay.port}/0", "CACHE_KEY_PREFIX": prefix}
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path_factory.mktemp("redis-server") / "gunicorn.log",
        env=env,
    )
    yield server
    server.stop()
    client = redis.Redis(*REDIS)
    for name in client.scan_iter(match=f"{prefix}*"):
        client.delete(name)
    client.close()


@pytest.fixture
def keys(prefix, settings, relay):
    """The keys this module's server stored; the test process purges through the same relay and prefix."""
    settings.CACHE_URL = f"redis://127.0.0.1:{relay.port}/0"
    settings.CACHE_KEY_PREFIX = prefix
    client = redis.Redis(*REDIS)

    def stored() -> list[bytes]:
        return list(client.scan_iter(match=f"{prefix}*"))

    for name in stored():
        client.delete(name)
    yield stored
    client.close()


@pytest.fixture
def sdk(redis_server):
    def make(token: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=redis_server.base_url, api_key=token, max_retries=0, timeout=10)

    return make


def chat(client: openai.OpenAI, headers: dict | None = None, **body):
    raw = client.chat.completions.with_raw_response.create(**(CHAT | body), extra_headers=headers or KEEP)
    return raw.parse(), raw.headers


def calls(upstream) -> int:
    return sum(1 for request in upstream.requests if request.path.endswith("/chat/completions"))


def settled(keys, count: int, timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while len(keys()) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_answers_are_shared_by_every_worker_and_never_by_two_projects(sdk, make_project, make_token, upstream, keys):
    project, other = make_project(cache_mode="opt-in"), make_project(cache_mode="opt-in")
    issued = make_token(project)
    client = sdk(issued.plaintext)
    stored, headers = chat(client)
    assert headers["x-cache"] == "STORED"
    settled(keys, 1)
    # Several requests, so both workers (each its own connection pool) answer some: every one is a hit.
    for _ in range(6):
        hit, headers = chat(client)
        assert headers["x-cache"] == "HIT" and hit.model_dump() == stored.model_dump()
    assert chat(sdk(make_token(other).plaintext))[1]["x-cache"] == "STORED"
    assert calls(upstream) == 2
    token = Token.objects.get(pk=issued.token.pk)
    assert token.request_count == 1 and token.cache_hit_count == 6
    assert len(wait_for_usage(6, token=token, cached=True)) == 6


def test_a_stream_is_replayed_from_redis(sdk, make_project, make_token, upstream, keys):
    client = sdk(make_token(make_project(cache_mode="opt-in")).plaintext)

    def stream() -> tuple[list, str]:
        raw = client.chat.completions.with_raw_response.create(
            **CHAT, stream=True, extra_headers={"x-mock-chunks": "4", **KEEP}
        )
        return [chunk.model_dump() for chunk in raw.parse()], raw.headers["x-cache"]

    live, first = stream()
    settled(keys, 1)
    replayed, second = stream()
    assert (first, second) == ("STORED", "HIT") and replayed == live and calls(upstream) == 1


def test_purge_by_project_empties_only_that_project(sdk, make_project, make_token, operator, keys):
    project, other = make_project(cache_mode="on"), make_project(cache_mode="on")
    client, other_client = sdk(make_token(project).plaintext), sdk(make_token(other).plaintext)
    chat(client, {}, temperature=0), chat(client, {}, seed=1), chat(other_client, {}, temperature=0)
    settled(keys, 3)
    assert cache_purge(project=project, actor=operator, model=MODEL) == 2
    assert len(keys()) == 1
    assert chat(client, {}, temperature=0)[1]["x-cache"] == "STORED"
    assert chat(other_client, {}, temperature=0)[1]["x-cache"] == "HIT"


def test_redis_going_away_degrades_to_no_caching_and_coming_back_restores_it(
    sdk, redis_server, relay, make_project, make_token, upstream, keys, operator
):
    project = make_project(cache_mode="opt-in")
    client = sdk(make_token(project).plaintext)
    chat(client)
    settled(keys, 1)
    assert chat(client)[1]["x-cache"] == "HIT"

    relay.cut()
    try:
        started = time.monotonic()
        for _ in range(10):
            answer, headers = chat(client)
            assert headers["x-cache"] == "BYPASS" and answer.choices[0].message.content
        assert time.monotonic() - started < 5, "each request waited on Redis"
        assert calls(upstream) == 11
        # A purge cannot reach it either: said, not pretended.
        with pytest.raises(Exception, match="cannot be reached"):
            cache_purge(project=project, actor=operator)
    finally:
        relay.restore()
    warnings = redis_server.log.read_text().count("the response cache's Redis cannot be reached")
    assert 1 <= warnings <= 2, "one warning a minute per worker"

    time.sleep(1.2)  # each worker tries Redis again a second after its failure
    results = [chat(client)[1]["x-cache"] for _ in range(6)]
    assert results.count("HIT") >= 4, results


def test_turning_the_mode_off_stops_reading_redis(sdk, make_project, make_token, operator, upstream, keys):
    project = make_project(cache_mode="opt-in")
    client = sdk(make_token(project).plaintext)
    chat(client)
    settled(keys, 1)
    project_set_cache(project=project, actor=operator, cache_mode="off")
    assert "x-cache" not in chat(client)[1] and calls(upstream) == 2


def test_a_cut_stream_is_not_stored_in_redis(sdk, make_project, make_token, keys):
    client = sdk(make_token(make_project(cache_mode="opt-in")).plaintext)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        raw = client.chat.completions.with_raw_response.create(
            **CHAT, stream=True, extra_headers={"x-mock-chunks": "5", "x-mock-drop": "mid-body", **KEEP}
        )
        list(raw.parse())
    time.sleep(0.3)
    assert keys() == []
