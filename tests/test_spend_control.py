"""Spend control through the real server (2 workers), the mock upstream (it reports usage) and the official SDK:
per-minute limits exact under concurrency, budgets refusing the next request after the spend reaches them (streamed
or not), the headers the SDKs understand, unpriced models refused, and an upstream failure using up no quota."""

import asyncio
import math
import time
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import openai
import pytest

from projects.models import Project
from projects.services import project_set_limits
from proxy.models import UsageRecord
from proxy.services import price_set
from tests.live import wait_for_usage
from tokens.models import Token

pytestmark = pytest.mark.usefixtures("live_db")

MODEL = "spend-test-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
# The mock reports 11 prompt and 7 completion tokens for a chat completion: at these prices one costs $0.18.
COST = Decimal("0.18")


@pytest.fixture
def priced(operator):
    price_set(
        model=MODEL,
        input_per_million=10_000,
        cached_input_per_million=None,
        output_per_million=10_000,
        source="test",
        actor=operator,
    )
    time.sleep(0.3)  # the workers read prices again after PRICE_CACHE_SECONDS (short in the tests' server)


def at_start_of_a_minute(margin: float = 8.0) -> None:
    """Wait for a fresh clock minute when this one ends within `margin` seconds (a per-minute limit resets)."""
    left = 60 - datetime.now(UTC).timestamp() % 60
    if left < margin:
        time.sleep(left + 0.2)


def post(server, token: str, body: dict | None = None, **headers) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/chat/completions",
        json=body or CHAT,
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=30,
    )


def concurrently(server, token: str, count: int) -> list[httpx.Response]:
    async def send() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{server.base_url}/chat/completions",
                        json={"model": "gpt-4o", "messages": []},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for _ in range(count)
                )
            )

    return asyncio.run(send())


# --- per-minute limits ------------------------------------------------------------------------------------------


def test_requests_per_minute_admits_exactly_30_of_200_concurrent(proxy_server, make_project, make_token):
    token = make_token(make_project(), requests_per_minute=30)
    at_start_of_a_minute()
    answers = concurrently(proxy_server, token.plaintext, 200)
    assert sorted({r.status_code for r in answers}) == [200, 429]
    assert sum(r.status_code == 200 for r in answers) == 30
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "30"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in refused.headers  # the SDKs retry after Retry-After, as they should


def test_a_projects_requests_per_minute_hold_for_all_its_tokens_together(
    proxy_server, make_project, make_token, operator
):
    project = make_project()
    project_set_limits(project=project, actor=operator, requests_per_minute=20)
    tokens = [make_token(project).plaintext for _ in range(4)]
    at_start_of_a_minute()

    async def send() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{proxy_server.base_url}/chat/completions",
                        json={"model": "gpt-4o", "messages": []},
                        headers={"Authorization": f"Bearer {tokens[i % 4]}"},
                    )
                    for i in range(100)
                )
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(send())
    assert statuses.count(200) == 20 and statuses.count(429) == 80
    assert Project.objects.get(pk=project.pk).rpm_count == 20


def test_admitted_answers_carry_the_callers_own_rate_limit_headers(proxy_server, make_project, make_token):
    token = make_token(make_project(), requests_per_minute=50, tokens_per_minute=1000)
    at_start_of_a_minute()
    first = post(proxy_server, token.plaintext, {"model": "gpt-4o", "messages": []})
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "50"
    assert first.headers["x-ratelimit-remaining-requests"] == "49"
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    second = post(proxy_server, token.plaintext, {"model": "gpt-4o", "messages": []})
    assert second.headers["x-ratelimit-remaining-requests"] == "48"
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - 18)  # the first one's tokens are charged


def test_tokens_per_minute_refuse_the_next_request_once_reached(proxy_server, make_project, make_token, upstream):
    token = make_token(make_project(), tokens_per_minute=40)  # a chat completion reports 18 tokens
    at_start_of_a_minute()
    statuses = [post(proxy_server, token.plaintext, {"model": "gpt-4o", "messages": []}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # 18, 36, 54: the third passes (36 < 40), the fourth does not
    refused = post(proxy_server, token.plaintext, {"model": "gpt-4o", "messages": []})
    assert refused.json()["error"]["type"] == "tokens" and refused.headers["x-ratelimit-limit-tokens"] == "40"


def test_the_sdk_raises_rate_limit_error_and_retries_it(proxy_server, make_project, make_token, openai_client):
    token = make_token(make_project(), requests_per_minute=1)
    at_start_of_a_minute(margin=15)
    client = openai_client(token.plaintext)
    client.chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=[])
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["retry-after"]


# --- budgets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_token_budget_refuses_the_first_request_after_the_spend_reaches_it(
    proxy_server, make_project, make_token, priced, stream
):
    token = make_token(make_project(), budget_usd=Decimal("0.50"))
    body = {**CHAT, "stream": True} if stream else CHAT
    statuses = []
    for _ in range(5):
        response = post(proxy_server, token.plaintext, body)
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
    # The streamed chat completion reports 11 + 3 tokens ($0.14 here), the plain one 11 + 7 ($0.18).
    spent_per_request = Decimal("0.14") if stream else COST
    admitted = math.ceil(Decimal("0.50") / spent_per_request)  # as many as it takes to reach the budget
    assert statuses == [200] * admitted + [429]
    refused = response.json()["error"]
    assert refused["code"] == "budget_exceeded" and refused["type"] == "insufficient_quota"
    assert "$0.50" in refused["message"] and response.headers["x-should-retry"] == "false"
    assert Token.objects.get(pk=token.token.pk).spent_usd == spent_per_request * admitted
    records = wait_for_usage(admitted + 1)
    assert [r.cost_usd for r in records if r.status == 200] == [spent_per_request] * admitted


def test_the_sdk_does_not_retry_a_budget_refusal(proxy_server, make_project, make_token, priced, upstream):
    token = make_token(make_project(), budget_usd=Decimal("0.10"))
    client = openai.OpenAI(base_url=proxy_server.base_url, api_key=token.plaintext, max_retries=3, timeout=10)
    client.chat.completions.create(**CHAT)  # $0.18: over the budget now
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**CHAT)
    assert refused.value.code == "budget_exceeded"
    assert len([r for r in upstream.requests if r.path.endswith("/chat/completions")]) == 1  # no retries


def test_a_project_budget_per_period_refuses_its_tokens_and_says_when_it_resets(
    proxy_server, make_project, make_token, operator, priced
):
    project = make_project()
    project_set_limits(project=project, actor=operator, budget_usd=Decimal("0.30"), budget_period="month")
    first, second = make_token(project).plaintext, make_token(project).plaintext
    assert post(proxy_server, first).status_code == 200
    assert post(proxy_server, second).status_code == 200  # $0.36 now
    response = post(proxy_server, first)
    assert response.status_code == 429
    message = response.json()["error"]["message"]
    now = datetime.now(UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert "this month" in message and f"{next_month:%Y-%m-%d}" in message
    assert Project.objects.get(pk=project.pk).spent_in_period(now) == 2 * COST


def test_a_model_without_a_price_is_refused_when_a_budget_applies(
    proxy_server, make_project, make_token, openai_client, upstream
):
    budgeted = make_token(make_project(), budget_usd=Decimal("5"))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai_client(budgeted.plaintext).chat.completions.create(model="no-such-priced-model", messages=[])
    assert refused.value.code == "model_not_priced" and "no-such-priced-model" in refused.value.message
    assert upstream.requests == []
    assert Token.objects.get(pk=budgeted.token.pk).request_count == 0  # given back
    free = make_token(make_project())
    assert openai_client(free.plaintext).chat.completions.create(model="no-such-priced-model", messages=[])


# --- an upstream failure uses up nothing --------------------------------------------------------------------


def test_an_upstream_500_does_not_use_up_a_limit_of_one(proxy_server, make_project, make_token):
    token = make_token(make_project(), max_requests=1, requests_per_minute=5)
    failed = post(proxy_server, token.plaintext, {"model": "gpt-4o", "messages": []}, **{"x-mock-status": "500"})
    assert failed.status_code == 500
    assert Token.objects.get(pk=token.token.pk).request_count == 0
    assert post(proxy_server, token.plaintext, {"model": "gpt-4o", "messages": []}).status_code == 200
    assert post(proxy_server, token.plaintext, {"model": "gpt-4o", "messages": []}).status_code == 429
    assert UsageRecord.objects.filter(token_id=token.token.pk, status=500).count() == 1  # still recorded
