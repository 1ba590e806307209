"""Admission: one statement checks and counts; it agrees with the status rule; it is exact under concurrency."""

import asyncio
from datetime import timedelta

import openai
import pytest
from django.db import connection
from django.utils import timezone

from proxy import db
from proxy.admission import admit, admit_async
from tests.live import wait_for_usage
from tokens import secret
from tokens.models import Token, TokenStatus
from tokens.services import token_revoke, token_set_limits

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}

EXPECTED_CODE = {
    TokenStatus.REVOKED: "token_revoked",
    TokenStatus.EXPIRED: "token_expired",
    TokenStatus.LIMIT_REACHED: "request_limit_reached",
}


@pytest.mark.django_db
def test_the_statement_admits_exactly_what_the_status_rule_calls_usable(make_project, make_token, operator):
    """Every combination of token state and project state: the SQL and `Token.objects.usable()` agree."""
    now = timezone.now()
    cases = []
    for project_active in (True, False):
        project = make_project()
        for state in ("active", "unlimited", "one_left", "limit_reached", "expired", "revoked", "revoked_expired"):
            issued = make_token(project, max_requests=None if state == "unlimited" else 5)
            token = issued.token
            if state == "one_left":
                Token.objects.filter(pk=token.pk).update(request_count=4)
            if state == "limit_reached":
                Token.objects.filter(pk=token.pk).update(request_count=5)
            if state in ("expired", "revoked_expired"):
                Token.objects.filter(pk=token.pk).update(expires_at=now - timedelta(minutes=1))
            if state in ("revoked", "revoked_expired"):
                token_revoke(token=token, actor=operator)
            cases.append((state, project_active, token.pk, issued.plaintext))
        if not project_active:
            from tokens.services import project_set_active

            project_set_active(active=False, project=project, actor=operator)

    for state, project_active, pk, plaintext in cases:
        before = Token.objects.get(pk=pk)
        usable = Token.objects.usable(now).filter(pk=pk).exists()
        result = admit(secret.digest(plaintext), now)
        after = Token.objects.get(pk=pk)

        assert (result.refusal is None) == usable, (state, project_active)
        if usable and state == "unlimited":
            # No request limit: admission only reads; the request is counted with its usage record.
            assert not result.allowance.counted
            assert after.request_count == before.request_count and after.last_used_at == before.last_used_at
        elif usable:
            assert result.allowance.counted
            assert after.request_count == before.request_count + 1 and after.last_used_at == now
            assert result.token_id == pk and result.project_id == before.project_id
        else:
            assert after.request_count == before.request_count and after.last_used_at == before.last_used_at
            status = before.status_at(now)
            expected = EXPECTED_CODE.get(status, "project_inactive")
            if status == TokenStatus.LIMIT_REACHED and not project_active:
                expected = "project_inactive"
            assert result.refusal.code == expected, (state, project_active)


@pytest.mark.django_db
def test_an_unknown_token_is_refused_without_a_write():
    result = admit(secret.digest(secret.TOKEN.generate()))
    assert result.refusal.code == "invalid_token" and result.token_id is None


@pytest.mark.usefixtures("live_db")
def test_fifty_concurrent_requests_on_a_limit_of_ten_admit_exactly_ten(
    proxy_server, upstream, make_project, make_token
):
    issued = make_token(make_project(), max_requests=10)

    async def fire() -> list:
        client = openai.AsyncOpenAI(base_url=proxy_server.base_url, api_key=issued.plaintext, max_retries=0)
        async with client:
            return await asyncio.gather(
                *(client.chat.completions.create(**CHAT) for _ in range(50)), return_exceptions=True
            )

    results = asyncio.run(fire())

    admitted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert (len(admitted), len(refused)) == (10, 40), [r for r in results if isinstance(r, Exception)][:3]
    assert len(upstream.requests) == 10
    token = Token.objects.get(pk=issued.token.pk)
    assert token.request_count == 10 and token.status == TokenStatus.LIMIT_REACHED
    assert len(proxy_server.pids()) >= 3, "served by gunicorn with at least two workers"


@pytest.mark.usefixtures("live_db")
def test_a_token_without_a_request_limit_is_counted_with_its_records(
    proxy_server, upstream, make_project, make_token, openai_client, operator
):
    """Admission only reads such a token (no write, no lock, no commit to wait for); each request it admitted is
    counted when its usage record is written, but for one the upstream failed. A limit set later counts them."""
    issued = make_token(make_project())
    client = openai_client(issued.plaintext)
    for _ in range(3):
        client.chat.completions.create(**CHAT)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**CHAT, extra_headers={"x-mock-status": "500"})

    records = wait_for_usage(4, token_id=issued.token.pk)
    token = Token.objects.get(pk=issued.token.pk)
    assert [record.status for record in records] == [200, 200, 200, 500]
    assert token.request_count == 3 and token.last_used_at == records[2].time

    token_set_limits(token=token, max_requests=4, actor=operator)
    client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**CHAT)
    assert refused.value.code == "request_limit_reached"
    assert len(upstream.requests) == 5 and Token.objects.get(pk=issued.token.pk).request_count == 4


@pytest.mark.django_db(transaction=True)
def test_admissions_waiting_together_each_get_their_own_answer(make_project, make_token, operator):
    """On SQLite the admissions waiting for the database thread run as one group (on PostgreSQL each on its own):
    every one is still decided and counted for its own token (the unlimited one's are left to their records)."""
    project = make_project()
    limited = make_token(project, max_requests=3)
    revoked = make_token(project)
    token_revoke(token=revoked.token, actor=operator)
    plain = make_token(project)
    unknown = secret.digest(secret.TOKEN.generate())
    digests = [secret.digest(limited.plaintext)] * 5 + [secret.digest(revoked.plaintext), unknown]
    digests += [secret.digest(plain.plaintext)] * 4

    async def admit_all() -> list:
        results = await asyncio.gather(*(admit_async(digest) for digest in digests))
        if db.is_postgresql():
            await db.close_loop_connections()  # which would outlive the test
        return results

    results = asyncio.run(admit_all())

    codes = [result.refusal.code if result.refusal else "admitted" for result in results]
    # Which of one token's concurrent requests get its last places is a race; how many do is not.
    assert sorted(codes[:5]) == ["admitted"] * 3 + ["request_limit_reached"] * 2
    assert codes[5:] == ["token_revoked", "invalid_token"] + ["admitted"] * 4
    assert {result.token_id for result in results[:5]} == {limited.token.pk}
    assert Token.objects.get(pk=limited.token.pk).request_count == 3
    assert [result.allowance.counted for result in results[7:]] == [False] * 4
    assert Token.objects.get(pk=plain.token.pk).request_count == 0


@pytest.mark.django_db(transaction=True)
def test_a_request_is_counted_at_admission_exactly_while_a_request_limit_applies(make_project, make_token, operator):
    """Admission reads a token first unless it was counted the last time, and counts it when a request limit
    applies: a limit lifted or set between two requests is what the next one goes by."""
    issued = make_token(make_project(), max_requests=100)
    digest = secret.digest(issued.plaintext)

    async def admit_one():
        try:
            return await admit_async(digest)
        finally:
            if db.is_postgresql():
                await db.close_loop_connections()  # which would outlive the test

    def admitted_and_counted() -> tuple[bool, int]:
        result = asyncio.run(admit_one())
        assert result.refusal is None
        return result.allowance.counted, Token.objects.get(pk=issued.token.pk).request_count

    assert [admitted_and_counted() for _ in range(2)] == [(True, 1), (True, 2)]
    token_set_limits(token=issued.token, max_requests=None, actor=operator)
    assert [admitted_and_counted() for _ in range(2)] == [(False, 2), (False, 2)]  # left to the usage records
    token_set_limits(token=issued.token, max_requests=3, actor=operator)
    assert admitted_and_counted() == (True, 3)
    refused = asyncio.run(admit_one())
    assert refused.refusal.code == "request_limit_reached"
    assert Token.objects.get(pk=issued.token.pk).request_count == 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepared", [True, False])
def test_admission_is_prepared_once_per_connection_unless_turned_off(settings, make_project, make_token, prepared):
    """Parsing and planning admission's statement cost the database twice what running it does, so each of the
    event loop's connections prepares it once; behind a pooler that cannot keep prepared statements it is off."""
    settings.PROXY_PREPARED_STATEMENTS = prepared
    settings.PROXY_ADMISSION_CONNECTIONS = 1  # so every admission below runs on the same connection
    issued = make_token(make_project(), max_requests=100)  # counted: the statement's locking part runs

    async def admit_and_look() -> tuple[list, int]:
        results = [await admit_async(secret.digest(issued.plaintext)) for _ in range(3)]
        try:
            cursor = await db.on_loop_connection(
                lambda conn: conn.execute("SELECT statement FROM pg_prepared_statements")
            )
            return results, await cursor.fetchall()
        finally:
            await db.close_loop_connections()

    results, statements = asyncio.run(admit_and_look())
    assert all(result.refusal is None for result in results)
    assert Token.objects.get(pk=issued.token.pk).request_count == 3
    admitting = [text for (text,) in statements if "FOR UPDATE OF t" in text]
    assert len(admitting) == (1 if prepared else 0)
