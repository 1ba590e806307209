"""The proxy's database work runs on a few dedicated threads, never on the request's own thread.

Each thread keeps its connection (taking one from PostgreSQL's pool costs five times the admission statement), so
a worker holds PROXY_DB_THREADS connections whatever its load, and a stream holds none: the request's code never
touches the database. With SQLite there is one thread per process, since SQLite lets one writer in at a time.
"""

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

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
