"""The proxy's latency while the admin login is attacked: `python bench/login_bench.py`.

It starts the mock upstream and the server as `bench/proxy_bench.py` does (gunicorn with uvicorn workers, DEBUG off,
a fresh database: PostgreSQL when DATABASE_URL names one, else a new SQLite file), seeds a project, a token and the
admin user, then measures the proxy's latency at concurrency 1 (non-streamed chat completions): first alone, then
while 16 loops post wrong passwords for `admin` to /admin/login/ (from another process, all from 127.0.0.1). It
prints both, and what the login loops got back: a wrong-password answer (a password was hashed), a lockout, or
"try again in a moment" (the hashing bound).

`--server-env NAME=VALUE` passes a setting to the server, e.g. the LOGIN_MAX_FAILURES_* limits raised out of reach
to see the hashing bound alone; `--get` makes the loops only load the login page (no password), which is what any
admin page costs, for comparison. On code before the login throttle, the same script measures the old behaviour.
"""

import argparse
import asyncio
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.proxy_bench import Target, database, latency, percentile, seed, stop_process, wait_for_port  # noqa: E402
from tests.live import child_pids, free_port  # noqa: E402

ADMIN_USER = "admin"
OUTCOMES = {
    "hashed": b"Please enter the correct username and password",
    "locked": b"Too many failed login attempts",
    "busy": b"Too many login attempts, try again in a moment",
    "page": b'name="csrfmiddlewaretoken"',
}


# --- the login loops (a process of their own, so that they do not share the latency client's event loop) ----------
async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    return int(head[0].split(" ", 2)[1]), headers, body


async def login_loop(port: int, get: bool, stop, counts: dict[str, int]) -> None:
    """Get the login form's CSRF cookie and token once, then post a wrong password (or load the form again, with
    `get`) until told to stop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    _, headers, body = await read_response(reader)
    cookie = headers["set-cookie"].split(";", 1)[0]
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    attempt = 0
    while not stop.is_set():
        attempt += 1
        form = f"csrfmiddlewaretoken={token}&username={ADMIN_USER}&password=wrong-{attempt}&next=/admin/".encode()
        request = (
            f"POST /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n"
        ).encode() + form
        if get:
            request = f"GET /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n".encode()
        writer.write(request)
        status, _, body = await read_response(reader)
        outcome = next((name for name, text in OUTCOMES.items() if text in body), f"status {status}")
        counts[outcome] = counts.get(outcome, 0) + 1
    writer.close()


def attack(port: int, loops: int, get: bool, stop, results) -> None:
    counts: dict[str, int] = {}

    async def run() -> None:
        await asyncio.gather(*(login_loop(port, get, stop, counts) for _ in range(loops)))

    asyncio.run(run())
    results.put(counts)


# --- the run ----------------------------------------------------------------------------------------------------------
def create_admin(env: dict) -> None:
    code = (
        "from django.contrib.auth import get_user_model\n"
        f"get_user_model().objects.create_superuser(username='{ADMIN_USER}', email='', password=__import__('secrets')"
        ".token_urlsafe(16))\n"
    )
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=BASE_DIR, env=env, check=True)


def figures(timings: list[float]) -> str:
    return f"p50 {statistics.median(timings):.2f} ms, p99 {percentile(timings, 0.99):.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=16, help="parallel wrong-password login loops")
    parser.add_argument("--requests", type=int, default=500, help="proxied requests per latency series")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds the loops run before measuring")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--get", action="store_true", help="the loops only load the login page, posting nothing")
    args = parser.parse_args()

    from cryptography.fernet import Fernet

    db_url, drop_database = database(f"login-{os.getpid()}")
    mock_port, server_port = free_port(), free_port()
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + os.urandom(24).hex(),
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DATABASE_URL": db_url,
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "BIND": f"127.0.0.1:{server_port}",
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "WARNING",
        "PROXY_ACCESS_LOG": "false",
        "ACCESS_LOG": "",
        **dict(item.split("=", 1) for item in args.server_env),
    }
    processes: list[subprocess.Popen] = []
    try:
        token, _ = seed(env)
        create_admin(env)
        processes.append(
            subprocess.Popen(
                [sys.executable, "tests/mock_upstream.py", "--port", str(mock_port)],
                cwd=BASE_DIR,
                stdout=subprocess.DEVNULL,
            )
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "llmproxy.asgi:application"],
            cwd=BASE_DIR,
            env=env,
        )
        processes.append(server)
        wait_for_port(mock_port, processes[0], "the mock upstream")
        wait_for_port(server_port, server, "the server")
        time.sleep(1.5)  # let every worker finish booting
        print(f"server pid {server.pid}, workers {' '.join(map(str, child_pids(server.pid)))}", flush=True)
        proxied = Target("proxied", "127.0.0.1", server_port, "/v1", f"Bearer {token}")

        alone = asyncio.run(latency(proxied, args.requests, 100))
        stop, results = multiprocessing.Event(), multiprocessing.Queue()
        attacker = multiprocessing.Process(target=attack, args=(server_port, args.loops, args.get, stop, results))
        attacker.start()
        time.sleep(args.warmup)
        started = time.perf_counter()
        attacked = asyncio.run(latency(proxied, args.requests, 0))
        seconds = time.perf_counter() - started
        stop.set()
        counts = results.get(timeout=120)
        attacker.join(30)

        engine = "PostgreSQL" if db_url.startswith("postgres") else "SQLite"
        print(f"\nProxy latency under an admin login attack — {engine}, 2 uvicorn workers, {os.cpu_count()} CPUs")
        print(f"  alone:                           {figures(alone)}")
        print(f"  with {args.loops} {'login page' if args.get else 'wrong-password'} loops: {figures(attacked)}")
        total = sum(counts.values())
        answers = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        print(
            f"  login attempts: {total} in {args.warmup + seconds:.0f} s "
            f"({total / (args.warmup + seconds):.0f}/s): {answers}"
        )
    finally:
        for process in reversed(processes):
            stop_process(process)
        drop_database()


if __name__ == "__main__":
    main()
