"""`manage.py import_llm_proxy`: a Go LLM Proxy database, built from its schema (a SQLite file, an older SQLite file,
and a PostgreSQL database made and dropped here), imported; then its tokens used through the real server with the
official SDK, unchanged: a limited one continues from its count, a revoked one is refused, its project's key (stored
encrypted there) reaches the upstream. A second run changes nothing; rows that cannot be imported are listed with
why, and nothing printed ever holds a key or a token."""

import base64
import io
import itertools
import os
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import openai
import psycopg
import pytest
from auditlog.models import LogEntry
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from importer.models import Import
from projects.models import Project
from tests import original_llm_proxy as orig
from tests.conftest import require_part
from tests.live import wait_for_usage
from tokens.models import Token

KEY_ENV = "ORIGINAL_LLM_PROXY_ENCRYPTION_KEY"
OTHER_ENCRYPTION_KEY = base64.b64encode(bytes(32)).decode()
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
_databases = itertools.count(1)


@pytest.fixture(autouse=True)
def original_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, orig.ENCRYPTION_KEY)


@pytest.fixture
def original() -> orig.Original:
    return orig.sample()


@pytest.fixture
def sqlite_source(tmp_path, original) -> str:
    path = tmp_path / "llm-proxy.db"
    orig.write_sqlite(path, original)
    return str(path)


def postgres_server_url(database: str = "postgres") -> str:
    """The PostgreSQL server of the test database when the suite runs on one, else the local one CI starts."""
    if connection.vendor == "postgresql":
        s = connection.settings_dict
        password = f":{s['PASSWORD']}" if s["PASSWORD"] else ""
        return f"postgres://{s['USER']}{password}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{database}"
    return f"postgres://postgres@127.0.0.1:5432/{database}"


@pytest.fixture
def postgres_source(original):
    """The original's tables in a database of their own on the PostgreSQL server, dropped afterwards."""
    name = f"orig_h_import_{os.getpid()}_{next(_databases)}"
    try:
        admin = psycopg.connect(postgres_server_url(), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        require_part(False, f"a PostgreSQL server for the original's PostgreSQL database ({exc})")
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with psycopg.connect(postgres_server_url(name), autocommit=True) as source:
                orig.write_postgres(source, original)
            yield postgres_server_url(name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def command(**options) -> None:
    options.setdefault("source_encryption_key_env", KEY_ENV)
    call_command("import_llm_proxy", stdout=io.StringIO(), stderr=io.StringIO(), **options)


def run_import(*, expect_problems: bool = False, **options) -> str:
    """The command's output (stdout, then stderr); it must fail exactly when rows cannot be imported."""
    out, err = io.StringIO(), io.StringIO()
    options.setdefault("source_encryption_key_env", KEY_ENV)
    try:
        call_command("import_llm_proxy", stdout=out, stderr=err, **options)
    except CommandError as error:
        assert expect_problems, f"{error}\n{out.getvalue()}\n{err.getvalue()}"
        return out.getvalue() + err.getvalue() + str(error)
    assert not expect_problems, out.getvalue()
    return out.getvalue() + err.getvalue()


def assert_no_secret(output: str, original: orig.Original) -> None:
    for secret in [orig.OPENAI_KEY, orig.ENCRYPTED_KEY, orig.RETIRED_KEY, orig.ENCRYPTION_KEY]:
        assert secret not in output
    for token in original.plaintext.values():
        assert token not in output and token[:12] not in output
    for row in original.tokens:
        assert row["token"] not in output


# --- through the real server ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_imported_tokens_keep_working_unchanged_through_the_sdk(
    kind, request, live_db, original, proxy_server, upstream, openai_client
):
    source = request.getfixturevalue(f"{kind}_source")
    output = run_import(**({"sqlite": source} if kind == "sqlite" else {"database_url": source}))
    assert "projects: 3 imported, 0 already here, 0 not imported" in output
    assert "tokens: 6 imported, 0 already here, 0 not imported" in output
    assert "audit events: 4 imported, 0 already here, 0 not imported" in output
    assert_no_secret(output, original)
    tokens = original.plaintext

    # The limited token had 4 of its 5 requests: one more is admitted, with the project's key (stored plain there).
    limited = openai_client(tokens["limited"])
    assert limited.chat.completions.create(**CHAT).choices[0].message.content
    assert upstream.last("/chat/completions").credentials == {"authorization": orig.OPENAI_KEY}
    with pytest.raises(openai.RateLimitError) as raised:
        limited.chat.completions.create(**CHAT)
    assert raised.value.code == "request_limit_reached"
    assert Token.objects.get(pk=original.ids["limited"]).request_count == 5

    # Stored as its SHA-256 there, under a project whose key was encrypted: the key reaches the upstream decrypted.
    openai_client(tokens["hashed"]).chat.completions.create(**CHAT)
    assert upstream.last("/chat/completions").credentials == {"authorization": orig.ENCRYPTED_KEY}
    openai_client(tokens["never expires"]).models.list()
    assert upstream.requests[-1].credentials == {"authorization": orig.ENCRYPTED_KEY}
    # In x-api-key, as Anthropic's SDKs send it, it is taken too (and never forwarded).
    assert httpx.get(f"{proxy_server.base_url}/models", headers={"x-api-key": tokens["hashed"]}).status_code == 200

    for name, exception, code in [
        ("revoked", openai.AuthenticationError, "token_revoked"),
        ("expired", openai.AuthenticationError, "token_expired"),
        ("of retired", openai.PermissionDeniedError, "project_inactive"),
    ]:
        with pytest.raises(exception) as raised:
            openai_client(tokens[name]).chat.completions.create(**CHAT)
        assert raised.value.code == code, name
    # The original's shape is taken only where such a token was imported.
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(orig.original_token()).chat.completions.create(**CHAT)
    assert raised.value.code == "invalid_token_format"

    records = wait_for_usage(8, token_prefix__startswith="sk-")
    assert {r.token_prefix for r in records} >= {tokens["limited"][:9], tokens["hashed"][:9]}
    assert all(len(r.token_prefix) <= 9 for r in records)  # `sk-` and six: the rest is never recorded

    # A second run changes nothing, and says so.
    before = (Project.objects.count(), Token.objects.count(), LogEntry.objects.count(), Import.objects.count())
    output = run_import(**({"sqlite": source} if kind == "sqlite" else {"database_url": source}))
    assert "Nothing to import: every row is here already." in output
    assert "projects: 0 imported, 3 already here" in output and "tokens: 0 imported, 6 already here" in output
    assert "audit events: 0 imported, 4 already here" in output
    assert (Project.objects.count(), Token.objects.count(), LogEntry.objects.count(), Import.objects.count()) == before
    assert Token.objects.get(pk=original.ids["limited"]).request_count == 5  # what happened here is kept


# --- what is carried over ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_projects_tokens_and_audit_rows_are_carried_over_as_they_were(
    sqlite_source, original, admin_client, client, settings
):
    run_import(sqlite=sqlite_source)

    rows = {row["name"]: row for row in original.projects}
    for name, key in [("Web app", orig.OPENAI_KEY), ("Batch jobs", orig.ENCRYPTED_KEY), ("Retired", orig.RETIRED_KEY)]:
        project, row = Project.objects.get(pk=rows[name]["id"]), rows[name]
        assert (project.name, project.is_active, project.api_key) == (name, row["is_active"], key)
        assert project.deactivated_at == row["deactivated_at"]
        assert project.created_at == row["created_at"] and project.updated_at == row["updated_at"]
        assert project.upstream_url == "" and project.upstream_auth == "bearer"
        assert project.api_key_ciphertext != key  # encrypted our way

    by_name = {name: Token.objects.get(pk=original.ids[name]) for name in original.plaintext}
    rows = {row["id"]: row for row in original.tokens}
    for name, token in by_name.items():
        row = rows[str(token.pk)]
        assert token.imported and token.project_id == uuid.UUID(row["project_id"])
        assert token.created_at == row["created_at"] and token.created_by_label == "LLM Proxy import"
        assert token.digest == orig.lookup_key(original.plaintext[name])
    limited = by_name["limited"]
    assert (limited.max_requests, limited.request_count, limited.cache_hit_count) == (5, 4, 7)
    assert limited.last_used_at == rows[str(limited.pk)]["last_used_at"]
    assert limited.prefix == original.plaintext["limited"][:9]  # `sk-` and six characters, as ours show six
    assert by_name["hashed"].prefix == "sk-"  # only its hash was there
    assert by_name["hashed"].max_requests is None  # its 0 meant unlimited
    assert by_name["revoked"].status == "revoked" and by_name["revoked"].revoked_by_label == "LLM Proxy import"
    assert by_name["expired"].status == "expired" and by_name["of retired"].blocked_by_project
    longest = timezone.now() + timedelta(hours=django_settings.TOKEN_MAX_DURATION_HOURS)
    assert abs(by_name["never expires"].expires_at - longest) < timedelta(minutes=1)

    # Its audit events, in the history: who, what, when, with what outcome; one entry more, for the import.
    imported = LogEntry.objects.filter(additional_data__via="import").order_by("timestamp")
    events = {e["id"]: e for e in original.events}
    assert imported.count() == 4
    for entry in imported:
        event = events[entry.additional_data["llm_proxy_event_id"]]
        assert entry.timestamp == event["timestamp"] and entry.actor_email == "LLM Proxy: management_api"
        assert entry.changes["original action"] == ["", event["action"]]
        assert entry.changes["outcome"] == ["", event["outcome"]]
        assert entry.additional_data["original"]["request_id"] == event["request_id"]
    denied = next(e for e in imported if e.changes["original action"][1] == "project.delete")
    assert denied.action == LogEntry.Action.DELETE and denied.object_pk == original.ids["Retired"]
    assert denied.changes["reason"] == ["", "project deletion is not permitted"]
    assert denied.remote_addr == "203.0.113.7"
    unattached = next(e for e in imported if e.changes["original action"][1] == "audit.list")
    assert unattached.content_type.model == "import" and unattached.remote_addr is None
    assert unattached.changes["client address"] == ["", "not-an-address"]  # the original trusted any header

    record = Import.objects.get()
    assert (record.projects, record.tokens, record.audit_events, record.not_imported) == (3, 6, 4, 0)
    own = LogEntry.objects.exclude(additional_data__via="import")
    assert own.count() == 1 and own.get().object_pk == str(record.pk) and own.get().action == LogEntry.Action.CREATE
    assert own.get().actor_email.startswith("command line")

    history = admin_client.get(reverse("admin:projects_project_history", args=[original.ids["Web app"]]))
    assert "token.revoke" in history.content.decode() and "project.create" in history.content.decode()
    audit_log = admin_client.get(reverse("admin:auditlog_logentry_changelist"))
    assert audit_log.status_code == 200 and "Original action" in audit_log.content.decode()
    entry = admin_client.get(reverse("admin:auditlog_logentry_change", args=[unattached.pk])).content.decode()
    assert "audit.list" in entry and "not-an-address" in entry and "LLM Proxy: management_api" in entry
    settings.MANAGEMENT_TOKEN = "import-test-management-token"
    listed = client.get(
        "/manage/audit",
        {"project_id": original.ids["Web app"]},
        HTTP_AUTHORIZATION="Bearer import-test-management-token",
    ).json()["events"]
    assert [(e["via"], e["actor"], e["changes"]["original action"][1]) for e in listed] == [
        ("import", "LLM Proxy: management_api", "project.create"),  # newest first: the original's own times
        ("import", "LLM Proxy: management_api", "token.revoke"),
    ]


@pytest.mark.django_db
def test_admin_marks_imported_tokens_and_suggests_rotating_them(sqlite_source, original, admin_client, make_project):
    run_import(sqlite=sqlite_source)
    token = Token.objects.get(pk=original.ids["limited"])

    page = admin_client.get(reverse("admin:tokens_token_change", args=[token.pk])).content.decode()
    assert "token-imported" in page and "Rotate it" in page
    assert f"{reverse('admin:tokens_token_add')}?project={token.project_id}" in page
    assert original.plaintext["limited"] not in page and original.plaintext["limited"][:9] in page
    listing = admin_client.get(reverse("admin:tokens_token_changelist")).content.decode()
    assert listing.count('class="badge badge-muted token-imported"') == 6
    found = admin_client.get(reverse("admin:tokens_token_changelist"), {"q": original.plaintext["limited"]})
    assert list(found.context["cl"].result_list) == [token]  # a whole pasted token finds it, as ours do


@pytest.mark.django_db
def test_dry_run_says_what_would_be_imported_and_writes_nothing(sqlite_source, original):
    output = run_import(sqlite=sqlite_source, dry_run=True)

    assert "(dry run: nothing is written)" in output and "projects: 3 to import" in output
    assert "tokens: 6 to import" in output and "audit events: 4 to import" in output
    assert "1 token(s) never expired there" in output and "1 inactive project(s)" in output
    for model in (Project, Token, LogEntry, Import):
        assert not model.objects.exists(), model.__name__
    assert_no_secret(output, original)


@pytest.mark.django_db
def test_rows_that_cannot_be_imported_are_listed_with_why_and_the_rest_is_imported(
    tmp_path, original, make_project, settings
):
    original.project("Wrong key", orig.encrypt("sk-proj-other-0123456789abcdef", key=OTHER_ENCRYPTION_KEY))
    original.project("Mistral", "mistral-key-without-sk")  # an upstream key of another provider
    original.project("Taken", orig.OPENAI_KEY)
    make_project(name="taken")  # names are unique here regardless of case
    original.token("of wrong key", "Wrong key")
    original.token("of mistral", "Mistral")
    original.token("dangling", "Web app", project_id="4b1f0c0e-0000-4000-8000-000000000000")
    original.tokens.append({**original.tokens[0], "id": str(uuid.uuid4()), "token": "not-a-token-of-any-shape"})
    path = tmp_path / "llm-proxy.db"
    orig.write_sqlite(path, original)  # the original's SQLite runs without foreign keys unless asked

    output = run_import(sqlite=str(path), expect_problems=True)

    ids = original.ids
    assert f"project {ids['Wrong key']}: its upstream key cannot be decrypted with the given ENCRYPTION_KEY" in output
    assert f"project {ids['Mistral']}: its upstream key does not fit the key rule of its upstream here" in output
    assert "give --upstream-url for the upstream it was used with" in output
    assert f"project {ids['Taken']}: its name 'Taken' is taken here" in output
    assert f"token {ids['of wrong key']}: its project {ids['Wrong key']} was not imported" in output
    assert f"token {ids['dangling']}: dangling: its project 4b1f0c0e-0000-4000-8000-000000000000 is not in" in output
    assert "its token is neither the original's shape (sk- and 22 characters) nor its SHA-256" in output
    assert "7 row(s) could not be imported" in output
    assert_no_secret(output, original)
    assert "mistral-key-without-sk" not in output
    assert Project.objects.count() == 4 and Token.objects.count() == 6  # the sample's, and "taken"
    assert Import.objects.get().not_imported == 7

    # Mended: the other provider's key fits once its upstream is named; a second run imports just what was left.
    settings.UPSTREAM_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.UPSTREAM_ALLOW_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    output = run_import(sqlite=str(path), upstream_url="http://127.0.0.1:8001/v1", expect_problems=True)
    assert "projects: 1 imported, 3 already here, 2 not imported" in output
    assert "tokens: 1 imported, 6 already here, 3 not imported" in output
    project = Project.objects.get(pk=ids["Mistral"])
    assert (project.upstream_url, project.api_key) == ("http://127.0.0.1:8001/v1", "mistral-key-without-sk")
    assert Token.objects.filter(pk=ids["of mistral"], imported=True).exists()
    assert Project.objects.get(pk=ids["Web app"]).upstream_url == ""  # what was here already is left alone


@pytest.mark.django_db
def test_an_older_original_database_imports_too(tmp_path, original):
    """Before its token IDs and its column rename: `openai_api_key`, the token itself the key, no cache counts."""
    path = tmp_path / "old.db"
    orig.write_sqlite(path, original, schema=orig.SQLITE_OLD_SCHEMA)

    output = run_import(sqlite=str(path))

    assert "projects: 3 imported" in output and "tokens: 6 imported" in output and "audit events: 0 imported" in output
    token = Token.objects.get(digest=orig.lookup_key(original.plaintext["limited"]))
    assert token.pk != uuid.UUID(original.ids["limited"]) and token.request_count == 4  # an ID is made for it
    assert Project.objects.get(pk=original.ids["Batch jobs"]).api_key == orig.ENCRYPTED_KEY
    assert "Nothing to import" in run_import(sqlite=str(path))  # the made-up IDs are the same each run
    assert Token.objects.count() == 6


@pytest.mark.django_db
def test_the_original_encryption_key_comes_from_the_environment_or_a_file_never_an_argument(
    sqlite_source, tmp_path, monkeypatch
):
    with pytest.raises(CommandError, match="unrecognized arguments|No such option|--source-encryption-key"):
        call_command("import_llm_proxy", "--sqlite", sqlite_source, "--source-encryption-key", orig.ENCRYPTION_KEY)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CommandError, match=f"the environment variable {KEY_ENV} is not set"):
        command(sqlite=sqlite_source)
    bad = tmp_path / "short.key"
    bad.write_text("c2hvcnQ=\n")
    with pytest.raises(CommandError, match="holds 5 bytes, not the 32 of an AES-256 key"):
        command(sqlite=sqlite_source, source_encryption_key_env=None, source_encryption_key_file=str(bad))

    # Without the key, the projects whose keys it encrypted are left out, with why; with it in a file, they come.
    output = run_import(sqlite=sqlite_source, source_encryption_key_env=None, expect_problems=True)
    assert output.count("its upstream key is encrypted (enc:v1:) and no --source-encryption-key-env") == 2
    good = tmp_path / "original.key"
    good.write_text(orig.ENCRYPTION_KEY + "\n")
    output = run_import(sqlite=sqlite_source, source_encryption_key_env=None, source_encryption_key_file=str(good))
    assert "projects: 2 imported, 1 already here" in output
    assert Project.objects.get(name="Batch jobs").api_key == orig.ENCRYPTED_KEY


@pytest.mark.django_db
def test_a_database_that_is_not_the_originals_is_refused_with_a_reason(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        command(sqlite=str(tmp_path / "missing.db"))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE things (id TEXT)").connection.commit()
    with pytest.raises(CommandError, match="has no projects table: not the Go LLM Proxy's database"):
        command(sqlite=str(other))
    with pytest.raises(CommandError, match="PostgreSQL database none on 127.0.0.1:1 cannot be opened") as refused:
        command(database_url="postgres://nobody:secret-password@127.0.0.1:1/none")
    assert "secret-password" not in str(refused.value)
    with pytest.raises(CommandError, match="upstream_url: .*169.254.169.254"):  # the egress rules, before reading
        command(sqlite=str(other), upstream_url="https://169.254.169.254/v1")
    assert Import.objects.count() == 0


def test_times_are_read_as_the_originals_drivers_wrote_them():
    from importer.original import as_time

    expected = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    for written in [
        "2026-03-04 05:06:07.123456789+00:00",  # its SQLite driver
        "2026-03-04 06:06:07.123456789+01:00",
        "2026-03-04T05:06:07.123456Z",
        "2026-03-04 05:06:07.123456789 +0000 UTC",  # Go's time.String()
        datetime(2026, 3, 4, 5, 6, 7, 123456),  # PostgreSQL's TIMESTAMP, without a zone: UTC
    ]:
        assert as_time(written) == expected, written
    assert as_time("2026-03-04 05:06:07") == expected.replace(microsecond=0)  # CURRENT_TIMESTAMP
    assert as_time(None) is None
