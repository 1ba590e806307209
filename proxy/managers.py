"""How the usage writer stores a batch, exactly, on either database: records inserted once each, per-day sums
added to."""

from collections.abc import Iterable, Iterator
from datetime import UTC, date
from functools import cache
from uuid import UUID

import psycopg
from django.db import connections, models
from django.db.models.sql import Query

from .db import Together

DAILY_KEY = ("day", "project", "token", "model")
DAILY_SUMS = (
    "requests",
    "errors",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "cache_hits",
    "saved_usd",
)


def daily_sums(rows: Iterable[dict]) -> dict[tuple[date, UUID | None, UUID | None, str], list[int]]:
    """The rows of a batch summed per (UTC day, project, token, model), in the order of `DAILY_SUMS`. The tokens are
    the upstream's: an answer from the response cache counts as a request and a hit, its tokens as what it saved."""
    groups: dict[tuple[date, UUID | None, UUID | None, str], list[int]] = {}
    for row in rows:
        key = (row["time"].astimezone(UTC).date(), row.get("project_id"), row.get("token_id"), row.get("model", ""))
        sums = groups.setdefault(key, [0] * len(DAILY_SUMS))
        sums[0] += 1
        sums[1] += row["status"] >= 400
        sums[2] += bool(row.get("streamed"))
        if row.get("cached"):
            sums[7] += 1
            sums[8] += row.get("saved_usd") or 0
            continue
        sums[3] += row.get("prompt_tokens") or 0
        sums[4] += row.get("completion_tokens") or 0
        sums[5] += row.get("total_tokens") or 0
        sums[6] += row.get("cost_usd") or 0
    return groups


class UsageRecordManager(models.Manager):
    def insert_new(self, rows: list[dict]) -> set[UUID]:
        """Insert the rows whose `uid` is not there yet; the uids of those inserted (`INSERT … ON CONFLICT (uid) DO
        NOTHING RETURNING uid`, the same statement on SQLite and PostgreSQL). Keys of a row that are not columns are
        ignored, and columns a row lacks take their default."""
        connection = connections[self.db]
        if connection.vendor == "postgresql":
            return _insert_new_postgresql(self.model, connection, rows)
        qn = connection.ops.quote_name
        meta = self.model._meta
        fields = [f for f in meta.concrete_fields if not f.primary_key]
        uid = meta.get_field("uid")
        head = f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) VALUES "
        tail = f" ON CONFLICT ({qn(uid.column)}) DO NOTHING RETURNING {qn(uid.column)}"
        chunk = max((connection.features.max_query_params or 60_000) // len(fields), 1)
        placeholders = f"({', '.join(['%s'] * len(fields))})"
        inserted = set()
        with connection.cursor() as cursor:
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                params = [
                    _prepared(f, row[f.attname] if f.attname in row else f.get_default(), connection)
                    for row in part
                    for f in fields
                ]
                cursor.execute(head + ", ".join([placeholders] * len(part)) + tail, params)
                inserted.update(uid.to_python(value) for (value,) in cursor.fetchall())
        return inserted


# Fields whose values the writer's rows hold as SQLite stores them (text, numbers, booleans, None).
_PLAIN_FIELDS = (models.CharField, models.IntegerField, models.BooleanField, models.FloatField)
_PLAIN_VALUES = frozenset((str, int, float, bool))


def _prepared(field: models.Field, value: object, connection) -> object:
    """`field.get_db_prep_save(value)`, without its calls when the value is already what the column stores (a
    fifth of a usage batch's time on SQLite went to them, profiled)."""
    if value is None or (type(value) in _PLAIN_VALUES and isinstance(field, _PLAIN_FIELDS)):
        return value
    return field.get_db_prep_save(value, connection)


# Up to this many rows an insert spells one placeholder per value: psycopg dumps a scalar much faster than it works
# out an array's type, so a batch of one row cost 250 µs of the thread's CPU through `unnest` and 110 µs this way
# (two rows: 330 and 150 µs; from four rows on `unnest` is as fast or faster).
_VALUES_UP_TO = 2


@cache
def _insert_sql(model: type[models.Model], alias: str, rows: int) -> str:
    """PostgreSQL: the insert of `insert_new` for `rows` rows (0: any number, one array per column through `unnest`),
    its text the same for that number of rows: parsed once, prepared once per connection, its parameters bound."""
    conn = connections[alias]
    qn = conn.ops.quote_name
    meta = model._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    columns = ", ".join(qn(f.column) for f in fields)
    if rows:
        one = f"({', '.join(['%s'] * len(fields))})"
        source = "VALUES " + ", ".join([one] * rows)
    else:
        source = "SELECT * FROM unnest(" + ", ".join(f"%s::{f.cast_db_type(conn)}[]" for f in fields) + ")"
    uid = qn(meta.get_field("uid").column)
    return f"INSERT INTO {qn(meta.db_table)} ({columns}) {source} ON CONFLICT ({uid}) DO NOTHING RETURNING {uid}"


def _insert_new_postgresql(model: type[models.Model], connection, rows: list[dict]) -> set[UUID]:
    """`insert_new` on PostgreSQL. The rows' values are what the columns take as they are (datetimes, UUIDs, text,
    numbers, Decimals, booleans, an IP address as text), so they go without Django's per-value preparation."""
    if not rows:
        return set()
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    defaults = {f.attname: None if all(f.attname in row for row in rows) else f.get_default() for f in fields}
    if len(rows) <= _VALUES_UP_TO:
        params: list = [row.get(name, default) for row in rows for name, default in defaults.items()]
        sql = _insert_sql(model, connection.alias, len(rows))
    else:
        params = [[row.get(name, default) for row in rows] for name, default in defaults.items()]
        sql = _insert_sql(model, connection.alias, 0)
    connection.ensure_connection()
    # Errors as Django's cursors give them: a dropped connection is an OperationalError, which the database thread
    # retries on a fresh connection and the usage writer keeps its rows for (proxy.db.CONNECTION_ERRORS).
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params)
        return {value for (value,) in cursor.fetchall()}


class UsageDailyManager(models.Manager):
    def add(self, rows: Iterable[dict], together: Together | None = None) -> None:
        """Add usage rows to their days' sums: one upsert per chunk of groups, in the caller's transaction (sent with
        the caller's next statement when it passes `together`).

        Adding (`requests = requests + excluded.requests`, …) in the statement keeps the sums exact however many
        processes write at once. Groups go in key order, so two writers lock shared rows in the same order (no
        deadlock).
        """
        connection = connections[self.db]
        if together is not None:
            for sql, params in self._upserts(rows, connection):
                together.later(sql, params)
            return
        with connection.cursor() as cursor:
            for sql, params in self._upserts(rows, connection):
                cursor.execute(sql, params)

    def _upserts(self, rows: Iterable[dict], connection) -> Iterator[tuple[str, list]]:
        groups = daily_sums(rows)
        meta = self.model._meta
        key_fields = [meta.get_field(name) for name in DAILY_KEY]
        per_row = len(DAILY_KEY) + len(DAILY_SUMS)
        chunk = max((connection.features.max_query_params or 60_000) // per_row, 1)
        ordered = sorted(groups.items(), key=lambda item: tuple("" if v is None else str(v) for v in item[0]))
        head, tail = _daily_upsert_sql(self.model, connection.alias)
        for start in range(0, len(ordered), chunk):
            part = ordered[start : start + chunk]
            params = []
            for key, sums in part:
                params += [
                    field.get_db_prep_save(value, connection) for field, value in zip(key_fields, key, strict=True)
                ]
                params += sums
            values = ", ".join([f"({', '.join(['%s'] * per_row)})"] * len(part))
            yield f"{head} {values} {tail}", params


@cache
def _daily_upsert_sql(model: type[models.Model], alias: str) -> tuple[str, str]:
    """`INSERT … VALUES` and `ON CONFLICT … DO UPDATE` around the values: the same statement on SQLite and PostgreSQL.

    The conflict target is compiled from the model's unique constraint (nil UUID in place of a NULL id), just as the
    migration compiled the index, so the two always match.
    """
    conn = connections[alias]
    qn = conn.ops.quote_name
    meta = model._meta
    constraint = next(c for c in meta.constraints if c.name == "usagedaily_identity")
    query = Query(model, alias_cols=False)
    compiler = query.get_compiler(connection=conn)
    conn.ensure_connection()
    quote_value = conn.schema_editor().quote_value
    target = []
    for expression in constraint.expressions:
        sql, params = compiler.compile(expression.resolve_expression(query))
        target.append(f"({sql % tuple(quote_value(p) for p in params)})")
    table = qn(meta.db_table)
    columns = [qn(meta.get_field(name).column) for name in (*DAILY_KEY, *DAILY_SUMS)]
    sums = [qn(meta.get_field(name).column) for name in DAILY_SUMS]
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
    tail = f"ON CONFLICT ({', '.join(target)}) DO UPDATE SET " + ", ".join(
        f"{c} = {table}.{c} + excluded.{c}" for c in sums
    )
    return head, tail
