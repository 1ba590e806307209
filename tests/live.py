"""Real servers for tests (a pytest plugin, loaded from conftest.py): the mock upstream, and this project served
by gunicorn with uvicorn workers on a free port, using pytest-django's test database.

Tests that talk to the server must use `transactional_db` (or `live_db`), so what they write is committed and the
server's processes see it.

    def test_something(live_db, proxy_server, upstream, make_project, make_token): ...
"""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.mock_upstream import MockUpstream

BASE_DIR = Path(__file__).resolve().parent.parent

# What the shared test server runs with: short timeouts and a small body limit keep the tests fast; a database
# pool of four per worker (two held by the proxy's database threads) proves that streams do not pin connections.
TEST_SERVER_ENV = {
    "PROXY_READ_TIMEOUT": "1.5",
    "PROXY_CONNECT_TIMEOUT": "1",
    "PROXY_MAX_BODY_BYTES": str(1024 * 1024),
    "PROXY_CORS_ALLOWED_ORIGINS": "https://app.example.com",
    "DATABASE_POOL_MIN_SIZE": "1",
    "DATABASE_POOL_MAX_SIZE": "4",
    "PROXY_DB_THREADS": "2",
    "PRICE_CACHE_SECONDS": "0.2",  # a price set by a test is used at once
    "PROXY_CORS_PROJECT_ORIGINS_SECONDS": "0.2",  # so is an origin a project allows, for preflights
    # The tests' upstreams are mocks on this machine: a project may point at them.
    "UPSTREAM_ALLOW_HTTP_HOSTS": "127.0.0.1",
    "UPSTREAM_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL (as the settings read it) for a Django database settings dict."""
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{quote(settings_dict['NAME'], safe='')}"


def child_pids(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log: Path
    env: dict = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        return [self.process.pid, *child_pids(self.process.pid)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def start_server(
    *, database: str, upstream_url: str, log: Path, env: dict | None = None, workers: int = 2, wait: float = 30
) -> LiveServer:
    """Start gunicorn (gunicorn.conf.py, uvicorn workers) and wait until it answers on /v1/."""
    from django.conf import settings

    port = free_port()
    server_env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "DATABASE_URL": database,
        "UPSTREAM_BASE_URL": upstream_url,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "LOG_LEVEL": "WARNING",
        "GRACEFUL_TIMEOUT": "3",
        "USAGE_SPILL_DIR": str(log.parent / "spill"),  # each server its own, never the checkout's data/spill
        **(env or {}),
    }
    server_env.pop("TEST_DATABASE_NAME", None)
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "llmproxy.asgi:application"],
        cwd=BASE_DIR,
        env=server_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log=log, env=server_env)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            # A preflight: answered without a token and leaves no usage record behind.
            answered = httpx.options(f"{server.base_url}/models", timeout=1).status_code == 204
            if answered and len(server.pids()) > workers:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server did not come up in {wait} s:\n{server.log_tail()}")


@pytest.fixture(scope="session")
def mock_upstream():
    mock = MockUpstream().start_in_thread()
    yield mock
    mock.stop()


@pytest.fixture
def upstream(mock_upstream):
    """The mock upstream, with a clean record; fails the test if a token reached it."""
    mock_upstream.reset()
    yield mock_upstream
    assert mock_upstream.violations == [], "a token reached the upstream"


@pytest.fixture(scope="session")
def proxy_server(django_db_setup, django_db_blocker, mock_upstream, tmp_path_factory):
    """This project under gunicorn (2 uvicorn workers), on the test database, forwarding to the mock upstream."""
    from django.db import connection

    server = start_server(
        database=database_url(connection.settings_dict),
        upstream_url=mock_upstream.base_url,
        log=tmp_path_factory.mktemp("server") / "gunicorn.log",
        env=TEST_SERVER_ENV,
    )
    yield server
    server.stop()


@pytest.fixture
def live_db(transactional_db):
    """The database, committed: what a test writes is visible to the server's processes.

    At the end it waits for the server's last usage records (written just after each response) to land, so none
    arrives after the tables are emptied for the next test.
    """
    yield transactional_db
    settle_usage()


def settle_usage(quiet: float = 0.06, timeout: float = 5) -> None:
    """Wait until no usage record has been written for `quiet` seconds."""
    from proxy.models import UsageRecord

    deadline = time.monotonic() + timeout
    last, since = UsageRecord.objects.count(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.02)
        count = UsageRecord.objects.count()
        if count != last:
            last, since = count, time.monotonic()


@pytest.fixture
def openai_client(proxy_server):
    """`openai_client(token)`: the official SDK pointed at the proxy, without retries."""
    import openai

    def make(token: str, **kwargs) -> "openai.OpenAI":
        return openai.OpenAI(base_url=proxy_server.base_url, api_key=token, max_retries=0, timeout=10, **kwargs)

    return make


def wait_for_usage(count: int = 1, timeout: float = 5, **filters) -> list:
    """The usage records matching `filters`, once there are `count` of them (they are written after the response)."""
    from proxy.models import UsageRecord

    deadline = time.monotonic() + timeout
    while True:
        records = list(UsageRecord.objects.filter(**filters).order_by("time", "id"))
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)
