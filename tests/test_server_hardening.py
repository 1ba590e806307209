"""The server around the proxy: its static files, its production settings, its reloads."""

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest
from asgiref.testing import ApplicationCommunicator
from cryptography.fernet import Fernet
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.static import CollectedStaticFilesHandler
from tests.live import BASE_DIR, TEST_SERVER_ENV, database_url, start_server, wait_for_usage
from tests.raw_http import raw_request

# The servers run on the test database, which pytest-django creates only for a run with a test that uses it.
pytestmark = pytest.mark.django_db

# Paths out of the static files, as sent (uvicorn decodes %2e and %2f before Django sees them).
TRAVERSALS = [
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/admin/../../../../../etc/passwd",
    "/static/admin/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/static/..%5c..%5c..%5cetc%5cpasswd",
]


# --- static files ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TRAVERSALS)
def test_a_path_out_of_the_static_files_is_not_found(proxy_server, target):
    response = raw_request(proxy_server.url, target)

    assert response.status == 404, response.body[:200]
    assert b"root:" not in response.body


def test_the_static_files_are_still_served(proxy_server):
    response = raw_request(proxy_server.url, "/static/admin/css/base.css")

    assert response.status == 200 and b"body" in response.body


async def get_status(application, path: str) -> int:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [], "client": None}
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    await communicator.wait(5)
    return start["status"]


def test_a_path_out_of_the_collected_static_files_is_not_found(settings, tmp_path):
    """As served in production: from `collectstatic`'s output (the test server has none, so it serves from the apps)."""
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STATIC_ROOT.mkdir()
    (settings.STATIC_ROOT / "site.css").write_text("body {}")
    (tmp_path / "secret.txt").write_text("root:x:0:0")

    async def not_static(scope, receive, send) -> None:
        raise AssertionError(f"{scope['path']} went past the static files")

    handler = CollectedStaticFilesHandler(not_static)
    assert asyncio.run(get_status(handler, "/static/site.css")) == 200
    for path in ("/static/../secret.txt", "/static/../../etc/passwd", "/static/admin/../../secret.txt"):
        assert asyncio.run(get_status(handler, path)) == 404, path


# --- production settings --------------------------------------------------------------------------------------------
# The README's production configuration: behind a TLS proxy, HTTPS only.
BEHIND_TLS = {
    "BEHIND_TLS_PROXY": "true",
    "SECURE_COOKIES": "true",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "ALLOWED_HOSTS": "proxy.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://proxy.example.com",
}


def test_the_production_configuration_passes_djangos_deployment_checks():
    environment = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ENCRYPTION_KEYS")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env={
            **environment,
            "ENV_FILE": "/dev/null",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            **BEHIND_TLS,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.fixture(scope="module")
def tls_server(django_db_setup, django_db_blocker, mock_upstream, tmp_path_factory):
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path_factory.mktemp("tls-server") / "server.log",
        env={**TEST_SERVER_ENV, **BEHIND_TLS},
        workers=1,
    )
    yield server
    server.stop()


def test_behind_tls_plain_http_is_redirected_but_for_the_health_checks(tls_server):
    plain = {"Host": "proxy.example.com"}
    through_tls = {**plain, "X-Forwarded-Proto": "https"}

    assert httpx.get(f"{tls_server.url}/healthz", headers=plain).status_code == 200
    assert httpx.get(f"{tls_server.url}/readyz", headers=plain).status_code == 200
    for probe in ("health", "ready", "live"):  # the Go LLM Proxy's, for the monitors set up for it
        assert httpx.get(f"{tls_server.url}/{probe}", headers=plain).status_code == 200, probe
    redirected = httpx.get(f"{tls_server.url}/admin/login/", headers=plain)
    assert redirected.status_code == 301
    assert redirected.headers["location"] == "https://proxy.example.com/admin/login/"

    page = httpx.get(f"{tls_server.url}/admin/login/", headers=through_tls)
    assert page.status_code == 200
    assert page.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
    assert "; secure" in page.headers["set-cookie"].lower(), "the CSRF cookie is marked Secure"


# --- idle workers -------------------------------------------------------------------------------------------------
def test_the_date_header_follows_the_clock_on_an_idle_server(proxy_server):
    first = parsedate_to_datetime(httpx.get(f"{proxy_server.url}/healthz").headers["date"]).timestamp()
    assert abs(first - time.time()) < 2
    time.sleep(1.5)  # no request meanwhile: nothing but the next request brings the header up to date
    second = parsedate_to_datetime(httpx.get(f"{proxy_server.url}/healthz").headers["date"]).timestamp()
    assert second > first
    assert abs(second - time.time()) < 2


@contextlib.contextmanager
def one_worker(mock_upstream, tmp_path, **env: str):
    """A server of one worker on the test database, with these settings."""
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path / "server.log",
        env={**TEST_SERVER_ENV, **env},
        workers=1,
    )
    try:
        yield server
    finally:
        server.stop()


def test_an_idle_worker_tells_gunicorn_it_is_alive(mock_upstream, tmp_path):
    with one_worker(mock_upstream, tmp_path, WORKER_TIMEOUT="2") as server:  # gunicorn kills one silent for 2 s
        workers = server.pids()[1:]
        time.sleep(5)
        assert server.pids()[1:] == workers, server.log_tail()
        assert "WORKER TIMEOUT" not in server.log_tail()
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_worker_that_served_its_request_cap_is_replaced(mock_upstream, tmp_path):
    with one_worker(mock_upstream, tmp_path, GUNICORN_CMD_ARGS="--max-requests 3") as server:
        (worker,) = server.pids()[1:]
        for _ in range(3):
            assert httpx.get(f"{server.url}/healthz").status_code == 200
        deadline = time.monotonic() + 10
        while (now := server.pids()[1:]) in ([worker], []):
            assert time.monotonic() < deadline, f"worker {worker} served its 3 requests and is still there"
            time.sleep(0.1)
        assert worker not in now


# --- reloads --------------------------------------------------------------------------------------------------------
def missing_token_refusals(server) -> float:
    response = httpx.get(f"{server.url}/metrics", timeout=5)
    assert response.status_code == 200
    return next(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "llmproxy_refusals_total" and sample.labels == {"code": "missing_token"}
    )


@pytest.mark.usefixtures("live_db")
def test_the_metrics_directory_outlives_reloads_and_goes_at_exit(mock_upstream, tmp_path):
    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path / "server.log",
        env={**TEST_SERVER_ENV, "TMPDIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": ""},
    )
    try:
        (directory,) = tmp_path.glob("llmproxy-metrics-*")
        assert httpx.post(f"{server.base_url}/chat/completions", json={}).status_code == 401
        wait_for_usage(1)
        for _ in range(2):
            workers = set(server.pids()[1:])
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while (now := set(server.pids()[1:])) & workers or len(now) < 2:
                assert time.monotonic() < deadline, f"the workers did not restart: {workers} → {now}"
                time.sleep(0.1)
            assert missing_token_refusals(server) == 1, "the counts from before the reload are kept"
        assert list(tmp_path.glob("llmproxy-metrics-*")) == [directory]
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log_tail()
    assert not directory.exists(), "the metrics directory is left behind"
