import os
from datetime import timedelta

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import override_settings

from llmproxy.audit import Actor

pytest_plugins = ["tests.live"]

VALID_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"
OTHER_KEY = "sk-proj-ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxw"


def require_part(available: bool, reason: str) -> None:
    """Skip when a part a fresh machine may lack is missing; under CI (REQUIRE_ALL_PARTS) fail instead."""
    if available:
        return
    if os.environ.get("REQUIRE_ALL_PARTS"):
        pytest.fail(f"required part missing: {reason}")
    pytest.skip(reason)


class QuickPasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2 at one iteration: a hash costs microseconds instead of 0.4 s of CPU, which the operators every
    test makes spent more than half of the suite's time on. Its hashes are Django's own format (the iterations are in
    them), so a server started by a test, with the production hashers, checks them too."""

    iterations = 1


@pytest.fixture(autouse=True, scope="session")
def quick_password_hashing():
    with override_settings(PASSWORD_HASHERS=["tests.conftest.QuickPasswordHasher"]):
        yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, which drops the test database at the end: first the sessions the tests left on it on
    PostgreSQL (the proxy's database threads, Django's pool) are ended, as PostgreSQL refuses to drop a database
    anyone is connected to."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser(username="operator", email="op@example.com", password="pw")


@pytest.fixture
def operator(admin_user):
    return Actor(via="admin", user=admin_user, remote_addr="10.1.2.3")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def make_project(operator):
    from projects.services import project_create

    counter = iter(range(1, 10_000))

    def make(name: str | None = None, api_key: str = VALID_KEY, active: bool = True, **options):
        """`options`: the upstream, limits and policy lists project_create takes."""
        from tokens.services import project_set_active

        project = project_create(name=name or f"Project {next(counter)}", api_key=api_key, actor=operator, **options)
        if not active:
            project = project_set_active(active=False, project=project, actor=operator).project
        return project

    return make


@pytest.fixture
def make_token(operator):
    from tokens.services import token_generate

    def make(project, hours: float = 24, label: str = "", **options):
        """`options`: the limits and policy lists token_generate takes."""
        return token_generate(project=project, duration=timedelta(hours=hours), label=label, actor=operator, **options)

    return make
