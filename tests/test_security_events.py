"""Security events: flood-proof counting (also under concurrency), failed admin logins, the read-only admin list."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from llmproxy.security import events as security_events
from llmproxy.security.events import record_security_event
from llmproxy.security.models import SecurityEvent, SecurityEventKind, SecurityEventReason
from tests.conftest import VALID_KEY
from tokens import secret

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/llmproxy/securityevent/"


def unknown_token(client_ip: str = "203.0.113.9", prefix: str = "sk-wt-AAAAAA") -> None:
    record_security_event(
        kind=SecurityEventKind.PROXY_AUTH_FAILED,
        reason=SecurityEventReason.UNKNOWN,
        client_ip=client_ip,
        token_prefix=prefix,
    )


def test_repeated_events_are_counted_in_one_row_keeping_the_last_prefix():
    for prefix in ["sk-wt-AAAAAA", "sk-wt-BBBBBB", "sk-wt-CCCCCC"]:  # an attacker varying made-up tokens
        unknown_token(prefix=prefix)
    unknown_token(client_ip="198.51.100.1")

    event = SecurityEvent.objects.get(client_ip="203.0.113.9")
    assert event.count == 3
    assert event.token_prefix == "sk-wt-CCCCCC"
    assert event.first_seen <= event.last_seen
    assert SecurityEvent.objects.get(client_ip="198.51.100.1").count == 1
    assert SecurityEvent.objects.count() == 2


def test_identity_separates_tokens_projects_reasons_users_and_hours(make_project, make_token, monkeypatch):
    project = make_project()
    first, second = make_token(project).token, make_token(project).token
    ip = "192.0.2.1"
    for token in [first, first, second]:
        record_security_event(kind="proxy_auth_failed", reason="revoked", client_ip=ip, token=token)
    record_security_event(kind="proxy_auth_failed", reason="expired", client_ip=ip, token=first)
    record_security_event(kind="project_inactive", client_ip=ip, token=first)
    record_security_event(kind="management_auth_failed", reason="unknown", client_ip=ip, project=project)
    record_security_event(kind="management_auth_failed", reason="unknown", client_ip=ip, project=project)
    record_security_event(kind="admin_login_failed", client_ip=ip, username="alice")
    record_security_event(kind="admin_login_failed", client_ip=ip, username="bob")
    record_security_event(kind="admin_login_failed", client_ip=ip, username="bob")

    counts = {
        (e.kind, e.reason, e.token_id, e.project_id, e.username): e.count for e in SecurityEvent.objects.order_by("pk")
    }
    assert counts == {
        ("proxy_auth_failed", "revoked", first.pk, project.pk, ""): 2,
        ("proxy_auth_failed", "revoked", second.pk, project.pk, ""): 1,
        ("proxy_auth_failed", "expired", first.pk, project.pk, ""): 1,
        ("project_inactive", "", first.pk, project.pk, ""): 1,
        ("management_auth_failed", "unknown", None, project.pk, ""): 2,
        ("admin_login_failed", "", None, None, "alice"): 1,
        ("admin_login_failed", "", None, None, "bob"): 2,
    }
    assert SecurityEvent.objects.get(token=second).token_prefix == second.prefix

    later = timezone.now() + timedelta(hours=1)
    monkeypatch.setattr(security_events.timezone, "now", lambda: later)
    record_security_event(kind="admin_login_failed", client_ip=ip, username="bob")
    bob = SecurityEvent.objects.filter(username="bob").order_by("hour")
    assert [e.count for e in bob] == [2, 1]
    assert bob[1].last_seen == later


def test_an_unknown_kind_or_reason_is_a_programming_error():
    with pytest.raises(ValueError):
        record_security_event(kind="bogus", client_ip="192.0.2.1")
    with pytest.raises(ValueError):
        record_security_event(kind="proxy_auth_failed", reason="bogus", client_ip="192.0.2.1")


def test_nothing_secret_is_stored(make_project, make_token):
    issued = make_token(make_project())
    record_security_event(
        kind="proxy_auth_failed",
        reason="malformed",
        client_ip="not an address",
        token_prefix=issued.plaintext + "\x00\n",
        username=f"pasted {issued.plaintext} by mistake",
        detail=f"upstream key {VALID_KEY} " + "x" * 500,
    )
    row = SecurityEvent.objects.values().get()
    stored = " ".join(str(v) for v in row.values())
    assert issued.plaintext not in stored and VALID_KEY not in stored
    assert row["token_prefix"] == secret.display_prefix(issued.plaintext)
    assert row["username"] == f"pasted {secret.display_prefix(issued.plaintext)}… by mistake"
    assert len(row["detail"]) == 200
    assert row["client_ip"] == ""


def test_a_database_failure_is_logged_not_raised_and_spares_the_callers_transaction(monkeypatch, make_project, caplog):
    monkeypatch.setattr(security_events, "_upsert_sql", lambda alias, identity: "INSERT INTO no_such_table VALUES (1)")
    monkeypatch.setattr(security_events, "UPSERT_FIELDS", [])
    with transaction.atomic():
        unknown_token()
        project = make_project()  # the surrounding transaction still works
    assert project.pk and not SecurityEvent.objects.exists()
    assert "could not record security event proxy_auth_failed/unknown" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("subject", ["anonymous", "token"])
def test_concurrent_identical_events_make_one_row_with_the_exact_count(subject, make_project, make_token):
    token = make_token(make_project()).token if subject == "token" else None
    threads, per_thread = 12, 10
    barrier = threading.Barrier(threads)
    errors = []

    def attack() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                record_security_event(kind="proxy_auth_failed", reason="revoked", client_ip="203.0.113.50", token=token)
        except Exception as error:  # surfaced below: a thread's failure must fail the test
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=attack) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert not errors
    event = SecurityEvent.objects.get()
    assert event.count == threads * per_thread
    assert event.token_id == (token.pk if token else None)


def test_failed_admin_logins_are_recorded_with_user_name_and_peer_address(client, admin_user):
    attempt = {"username": "mallory", "password": "hunter2-wrong"}
    for _ in range(2):
        response = client.post(
            "/admin/login/", attempt, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.99"
        )
        assert response.status_code == 200  # the form again, with an error
    client.post("/admin/login/", {"username": "operator", "password": "nope"})  # the test client's 127.0.0.1

    mallory = SecurityEvent.objects.get(username="mallory")
    assert (mallory.kind, mallory.client_ip, mallory.count) == ("admin_login_failed", "203.0.113.7", 2)
    assert SecurityEvent.objects.get(username="operator").client_ip == "127.0.0.1"
    stored = " ".join(str(v) for row in SecurityEvent.objects.values() for v in row.values())
    assert "hunter2" not in stored and "198.51.100.99" not in stored

    response = client.post("/admin/login/?next=/admin/", {"username": "operator", "password": "pw"})
    assert response.status_code == 302  # a successful login adds nothing
    assert SecurityEvent.objects.count() == 2


@pytest.fixture
def events(make_project, make_token):
    alpha, beta = make_project("Alpha"), make_project("Beta")
    revoked = make_token(alpha, label="ci runner").token
    record_security_event(kind="proxy_auth_failed", reason="revoked", client_ip="192.0.2.10", token=revoked)
    record_security_event(kind="project_inactive", client_ip="192.0.2.11", project=beta)
    unknown_token(client_ip="192.0.2.12", prefix="sk-wt-Zz9Zz9")
    record_security_event(kind="admin_login_failed", client_ip="192.0.2.13", username="mallory")
    return {"alpha": alpha, "beta": beta, "revoked": revoked}


def listed_ips(response) -> set[str]:
    return {event.client_ip for event in response.context["cl"].result_list}


def test_admin_list_shows_events_with_links(admin_client, events):
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert listed_ips(response) == {"192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13"}
    html = response.content.decode()
    assert reverse("admin:tokens_token_change", args=[events["revoked"].pk]) in html
    assert reverse("admin:projects_project_change", args=[events["beta"].pk]) in html
    assert "sk-wt-Zz9Zz9" in html and "mallory" in html
    assert "Admin login failed" in html and "Revoked token" in html
    assert reverse("admin:llmproxy_securityevent_add") not in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("kind=admin_login_failed", {"192.0.2.13"}),
        ("reason=revoked", {"192.0.2.10"}),
        ("q=192.0.2.12", {"192.0.2.12"}),
        ("q=sk-wt-Zz9", {"192.0.2.12"}),
        ("q=mallo", {"192.0.2.13"}),
    ],
)
def test_admin_list_filters_and_search(admin_client, events, query, expected):
    assert listed_ips(admin_client.get(f"{CHANGELIST}?{query}")) == expected


def test_admin_list_filters_by_project_and_date(admin_client, events):
    beta = events["beta"]
    assert listed_ips(admin_client.get(f"{CHANGELIST}?project__id__exact={beta.pk}")) == {"192.0.2.11"}
    response = admin_client.get(CHANGELIST)
    assert "Alpha" in response.content.decode() and "Beta" in response.content.decode()

    SecurityEvent.objects.filter(client_ip="192.0.2.13").update(last_seen=timezone.now() - timedelta(days=30))
    date_filter = next(spec for spec in response.context["cl"].filter_specs if spec.field_path == "last_seen")
    past_week = next(
        choice for choice in date_filter.choices(response.context["cl"]) if choice["display"] == "Past 7 days"
    )
    assert listed_ips(admin_client.get(CHANGELIST + past_week["query_string"])) == {
        "192.0.2.10",
        "192.0.2.11",
        "192.0.2.12",
    }


def test_admin_list_query_count_does_not_grow_with_rows(
    admin_client, events, make_token, django_assert_max_num_queries
):
    with django_assert_max_num_queries(12) as few:
        admin_client.get(CHANGELIST)
    for i in range(30):
        token = make_token(events["alpha"]).token
        record_security_event(kind="proxy_auth_failed", reason="expired", client_ip=f"198.51.100.{i}", token=token)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(CHANGELIST)
    assert len(response.context["cl"].result_list) == 34


def test_admin_events_are_read_only(admin_client, events):
    event = SecurityEvent.objects.get(username="mallory")
    assert admin_client.get(reverse("admin:llmproxy_securityevent_add")).status_code == 403
    assert admin_client.get(reverse("admin:llmproxy_securityevent_delete", args=[event.pk])).status_code == 403
    page = admin_client.get(reverse("admin:llmproxy_securityevent_change", args=[event.pk]))
    assert page.status_code == 200 and "mallory" in page.content.decode()
    admin_client.post(reverse("admin:llmproxy_securityevent_change", args=[event.pk]), {"username": "someone"})
    event.refresh_from_db()
    assert event.username == "mallory"
    response = admin_client.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    )
    assert response.status_code in (200, 302) and SecurityEvent.objects.filter(pk=event.pk).exists()
