"""Admission: one atomic step that checks a token, its project and their limits, and counts the request.

It admits when the token is known, not revoked, not expired, under its request limit, its project is active, and
neither the token nor the project has reached its per-minute request limit, its per-minute token limit or its
dollar budget. When a limit on the number of requests applies (the token's total or per-minute limit, the project's
per-minute limit), it then counts the request (the token's total and its minute, and the project's minute when the
project has a per-minute request limit). Everything is read and written in one statement, so every limit is exact
however many workers and instances serve the traffic; nothing here is cached, so a revocation, a deactivation or a
new limit bites on the next request.

A request no such limit applies to is only read: no row lock, no write, no commit to wait for (on PostgreSQL its
WAL flush was half an admission's time, and every request of a token queued on its row). Its count (the token's
`request_count` and `last_used_at`, which no limit then depends on) is added by the usage writer with its record
(`Allowance.counted` False, the record's `count_later`), as its cost is: within the writer's batch interval, and in
the same transaction as the record, so a count is never lost nor doubled apart from its record. A request limit
set on such a token later counts them all, but for those admitted in the instant before it whose records are not
written yet: a limit set while the token is busy can be passed by those few.

On PostgreSQL it is one statement. `seen` reads the token and its project with every condition; for a request to
count, `ok` reads them again with `FOR UPDATE OF t`, which locks the token row, so a concurrent admission of the same
token waits and the conditions are re-checked against the row it committed; then the `UPDATE` of the project's
minute (re-checked the same way against the project row) and the `UPDATE` of the token that depends on it. (A form
that checks in an `IN (SELECT …)` subquery without the lock would not be re-checked and over-admits.) A project
without a per-minute request limit is not written at all, so its tokens do not queue on its row. The event loop
runs `seen` alone first (`_read_sql`), unless the token was counted the last time this process admitted it: a
request no limit applies to is admitted by that read, and one to count goes on through the whole statement, which
checks everything again. The whole statement's data-modifying parts prepare their tables for writing even when
they write nothing: the read costs the database about 100 µs less per admission. On SQLite, which
lets one writer in at a time, the read runs on the event loop's own connection (a reader never waits in WAL mode),
and the checks and counts of a request to count are one IMMEDIATE transaction.

The statement also returns where the request goes (the project's upstream URL, auth style and encrypted key), its
response cache mode and lifetime, and the policy lists of the project and the token, as the JSON text stored
(projects.policy compiles each distinct text once): so a change of upstream, cache or policy, like a revocation,
bites on the next request, with no copy to go stale.

The token's conditions are the status rule of `tokens.models.status_conditions` for "active", plus an active
project; a test checks that both agree. Tokens-per-minute and dollars are known only after a response: admission
refuses once they have reached their limit, and `proxy.settlement` charges them before the response ends.

`admit_async` is what the view awaits: on PostgreSQL the statement runs on one of the event loop's own async
connections (proxy.db), with no hop to a thread. On SQLite the counting admissions waiting for the database thread
are run together, each its own statements as above, in one IMMEDIATE transaction (proxy.db.run_grouped); when the
thread has nothing to do (a quiet worker), the transaction runs on the event loop's own connection instead, if
SQLite's lock is free that instant, which spares the hop's two thread wake-ups. Either way a dead connection costs
one retry (proxy.db).
"""

import asyncio
import contextlib
import re
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from projects.limits import minute_key, minute_reset_seconds, period_keys
from projects.models import Project
from projects.policy import UNRESTRICTED, RequestPolicy, request_policy
from projects.upstreams import base_url
from tokens.models import Token, TokenStatus

from . import db, errors, libpq
from .batches import Batches
from .loops import of_this_loop


@dataclass(frozen=True)
class Allowance:
    """What is left of the per-minute limits after this request (the tighter of the token's and the project's), for
    the response's `x-ratelimit-*` headers, and what the request's end must settle."""

    minute: int
    reset_seconds: int
    requests_limit: int | None = None
    requests_remaining: int | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    budgeted: bool = False  # a dollar budget applies (the token's or the project's): the model must have a price
    project_minute: bool = False  # the project's minute was counted (it has a per-minute request limit)
    # Admission counted the request, as a request limit needs (see the module's doc); else the usage writer counts
    # it with its record, and there is nothing to give back.
    counted: bool = True

    @property
    def charges_before_end(self) -> bool:
        """The request's tokens and cost are charged before its response ends, so the next request sees them."""
        return self.budgeted or self.tokens_limit is not None

    def headers(self) -> dict[str, str]:
        headers = {}
        reset = f"{self.reset_seconds}s"
        if self.requests_limit is not None:
            headers["x-ratelimit-limit-requests"] = str(self.requests_limit)
            headers["x-ratelimit-remaining-requests"] = str(self.requests_remaining)
            headers["x-ratelimit-reset-requests"] = reset
        if self.tokens_limit is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tokens_limit)
            headers["x-ratelimit-remaining-tokens"] = str(self.tokens_remaining)
            headers["x-ratelimit-reset-tokens"] = reset
        return headers


@dataclass(frozen=True)
class Admission:
    """What admission decided: admitted (no `refusal`; where to and how: the project's upstream, its encrypted key,
    the policy in force and the allowance), or refused and why. The token and its project are named whenever they
    are known, refused or not."""

    token_id: uuid.UUID | None
    project_id: uuid.UUID | None
    api_key_ciphertext: str = ""
    refusal: errors.Refusal | None = None
    allowance: Allowance | None = None
    base_url: str = ""
    upstream_auth: str = ""
    policy: RequestPolicy = UNRESTRICTED
    cache_mode: str = "off"  # the project's response cache (proxy.cache)
    cache_ttl: int = 0


# --- the statement ------------------------------------------------------------------------------------------------

# The policy lists (projects.policy), as the JSON text stored: the order of `request_policy`'s parameters.
_POLICY_COLUMNS = ("p_models", "p_aliases", "p_endpoints", "p_origins", "p_ips", "t_models", "t_ips")
_POLICY_SOURCES = (
    "p.allowed_models",
    "p.model_aliases",
    "p.allowed_endpoints",
    "p.allowed_origins",
    "p.allowed_ips",
    "t.allowed_models",
    "t.allowed_ips",
)
_POLICY_NAMED = tuple(zip(_POLICY_SOURCES, _POLICY_COLUMNS, strict=True))

_RETURNED = (
    "token_id",
    "project_id",
    "api_key_ciphertext",
    "max_requests",
    "t_rpm",
    "t_rpm_count",
    "p_rpm",
    "p_rpm_count",
    "t_tpm",
    "t_tpm_used",
    "p_tpm",
    "p_tpm_used",
    "t_budget",
    "p_budget",
    "upstream_url",
    "upstream_auth",
    *_POLICY_COLUMNS,
    "cache_mode",
    "cache_ttl",
    "counted",
)

_CONDITIONS = """
    t.digest = %(digest)s AND p.id = t.project_id AND p.is_active
    AND t.revoked_at IS NULL AND t.expires_at > %(now)s
    AND (t.max_requests IS NULL OR t.request_count < t.max_requests)
    AND (t.requests_per_minute IS NULL OR t.rpm_minute <> %(minute)s OR t.rpm_count < t.requests_per_minute)
    AND (p.requests_per_minute IS NULL OR p.rpm_minute <> %(minute)s OR p.rpm_count < p.requests_per_minute)
    AND (t.tokens_per_minute IS NULL OR t.tpm_minute <> %(minute)s OR t.tpm_count < t.tokens_per_minute)
    AND (p.tokens_per_minute IS NULL OR p.tpm_minute <> %(minute)s OR p.tpm_count < p.tokens_per_minute)
    AND (t.budget_usd IS NULL OR t.spent_usd < t.budget_usd)
    AND (p.budget_usd IS NULL OR p.spent_usd < p.budget_usd OR p.spend_period <> CASE p.budget_period
        WHEN 'day' THEN %(day)s WHEN 'week' THEN %(week)s WHEN 'month' THEN %(month)s ELSE 0 END)
"""

# Whether the request must be counted as it is admitted: a limit on the number of requests applies to it.
_COUNTS = "(t.max_requests IS NOT NULL OR t.requests_per_minute IS NOT NULL OR p.requests_per_minute IS NOT NULL)"

# The minute's count after this request: the stored one when it is this minute's, else a new minute's first.
_NEXT_MINUTE = "CASE WHEN {t}rpm_minute = %(minute)s THEN {t}rpm_count + 1 ELSE 1 END"
_USED = "CASE WHEN {t}tpm_minute = %(minute)s THEN {t}tpm_count ELSE 0 END"


def _selected() -> str:
    """What admission reads of the token and its project, in the order of `_RETURNED` but for `counted` (the
    project's minute is counted after the read: NULL here)."""
    return f"""t.id AS token_id, t.project_id, p.api_key_ciphertext, t.max_requests,
        t.requests_per_minute AS t_rpm, {_NEXT_MINUTE.format(t="t.")} AS t_rpm_count, p.requests_per_minute AS p_rpm,
        NULL AS p_rpm_count, t.tokens_per_minute AS t_tpm, {_USED.format(t="t.")} AS t_tpm_used,
        p.tokens_per_minute AS p_tpm, {_USED.format(t="p.")} AS p_tpm_used,
        t.budget_usd AS t_budget, p.budget_usd AS p_budget, p.upstream_url, p.upstream_auth,
        {", ".join(f"CAST({source} AS text) AS {name}" for source, name in _POLICY_NAMED)},
        p.cache_mode, p.cache_ttl_seconds AS cache_ttl"""


@cache
def _postgresql_sql() -> str:
    token, project = Token._meta.db_table, Project._meta.db_table
    before_counts = ", ".join(f"seen.{name}" for name in _RETURNED[:5])
    between_counts = ", ".join(f"seen.{name}" for name in _RETURNED[6:7])
    after_counts = ", ".join(f"seen.{name}" for name in _RETURNED[8:-1])
    return f"""
WITH seen AS (
    SELECT {_selected()}, {_COUNTS} AS counts
    FROM {token} AS t, {project} AS p
    WHERE {_CONDITIONS}
), ok AS (
    SELECT t.id AS token_id, t.project_id, p.requests_per_minute AS p_rpm
    FROM {token} AS t, {project} AS p
    WHERE t.id = (SELECT token_id FROM seen WHERE counts) AND {_CONDITIONS}
    FOR UPDATE OF t
), minute AS (
    UPDATE {project} AS p SET rpm_count = {_NEXT_MINUTE.format(t="p.")}, rpm_minute = %(minute)s
    FROM ok
    WHERE p.id = ok.project_id AND ok.p_rpm IS NOT NULL
        AND (p.rpm_minute <> %(minute)s OR p.rpm_count < p.requests_per_minute)
    RETURNING p.rpm_count
), counted AS (
    UPDATE {token} AS t SET request_count = t.request_count + 1, last_used_at = %(now)s,
        rpm_count = {_NEXT_MINUTE.format(t="t.")}, rpm_minute = %(minute)s
    FROM ok
    WHERE t.id = ok.token_id AND (ok.p_rpm IS NULL OR EXISTS (SELECT 1 FROM minute))
    RETURNING t.id, t.rpm_count
)
SELECT {before_counts}, counted.rpm_count, {between_counts}, (SELECT rpm_count FROM minute), {after_counts}, TRUE
FROM seen JOIN counted ON counted.id = seen.token_id
UNION ALL
SELECT {before_counts}, seen.t_rpm_count, {between_counts}, NULL, {after_counts}, FALSE
FROM seen WHERE NOT seen.counts
"""


@cache
def _read_sql() -> str:
    """What `_postgresql_sql`'s `seen` reads, alone, its last value whether the request is to be counted: the whole
    admission of a request no request limit applies to (its last value, False, is then the row's `counted`)."""
    token, project = Token._meta.db_table, Project._meta.db_table
    return f"SELECT {_selected()}, {_COUNTS} FROM {token} AS t, {project} AS p WHERE {_CONDITIONS}"


@cache
def _postgresql_native(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """A statement with PostgreSQL's own placeholders (`$1`…) and the parameters' names in their order, as libpq
    sends it (proxy.libpq)."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql).encode(), tuple(names)


@cache
def _sqlite_sql() -> tuple[str, str, str]:
    """The read (what `_postgresql_sql`'s `seen` is), then, for a request to count, the token's update (its RETURNING
    may only name the updated table: the project's values are subqueries) and the project minute's, in one IMMEDIATE
    transaction."""
    token, project = Token._meta.db_table, Project._meta.db_table

    def of_project(expression: str) -> str:
        return f"(SELECT {expression} FROM {project} AS p WHERE p.id = project_id)"

    admit = f"""
UPDATE {token} AS t SET request_count = t.request_count + 1, last_used_at = %(now)s,
    rpm_count = {_NEXT_MINUTE.format(t="t.")}, rpm_minute = %(minute)s
FROM {project} AS p
WHERE {_CONDITIONS}
RETURNING id, project_id, {of_project("api_key_ciphertext")}, max_requests, requests_per_minute, rpm_count,
    {of_project("requests_per_minute")}, NULL, tokens_per_minute, {_USED.format(t="")},
    {of_project("tokens_per_minute")}, {of_project(_USED.format(t="p."))}, budget_usd, {of_project("budget_usd")},
    {of_project("upstream_url")}, {of_project("upstream_auth")},
    {", ".join(of_project(source[2:]) if source.startswith("p.") else source[2:] for source in _POLICY_SOURCES)},
    {of_project("cache_mode")}, {of_project("cache_ttl_seconds")}
"""
    minute = f"""
UPDATE {project} SET rpm_count = {_NEXT_MINUTE.format(t="")}, rpm_minute = %(minute)s
WHERE id = %(project_id)s RETURNING rpm_count
"""
    return _read_sql(), admit, minute


def _params(digest: str, now: datetime, stamp) -> dict:
    return {"digest": digest, "now": stamp, "minute": minute_key(now), **period_keys(now)}


def _text(value: bytes) -> str:
    return value.decode()


def _true(value: bytes) -> bool:
    return value == b"t"


def _decimal_text(value: bytes) -> Decimal:
    return Decimal(value.decode())


_INTEGERS = ("max_requests", "t_rpm", "t_rpm_count", "p_rpm", "p_rpm_count", "t_tpm", "t_tpm_used", "p_tpm")
_READ_TEXT = {"t_budget": _decimal_text, "p_budget": _decimal_text, "counted": _true}
_READ_TEXT |= dict.fromkeys((*_INTEGERS, "p_tpm_used", "cache_ttl"), int)
# How each of the statement's values reads from PostgreSQL's text form (proxy.libpq), in the order of `_RETURNED`;
# the rest (the ids too, as `_uuid` takes them) is text.
_FROM_TEXT = tuple(_READ_TEXT.get(name, _text) for name in _RETURNED)


def _from_text(row: tuple[bytes | None, ...]) -> tuple:
    return tuple(None if value is None else read(value) for read, value in zip(_FROM_TEXT, row, strict=True))


def _uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _decimal(value) -> Decimal | None:
    return None if value is None else Decimal(str(value))


_ADMITTED_KEPT = 1024
_admitted_rows: dict[tuple, Admission] = {}


def _admitted(row: tuple, now: datetime, read: Callable[[tuple], tuple] | None = None) -> Admission:
    """The admission the statement's row says, within this second of this minute: an identical row (a token with no
    per-minute limit has the same row request after request) gives the same (frozen) Admission, built once. The
    statement still runs for every request: this spares only building the objects again (5 % of a worker's CPU at
    c=32, profiled). `read` turns a row as it came (PostgreSQL's text: `_from_text`) into its values, only when its
    admission is not known yet: converting the 26 values for every request took 8 µs."""
    minute, reset = minute_key(now), minute_reset_seconds(now)
    key = (row, minute, reset)
    found = _admitted_rows.get(key)
    if found is None:
        if len(_admitted_rows) >= _ADMITTED_KEPT:
            _admitted_rows.clear()
        found = _admitted_rows[key] = _admission_of(row if read is None else read(row), minute, reset)
    return found


def _admission_of(row: tuple, minute: int, reset: int) -> Admission:
    values = dict(zip(_RETURNED, row, strict=True))
    t_rpm, p_rpm, t_tpm, p_tpm = values["t_rpm"], values["p_rpm"], values["t_tpm"], values["p_tpm"]
    requests = [
        (limit, limit - count)
        for limit, count in ((t_rpm, values["t_rpm_count"]), (p_rpm, values["p_rpm_count"]))
        if limit
    ]
    tokens = [
        (limit, max(limit - used, 0))
        for limit, used in ((t_tpm, values["t_tpm_used"]), (p_tpm, values["p_tpm_used"]))
        if limit
    ]
    requests_limit, requests_remaining = min(requests, key=lambda pair: pair[1]) if requests else (None, None)
    tokens_limit, tokens_remaining = min(tokens, key=lambda pair: pair[1]) if tokens else (None, None)
    allowance = Allowance(
        minute=minute,
        reset_seconds=reset,
        requests_limit=requests_limit,
        requests_remaining=requests_remaining,
        tokens_limit=tokens_limit,
        tokens_remaining=tokens_remaining,
        budgeted=values["t_budget"] is not None or values["p_budget"] is not None,
        project_minute=p_rpm is not None,
        counted=bool(values["counted"]),
    )
    return Admission(
        token_id=_uuid(values["token_id"]),
        project_id=_uuid(values["project_id"]),
        api_key_ciphertext=values["api_key_ciphertext"],
        allowance=allowance,
        base_url=base_url(values["upstream_url"]),
        upstream_auth=values["upstream_auth"],
        policy=request_policy(*(values[name] for name in _POLICY_COLUMNS)),
        cache_mode=values["cache_mode"],
        cache_ttl=values["cache_ttl"],
    )


def admit(digest: str, now: datetime | None = None) -> Admission:
    """Admit and count one request for the token with this digest, or say why not (a database thread; SQLite)."""
    now = now or timezone.now()
    params = _params(digest, now, connection.ops.adapt_datetimefield_value(now))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_postgresql_sql(), params)
            row = cursor.fetchone()
    else:
        with transaction.atomic():
            row = _sqlite_row(params)
    if row is not None:
        return _admitted(row, now)
    return why_refused(digest, now)


def admit_in_transaction(digest: str) -> Admission:
    """SQLite: `admit` inside the caller's (IMMEDIATE) transaction: the transaction of the admissions waiting
    together (proxy.db.run_grouped), so what the caller writes next commits with the count (proxy.cache_store: a
    cache hit's count)."""
    now = timezone.now()
    row = _sqlite_row(_params(digest, now, _sqlite_stamp(now)))
    if row is not None:
        return _admitted(row, now)
    return why_refused(digest, now)


def _sqlite_row(params: dict) -> tuple | None:
    """The statements on the connection's own sqlite3 connection, in the caller's transaction: Django's cursor
    would rewrite each statement's named parameters with a regular expression every time."""
    connection.ensure_connection()
    raw = connection.connection
    return _sqlite_statements(lambda sql, values: raw.execute(sql, values).fetchone(), params)


Fetch = Callable[[str, dict], tuple | None]  # runs a statement on the caller's connection, returns its first row


def _sqlite_statements(fetch: Fetch, params: dict) -> tuple | None:
    """The read, and for a request to count the counting statements; the row (None: refused)."""
    row = fetch(_sqlite_named_sql()[0], params)
    if row is None or not row[-1]:
        return row
    return _sqlite_counted(fetch, params)


def _sqlite_counted(fetch: Fetch, params: dict) -> tuple | None:
    """The token's update (which checks every condition again), then the project minute's when it has a per-minute
    request limit; the row (None: refused)."""
    _, admit_sql, minute_sql = _sqlite_named_sql()
    row = fetch(admit_sql, params)
    if row is not None and row[_RETURNED.index("p_rpm")] is not None:
        minute = fetch(minute_sql, {**params, "project_id": row[1]})[0]
        row = (*row[:7], minute, *row[8:])
    return row if row is None else (*row, True)


@cache
def _sqlite_named_sql() -> tuple[str, str, str]:
    """`_sqlite_sql` for a plain sqlite3 connection (named parameters, as Django's SQLite cursor converts them)."""
    names = ("digest", "now", "minute", "day", "week", "month", "project_id")
    return tuple(sql % {name: f":{name}" for name in names} for sql in _sqlite_sql())


@cache
def _sqlite_operations():
    """Django's SQLite operations, for how a datetime is bound: read once, as the event loop's `connection` is an
    async-local lookup each time (7 µs)."""
    return connection.ops


def _sqlite_stamp(now: datetime) -> str:
    return _sqlite_operations().adapt_datetimefield_value(now)


def _read_on_loop(conn: sqlite3.Connection, params: dict) -> tuple[bool, tuple | None]:
    """SQLite: admission's read on the event loop's own connection, which needs no lock (a reader in WAL mode never
    waits for the writer). Returns whether it ran, and its row (None: refused)."""
    try:
        rows = conn.execute(_sqlite_named_sql()[0], params).fetchall()
    except sqlite3.Error:
        db.drop_loop_sqlite()
        return False, None
    return True, rows[0] if rows else None


def _count_on_loop(conn: sqlite3.Connection, params: dict) -> tuple[bool, tuple | None]:
    """SQLite, when the database thread has nothing to do: the counting transaction on the event loop's own
    connection, if SQLite's lock is free this instant. Returns whether it ran, and its row (None: refused). Whatever
    goes wrong here is rolled back and left to the database thread, which runs it again and reports what it finds."""
    if not db.write_lock.take_now():
        return False, None  # another writer is at it: the database thread waits for its turn
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False, None  # SQLite's lock is held (by the admin, a command) or the database is away
        try:
            row = _sqlite_counted(lambda sql, values: conn.execute(sql, values).fetchone(), params)
            conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            db.drop_loop_sqlite()
            return False, None
        return True, row
    finally:
        db.write_lock.release()


async def admit_async(digest: str) -> Admission:
    """`admit`, awaited from the event loop."""
    now = timezone.now()
    read = None
    if db.is_postgresql():
        row, read = await _postgresql_row(digest, _params(digest, now, now)), _from_text
    elif (conn := db.loop_sqlite()) is None:
        return await db.run_grouped(admit_in_transaction, digest)
    else:
        params = _params(digest, now, _sqlite_stamp(now))
        ran, row = _read_on_loop(conn, params)
        if not ran:
            return await db.run_grouped(admit_in_transaction, digest)
        if row is not None and row[-1]:  # to count: the database thread's turn, unless it has nothing to do
            ran, row = _count_on_loop(conn, params) if db.group_idle() else (False, None)
            if not ran:
                return await db.run_grouped(admit_in_transaction, digest)
    if row is not None:
        return _admitted(row, now, read)
    return await db.run(why_refused, digest, now)  # rare: on the database thread


_token_admissions: dict[asyncio.AbstractEventLoop, dict[str, Batches[dict, tuple | None]]] = {}


async def _postgresql_row(digest: str, params: dict) -> tuple | None:
    """The statement's row for one admission, its values as PostgreSQL's text. A token's concurrent requests would
    each wait on its row's lock in a connection of their own, and the database wakes and re-checks every waiter at
    each commit (twice the database's CPU per admission at c=32, measured). So on one event loop a token's admission
    runs alone when none of its is on the database, and those that arrive meanwhile go next together
    (proxy.batches): their statements in one transaction, sent as one pipeline (one round trip, one commit). Each is
    still its own statement, run in order, each seeing the counts of those before it: every limit is as exact as
    before."""
    queues = of_this_loop(_token_admissions, dict)
    batches = queues.get(digest)
    if batches is None:
        batches = queues[digest] = Batches(_postgresql_rows)
    try:
        return await batches.submit(params)
    finally:
        if not batches.running and queues.get(digest) is batches:
            del queues[digest]


_COUNTING_KEPT = 4096
_counting: set[str] = set()  # the digests of tokens this process last admitted with a count


async def _postgresql_rows(all_params: list[dict]) -> list[tuple | None]:
    """One token's admissions (`_postgresql_row` groups them by token): by the read alone, unless the token was
    counted the last time; those the read finds to be counted then go through the whole statement."""
    digest = all_params[0]["digest"]
    if digest in _counting:
        rows = await _postgresql_run(b"llmproxy_admit", _postgresql_sql(), all_params)
        if any(row is not None and not _true(row[-1]) for row in rows):  # its request limits are gone
            _counting.discard(digest)
        return rows
    rows = await _postgresql_run(b"llmproxy_read", _read_sql(), all_params)
    to_count = [index for index, row in enumerate(rows) if row is not None and _true(row[-1])]
    if to_count:
        if len(_counting) >= _COUNTING_KEPT:
            _counting.clear()
        _counting.add(digest)
        counted = await _postgresql_run(b"llmproxy_admit", _postgresql_sql(), [all_params[i] for i in to_count])
        for index, row in zip(to_count, counted, strict=True):
            rows[index] = row
    return rows


async def _postgresql_run(name: bytes, sql: str, all_params: list[dict]) -> list[tuple | None]:
    """The statement's rows, their values as PostgreSQL's text (`_from_text` reads them)."""
    native, names = _postgresql_native(sql)
    values = [[params[key] for key in names] for params in all_params]

    async def statements(conn) -> list[tuple | None]:
        texts = [[libpq.as_text(value) for value in each] for each in values]
        prepare = settings.PROXY_PREPARED_STATEMENTS
        if len(texts) == 1:
            return [await libpq.fetch_one(conn, name, native, texts[0], prepare)]
        return await libpq.fetch_each(conn, name, native, texts, prepare)

    return await db.on_loop_connection(statements)


# --- why not ----------------------------------------------------------------------------------------------------


def why_refused(digest: str, now: datetime) -> Admission:
    """The one follow-up query: which rule refused the token (the status rule's order, then budgets, then the
    per-minute limits), with what the client needs to know about it."""
    token = Token.objects.filter(digest=digest).select_related("project").first()
    if token is None:
        return Admission(token_id=None, project_id=None, refusal=errors.unknown_token())
    project = token.project
    status = token.status_at(now)
    if status == TokenStatus.REVOKED:
        refusal = errors.token_revoked()
    elif status == TokenStatus.EXPIRED:
        refusal = errors.token_expired()
    elif not project.is_active:
        refusal = errors.project_inactive()
    elif status == TokenStatus.LIMIT_REACHED:
        refusal = errors.request_limit_reached(token.max_requests)
    elif token.budget_usd is not None and token.spent_usd >= token.budget_usd:
        refusal = errors.token_budget_exceeded(token.budget_usd)
    elif project.budget_usd is not None and project.spent_in_period(now) >= project.budget_usd:
        refusal = errors.project_budget_exceeded(
            project.budget_usd, project.budget_period, project.budget_resets_at(now)
        )
    else:
        refusal = _rate_limited(token, project, now)
    return Admission(token_id=token.id, project_id=token.project_id, refusal=refusal)


def _rate_limited(token: Token, project: Project, now: datetime) -> errors.Refusal:
    """The per-minute limit that is full (or, in a race with a new minute or a raised limit, a short retry)."""
    reset = minute_reset_seconds(now)
    for owner, limit, used, kind in (
        ("token", token.requests_per_minute, token.requests_this_minute(now), "requests"),
        ("project", project.requests_per_minute, project.requests_this_minute(now), "requests"),
        ("token", token.tokens_per_minute, token.tokens_this_minute(now), "tokens"),
        ("project", project.tokens_per_minute, project.tokens_this_minute(now), "tokens"),
    ):
        if limit is not None and used >= limit:
            return errors.rate_limit_exceeded(owner, kind, limit, reset)
    return errors.rate_limit_exceeded("token", "requests", None, 1)
