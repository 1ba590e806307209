"""Settling a request: what it used is charged to its token and project, and a request the upstream failed gives
back what admission counted.

- **Charge**: the request's cost (USD) is added to the token's spend and to its project's spend of the current budget
  period (a new period starts from this cost), and its tokens to their current minute. For a request a token or
  project limit depends on (a dollar budget, a per-minute token limit), the relay charges before the response's last
  bytes reach the client, so a client that sends its next request after the previous answer sees it refused as soon
  as the limit is reached, never one request later. Other requests are charged by the usage writer with their
  record, in its transaction, once (the record's key makes a retried write charge nothing twice).
- **A hit**: an answer from the response cache cost nothing: its count against the token's request limit is given
  back (it still counts in the per-minute request limits) and the token's `cache_hit_count` goes up, before the
  answer goes out (proxy.cache_store, with the lookup). Between admission and this step the request counts, so a
  token one request short of its limit may see a concurrent request refused.
- **Give back**: when the upstream answers 5xx, cannot be reached or times out, the request's count against the
  token's request limit and the per-minute request limits is given back (in the minute it was counted in), so an
  upstream's failure does not use up quota (the SDKs retry those). Also before the answer goes out.

A hit and a give-back undo only what admission counted (`Allowance.counted`); a request it did not count is counted
with its record by the usage writer, in the token's charge (`Charge.requests`), unless it was a hit or given back.

A give-back is one statement on PostgreSQL (on the event loop's own connections). Charges are written in groups:
the charges that arrive while one write runs are written together in the next, one statement per token (its
charges summed), so a busy worker writes the same hot token and project rows once per batch of responses rather
than once per response (on SQLite, which lets one writer in at a time across all workers, one transaction per
batch; on PostgreSQL, statements on one of the event loop's connections).
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from uuid import UUID

from django.db import connection, transaction
from django.utils import timezone

from projects.limits import minute_key, period_keys
from projects.models import Project
from tokens.models import Token

from . import db
from .admission import Allowance
from .batches import Batches
from .loops import of_this_loop


@dataclass(frozen=True)
class Charge:
    token_id: UUID
    project_id: UUID
    cost_usd: Decimal
    tokens: int
    requests: int = 0  # requests admission did not count (proxy.admission), counted with their records
    used_at: datetime | None = None  # the latest of those requests' times: the token's `last_used_at`


_PERIOD = "CASE budget_period WHEN 'day' THEN %(day)s WHEN 'week' THEN %(week)s WHEN 'month' THEN %(month)s ELSE 0 END"
# Tokens join their minute's count: the stored minute's when it is the same, else a new minute's (a charge for an
# older minute than the stored one, from a record written late, is too late to count).
_TOKENS = (
    "tpm_count = CASE WHEN tpm_minute = %(minute)s THEN tpm_count + %(tokens)s "
    "WHEN tpm_minute < %(minute)s THEN %(tokens)s ELSE tpm_count END, "
    "tpm_minute = CASE WHEN tpm_minute < %(minute)s THEN %(minute)s ELSE tpm_minute END"
)
# The requests admission left to the usage writer, and when the latest of them came.
_REQUESTS = (
    "request_count = request_count + %(requests)s, last_used_at = CASE WHEN %(requests)s > 0 "
    "AND (last_used_at IS NULL OR last_used_at < %(used_at)s) THEN %(used_at)s ELSE last_used_at END"
)
_GIVE_BACK = "rpm_count = CASE WHEN rpm_minute = %(minute)s AND rpm_count > 0 THEN rpm_count - 1 ELSE rpm_count END"


@cache
def _charge_sql() -> tuple[str, str]:
    token, project = Token._meta.db_table, Project._meta.db_table
    return (
        f"UPDATE {token} SET spent_usd = spent_usd + %(cost)s, {_TOKENS}, {_REQUESTS} WHERE id = %(token)s",
        f"UPDATE {project} SET spent_usd = CASE WHEN spend_period = {_PERIOD} THEN spent_usd + %(cost)s "
        f"ELSE %(cost)s END, spend_period = {_PERIOD}, {_TOKENS} WHERE id = %(project)s",
    )


@cache
def _give_back_sql() -> tuple[str, str]:
    token, project = Token._meta.db_table, Project._meta.db_table
    return (
        f"UPDATE {token} SET request_count = CASE WHEN request_count > 0 THEN request_count - 1 ELSE 0 END, "
        f"{_GIVE_BACK} WHERE id = %(token)s",
        f"UPDATE {project} SET {_GIVE_BACK} WHERE id = %(project)s",
    )


@cache
def hit_sql() -> str:
    """The token's side of a cache hit (the caller may add conditions after the WHERE's): what admission counted
    (`counted`) is given back."""
    return (
        f"UPDATE {Token._meta.db_table} SET request_count = CASE WHEN %(counted)s AND request_count > 0 "
        "THEN request_count - 1 ELSE request_count END, cache_hit_count = cache_hit_count + 1 WHERE id = %(token)s"
    )


def count_hit(token_id: UUID, counted: bool) -> None:
    with connection.cursor() as cursor:
        cursor.execute(hit_sql(), {"token": _id(token_id, False), "counted": counted})


async def count_hit_async(token_id: UUID, counted: bool) -> None:
    if not db.is_postgresql():
        await db.run_grouped(count_hit, token_id, counted)  # with the admissions waiting: one write lock for all
        return
    await db.on_loop_connection(lambda conn: conn.execute(hit_sql(), {"token": token_id, "counted": counted}))


@cache
def _postgresql(statements: tuple[str, str]) -> str:
    """Two updates as one statement (two independent rows, nothing to re-check)."""
    first, second = statements
    return f"WITH a AS ({first} RETURNING 1), b AS ({second} RETURNING 1) SELECT (SELECT count(*) FROM a)"


def _id(value: UUID | None, vendor_ready: bool) -> object:
    """An id as the database takes it in raw SQL: SQLite keeps UUIDs as 32 hex digits, PostgreSQL as uuid."""
    return value if vendor_ready or value is None else Token._meta.pk.get_db_prep_value(value, connection)


def _charge_params(charge: Charge, now: datetime, raw: bool = False) -> dict:
    used_at = charge.used_at
    return {
        "token": _id(charge.token_id, raw),
        "project": _id(charge.project_id, raw),
        "cost": charge.cost_usd,
        "tokens": charge.tokens,
        "requests": charge.requests,
        "used_at": used_at if raw or used_at is None else connection.ops.adapt_datetimefield_value(used_at),
        "minute": minute_key(now),
        **period_keys(now),
    }


def charge(charges: list[Charge], now: datetime | None = None, together: db.Together | None = None) -> set[UUID]:
    """Charge on this thread's connection, in the caller's transaction if there is one (the usage writer's, whose
    statements waiting in `together` go with these). Returns the charged projects that have a budget (their alerts
    are to be checked)."""
    now = now or timezone.now()
    if together is not None:
        return _charge(charges, now, together)
    # No savepoint inside the writer's transaction: on PostgreSQL it is two more round trips per batch, and a failure
    # fails the whole batch anyway.
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        together = db.Together(cursor)
        budgeted = _charge(charges, now, together)
        together.flush()
    return budgeted


def _charge(charges: list[Charge], now: datetime, together: db.Together) -> set[UUID]:
    token_sql, project_sql = _charge_sql()
    budgeted = set()
    # Every token's row, then every project's, each in a fixed order: admission locks a token's row before its
    # project's, so no two transactions can each hold a row the other waits for.
    charges = sorted(charges, key=lambda item: (str(item.token_id), str(item.project_id)))
    for item in charges:
        together.later(token_sql, _charge_params(item, now))
    for item in sorted(charges, key=lambda item: str(item.project_id)):
        if not item.cost_usd and not item.tokens:
            continue  # only requests to count: the project has nothing to add
        found = together.now(f"{project_sql} RETURNING budget_usd", _charge_params(item, now)).fetchone()
        if found is not None and found[0] is not None:
            budgeted.add(item.project_id)
    return budgeted


def _give_back_params(token_id: UUID, project_id: UUID, allowance: Allowance, raw: bool = False) -> dict:
    # The project's minute was counted only if the project had a per-minute request limit (see proxy.admission).
    project = project_id if allowance.project_minute else None
    return {"token": _id(token_id, raw), "project": _id(project, raw), "minute": allowance.minute}


def give_back(token_id: UUID, project_id: UUID, allowance: Allowance) -> None:
    token_sql, project_sql = _give_back_sql()
    params = _give_back_params(token_id, project_id, allowance)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(token_sql, params)
        cursor.execute(project_sql, params)


_charge_batches: dict[asyncio.AbstractEventLoop, Batches[Charge, None]] = {}


async def charge_async(item: Charge) -> None:
    """From the event loop: the charges of this loop's responses that end while one is being written go next
    together, summed per token and project (proxy.batches); each caller returns once its own is committed."""
    await of_this_loop(_charge_batches, lambda: Batches(_write_batch)).submit(item)


async def _write_batch(items: list[Charge]) -> list[None]:
    await _write_charges(_summed(items))
    return [None] * len(items)


def _summed(items: list[Charge]) -> list[Charge]:
    """One charge per token and project: the costs and tokens of a batch added up."""
    sums: dict[tuple[UUID, UUID], Charge] = {}
    for item in items:
        key = (item.token_id, item.project_id)
        if (known := sums.get(key)) is not None:
            item = Charge(item.token_id, item.project_id, known.cost_usd + item.cost_usd, known.tokens + item.tokens)
        sums[key] = item
    return list(sums.values())


async def _write_charges(items: list[Charge]) -> None:
    if not db.is_postgresql():
        await db.run_grouped(charge, items)  # with the admissions waiting meanwhile: one write lock for all
        return
    now, statement = timezone.now(), _postgresql(_charge_sql())

    async def run(conn) -> None:
        for item in items:
            await conn.execute(statement, _charge_params(item, now, raw=True))

    await db.on_loop_connection(run)


async def give_back_async(token_id: UUID, project_id: UUID, allowance: Allowance) -> None:
    if not allowance.counted:
        return  # admission counted nothing; the request is not counted with its record either (proxy.views)
    if not db.is_postgresql():
        await db.run_grouped(give_back, token_id, project_id, allowance)
        return
    params = _give_back_params(token_id, project_id, allowance, raw=True)
    await db.on_loop_connection(lambda conn: conn.execute(_postgresql(_give_back_sql()), params))
