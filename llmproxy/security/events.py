"""Recording security events, flood-proof.

Identical events within one hour are one row whose `count` grows, written by a single atomic upsert, so an attacker
repeating a request (or varying a made-up token) adds no rows. An event's identity is its kind, reason, client
address, attempted user name, hour, and the token it concerns, or else the project, when known. The prefix of an
unknown or malformed token is chosen by whoever sends it, so it is not part of the identity: the row keeps the last
one seen as a sample (and the last detail).
"""

import ipaddress
import logging
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection, connections, transaction
from django.db.models.sql import Query
from django.utils import timezone

from projects.models import Project
from tokens import secret
from tokens.models import Token

from .models import SecurityEvent, SecurityEventKind, SecurityEventReason
from .scrub import scrub_secrets

logger = logging.getLogger(__name__)

USERNAME_MAX_LENGTH = SecurityEvent._meta.get_field("username").max_length
DETAIL_MAX_LENGTH = SecurityEvent._meta.get_field("detail").max_length
UPSERT_FIELDS = [
    *("kind", "reason", "client_ip", "username", "hour", "token", "project"),
    *("token_prefix", "detail", "first_seen", "last_seen"),
]


def record_security_event(
    *,
    kind: str,
    reason: str = "",
    client_ip: str | None,
    token: Token | None = None,
    project: Project | None = None,
    token_prefix: str = "",
    username: str = "",
    detail: str = "",
    count: int = 1,
) -> None:
    """Count one security event (one cheap statement; safe in a request thread; sync, so async code wraps it in
    `sync_to_async`).

    - `kind`: a `SecurityEventKind` value; `reason`: a `SecurityEventReason` value or "" (ValueError otherwise).
    - `client_ip`: the peer address (`REMOTE_ADDR`), never a client-supplied header; anything that is not an IP
      address is stored as "".
    - `token` / `project`: what the refused credential belongs to, when known (a token implies its project).
    - `token_prefix`: what the client presented, cut to the display prefix here, so passing the whole presented
      string is safe; defaults to the token's prefix.
    - `username`: the user name attempted (admin logins); `detail`: a short note. Both are truncated, and anything
      resembling a key or token in them is cut to its display prefix. Never pass a password.
    - `count`: how many identical events this call counts (a writer that batches them counts them at once).

    A database failure is logged, not raised: a refusal must not turn into a server error.
    """
    kind = SecurityEventKind(kind)
    if count < 1:
        raise ValueError("count must be at least 1")
    reason = SecurityEventReason(reason).value if reason else ""
    project_id = project.pk if project is not None else None
    if token is not None:
        project_id = project_id or token.project_id
        token_prefix = token_prefix or token.prefix
    now = timezone.now()
    values = {
        "kind": kind.value,
        "reason": reason,
        "client_ip": normalise_ip(client_ip),
        "username": _scrub(username, USERNAME_MAX_LENGTH),
        "hour": now.replace(minute=0, second=0, microsecond=0),
        "token": token.pk if token is not None else None,
        "project": project_id,
        "token_prefix": "".join(c for c in token_prefix if c.isprintable())[: secret.TOKEN.display_length],
        "detail": _scrub(detail, DETAIL_MAX_LENGTH),
        "first_seen": now,
        "last_seen": now,
    }
    identity = "token" if token is not None else "project" if project_id is not None else "anonymous"
    sql = _upsert_sql(connection.alias, f"secevent_identity_{identity}")
    meta = SecurityEvent._meta
    params = [meta.get_field(name).get_db_prep_save(values[name], connection) for name in UPSERT_FIELDS]
    params.append(count)
    # Inside a caller's transaction a savepoint keeps a failure here from breaking that transaction.
    savepoint = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with savepoint, connection.cursor() as cursor:
            cursor.execute(sql, params)
    except DatabaseError:
        logger.warning("could not record security event %s/%s", kind.value, reason or "-", exc_info=True)


@dataclass(frozen=True)
class Occurrence:
    """One event, as a writer that sees many at once (the proxy's usage writer) hands it over."""

    kind: str
    reason: str
    client_ip: str | None
    token_id: UUID | None = None
    project_id: UUID | None = None
    token_prefix: str = ""


def record_security_events(occurrences: Iterable[Occurrence]) -> None:
    """Count many events: identical ones (same identity) by one upsert, all in one transaction (a savepoint in the
    caller's: the proxy's usage writer counts a batch's events with its records).

    A database failure is logged, not raised, as for `record_security_event`.
    """
    grouped: dict[tuple, list] = {}  # identity -> [count, the last token prefix seen]
    for o in occurrences:
        entry = grouped.setdefault((o.kind, o.reason, o.client_ip, o.token_id, o.project_id), [0, ""])
        entry[0] += 1
        entry[1] = o.token_prefix
    if not grouped:
        return
    try:
        with transaction.atomic():
            for (kind, reason, client_ip, token_id, project_id), (count, prefix) in grouped.items():
                record_security_event(
                    kind=kind,
                    reason=reason,
                    client_ip=client_ip,
                    token=Token(pk=token_id, project_id=project_id) if token_id else None,
                    project=Project(pk=project_id) if project_id else None,
                    token_prefix=prefix,
                    count=count,
                )
    except DatabaseError:
        logger.exception("could not record a batch of security events")


@cache
def _upsert_sql(alias: str, identity: str) -> str:
    """INSERT … ON CONFLICT (one identity index) DO UPDATE: the same statement on SQLite and PostgreSQL.

    The conflict target (columns and partial-index condition) is compiled from the model's own unique constraint,
    so it always matches the index the migration created.
    """
    conn = connections[alias]
    qn = conn.ops.quote_name
    meta = SecurityEvent._meta
    constraint = next(c for c in meta.constraints if c.name == identity)
    query = Query(SecurityEvent, alias_cols=False)
    condition, condition_params = query.build_where(constraint.condition).as_sql(query.get_compiler(alias), conn)
    if condition_params:
        raise ImproperlyConfigured(f"{identity}: the upsert needs a condition without parameters")

    def col(name: str) -> str:
        return qn(meta.get_field(name).column)

    table, count, last_seen = qn(meta.db_table), col("count"), col("last_seen")
    return (
        f"INSERT INTO {table} ({', '.join(col(f) for f in UPSERT_FIELDS)}, {count}) "
        f"VALUES ({', '.join(['%s'] * (len(UPSERT_FIELDS) + 1))}) "
        f"ON CONFLICT ({', '.join(col(f) for f in constraint.fields)}) WHERE {condition} "
        f"DO UPDATE SET {count} = {table}.{count} + excluded.{count}, "
        f"{last_seen} = CASE WHEN excluded.{last_seen} > {table}.{last_seen} "
        f"THEN excluded.{last_seen} ELSE {table}.{last_seen} END, "
        f"{col('token_prefix')} = excluded.{col('token_prefix')}, {col('detail')} = excluded.{col('detail')}"
    )


def normalise_ip(value: str | None) -> str:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        return ""


def _scrub(value: str, max_length: int) -> str:
    return scrub_secrets(str(value))[:max_length]
