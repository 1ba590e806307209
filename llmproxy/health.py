"""Liveness and readiness probes: no authentication, and nothing revealed beyond ok / not ok / degraded.

`/healthz` and `/readyz` are ours; `/health`, `/ready` and `/live` answer as the Go LLM Proxy's did, for the
probes and monitors set up for it.
"""

from datetime import UTC, datetime
from functools import cache
from importlib import metadata

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse

from proxy.spill import pending_files

_migrations_applied = False


async def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving."""
    return JsonResponse({"status": "ok"})


def _ready() -> bool:
    global _migrations_applied
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        connection.ensure_connection()
        if not _migrations_applied:
            executor = MigrationExecutor(connection)
            _migrations_applied = not executor.migration_plan(executor.loader.graph.leaf_nodes())
        else:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        return _migrations_applied
    except Exception:
        return False
    finally:
        connection.close()


def usage_degraded() -> bool:
    """Usage records of this instance wait in spill files for the database (see proxy.writer)."""
    return pending_files(settings.USAGE_SPILL_DIR) > 0


async def readyz(request: HttpRequest) -> JsonResponse:
    """Ready: the database answers and every migration is applied (else 503). Degraded (still 200: requests are
    served and counted): usage records wait on local disk to be written, as after a database outage."""
    if not await sync_to_async(_ready)():
        return JsonResponse({"status": "not ready"}, status=503)
    if usage_degraded():
        return JsonResponse({"status": "degraded", "reason": "usage records are waiting to be written"})
    return JsonResponse({"status": "ready"})


@cache
def _version() -> str:
    try:
        return metadata.version("llm-proxy")
    except metadata.PackageNotFoundError:
        return "unknown"


async def health(request: HttpRequest) -> JsonResponse:
    """The original's `GET /health`: alive, with the time (RFC 3339, UTC) and the version."""
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return JsonResponse({"status": "ok", "timestamp": timestamp, "version": _version()})


async def live(request: HttpRequest) -> HttpResponse:
    """The original's `GET /live`: `alive`, as text."""
    return HttpResponse("alive", content_type="text/plain; charset=utf-8")


async def ready(request: HttpRequest) -> HttpResponse:
    """The original's `GET /ready`: `ready`, as text. Unlike the original's, it checks what `/readyz` checks, so a
    balancer stops sending requests to an instance whose database is away (503 `not ready`)."""
    if not await sync_to_async(_ready)():
        return HttpResponse("not ready", status=503, content_type="text/plain; charset=utf-8")
    return HttpResponse("ready", content_type="text/plain; charset=utf-8")
