"""Admission: one SQL statement that checks a token and counts the request, atomically, on every database.

The statement is an `UPDATE … FROM … RETURNING` whose conditions all sit on the token row being updated (and the
joined project row). On PostgreSQL under READ COMMITTED, a concurrent update of the same token makes the statement
wait for the row lock and then re-check those conditions against the new row version, so a limit of N admits
exactly N however many requests race. (A form with the conditions inside an `IN (SELECT …)` subquery would not be
re-checked and over-admits.) SQLite serialises writers, so the same statement is exact there too.

The conditions are the status rule of `tokens.models.status_conditions` for "active", plus an active project;
a test checks that both agree. Nothing here is cached: a revocation, a deactivation or a new limit bites on the
next request.

`admit_async` is what the view awaits: on PostgreSQL it runs the same statement on one of the event loop's own
async connections (proxy.db), with no hop to a thread; on SQLite it runs `admit` on the database thread. Either way
a dead connection costs one retry (proxy.db).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from django.db import connection
from django.utils import timezone

from projects.models import Project
from tokens.models import Token, TokenStatus

from . import db, errors


@dataclass(frozen=True)
class Admission:
    """What admission decided: admitted (no `refusal`, and the project's encrypted key), or refused and why. The
    token and its project are named whenever they are known, refused or not."""

    token_id: uuid.UUID | None
    project_id: uuid.UUID | None
    api_key_ciphertext: str = ""
    refusal: errors.Refusal | None = None


@cache
def _admit_sql(vendor: str) -> str:
    token, project = Token._meta.db_table, Project._meta.db_table
    if vendor == "sqlite":
        # SQLite's RETURNING may only name the updated table, so the key comes from a scalar subquery.
        returning = f"id, project_id, (SELECT k.api_key_ciphertext FROM {project} AS k WHERE k.id = project_id)"
    else:
        returning = "t.id, t.project_id, p.api_key_ciphertext"
    return (
        f"UPDATE {token} AS t SET request_count = t.request_count + 1, last_used_at = %s "
        f"FROM {project} AS p "
        "WHERE t.digest = %s AND p.id = t.project_id AND p.is_active "
        "AND t.revoked_at IS NULL AND t.expires_at > %s "
        "AND (t.max_requests IS NULL OR t.request_count < t.max_requests) "
        f"RETURNING {returning}"
    )


def _uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def admit(digest: str, now: datetime | None = None) -> Admission:
    """Admit and count one request for the token with this digest, or say why not. Runs in a worker thread."""
    now = now or timezone.now()
    stamp = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(_admit_sql(connection.vendor), [stamp, digest, stamp])
        row = cursor.fetchone()
    if row is not None:
        return Admission(token_id=_uuid(row[0]), project_id=_uuid(row[1]), api_key_ciphertext=row[2])
    return why_refused(digest, now)


async def admit_async(digest: str) -> Admission:
    """`admit`, awaited from the event loop. The rare refusal is explained on the database thread."""
    if not db.is_postgresql():
        return await db.run(admit, digest)
    now = timezone.now()

    async def statement(conn):
        cursor = await conn.execute(_admit_sql("postgresql"), [now, digest, now])
        return await cursor.fetchone()

    row = await db.on_loop_connection(statement)
    if row is not None:
        return Admission(token_id=row[0], project_id=row[1], api_key_ciphertext=row[2])
    return await db.run(why_refused, digest, now)


def why_refused(digest: str, now: datetime) -> Admission:
    """The one follow-up query: which rule refused the token (in the order the status rule gives)."""
    token = (
        Token.objects.filter(digest=digest)
        .only("id", "project_id", "revoked_at", "expires_at", "max_requests", "request_count", "project__is_active")
        .select_related("project")
        .first()
    )
    if token is None:
        return Admission(token_id=None, project_id=None, refusal=errors.unknown_token())
    status = token.status_at(now)
    if status == TokenStatus.REVOKED:
        refusal = errors.token_revoked()
    elif status == TokenStatus.EXPIRED:
        refusal = errors.token_expired()
    elif not token.project.is_active:
        refusal = errors.project_inactive()
    else:
        # Limit reached; or, in a race with an operator raising it between the two statements, usable again: the
        # next request is admitted.
        refusal = errors.request_limit_reached(token.max_requests or token.request_count)
    return Admission(token_id=token.id, project_id=token.project_id, refusal=refusal)
