"""Admin login throttling through the real login page: lockouts per user name and per address, growing on repeat,
refused before any password is hashed; exact under concurrency; the per-worker bound on password hashing."""

import io
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.utils import timezone

from llmproxy.security import throttle
from llmproxy.security.models import LoginThrottle, SecurityEvent, SecurityEventKind
from tests.test_settings import run_check

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
HOME = "/admin/"
RIGHT = "correct horse battery"
WRONG_LOGIN = "Please enter the correct username and password"
BUSY = "Too many login attempts, try again in a moment."


def locked_message(wait: str) -> str:
    return f"Too many failed login attempts. Try again in {wait}."


class CountingHasher(MD5PasswordHasher):
    """A fast hasher that counts every password it hashes; `hold` makes a check wait until it is set."""

    algorithm = "counting_md5"
    calls = 0
    started: threading.Event | None = None
    hold: threading.Event | None = None

    def encode(self, password: str, salt: str) -> str:
        type(self).calls += 1
        if type(self).hold is not None:
            type(self).started.set()
            type(self).hold.wait(10)
        return super().encode(password, salt)


@pytest.fixture
def limits(settings, monkeypatch):
    """The documented defaults, a counting hasher, and a fresh hashing bound generous enough not to interfere."""
    settings.PASSWORD_HASHERS = ["tests.test_login_throttle.CountingHasher"]
    settings.LOGIN_MAX_FAILURES_PER_USER = 10
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 50
    settings.LOGIN_FAILURE_WINDOW_MINUTES = 15
    settings.LOGIN_LOCKOUT_MINUTES = 15
    settings.LOGIN_LOCKOUT_MAX_MINUTES = 24 * 60
    settings.LOGIN_LOCKOUT_REPEAT_HOURS = 24
    settings.LOGIN_PASSWORD_CHECKS_BURST = 10_000
    settings.LOGIN_PASSWORD_CHECKS_PER_MINUTE = 60_000
    settings.LOGIN_REFUSAL_DELAY_SECONDS = 0
    monkeypatch.setattr(throttle, "password_checks", throttle.PasswordCheckGate())
    monkeypatch.setattr(CountingHasher, "calls", 0)
    return settings


@pytest.fixture
def alice(limits, django_user_model, monkeypatch):
    user = django_user_model.objects.create_superuser(username="alice", email="alice@example.com", password=RIGHT)
    monkeypatch.setattr(CountingHasher, "calls", 0)
    return user


def login(client, username: str, password: str, ip: str = "198.51.100.20") -> str:
    """Post the login form; "in" for a login, else the page's text."""
    response = client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip)
    if response.status_code == 302:
        client.logout()
        return "in"
    assert response.status_code == 200
    return response.content.decode()


def fail(client, username: str, times: int, ip: str = "198.51.100.20") -> None:
    for _ in range(times):
        assert WRONG_LOGIN in login(client, username, "wrong", ip)


def expire_lock() -> None:
    """Move every lock (and its window) into the past, as if its time had passed."""
    past = timezone.now() - timedelta(seconds=1)
    LoginThrottle.objects.filter(locked_until__isnull=False).update(locked_until=past, window_start=past)


def lock_minutes(username: str) -> float:
    row = LoginThrottle.objects.get(scope="user", key=username)
    return (row.locked_until - timezone.now()).total_seconds() / 60


@pytest.mark.parametrize("username", ["alice", "nobody"])
def test_ten_failures_lock_the_user_name_and_then_even_the_right_password_is_refused_unhashed(client, alice, username):
    fail(client, username, 10)
    hashed = CountingHasher.calls

    for ip in ["198.51.100.20", "192.0.2.99"]:  # the user name is locked, from any address
        page = login(client, username, RIGHT, ip)
        assert locked_message("15 minutes") in page and WRONG_LOGIN not in page
    assert CountingHasher.calls == hashed  # refused before any password was hashed
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.ADMIN_LOGIN_FAILED, username=username).get().count == 10


def test_another_user_from_the_same_address_is_locked_only_when_the_address_reaches_its_limit(
    client, alice, django_user_model
):
    django_user_model.objects.create_user(username="bob", password=RIGHT, is_staff=True)
    fail(client, "alice", 10)
    for i in range(39):
        fail(client, f"guess-{i}", 1)
    assert login(client, "bob", RIGHT) == "in"  # 49 failures from this address: not locked yet
    fail(client, "guess-last", 1)
    hashed = CountingHasher.calls

    assert locked_message("15 minutes") in login(client, "bob", RIGHT)
    assert locked_message("15 minutes") in login(client, "someone-new", "wrong")
    assert CountingHasher.calls == hashed
    assert login(client, "bob", RIGHT, ip="192.0.2.1") == "in"  # bob himself is not locked
    lockouts = SecurityEvent.objects.filter(kind=SecurityEventKind.ADMIN_LOGIN_LOCKED)
    assert sorted(lockouts.values_list("username", "client_ip")) == [
        ("", "198.51.100.20"),
        ("alice", "198.51.100.20"),
    ]
    assert lockouts.get(username="").detail == "address 198.51.100.20 locked for 15 minutes (lockout 1 in a row)"


def test_an_ipv6_client_counts_as_its_64(client, alice, limits):
    limits.LOGIN_MAX_FAILURES_PER_ADDRESS = 3
    for i, ip in enumerate(["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::abcd"]):
        fail(client, f"guess-{i}", 1, ip=ip)
    assert locked_message("15 minutes") in login(client, "alice", RIGHT, ip="2001:db8:1:2::77")
    assert login(client, "alice", RIGHT, ip="2001:db8:1:3::1") == "in"


def test_the_lock_expires(client, alice):
    fail(client, "alice", 10)
    assert 14.9 < lock_minutes("alice") <= 15
    assert locked_message("15 minutes") in login(client, "alice", RIGHT)
    LoginThrottle.objects.filter(key="alice").update(locked_until=timezone.now() + timedelta(seconds=61))
    assert locked_message("2 minutes") in login(client, "alice", RIGHT)
    expire_lock()
    assert login(client, "alice", RIGHT) == "in"


def test_a_repeat_lockout_lasts_twice_as_long_up_to_the_cap_and_a_quiet_day_starts_again(client, alice, limits):
    limits.LOGIN_LOCKOUT_MAX_MINUTES = 100
    waits = []
    for _ in range(4):
        fail(client, "alice", 10)
        waits.append(round(lock_minutes("alice")))
        page = login(client, "alice", RIGHT)
        expire_lock()
    assert waits == [15, 30, 60, 100]
    assert locked_message("1 hour 40 minutes") in page

    LoginThrottle.objects.update(locked_until=timezone.now() - timedelta(hours=24, seconds=1))
    fail(client, "alice", 10)
    assert round(lock_minutes("alice")) == 15


def test_a_lockout_is_one_security_event_and_shows_on_the_dashboard(alice, admin_client):
    attacker = Client()
    fail(attacker, "alice", 10)
    for _ in range(3):
        login(attacker, "alice", RIGHT)  # refused while locked: no more failures, no more lockouts

    event = SecurityEvent.objects.get(kind=SecurityEventKind.ADMIN_LOGIN_LOCKED)
    assert (event.username, event.client_ip, event.count) == ("alice", "198.51.100.20", 1)
    assert event.detail == "user name locked for 15 minutes (lockout 1 in a row)"
    assert SecurityEvent.objects.get(kind=SecurityEventKind.ADMIN_LOGIN_FAILED).count == 10

    text = admin_client.get(HOME).content.decode()
    stat = text.split('id="stat-login-lockouts"', 1)[1].split("</div>", 1)[0]
    link = "/admin/llmproxy/securityevent/?kind__exact=admin_login_locked"
    assert f'href="{link}">1</a>' in stat and "Admin login lockouts within 24 h" in stat
    listed = admin_client.get(link).context["cl"].result_list
    assert [e.pk for e in listed] == [event.pk]


def test_a_refused_attempt_is_answered_after_the_refusal_delay_and_a_checked_one_is_not(client, alice, limits):
    limits.LOGIN_REFUSAL_DELAY_SECONDS = 0.5
    fail(client, "alice", 10)
    started = time.monotonic()
    assert locked_message("15 minutes") in login(client, "alice", RIGHT)
    refused = time.monotonic() - started
    started = time.monotonic()
    fail(client, "bob", 1)
    checked = time.monotonic() - started
    assert refused >= 0.5 > checked


def test_a_success_clears_the_user_names_failures_but_not_the_addresss(client, alice):
    fail(client, "alice", 9)
    assert login(client, "alice", RIGHT) == "in"
    fail(client, "alice", 9)
    assert login(client, "alice", RIGHT) == "in"
    counts = dict(LoginThrottle.objects.values_list("scope", "failures"))
    assert counts == {"user": 0, "address": 18}


@pytest.mark.django_db(transaction=True)
def test_concurrent_failures_are_counted_exactly_and_lock_once(limits):
    per_thread = 25
    limits.LOGIN_MAX_FAILURES_PER_USER = 2 * per_thread
    limits.LOGIN_MAX_FAILURES_PER_ADDRESS = 1000
    attempt = throttle.Attempt(username="alice", client_ip="203.0.113.5")
    barrier = threading.Barrier(2)
    errors = []

    def attack() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                throttle.record_failure(attempt)
        except Exception as error:  # surfaced below: a thread's failure must fail the test
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=attack) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    user, address = LoginThrottle.objects.get(scope="user"), LoginThrottle.objects.get(scope="address")
    assert (user.failures, user.lockouts) == (0, 1) and user.locked_until > timezone.now()
    assert (address.failures, address.locked_until) == (2 * per_thread, None)
    assert SecurityEvent.objects.get(kind=SecurityEventKind.ADMIN_LOGIN_LOCKED).count == 1


def test_the_hashing_bound_refuses_a_burst_without_hashing(client, alice, limits, monkeypatch):
    limits.LOGIN_PASSWORD_CHECKS_BURST = 3
    limits.LOGIN_PASSWORD_CHECKS_PER_MINUTE = 0.001
    monkeypatch.setattr(throttle, "password_checks", throttle.PasswordCheckGate())
    pages = [login(client, f"guess-{i}", "wrong", ip=f"192.0.2.{i}") for i in range(6)]
    pages.append(login(client, "alice", RIGHT))

    assert [WRONG_LOGIN in page for page in pages] == [True] * 3 + [False] * 4
    assert all(BUSY in page for page in pages[3:])
    assert CountingHasher.calls == 3
    assert sum(LoginThrottle.objects.filter(scope="user").values_list("failures", flat=True)) == 3


@pytest.mark.django_db(transaction=True)
def test_the_hashing_bound_checks_one_password_at_a_time(client, alice, monkeypatch):
    monkeypatch.setattr(CountingHasher, "started", threading.Event())
    monkeypatch.setattr(CountingHasher, "hold", threading.Event())
    first: list[str] = []

    def slow_login() -> None:
        try:
            first.append(login(Client(), "nobody", "wrong"))
        finally:
            connection.close()

    slow = threading.Thread(target=slow_login)
    slow.start()
    try:
        assert CountingHasher.started.wait(10)
        assert BUSY in login(client, "alice", RIGHT, ip="192.0.2.1")
        assert CountingHasher.calls == 1
    finally:
        CountingHasher.hold.set()
        slow.join(10)
    assert WRONG_LOGIN in first[0]
    assert login(client, "alice", RIGHT, ip="192.0.2.1") == "in"


def test_purge_usage_deletes_throttles_that_no_longer_matter(client, alice):
    fail(client, "alice", 10)  # locked: kept
    fail(client, "bob", 2, ip="192.0.2.1")  # counting: kept
    fail(client, "carol", 1, ip="192.0.2.2")
    now = timezone.now()
    LoginThrottle.objects.filter(key__in=["carol", "192.0.2.2"]).update(window_start=now - timedelta(minutes=16))
    LoginThrottle.objects.filter(key="192.0.2.1").update(
        window_start=now - timedelta(minutes=16),
        locked_until=now - timedelta(hours=23),  # a series may still grow
    )
    out = io.StringIO()
    call_command("purge_usage", stdout=out)

    assert "and 2 login throttles no longer needed" in out.getvalue()
    assert sorted(LoginThrottle.objects.values_list("key", flat=True)) == ["192.0.2.1", "198.51.100.20", "alice", "bob"]


def test_an_operator_can_lift_a_lockout_from_the_command_line(client, alice):
    fail(client, "alice", 10)
    out = io.StringIO()
    call_command("unlock_login", "--user", "alice", stdout=out)
    assert out.getvalue() == "cleared 1 login throttles\n"
    assert login(client, "alice", RIGHT) == "in"

    for i in range(50):
        fail(client, f"guess-{i}", 1, ip="2001:db8::1")
    assert locked_message("15 minutes") in login(client, "alice", RIGHT, ip="2001:db8::2")
    call_command("unlock_login", "--address", "2001:db8::3", stdout=io.StringIO())
    assert login(client, "alice", RIGHT, ip="2001:db8::2") == "in"
    with pytest.raises(CommandError, match="name a --user"):
        call_command("unlock_login")


@pytest.mark.parametrize(
    "env",
    [
        {"LOGIN_MAX_FAILURES_PER_USER": "0"},
        {"LOGIN_LOCKOUT_MAX_MINUTES": "5"},
        {"LOGIN_PASSWORD_CHECKS_PER_MINUTE": "0"},
    ],
)
def test_nonsense_limits_refuse_to_start(env):
    result = run_check(DEBUG="1", **env)
    assert result.returncode != 0 and "refusing to start: the LOGIN_* limits" in result.stderr
