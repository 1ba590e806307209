"""A statement run straight through libpq on one of the event loop's psycopg connections (proxy.db), for the one
statement every request runs: admission's. psycopg's cursor layer (the cursor, its parameter and prepared-statement
bookkeeping, its generator-driven wait, the row's loaders) cost 190 µs of the event loop's CPU per admission, the
statement itself through libpq 40 µs (measured on the same connection, 2,000 runs each).

A token's concurrent admissions go together (`fetch_each`): libpq's pipeline mode sends them in one round trip, run
in order in one implicit transaction (psycopg's own pipeline mode took four times the loop's CPU: 1,003 against
241 µs for a group of 8).

Parameters and values travel as text (`None` is NULL); the caller converts the row's values. The statement is
prepared once per connection under its name, or sent whole each time when prepared statements are off (behind a
pooler that cannot keep them: PROXY_PREPARED_STATEMENTS). A connection this leaves with a statement in flight (the
request was cancelled) is closed, so its pool replaces it rather than hand it out busy.
"""

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg import errors, pq

T = TypeVar("T")

_prepared: "weakref.WeakKeyDictionary[psycopg.AsyncConnection, set[bytes]]" = weakref.WeakKeyDictionary()


def as_text(value: object) -> bytes | None:
    """A parameter as PostgreSQL reads it in text form."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat().encode()
    return str(value).encode()


async def fetch_one(
    conn: psycopg.AsyncConnection, name: bytes, sql: bytes, params: list[bytes | None], prepare: bool
) -> tuple[bytes | None, ...] | None:
    """The statement's first row, its values as text (None: NULL), or None when it returns no row. Raises psycopg's
    errors: OperationalError when the connection is gone (proxy.db retries), the statement's own error otherwise."""
    return await _prepared_again_if_lost(conn, name, lambda: _fetch_one(conn, name, sql, params, prepare))


async def _fetch_one(
    conn: psycopg.AsyncConnection, name: bytes, sql: bytes, params: list[bytes | None], prepare: bool
) -> tuple[bytes | None, ...] | None:
    pgconn = conn.pgconn
    try:
        if not prepare:
            pgconn.send_query_params(sql, params)
        else:
            names = _prepared.setdefault(conn, set())
            if name not in names:
                pgconn.send_prepare(name, sql)
                _checked(await _result(pgconn), conn)
                names.add(name)
            pgconn.send_query_prepared(name, params)
        result = _checked(await _result(pgconn), conn)
    except BaseException:
        if pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            await conn.close()
        raise
    return _first_row(result)


async def fetch_each(
    conn: psycopg.AsyncConnection, name: bytes, sql: bytes, each: list[list[bytes | None]], prepare: bool
) -> list[tuple[bytes | None, ...] | None]:
    """`fetch_one` for each parameter list, the statements pipelined: sent together and run in one implicit
    transaction that commits after the last (a statement's error rolls them all back and is raised)."""
    return await _prepared_again_if_lost(conn, name, lambda: _fetch_each(conn, name, sql, each, prepare))


async def _prepared_again_if_lost(conn: psycopg.AsyncConnection, name: bytes, run: Callable[[], Awaitable[T]]) -> T:
    try:
        return await run()
    except errors.InvalidSqlStatementName:
        # The session lost its prepared statements (a pooler or an operator reset it): prepared again, once.
        _prepared.get(conn, set()).discard(name)
        return await run()


async def _fetch_each(
    conn: psycopg.AsyncConnection, name: bytes, sql: bytes, each: list[list[bytes | None]], prepare: bool
) -> list[tuple[bytes | None, ...] | None]:
    pgconn = conn.pgconn
    names = _prepared.setdefault(conn, set())
    preparing = prepare and name not in names
    pgconn.enter_pipeline_mode()
    try:
        if preparing:
            pgconn.send_prepare(name, sql)
        for params in each:
            if prepare:
                pgconn.send_query_prepared(name, params)
            else:
                pgconn.send_query_params(sql, params)
        pgconn.pipeline_sync()
        while pgconn.flush():
            await _ready(pgconn.socket, write=True)
        results = []
        for _ in range(preparing + len(each)):
            results.append(await _next_result(pgconn))
            if await _next_result(pgconn) is not None:  # each command's results end with a None
                raise errors.InternalError("more than one result for a statement")
        if (await _next_result(pgconn)).status != pq.ExecStatus.PIPELINE_SYNC:
            raise errors.InternalError("the pipeline did not end where it should")
        pgconn.exit_pipeline_mode()
    except BaseException:
        await conn.close()  # left mid-pipeline: its pool replaces it
        raise
    for result in results:
        _checked(result, conn)  # the first error, in order (those after it were not run)
    if preparing:
        names.add(name)
        results = results[1:]
    return [_first_row(result) for result in results]


def _first_row(result: pq.abc.PGresult) -> tuple[bytes | None, ...] | None:
    if result.ntuples == 0:
        return None
    return tuple(result.get_value(0, column) for column in range(result.nfields))


async def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    pgconn.consume_input()
    while pgconn.is_busy():
        await _ready(pgconn.socket)
        pgconn.consume_input()
    return pgconn.get_result()


def _checked(result: pq.abc.PGresult, conn: psycopg.AsyncConnection) -> pq.abc.PGresult:
    if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        raise errors.error_from_result(result, encoding=conn.info.encoding)
    return result


async def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """The command's result, once it has all come (the connection is in non-blocking mode: nothing here waits but
    on the event loop)."""
    while pgconn.flush():
        await _ready(pgconn.socket, write=True)
    first = None
    while (result := await _next_result(pgconn)) is not None:
        if first is None:
            first = result
    if first is None:
        raise errors.InternalError("no result from the database")
    return first


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _ready(fd: int, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, _wake, future)
    try:
        await future
    finally:
        remove(fd)
