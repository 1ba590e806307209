"""Database trouble, against a real server on PostgreSQL: dropped connections cost no refusal and no record; during
an outage records wait on disk and are written within seconds of the database's return, also those a killed
worker left behind; the management API and the readiness probe say what is going on."""

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from proxy import db
from proxy.models import UsageRecord
from proxy.writer import Record, _row, store
from tests.live import TEST_SERVER_ENV, database_url, start_server
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="database faults are a PostgreSQL matter (run with DATABASE_URL=postgres://…; CI does)",
)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def admin_connection() -> psycopg.Connection:
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        dbname=settings["NAME"],
        autocommit=True,
    )


def terminate(application_name: str) -> int:
    """End every database session of the server under test (as an operator, a pooler or a failover would)."""
    with admin_connection() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return len(rows)


def records(count: int, timeout: float = 10.0, **filters) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = UsageRecord.objects.filter(**filters).count()
        if found >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def chat(server, token: str, **headers) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=30,
    )


@pytest.fixture
def spill_dir(tmp_path) -> Path:
    return tmp_path / "spill"


def serve(database: str, upstream, tmp_path: Path, spill_dir: Path, **env) -> object:
    return start_server(
        database=database,
        upstream_url=upstream.base_url,
        log=tmp_path / f"server-{uuid.uuid4().hex[:6]}.log",
        env={**TEST_SERVER_ENV, "USAGE_SPILL_DIR": str(spill_dir), "DATABASE_POOL_TIMEOUT": "1", **env},
    )


def with_application_name(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def test_dropped_connections_cost_no_refusal_and_no_record(
    live_db, upstream, make_project, make_token, tmp_path, spill_dir
):
    token = make_token(make_project()).plaintext
    name = f"llmproxy-test-{uuid.uuid4().hex[:8]}"
    server = serve(with_application_name(database_url(connection.settings_dict), name), upstream, tmp_path, spill_dir)
    try:
        assert all(chat(server, token).status_code == 200 for _ in range(10))
        assert records(10) == 10
        assert terminate(name) >= 2  # the admission pool's and the writer's connections, at least
        answers = [chat(server, token).status_code for _ in range(20)]
        assert terminate(name) >= 1
        answers += [chat(server, token).status_code for _ in range(10)]
        assert answers == [200] * 30
        assert records(40) == 40
        manage = httpx.get(f"{server.url}/readyz", timeout=10)
        assert manage.json()["status"] == "ready"
    finally:
        server.stop()


def usage_row() -> dict:
    return _row(
        Record(
            time=timezone.now(),
            method="POST",
            path="/v1/chat/completions",
            status=200,
            duration_ms=1.0,
            request_id=uuid.uuid4().hex,
            client_ip="10.0.0.9",
        )
    )


def drop_own_connection() -> None:
    connection.ensure_connection()
    with admin_connection() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])


@pytest.mark.django_db(transaction=True)
def test_a_usage_batch_on_a_dropped_connection_is_written_at_once_on_a_fresh_one():
    """The usage batch's statements report a dropped connection as Django's cursors do, so the database thread
    writes the batch again at once on a new connection (and the writer would keep its rows, not take them for
    faulty ones)."""
    assert store([usage_row()]) == 1
    drop_own_connection()
    with pytest.raises(db.CONNECTION_ERRORS):
        store([usage_row()])
    drop_own_connection()
    assert db.call(store, [usage_row()]) == 1
    assert UsageRecord.objects.count() == 2


def test_an_idle_session_timeout_costs_nothing(live_db, upstream, make_project, make_token, tmp_path, spill_dir):
    """As pgbouncer, NAT gateways and managed databases impose: connections idle for long are closed under us."""
    token = make_token(make_project()).plaintext
    url = database_url(connection.settings_dict) + "?options=-c%20idle_session_timeout%3D300"
    server = serve(url, upstream, tmp_path, spill_dir)
    try:
        answers = []
        for _ in range(3):
            time.sleep(0.6)  # every connection the server holds has been closed by the database meanwhile
            answers += [chat(server, token).status_code for _ in range(5)]
        assert answers == [200] * 15
        assert records(15) == 15
    finally:
        server.stop()


def test_an_outage_keeps_every_record_and_recovers_within_seconds(
    live_db, upstream, make_project, make_token, tmp_path, spill_dir
):
    token = make_token(make_project()).plaintext
    settings = connection.settings_dict
    relay = TcpRelay((settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)))
    url = database_url({**settings, "HOST": "127.0.0.1", "PORT": relay.port})
    server = serve(url, upstream, tmp_path, spill_dir)
    try:
        assert chat(server, token).status_code == 200
        # Ten streams start, the database goes away while they run, they finish.
        finished, started = [], threading.Semaphore(0)

        def stream(index: int) -> None:
            with httpx.stream(
                "POST",
                f"{server.base_url}/chat/completions",
                json={**CHAT, "stream": True},
                headers={
                    "Authorization": f"Bearer {token}",
                    "x-mock-chunks": "10",
                    "x-mock-chunk-delay": "0.1",
                    "x-request-id": f"outage-stream-{index}",
                },
                timeout=30,
            ) as response:
                chunks = response.iter_bytes()
                body = next(chunks)
                started.release()
                body += b"".join(chunks)
            finished.append((response.status_code, body.endswith(b"data: [DONE]\n\n")))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for _ in threads:
            assert started.acquire(timeout=20), "a stream did not start"
        relay.cut()
        for thread in threads:
            thread.join(30)
        assert finished == [(200, True)] * 10

        # Meanwhile: new requests are refused (503, retryable), the API says so in JSON, readiness says not ready.
        assert chat(server, token).status_code == 503
        manage = httpx.get(
            f"{server.url}/manage/projects",
            headers={"Authorization": f"Bearer {django_settings.MANAGEMENT_TOKEN}"},
            timeout=30,
        )
        assert manage.status_code == 503 and manage.json()["code"] == "service_unavailable"
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503
        assert list(spill_dir.glob("usage-*.jsonl")), "the records wait on disk"

        relay.restore()
        back = time.monotonic()
        assert records(10, timeout=15, request_id__startswith="outage-stream-") == 10
        recovered_in = time.monotonic() - back
        assert recovered_in < 5, f"records written {recovered_in:.1f} s after the database came back"
        assert records(3, refusal_code="service_unavailable") >= 1  # the refusals meanwhile are records too
        deadline = time.monotonic() + 10
        while list(spill_dir.glob("usage-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(spill_dir.glob("usage-*.jsonl"))
        assert httpx.get(f"{server.url}/readyz", timeout=10).json()["status"] == "ready"
        assert chat(server, token).status_code == 200
    finally:
        server.stop()
        relay.close()


def test_a_killed_workers_spilled_records_are_written_by_the_next(
    live_db, upstream, make_project, make_token, tmp_path, spill_dir
):
    token = make_token(make_project()).plaintext
    settings = connection.settings_dict
    relay = TcpRelay((settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)))
    url = database_url({**settings, "HOST": "127.0.0.1", "PORT": relay.port})
    server = serve(url, upstream, tmp_path, spill_dir)
    try:
        assert chat(server, token).status_code == 200
        relay.cut()
        refused = [chat(server, token, **{"x-request-id": f"while-away-{i}"}).status_code for i in range(6)]
        assert refused == [503] * 6
        deadline = time.monotonic() + 10
        while not list(spill_dir.glob("usage-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the last refusals reach their spill file
        for pid in server.pids()[1:]:
            os.kill(pid, signal.SIGKILL)  # every worker: gunicorn starts new ones
        relay.restore()
        assert records(6, timeout=20, request_id__startswith="while-away-") == 6
    finally:
        server.stop()
        relay.close()
