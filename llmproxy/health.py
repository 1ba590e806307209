"""Liveness and readiness probes: no authentication, and nothing revealed beyond ok / not ok / degraded."""

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

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
