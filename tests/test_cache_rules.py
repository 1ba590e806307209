"""The response cache's rules on their own: when a request is cacheable, and what its key ignores and keeps."""

import json
import uuid

import pytest

from proxy.cache import BYPASS, directives, plan, storable

PROJECT = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def chat_plan(body: dict | bytes = CHAT, *, mode: str = "opt-in", cache_control: str = "max-age=60", **options):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    arguments = {
        "mode": mode,
        "default_ttl": 3600,
        "project_id": PROJECT,
        "method": "POST",
        "api_path": "/chat/completions",
        "query": "",
        "body": raw,
        "model": "gpt-4o",
        "cache_control": cache_control,
    }
    return plan(**(arguments | options))


def test_key_order_whitespace_user_and_stream_options_do_not_matter():
    spaced = b'{ "messages": [{"content": "Hi", "role": "user"}],\n  "model": "gpt-4o", "user": "alice" }'
    with_options = CHAT | {"stream_options": {"include_usage": True}, "user": "bob"}
    assert chat_plan(spaced).key == chat_plan(CHAT).key == chat_plan(with_options).key


def test_what_the_key_keeps_apart():
    key = chat_plan().key
    assert chat_plan(CHAT | {"stream": True}).key != key  # streamed and plain answers apart
    assert chat_plan(CHAT | {"temperature": 0.5}).key != key
    assert chat_plan(project_id=OTHER).key != key  # never shared by two projects
    assert chat_plan(query="api-version=1").key != key
    assert chat_plan(api_path="/completions").key != key
    assert chat_plan(model="gpt-4o-mini").key != key  # the model forwarded (an alias resolved)


@pytest.mark.parametrize(
    ("mode", "body", "cache_control", "ttl"),
    [
        ("opt-in", CHAT, "", None),
        ("opt-in", CHAT, "max-age=60", 60),
        ("opt-in", CHAT, "s-maxage=30, max-age=60", 30),
        ("opt-in", CHAT, "max-age=0", None),
        ("opt-in", CHAT | {"temperature": 0}, "", None),
        ("on", CHAT | {"temperature": 0}, "", 3600),
        ("on", CHAT | {"seed": 7}, "", 3600),
        ("on", CHAT | {"temperature": 0.7}, "", None),
        ("on", CHAT | {"temperature": False}, "", None),
        ("on", CHAT | {"temperature": 0.7}, "max-age=5", 5),
        ("on", CHAT | {"temperature": 0}, "no-store", None),
        ("opt-in", CHAT, "max-age=99999999", 30 * 24 * 3600),
    ],
)
def test_modes(mode, body, cache_control, ttl):
    result = chat_plan(body, mode=mode, cache_control=cache_control)
    assert (result.ttl if result.key else None) == ttl


def test_embeddings_are_cacheable_in_mode_on_without_asking():
    result = chat_plan({"model": "e", "input": "x"}, mode="on", cache_control="", api_path="/embeddings")
    assert result.key and result.ttl == 3600


def test_no_cache_refreshes_instead_of_reading():
    assert chat_plan(cache_control="no-cache, max-age=60").read is False
    assert chat_plan().read is True


def test_what_is_never_cacheable():
    assert chat_plan(b"not json") is BYPASS
    assert chat_plan(b"[1, 2]") is BYPASS
    assert chat_plan(api_path="/audio/speech") is BYPASS
    assert chat_plan(method="DELETE", api_path="/files/x") is BYPASS
    assert chat_plan(b"", method="GET", api_path="/models").key is not None
    assert chat_plan(b"", method="GET", api_path="/models/gpt-4o").key is not None


def test_what_the_upstream_may_forbid():
    assert storable(200, {"cache-control": "max-age=10"})
    assert not storable(200, {"cache-control": "no-store"})
    assert not storable(200, {"cache-control": "Private"})
    assert not storable(400, {})
    assert not storable(200, {}, str(3 * 1024 * 1024))
    assert directives('max-age="5", No-Cache') == {"max-age": "5", "no-cache": ""}
