"""Rotating ENCRYPTION_KEYS end to end: re-encrypt, drop the old key, and the proxy still uses every project's key."""

import io

import httpx
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from tests.conftest import VALID_KEY
from tests.live import TEST_SERVER_ENV, database_url, start_server


def proxied_key(server, token: str) -> tuple[int, str]:
    """The status, and the Authorization the upstream received, for one proxied call."""
    response = httpx.get(
        f"{server.base_url}/models", headers={"Authorization": f"Bearer {token}", "x-mock-echo": "1"}, timeout=10
    )
    if response.status_code != 200:
        return response.status_code, ""
    return 200, dict(response.json()["headers"])["authorization"]


def test_rotate_then_drop_the_old_key(live_db, upstream, make_project, make_token, settings, tmp_path):
    old, new = settings.ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    token = make_token(make_project()).plaintext  # the upstream key is stored under the old encryption key
    database = database_url(connection.settings_dict)

    def serve_with(keys: list[str], name: str):
        settings.ENCRYPTION_KEYS = keys  # start_server hands the current keys to the server
        return start_server(
            database=database, upstream_url=upstream.base_url, log=tmp_path / name, env=TEST_SERVER_ENV, workers=1
        )

    # Dropping the old key without re-encrypting first makes the project's key unusable (and says so).
    server = serve_with([new], "before.log")
    try:
        assert proxied_key(server, token) == (503, "")
    finally:
        server.stop()

    settings.ENCRYPTION_KEYS = [new, old]
    call_command("rotate_encryption_keys", stdout=io.StringIO())

    server = serve_with([new], "after.log")
    try:
        assert proxied_key(server, token) == (200, f"Bearer {VALID_KEY}")
    finally:
        server.stop()
