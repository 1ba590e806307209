"""The proxy's database work runs on a few dedicated threads, never on the request's own thread.

So a stream can never pin a database connection: the request's code holds none. With PostgreSQL each call hands
its connection back to the pool when it ends; with SQLite each thread keeps its own connection open (opening one
costs more than the statement).
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
        _executor = ThreadPoolExecutor(max_workers=settings.PROXY_DB_THREADS, thread_name_prefix="proxy-db")
        _executor_pid = os.getpid()
    return _executor


def _call(fn: Callable[..., T], *args) -> T:
    try:
        return fn(*args)
    except Exception:
        connection.close()  # whatever state it is in, the next call starts afresh
        raise
    finally:
        if connection.vendor != "sqlite":
            connection.close()  # back to the pool


async def run(fn: Callable[..., T], *args) -> T:
    return await sync_to_async(_call, thread_sensitive=False, executor=_pool())(fn, *args)
