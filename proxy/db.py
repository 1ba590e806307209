"""The proxy's database work runs on a few dedicated threads, never on the request's own thread; on PostgreSQL
the admission statement runs from the event loop itself, on a small pool of async connections.

Each thread keeps its connection (taking one from PostgreSQL's pool costs five times the admission statement), so
a worker holds PROXY_DB_THREADS connections whatever its load, and a stream holds none: the request's code never
touches the database. With SQLite there is one thread per process, since SQLite lets one writer in at a time.

A hop to a thread and back costs more than the admission statement itself, so on PostgreSQL each worker also keeps
PROXY_ADMISSION_CONNECTIONS async connections (psycopg's AsyncConnectionPool, made with the same parameters as
Django's connections) that admission uses without leaving the event loop. A connection is held for the one
statement only.
"""

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def _pool() -> ThreadPoolExecutor:
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        # A waiting SQLite writer sleeps in steps of milliseconds: one thread per process queues statements instead.
        threads = 1 if connection.vendor == "sqlite" else settings.PROXY_DB_THREADS
        _executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="proxy-db")
        _executor_pid = os.getpid()
    return _executor


def _call(fn: Callable[..., T], *args) -> T:
    try:
        return fn(*args)
    except Exception:
        connection.close()  # whatever state it is in, the next call starts afresh
        raise


async def run(fn: Callable[..., T], *args) -> T:
    return await sync_to_async(_call, thread_sensitive=False, executor=_pool())(fn, *args)


def run_blocking(fn: Callable[..., T], *args) -> T:
    """The same, from a thread that may block (not the event loop)."""
    return _pool().submit(_call, fn, *args).result()


_loop_pools: dict[asyncio.AbstractEventLoop, tuple[AsyncConnectionPool, asyncio.Task]] = {}


def is_postgresql() -> bool:
    return connections.settings[DEFAULT_DB_ALIAS]["ENGINE"] == "django.db.backends.postgresql"


def _new_loop_pool() -> AsyncConnectionPool:
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)  # only to read its connection parameters
    params = wrapper.get_connection_params()
    params.pop("cursor_factory")  # Django's is a sync cursor; async connections use psycopg's own
    params["autocommit"] = True  # as Django runs statements outside atomic()
    pool_options = wrapper.settings_dict["OPTIONS"].get("pool")
    timeout = pool_options.get("timeout", 30.0) if isinstance(pool_options, dict) else 30.0
    size = settings.PROXY_ADMISSION_CONNECTIONS
    return AsyncConnectionPool(
        kwargs=params,
        min_size=size,
        max_size=size,
        timeout=timeout,
        check=AsyncConnectionPool.check_connection if wrapper.settings_dict["CONN_HEALTH_CHECKS"] else None,
        open=False,
        name="proxy-admission",
    )


async def loop_pool() -> AsyncConnectionPool:
    """This event loop's pool of async PostgreSQL connections (made and opened on first use)."""
    loop = asyncio.get_running_loop()
    found = _loop_pools.get(loop)
    if found is None:
        for stale in [other for other in _loop_pools if other.is_closed()]:
            del _loop_pools[stale]
        pool = _new_loop_pool()
        found = _loop_pools[loop] = (pool, loop.create_task(pool.open()))
    pool, opened = found
    await opened
    return pool
