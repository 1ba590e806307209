"""Liveness and readiness probes: no authentication, and nothing revealed beyond ok / not ok."""

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

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


async def readyz(request: HttpRequest) -> JsonResponse:
    """The database answers and every migration is applied."""
    if await sync_to_async(_ready)():
        return JsonResponse({"status": "ready"})
    return JsonResponse({"status": "not ready"}, status=503)
