"""The shared benchmark (`../shared/bench/run_compare.sh`) on this proxy: `python bench/compare.py` (or
`make bench-compare`).

It prepares a fresh database (PostgreSQL when DATABASE_URL names one, in a database of its own named after this
process, else a new SQLite file under data/; dropped at the end), migrates it, creates a project for the harness's
mock upstream (`http://127.0.0.1:$MOCK_PORT/v1`, the global UPSTREAM_BASE_URL, with the key the mock expects) and an
unlimited token, then runs the harness with the server as in production: gunicorn with 2 uvicorn workers, DEBUG off,
the proxy's access log and metrics on. The harness starts the server after its mock and stops it at the end.

SHARED_BENCH names the harness's folder (default `../shared/bench` beside this repository); QUICK, ROUNDS,
BENCH_SCENARIOS and the harness's other settings pass through. LiteLLM is left out unless WITH_LITELLM=1.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR / "bench"))
sys.path.insert(0, str(BASE_DIR))

from proxy_bench import database, migrate_and_run  # noqa: E402

from tests.live import free_port  # noqa: E402

MOCK_KEY = "sk-mock-upstream-key"


def seed(env: dict, checkout: Path = BASE_DIR) -> str:
    """Migrate, then a project and an unlimited token for the mock; the token's plaintext."""
    code = (
        "from datetime import timedelta\n"
        "from llmproxy.audit import Actor\n"
        "from projects.services import project_create\n"
        "from tokens.services import token_generate\n"
        "actor = Actor.cli('bench-compare')\n"
        f"project = project_create(name='Shared bench', api_key={MOCK_KEY!r}, actor=actor)\n"
        "print(token_generate(project=project, duration=timedelta(hours=4), actor=actor).plaintext)\n"
    )
    return migrate_and_run(env, code, checkout)[-1]


# The server as in production: gunicorn with uvicorn workers (gunicorn.conf.py), run from a checkout's folder.
SERVER = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "llmproxy.asgi:application"]


def harness_folder() -> Path:
    return Path(os.environ.get("SHARED_BENCH") or BASE_DIR.parent / "shared" / "bench").resolve()


def server_env(db_url: str, mock_port: int | str, port: int) -> dict:
    """The server's settings: 2 workers, DEBUG off, the proxy's access log and metrics on, the mock as upstream."""
    from cryptography.fernet import Fernet

    return {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + os.urandom(24).hex(),
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DATABASE_URL": db_url,
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "",
        "PROXY_ACCESS_LOG": "true",
        "METRICS_ENABLED": "true",
    }


def main() -> int:
    harness = harness_folder()
    script = harness / "run_compare.sh"
    if not script.is_file():
        print(f"no shared benchmark at {harness} (set SHARED_BENCH)", file=sys.stderr)
        return 2
    mock_port = os.environ.get("MOCK_PORT", "18080")
    port = free_port()
    db_url, drop_database = database(f"compare_{os.getpid()}")
    env = server_env(db_url, mock_port, port)
    try:
        token = seed(env)
        engine = "pg" if db_url.startswith("postgres") else "sqlite"
        env |= {
            "TARGET_URL": f"http://127.0.0.1:{port}",
            "TARGET_TOKEN": token,
            "TARGET_NAME": os.environ.get("TARGET_NAME", "llmproxy-" + engine),
            # `exec`, so the pid the harness accounts CPU to is gunicorn's master (its workers are its children).
            "TARGET_CMD": f"cd {shlex.quote(str(BASE_DIR))} && exec {shlex.join(SERVER)}",
        }
        if os.environ.get("WITH_LITELLM", "") in ("", "0"):
            env["SKIP_LITELLM"] = "1"
        return subprocess.run([str(script)], env=env).returncode
    finally:
        drop_database()


if __name__ == "__main__":
    sys.exit(main())
