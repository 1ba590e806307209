"""The management commands, as an operator or a script runs them."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from auditlog.models import LogEntry
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

from projects import crypto
from projects.models import Project
from tests.conftest import OTHER_KEY, VALID_KEY
from tokens import secret
from tokens.minting import minting_key_authenticate
from tokens.models import Token

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "create_project",
    "list_projects",
    "set_project_active",
    "generate_token",
    "revoke_tokens",
    "create_minting_key",
    "rotate_encryption_keys",
]


def run(*args, stdin: str = "") -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        call_command(*args, stdout=out, stderr=err)
    finally:
        sys.stdin = old_stdin
    return out.getvalue(), err.getvalue()


def cli_entries(**filters) -> list[LogEntry]:
    return list(LogEntry.objects.filter(additional_data__via="cli", **filters).order_by("pk"))


# --- Projects --------------------------------------------------------------------------------------------------


def test_create_project_prints_its_id_and_is_audited():
    out, err = run("create_project", "--name", "Demo", "--api-key", VALID_KEY)
    project = Project.objects.get(name="Demo")
    assert out.strip() == str(project.pk)
    assert VALID_KEY not in out + err and project.api_key_masked in err
    assert project.api_key == VALID_KEY
    [entry] = cli_entries(object_pk=str(project.pk))
    assert entry.action == LogEntry.Action.CREATE and entry.actor_email.startswith("command line")


def test_create_project_reads_the_key_from_stdin():
    run("create_project", "--name", "Quiet", "--api-key-stdin", stdin=VALID_KEY + "\n")
    assert Project.objects.get(name="Quiet").api_key == VALID_KEY


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--name", "x", "--api-key", "sk-short"], "", "api_key: Invalid API key format"),
        (["--name", "x", "--api-key-stdin"], "", "no API key on stdin"),
        (["--name", "  ", "--api-key", VALID_KEY], "", "name: Name is required."),
        (["--name", "x"], "", "one of the arguments --api-key --api-key-stdin is required"),
    ],
)
def test_create_project_refusals(args, stdin, message):
    with pytest.raises(CommandError, match=message):
        run("create_project", *args, stdin=stdin)
    assert not Project.objects.exists()


def test_create_project_refuses_a_duplicate_name(make_project):
    make_project(name="Demo")
    with pytest.raises(CommandError, match="already exists"):
        run("create_project", "--name", "DEMO", "--api-key", VALID_KEY)


def test_list_projects_as_a_table_and_as_json(make_project, make_token):
    demo = make_project(name="Demo")
    make_token(demo)
    make_project(name="Archive", active=False)
    out, _ = run("list_projects")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "API", "KEY", "TOKENS", "CREATED"]
    assert "Archive" in lines[1] and "inactive" in lines[1] and "Demo" in lines[2] and "active" in lines[2]
    assert VALID_KEY not in out and demo.api_key_masked in out
    rows = json.loads(run("list_projects", "--json")[0])
    assert [(r["name"], r["is_active"], r["tokens"]) for r in rows] == [("Archive", False, 0), ("Demo", True, 1)]
    assert VALID_KEY not in json.dumps(rows)


def test_set_project_active_by_name_or_id(make_project, make_token):
    project = make_project(name="Demo")
    make_token(project)
    out, _ = run("set_project_active", "demo", "--inactive")
    assert "inactive" in out and not Project.objects.get(pk=project.pk).is_active
    assert Token.objects.filter(revoked_at__isnull=True).count() == 1
    run("set_project_active", str(project.pk), "--active")
    assert Project.objects.get(pk=project.pk).is_active
    out, _ = run("set_project_active", "Demo", "--inactive", "--revoke-tokens")
    assert "Revoked 1 token(s)." in out and not Token.objects.filter(revoked_at__isnull=True).exists()
    assert cli_entries(object_pk=str(project.pk), action=LogEntry.Action.UPDATE)


def test_set_project_active_refusals(make_project):
    make_project(name="Demo")
    with pytest.raises(CommandError, match="project not found: 'nope'"):
        run("set_project_active", "nope", "--active")
    with pytest.raises(CommandError, match="--revoke-tokens only goes with --inactive"):
        run("set_project_active", "Demo", "--active", "--revoke-tokens")
    with pytest.raises(CommandError):
        run("set_project_active", "Demo")


# --- Tokens ----------------------------------------------------------------------------------------------------


def test_generate_token_prints_only_the_token(make_project):
    project = make_project(name="Demo")
    out, err = run("generate_token", "--project", "Demo", "--hours", "1", "--max-requests", "5", "--label", "ci")
    token_text = out.strip()
    assert out == token_text + "\n" and secret.TOKEN.is_well_formed(token_text) and err == ""
    token = Token.objects.get(digest=secret.digest(token_text))
    assert token.project == project and token.max_requests == 5 and token.label == "ci"
    assert token.created_by_label.startswith("command line")
    run("generate_token", "--project", str(project.pk), "--minutes", "15")
    assert Token.objects.count() == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "nope", "--hours", "1"], "project not found"),
        (["--project", "Demo", "--hours", "0"], "duration: Duration must be positive."),
        (["--project", "Demo", "--hours", "999999"], "duration: Duration must be at most"),
        (["--project", "Demo", "--hours", "1", "--max-requests", "-3"], "max_requests: Request limit cannot be"),
        (["--project", "Demo", "--hours", "1", "--minutes", "5"], "not allowed with argument"),
        (["--project", "Demo"], "one of the arguments --hours --minutes is required"),
        (["--project", "Demo", "--hours", "x"], "invalid int value"),
    ],
)
def test_generate_token_refusals(make_project, args, message):
    make_project(name="Demo")
    with pytest.raises(CommandError, match=message):
        run("generate_token", *args)
    assert not Token.objects.exists()


def test_generate_token_refuses_an_inactive_project(make_project):
    make_project(name="Demo", active=False)
    with pytest.raises(CommandError, match="Cannot generate tokens for inactive project"):
        run("generate_token", "--project", "Demo", "--hours", "1")


def test_revoke_tokens_by_id_by_whole_token_and_by_project(make_project, make_token):
    project = make_project(name="Demo")
    first, second, third = (make_token(project) for _ in range(3))
    out, _ = run("revoke_tokens", "--token", str(first.token.pk))
    assert "Revoked token" in out and Token.objects.get(pk=first.token.pk).revoked_at is not None
    assert "already revoked" in run("revoke_tokens", "--token", str(first.token.pk))[0]
    run("revoke_tokens", "--token", second.plaintext)
    assert Token.objects.get(pk=second.token.pk).revoked_at is not None
    out, _ = run("revoke_tokens", "--project", "demo")
    assert out.strip() == "Revoked 1 token(s) of project 'Demo'; 2 already revoked, 3 in all."
    assert Token.objects.get(pk=third.token.pk).revoked_by_label.startswith("command line")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", "sk-wt-" + "a" * 32], "token not found"),
        (["--token", "00000000-0000-0000-0000-000000000000"], "token not found"),
        (["--token", "garbage"], "not a token ID or a whole sk-wt-… token"),
        (["--project", "nope"], "project not found"),
        ([], "one of the arguments --token --project is required"),
    ],
)
def test_revoke_tokens_refusals(args, message):
    with pytest.raises(CommandError, match=message):
        run("revoke_tokens", *args)


def test_create_minting_key_prints_only_the_key(make_project):
    project = make_project(name="Demo")
    out, _ = run("create_minting_key", "--project", "Demo", "--name", "web backend")
    key = minting_key_authenticate(out.strip())
    assert key is not None and key.project == project and key.name == "web backend"
    assert out == out.strip() + "\n"
    with pytest.raises(CommandError, match="project not found"):
        run("create_minting_key", "--project", "nope", "--name", "x")


# --- Encryption key rotation -----------------------------------------------------------------------------------


def test_rotate_encryption_keys_end_to_end(make_project):
    old = settings.ENCRYPTION_KEYS[0]
    new = Fernet.generate_key().decode()
    first, second = make_project(name="a"), make_project(name="b", api_key=OTHER_KEY)
    before = LogEntry.objects.count()

    with override_settings(ENCRYPTION_KEYS=[new, old]):
        out, _ = run("rotate_encryption_keys")
        assert out.strip() == "Re-encrypted: 2, already current: 0, failed to decrypt: 0"
        # One audit entry per re-encrypted project, none for unchanged keys on a second run.
        assert LogEntry.objects.count() == before + 2
        assert [e.object_pk for e in cli_entries(action=LogEntry.Action.UPDATE)] == [str(first.pk), str(second.pk)]
        out, _ = run("rotate_encryption_keys")
        assert out.strip() == "Re-encrypted: 0, already current: 2, failed to decrypt: 0"
        assert LogEntry.objects.count() == before + 2

    # The old key can now be dropped: every upstream key still decrypts with the new one alone.
    with override_settings(ENCRYPTION_KEYS=[new]):
        assert Project.objects.get(pk=first.pk).api_key == VALID_KEY
        assert Project.objects.get(pk=second.pk).api_key == OTHER_KEY
    # ...and no longer with the old one alone.
    with override_settings(ENCRYPTION_KEYS=[old]), pytest.raises(crypto.KeyDecryptionError):
        _ = Project.objects.get(pk=first.pk).api_key


def test_rotate_encryption_keys_reports_keys_it_cannot_decrypt(make_project):
    lost = Fernet.generate_key().decode()
    with override_settings(ENCRYPTION_KEYS=[lost]):
        orphan = make_project(name="orphan")
    make_project(name="fine")
    with pytest.raises(
        CommandError, match=rf"cannot decrypt the upstream key of 1 project\(s\).*orphan \({orphan.pk}\)"
    ):
        run("rotate_encryption_keys")


# --- As a shell sees them --------------------------------------------------------------------------------------


def _manage(*args: str) -> subprocess.CompletedProcess:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{db['NAME']}"
    else:
        url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "DEBUG": "0",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = _manage(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_token_from_the_shell_and_a_failure_exit_status(make_project):
    make_project(name="demo")
    result = _manage("generate_token", "--project", "demo", "--hours", "1")
    assert result.returncode == 0, result.stderr
    assert secret.TOKEN.is_well_formed(result.stdout.strip()) and result.stdout.count("\n") == 1
    assert Token.objects.filter(digest=secret.digest(result.stdout.strip())).exists()

    result = _manage("generate_token", "--project", "nope", "--hours", "1")
    assert result.returncode == 1 and result.stdout == ""
    assert "project not found: 'nope'" in result.stderr
