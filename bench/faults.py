"""Faults against a real server: `python bench/faults.py` (or `make bench-faults`).

Starts the mock upstream and the server as in production (gunicorn with uvicorn workers, 2 workers, DEBUG off) on a
fresh database (PostgreSQL when DATABASE_URL names one, else SQLite), sends steady traffic (4 clients, each request
with its own X-Request-ID, and streams where the scenario says), injects one fault per scenario, and prints a table:
answers by status, usage records expected (every request answered) against written, and the recovery time.

Scenarios (the first three need PostgreSQL; the database is reached through a TCP relay that can be cut):
- dropped connections: every session of the server ended (`pg_terminate_backend`) three times under traffic;
- idle session timeout: the database closes sessions idle for 1 s; bursts of requests after idle gaps;
- outage: the database unreachable for 5 s while requests and 10 streams run;
- kill -9: one worker killed under traffic (what it held in memory is the stated loss window);
- graceful stop: TERM to the server while 10 streams run.
"""

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.proxy_bench import database, seed, stop_process, wait_for_port  # noqa: E402
from tests.live import child_pids, free_port  # noqa: E402
from tests.tcp_relay import TcpRelay  # noqa: E402

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


@dataclass
class Outcome:
    name: str
    answers: Counter = field(default_factory=Counter)
    ids: set = field(default_factory=set)  # request IDs that got an HTTP answer
    recovery: str = "—"
    written: int = 0

    @property
    def sent(self) -> int:
        return sum(self.answers.values())


class Server:
    def __init__(self, env: dict, tmp: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.spill = tmp / f"spill-{port}"
        self.log = open(tmp / f"server-{port}.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "llmproxy.asgi:application"],
            cwd=BASE_DIR,
            env={**env, "BIND": f"127.0.0.1:{port}", "USAGE_SPILL_DIR": str(self.spill)},
            stdout=self.log,
            stderr=self.log,
        )
        wait_for_port(port, self.process, "the server")
        deadline = time.monotonic() + 60
        answered = 0
        while answered < 10 and time.monotonic() < deadline:  # every worker booted and serving
            try:
                answered += httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)

    def workers(self) -> list[int]:
        return child_pids(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process, 30)
        self.log.close()


class Traffic:
    """Clients sending non-streamed chat completions one after another until stopped."""

    def __init__(self, server: Server, token: str, outcome: Outcome, prefix: str, clients: int = 4) -> None:
        self.server, self.token, self.outcome, self.prefix = server, token, outcome, prefix
        self.running = True
        self.lock = threading.Lock()
        self.first_ok_after: dict[float, float] = {}
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        with httpx.Client(timeout=30) as client:
            while self.running:
                request_id = f"{self.prefix}-{uuid.uuid4().hex}"
                try:
                    response = client.post(
                        f"{self.server.url}/v1/chat/completions",
                        json=CHAT,
                        headers={"Authorization": f"Bearer {self.token}", "X-Request-ID": request_id},
                    )
                    status = str(response.status_code)
                except httpx.HTTPError as error:
                    status, request_id = type(error).__name__, None
                with self.lock:
                    self.outcome.answers[status] += 1
                    if request_id:
                        self.outcome.ids.add(request_id)
                    if status == "200":
                        for since in list(self.first_ok_after):
                            if self.first_ok_after[since] is None:
                                self.first_ok_after[since] = time.monotonic() - since

    def watch_recovery(self) -> float:
        """From now on, note when the next 200 arrives."""
        now = time.monotonic()
        with self.lock:
            self.first_ok_after[now] = None
        return now

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(60)


def streams(server: Server, token: str, outcome: Outcome, prefix: str, count: int = 10) -> list[threading.Thread]:
    """Streams of 3 s each; returns once every one has its first bytes (so a fault hits them mid-stream)."""
    started = threading.Semaphore(0)

    def one(index: int) -> None:
        request_id = f"{prefix}-stream-{index}"
        try:
            with httpx.stream(
                "POST",
                f"{server.url}/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-Request-ID": request_id,
                    "x-mock-chunks": "30",
                    "x-mock-chunk-delay": "0.1",
                },
                timeout=60,
            ) as response:
                for index, _ in enumerate(response.iter_bytes()):
                    if index == 0:
                        started.release()
            status = f"{response.status_code} (stream)"
        except httpx.HTTPError as error:
            started.release()
            status, request_id = f"{type(error).__name__} (stream)", None
        outcome.answers[status] += 1
        if request_id:
            outcome.ids.add(request_id)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for _ in threads:
        started.acquire(timeout=30)
    return threads


class Records:
    """Counts usage records by request ID prefix, straight from the database."""

    def __init__(self, url: str) -> None:
        self.url = url

    def count(self, prefix: str) -> int:
        sql = "SELECT count(*) FROM proxy_usagerecord WHERE request_id LIKE %s"
        if self.url.startswith("sqlite"):
            with sqlite3.connect(urlsplit(self.url).path) as conn:
                return conn.execute(sql.replace("%s", "?"), [f"{prefix}-%"]).fetchone()[0]
        import psycopg

        with psycopg.connect(self.url.replace("postgres://", "postgresql://", 1)) as conn:
            return conn.execute(sql, [f"{prefix}-%"]).fetchone()[0]

    def wait(self, prefix: str, expected: int, timeout: float) -> tuple[int, float]:
        started = time.monotonic()
        while True:
            found = self.count(prefix)
            if found >= expected or time.monotonic() - started > timeout:
                return found, time.monotonic() - started
            time.sleep(0.05)

    def terminate(self, application_name: str) -> None:
        import psycopg

        with psycopg.connect(self.url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                [application_name],
            )


def with_params(url: str, **params: str) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


# --- scenarios --------------------------------------------------------------------------------------------------------
def dropped_connections(env, tmp, token, records) -> Outcome:
    outcome = Outcome("dropped connections (3 × every session ended)")
    name = f"faults-{os.getpid()}"
    server = Server({**env, "DATABASE_URL": with_params(env["DATABASE_URL"], application_name=name)}, tmp)
    traffic = Traffic(server, token, outcome, "dropped")
    for _ in range(3):
        time.sleep(1.0)
        records.terminate(name)
    time.sleep(1.0)
    traffic.stop()
    outcome.written, _ = records.wait("dropped", len(outcome.ids), 10)
    server.stop()
    return outcome


def idle_timeout(env, tmp, token, records) -> Outcome:
    outcome = Outcome("idle session timeout 1 s (bursts after 1.5 s idle)")
    server = Server(
        {**env, "DATABASE_URL": with_params(env["DATABASE_URL"], options="-c%20idle_session_timeout%3D1000")}, tmp
    )
    for _ in range(4):
        time.sleep(1.5)
        traffic = Traffic(server, token, outcome, "idle")
        time.sleep(0.3)
        traffic.stop()
    outcome.written, _ = records.wait("idle", len(outcome.ids), 10)
    server.stop()
    return outcome


def outage(env, tmp, token, records, seconds: float = 5.0) -> Outcome:
    outcome = Outcome(f"outage {seconds:.0f} s (requests and 10 streams running)")
    parts = urlsplit(env["DATABASE_URL"])
    relay = TcpRelay((parts.hostname or "127.0.0.1", parts.port or 5432))
    url = parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{relay.port}").geturl()
    server = Server({**env, "DATABASE_URL": url, "DATABASE_POOL_TIMEOUT": "2"}, tmp)
    traffic = Traffic(server, token, outcome, "outage")
    time.sleep(0.5)
    running = streams(server, token, outcome, "outage")
    relay.cut()
    time.sleep(seconds)
    relay.restore()
    back = traffic.watch_recovery()
    drained = None
    while drained is None and time.monotonic() - back < 30:
        if not list(server.spill.glob("usage-*.jsonl")):
            drained = time.monotonic() - back
        time.sleep(0.05)
    time.sleep(1.0)
    traffic.stop()
    for thread in running:
        thread.join(60)
    outcome.written, _ = records.wait("outage", len(outcome.ids), 30)
    first_ok = traffic.first_ok_after.get(back)
    outcome.recovery = (
        ", ".join(
            [
                f"first 200 {first_ok:.1f} s" if first_ok is not None else "no 200",
                f"spilled records written {drained:.1f} s" if drained is not None else "spill files left",
            ]
        )
        + " after the return"
    )
    server.stop()
    relay.close()
    return outcome


def kill_worker(env, tmp, token, records) -> Outcome:
    outcome = Outcome("kill -9 of a worker under traffic")
    server = Server(env, tmp)
    traffic = Traffic(server, token, outcome, "kill")
    time.sleep(1.5)
    os.kill(server.workers()[0], signal.SIGKILL)
    time.sleep(2.0)
    traffic.stop()
    outcome.written, _ = records.wait("kill", len(outcome.ids), 15)
    server.stop()
    return outcome


def graceful_stop(env, tmp, token, records) -> Outcome:
    outcome = Outcome("TERM while 10 streams run (graceful stop)")
    server = Server(env, tmp)
    running = streams(server, token, outcome, "term")
    server.process.terminate()
    for thread in running:
        thread.join(60)
    server.stop()
    outcome.written, _ = records.wait("term", len(outcome.ids), 15)
    return outcome


SCENARIOS = {
    "dropped": (dropped_connections, True),
    "idle": (idle_timeout, True),
    "outage": (outage, True),
    "kill": (kill_worker, False),
    "term": (graceful_stop, False),
}


def report(outcomes: list[Outcome], engine: str) -> None:
    print(f"\nFaults — {engine}, 2 workers, {os.cpu_count()} CPUs")
    print(f"| {'scenario':<52} | sent | answers | records expected / written | recovery |")
    print(f"|{'-' * 54}|------|---------|----------------------------|----------|")
    for o in outcomes:
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(o.answers.items()))
        print(f"| {o.name:<52} | {o.sent} | {answers} | {len(o.ids)} / {o.written} | {o.recovery} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated scenarios ({','.join(SCENARIOS)})")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(SCENARIOS)

    from cryptography.fernet import Fernet

    run_id = str(os.getpid())
    db_url, drop_database = database(run_id)
    postgres = db_url.startswith("postgres")
    mock_port = free_port()
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "faults-" + os.urandom(24).hex(),
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DATABASE_URL": db_url,
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "WARNING",
        "PROXY_ACCESS_LOG": "false",
        "GRACEFUL_TIMEOUT": "30",
    }
    tmp = BASE_DIR / "data" / f"faults-{run_id}"
    tmp.mkdir(parents=True, exist_ok=True)
    mock = None
    outcomes = []
    try:
        token, _ = seed(env)
        mock = subprocess.Popen(
            [sys.executable, "tests/mock_upstream.py", "--port", str(mock_port)],
            cwd=BASE_DIR,
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(mock_port, mock, "the mock upstream")
        records = Records(db_url)
        for name in chosen:
            scenario, needs_postgres = SCENARIOS[name]
            if needs_postgres and not postgres:
                print(f"skipping {name}: it needs PostgreSQL (DATABASE_URL=postgres://…)", flush=True)
                continue
            print(f"running {name} …", flush=True)
            outcomes.append(scenario(env, tmp, token, records))
        report(outcomes, "PostgreSQL" if postgres else "SQLite")
    finally:
        if mock is not None:
            mock.terminate()
            mock.wait(10)
        drop_database()


if __name__ == "__main__":
    main()
