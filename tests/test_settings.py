"""Production mode refuses to start without its secrets, with a one-line reason."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent


def run_check(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "ENCRYPTION_KEYS", "DEBUG")}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**clean, "ENV_FILE": "/dev/null", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "SECRET_KEY"),
        ({"SECRET_KEY": "x" * 50}, "ENCRYPTION_KEYS"),
        ({"ENCRYPTION_KEYS": Fernet.generate_key().decode()}, "SECRET_KEY"),
    ],
)
def test_production_refuses_to_start_without_a_secret(env, missing):
    result = run_check(**env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llm-proxy: refusing to start:") and missing in lines[0]


def test_production_starts_with_its_secrets():
    result = run_check(SECRET_KEY="x" * 50, ENCRYPTION_KEYS=Fernet.generate_key().decode())
    assert result.returncode == 0, result.stderr


def test_debug_mode_needs_no_setup():
    assert run_check(DEBUG="1").returncode == 0
