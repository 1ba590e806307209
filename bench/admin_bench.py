"""Times every admin page at scale: seeds a separate database once, then prints each page's response time.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/admin_bench.py

With a PostgreSQL DATABASE_URL it works in a database of its own on that server (`llmproxy_bench`, created and
seeded on first use, kept for later runs; `--reseed` starts again); otherwise in data/bench-admin.sqlite3. The
default scale is the issue's: 1,000 projects, 100,000 tokens, 2,000,000 usage records. Pages are requested through
Django's test client in this process (no network), logged in as a superuser, with production settings (DEBUG off).
Target: every page under 300 ms.
"""

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

BASE_DIR = Path(__file__).resolve().parent.parent
BENCH_DB = "llmproxy_bench"
TARGET_MS = 300


def bench_database_url(url: str, reseed: bool) -> str:
    if not url.startswith(("postgres://", "postgresql://")):
        path = BASE_DIR / "data" / "bench-admin.sqlite3"
        if reseed:
            path.unlink(missing_ok=True)
        return f"sqlite:///{path}"
    parts = urlsplit(url)
    with psycopg.connect(url, autocommit=True) as conn:
        if reseed:
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}"')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone():
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=1_000)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--usage", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reseed", action="store_true", help="drop the bench database and seed it again")
    args = parser.parse_args()

    url = bench_database_url(os.environ.get("DATABASE_URL", ""), args.reseed)
    os.environ.update(DATABASE_URL=url, DEBUG="0", ALLOWED_HOSTS="testserver", LOG_LEVEL="WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from projects.models import Project
    from proxy.models import UsageRecord
    from tokens.models import Token

    call_command("migrate", verbosity=0)
    if not Project.objects.exists():
        print(f"Seeding {args.projects} projects, {args.tokens} tokens, {args.usage} usage records (once)…")
        started = time.perf_counter()
        call_command("seed_scale_data", projects=args.projects, tokens=args.tokens, usage=args.usage)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")
        print(f"Seeded in {time.perf_counter() - started:.0f} s")

    user = get_user_model().objects.filter(username="bench").first() or get_user_model().objects.create_superuser(
        "bench", "", "bench"
    )
    client = Client()
    client.force_login(user)

    project = Project.objects.order_by("name").first()
    token = Token.objects.filter(project=project).first() or Token.objects.first()
    record = UsageRecord.objects.order_by("-time").first()
    week_ago = (datetime.date.today() - datetime.timedelta(days=6)).isoformat()
    pages = [
        ("dashboard", "/admin/"),
        ("projects list", "/admin/projects/project/"),
        ("projects search", "/admin/projects/project/?q=Load+project+00042"),
        ("projects inactive", "/admin/projects/project/?status=inactive"),
        ("projects by tokens", "/admin/projects/project/?o=-3"),
        ("project page", f"/admin/projects/project/{project.pk}/change/"),
        ("tokens list", "/admin/tokens/token/"),
        ("tokens active", "/admin/tokens/token/?status=active"),
        ("tokens of project", f"/admin/tokens/token/?project__id__exact={project.pk}"),
        ("tokens search prefix", f"/admin/tokens/token/?q={token.prefix}"),
        ("tokens by requests", "/admin/tokens/token/?o=-3"),
        ("token page", f"/admin/tokens/token/{token.pk}/change/"),
        ("request log", "/admin/proxy/usagerecord/"),
        ("request log of project", f"/admin/proxy/usagerecord/?project__id__exact={project.pk}"),
        ("request log of token", f"/admin/proxy/usagerecord/?token={token.pk}"),
        ("request log 5xx", "/admin/proxy/usagerecord/?status_class=5xx"),
        ("request log 3xx (none)", "/admin/proxy/usagerecord/?status_class=3xx"),
        ("request log of a model", "/admin/proxy/usagerecord/?model=gpt-4o"),
        ("request log 7 days", f"/admin/proxy/usagerecord/?since={week_ago}"),
        ("request log by id", f"/admin/proxy/usagerecord/?q={record.request_id}"),
        ("request page", f"/admin/proxy/usagerecord/{record.pk}/change/"),
        ("security events", "/admin/llmproxy/securityevent/"),
        ("audit log", "/admin/auditlog/logentry/"),
    ]
    print(f"{'page':26} {'status':>6} {'median ms':>10} {'max ms':>8}")
    slow = 0
    for name, path in pages:
        client.get(path)  # warm-up
        timings, status = [], 0
        for _ in range(args.runs):
            started = time.perf_counter()
            status = client.get(path).status_code
            timings.append((time.perf_counter() - started) * 1000)
        median = statistics.median(timings)
        flag = "" if median < TARGET_MS and status == 200 else "  <-- over target" if status == 200 else "  <-- error"
        slow += bool(flag)
        print(f"{name:26} {status:>6} {median:>10.1f} {max(timings):>8.1f}{flag}")
    scale = f"{Project.objects.count()} projects, {Token.objects.count()} tokens"
    print(f"{connection.vendor}, {scale}: {slow} page(s) over {TARGET_MS} ms or failing")


if __name__ == "__main__":
    main()
