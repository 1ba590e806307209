"""What crosses the proxy: which request headers reach the upstream, which response headers come back, CORS."""

import httpx
import pytest

from tests.conftest import VALID_KEY

pytestmark = pytest.mark.usefixtures("live_db")

ALLOWED_ORIGIN = "https://app.example.com"  # tests.live.TEST_SERVER_ENV


@pytest.fixture
def token(make_project, make_token):
    return make_token(make_project()).plaintext


def test_forbidden_request_headers_do_not_reach_the_upstream(proxy_server, upstream, token):
    sent = {
        "Authorization": f"Bearer {token}",
        "Cookie": "sessionid=secret",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Host": "proxy.example.com",
        "X-Real-IP": "203.0.113.7",
        "Forwarded": "for=203.0.113.7",
        "CF-Connecting-IP": "203.0.113.7",
        "True-Client-IP": "203.0.113.7",
        "OpenAI-Organization": "org-other",
        "OpenAI-Project": "proj_other",
        "X-Api-Key": token,
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "named in Connection",
        "Accept-Encoding": "gzip, br",
        "X-Custom": "kept",
        "x-mock-echo": "1",
    }
    response = httpx.get(f"{proxy_server.base_url}/files?purpose=batch&limit=2", headers=sent)

    assert response.status_code == 200
    echo = response.json()
    received = dict(echo["headers"])
    assert received["authorization"] == f"Bearer {VALID_KEY}"
    assert received["x-custom"] == "kept"
    assert received["accept-encoding"] == "identity"
    assert received["x-request-id"] == response.headers["x-request-id"]
    assert received["host"] == upstream.base_url.split("/")[2]
    for name in (
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
        "forwarded",
        "cf-connecting-ip",
        "true-client-ip",
        "openai-organization",
        "openai-project",
        "x-api-key",
        "x-hop",
    ):
        assert name not in received, name
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/v1/files", "purpose=batch&limit=2")


def test_the_path_is_forwarded_as_sent(proxy_server, upstream, token):
    httpx.get(f"{proxy_server.base_url}/models/ft%3Agpt-4o%3Aacme", headers={"Authorization": f"Bearer {token}"})
    assert upstream.last().path == "/v1/models/ft%3Agpt-4o%3Aacme"


def test_response_headers(proxy_server, upstream, token):
    response = httpx.get(f"{proxy_server.base_url}/models", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert len(response.headers["x-request-id"]) == 32
    assert response.headers["x-upstream-request-id"] == "req_mock_upstream"
    assert response.headers["openai-processing-ms"] == "1"
    timing = response.headers["server-timing"]
    assert timing.startswith("proxy;dur=") and ", upstream;dur=" in timing
    for name in ("set-cookie", "openai-organization", "access-control-allow-origin"):
        assert name not in response.headers, name
    assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]


def test_the_proxys_own_headers_take_the_place_of_the_upstreams_whatever_their_case(
    proxy_server, upstream, make_project, make_token
):
    limited = make_token(make_project(), requests_per_minute=30).plaintext
    unlimited = make_token(make_project()).plaintext
    chat = f"{proxy_server.base_url}/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    more = {"x-mock-more-headers": "1"}

    own_limits = httpx.post(chat, json=body, headers={**more, "Authorization": f"Bearer {limited}"})
    upstreams = httpx.post(chat, json=body, headers={**more, "Authorization": f"Bearer {unlimited}"})
    with_cors = httpx.post(
        chat, json=body, headers={**more, "Authorization": f"Bearer {limited}", "Origin": ALLOWED_ORIGIN}
    )

    assert own_limits.headers.get_list("x-ratelimit-limit-requests") == ["30"]
    assert own_limits.headers.get_list("x-ratelimit-remaining-requests") == ["29"]
    assert upstreams.headers.get_list("x-ratelimit-limit-requests") == ["10000"]  # the company's account's
    for response in (own_limits, upstreams):
        assert response.headers.get_list("vary") == ["Accept-Encoding, Accept"]  # the upstream's, joined into one
        assert response.headers.get_list("access-control-allow-origin") == ["*"]
    assert with_cors.headers.get_list("access-control-allow-origin") == [ALLOWED_ORIGIN]
    assert with_cors.headers.get_list("vary") == ["Origin"]


def test_a_sane_client_request_id_is_kept_and_an_odd_one_replaced(proxy_server, upstream, token):
    auth = {"Authorization": f"Bearer {token}"}
    kept = httpx.get(f"{proxy_server.base_url}/models", headers={**auth, "X-Request-ID": "trace-1234.abcd"})
    replaced = httpx.get(f"{proxy_server.base_url}/models", headers={**auth, "X-Request-ID": "bad id\twith junk"})

    assert kept.headers["x-request-id"] == "trace-1234.abcd"
    assert upstream.requests[0].header("x-request-id") == "trace-1234.abcd"
    assert replaced.headers["x-request-id"] != "bad id\twith junk" and len(replaced.headers["x-request-id"]) == 32


def test_refusals_carry_the_request_id_and_timing_too(proxy_server):
    response = httpx.post(f"{proxy_server.base_url}/chat/completions", json={})

    assert response.status_code == 401
    assert response.headers["x-request-id"] and response.headers["server-timing"].startswith("proxy;dur=")


def test_preflight_from_an_allowed_origin_is_answered_without_a_token(proxy_server, upstream):
    response = httpx.options(
        f"{proxy_server.base_url}/chat/completions",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert response.headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert response.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    assert int(response.headers["access-control-max-age"]) > 0
    assert upstream.requests == []


def test_preflight_from_another_origin_gets_no_cors_headers(proxy_server):
    response = httpx.options(
        f"{proxy_server.base_url}/chat/completions",
        headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
    )

    assert not [name for name in response.headers if name.startswith("access-control-")]


def test_preflight_for_an_endpoint_not_served(proxy_server):
    response = httpx.options(f"{proxy_server.base_url}/fine_tuning/jobs", headers={"Origin": ALLOWED_ORIGIN})
    assert response.status_code == 404


def test_actual_responses_name_the_allowed_origin_and_expose_the_request_id(proxy_server, upstream, token):
    auth = {"Authorization": f"Bearer {token}"}
    allowed = httpx.get(f"{proxy_server.base_url}/models", headers={**auth, "Origin": ALLOWED_ORIGIN})
    refused = httpx.get(f"{proxy_server.base_url}/models", headers={"Origin": ALLOWED_ORIGIN})
    other = httpx.get(f"{proxy_server.base_url}/models", headers={**auth, "Origin": "https://evil.example.net"})

    for response in (allowed, refused):
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "X-Request-ID" in response.headers["access-control-expose-headers"]
        assert response.headers["vary"] == "Origin"
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
