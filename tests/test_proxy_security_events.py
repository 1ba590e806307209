"""Refused proxy credentials become security events (by display prefix and client address, never the token),
counted in one row when repeated, and written after the refusal has gone out."""

import time
from datetime import timedelta

import httpx
import pytest
from django.db.models import Sum
from django.utils import timezone

from llmproxy.security.models import SecurityEvent
from tokens import secret
from tokens.models import Token
from tokens.services import project_set_active, token_revoke, token_set_limits

pytestmark = pytest.mark.usefixtures("live_db")

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def post(server, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{server.base_url}/chat/completions", json=CHAT, headers=headers, timeout=5)


def counted_events(expected: int, timeout: float = 5) -> list[SecurityEvent]:
    """The security events, once their counts add up to `expected` (they are written just after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        total = SecurityEvent.objects.aggregate(total=Sum("count"))["total"] or 0
        if total >= expected or time.monotonic() > deadline:
            return list(SecurityEvent.objects.order_by("pk"))
        time.sleep(0.05)


def test_a_missing_token_is_counted_in_one_row_per_address(proxy_server, upstream):
    for _ in range(3):
        assert post(proxy_server, None).status_code == 401

    (event,) = counted_events(3)
    assert (event.kind, event.reason, event.client_ip, event.count) == ("proxy_auth_failed", "missing", "127.0.0.1", 3)
    assert event.token_id is None and event.project_id is None and event.token_prefix == ""


@pytest.mark.parametrize(
    ("presented", "prefix"),
    [("sk-wt-short", "sk-wt-short"), ("sk-proj-" + "a" * 40, ""), ("x" * 40, "")],
)
def test_a_malformed_token_keeps_at_most_a_display_prefix(proxy_server, upstream, presented, prefix):
    assert post(proxy_server, presented).json()["error"]["code"] == "invalid_token_format"

    (event,) = counted_events(1)
    assert (event.kind, event.reason, event.token_prefix) == ("proxy_auth_failed", "malformed", prefix)


def test_unknown_tokens_are_one_row_whatever_made_up_tokens_are_tried(proxy_server, upstream):
    made_up = ["sk-wt-" + letter * 32 for letter in "ABC"]
    for token in made_up:
        assert post(proxy_server, token).json()["error"]["code"] == "invalid_token"

    (event,) = counted_events(3)
    assert (event.kind, event.reason, event.count) == ("proxy_auth_failed", "unknown", 3)
    assert event.token_prefix in {secret.display_prefix(t) for t in made_up}
    assert event.token_id is None and event.project_id is None


def test_revoked_and_expired_tokens_name_the_token_and_its_project(
    proxy_server, upstream, make_project, make_token, operator
):
    project = make_project()
    revoked, expired = make_token(project), make_token(project)
    token_revoke(token=revoked.token, actor=operator)
    Token.objects.filter(pk=expired.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert post(proxy_server, revoked.plaintext).json()["error"]["code"] == "token_revoked"
    assert post(proxy_server, revoked.plaintext).json()["error"]["code"] == "token_revoked"
    assert post(proxy_server, expired.plaintext).json()["error"]["code"] == "token_expired"

    events = {event.reason: event for event in counted_events(3)}
    assert set(events) == {"revoked", "expired"}
    for reason, issued, count in [("revoked", revoked, 2), ("expired", expired, 1)]:
        event = events[reason]
        assert event.kind == "proxy_auth_failed" and event.count == count
        assert (event.token_id, event.project_id) == (issued.token.pk, project.pk)
        assert event.token_prefix == issued.token.prefix and event.client_ip == "127.0.0.1"


def test_an_inactive_project_is_its_own_kind(proxy_server, upstream, make_project, make_token, operator):
    project = make_project()
    issued = make_token(project)
    project_set_active(active=False, project=project, actor=operator)

    assert post(proxy_server, issued.plaintext).status_code == 403
    assert post(proxy_server, issued.plaintext).status_code == 403

    (event,) = counted_events(2)
    assert (event.kind, event.reason, event.count) == ("project_inactive", "", 2)
    assert (event.token_id, event.project_id) == (issued.token.pk, project.pk)


def test_admitted_requests_and_other_refusals_are_no_security_events(
    proxy_server, upstream, make_project, make_token, operator
):
    project = make_project()
    issued = make_token(project)
    assert post(proxy_server, issued.plaintext).status_code == 200
    token_set_limits(token=issued.token, max_requests=1, actor=operator)
    assert post(proxy_server, issued.plaintext).status_code == 429
    assert httpx.get(f"{proxy_server.base_url}/not-served", timeout=5).status_code == 404
    assert post(proxy_server, None).status_code == 401  # a marker: once it is counted, the others were written

    (event,) = counted_events(1)
    assert event.reason == "missing"


def test_a_burst_of_refusals_is_one_row(proxy_server, upstream):
    """The usage writer counts a batch's identical events with one upsert; the total stays exact."""
    with httpx.Client(base_url=proxy_server.base_url, timeout=5) as client:
        for _ in range(50):
            client.post("/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-wt-" + "Z" * 32})

    (event,) = counted_events(50)
    assert event.count == 50 and event.token_prefix == "sk-wt-ZZZZZZ"
