"""Statements straight through libpq (proxy.libpq), as admission runs them on PostgreSQL: one alone, or a group in
one pipeline that commits or rolls back whole."""

import asyncio

import psycopg
import pytest
from django.db import connection

from proxy import libpq
from tests.live import database_url

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="libpq is PostgreSQL's (run with DATABASE_URL=postgres://…; CI does)",
    ),
    pytest.mark.django_db,
]

COUNT = b"UPDATE counter SET n = n + 1 WHERE id = $1 RETURNING n, $2::text"


async def connect() -> psycopg.AsyncConnection:
    conn = await psycopg.AsyncConnection.connect(database_url(connection.settings_dict), autocommit=True)
    await conn.execute("CREATE TEMP TABLE counter (id int PRIMARY KEY, n int)")
    await conn.execute("INSERT INTO counter VALUES (1, 0)")
    return conn


async def count(conn: psycopg.AsyncConnection) -> int:
    return (await (await conn.execute("SELECT n FROM counter")).fetchone())[0]


@pytest.mark.parametrize("prepare", [True, False])
def test_a_group_runs_in_order_and_a_failure_rolls_it_all_back(prepare):
    async def scenario():
        conn = await connect()
        rows = await libpq.fetch_each(conn, b"count", COUNT, [[b"1", b"a"], [b"1", None], [b"2", b"c"]], prepare)
        assert rows == [(b"1", b"a"), (b"2", None), None]  # each sees the one before it; no row: None
        assert await libpq.fetch_one(conn, b"count", COUNT, [b"1", b"d"], prepare) == (b"3", b"d")

        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            await libpq.fetch_each(conn, b"count", COUNT, [[b"1", b"e"], [b"one", b"f"], [b"1", b"g"]], prepare)
        assert await count(conn) == 3  # the first of the failed group is undone too
        assert await libpq.fetch_each(conn, b"count", COUNT, [[b"1", b"h"], [b"1", b"i"]], prepare) == [
            (b"4", b"h"),
            (b"5", b"i"),
        ]
        await conn.close()

    asyncio.run(scenario())


def test_a_prepared_statement_the_session_lost_is_prepared_again():
    async def scenario():
        conn = await connect()
        assert await libpq.fetch_each(conn, b"count", COUNT, [[b"1", b"a"], [b"1", b"b"]], True) == [
            (b"1", b"a"),
            (b"2", b"b"),
        ]
        await conn.execute("DEALLOCATE ALL")  # as a pooler's reset does
        assert await libpq.fetch_each(conn, b"count", COUNT, [[b"1", b"c"], [b"1", b"d"]], True) == [
            (b"3", b"c"),
            (b"4", b"d"),
        ]
        await conn.close()

    asyncio.run(scenario())


def test_a_cancelled_group_closes_its_connection():
    """A request that goes away mid-admission: its connection is not handed out again with the group in flight."""

    async def scenario():
        conn = await connect()
        slow = b"SELECT pg_sleep(1), $1::text"
        task = asyncio.create_task(libpq.fetch_each(conn, b"slow", slow, [[b"a"], [b"b"]], True))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.closed

    asyncio.run(scenario())
