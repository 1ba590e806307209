"""The proxy's database work runs on a few dedicated threads, never on the request's own thread; on PostgreSQL
the admission statement runs from the event loop itself, on a small pool of async connections.

Each thread keeps one connection of its own (taking one from a pool costs five times the admission statement), so
a worker holds PROXY_DB_THREADS connections whatever its load, and a stream holds none: the request's code never
touches the database. With SQLite there is one thread per process, since SQLite lets one writer in at a time.

A hop to a thread and back costs more than the admission statement itself, so on PostgreSQL each worker also keeps
PROXY_ADMISSION_CONNECTIONS async connections (psycopg's AsyncConnectionPool, made with the same parameters as
Django's connections) that admission uses without leaving the event loop. A connection is held for the one
statement only.

Connections die: the database restarts, an operator or a pooler ends them, an idle timeout (pgbouncer, NAT
gateways, managed databases) closes them. A dead connection costs one retry, never a refused request while the
database is up: a thread's connection is reopened and the work run again once; the admission pool is checked (its
dead connections replaced) and the statement run again once. Retrying is safe: a statement sent on a dead
connection never ran (in the rare case the connection dies between the statement and its answer, admission may
count one request twice against a limit, which errs on the side of refusing). When the database itself is away,
the threads' connections are direct ones (not from Django's pool, whose reconnection backs off to minutes), with
a connect timeout, so they come back within a second of the database.
"""

import asyncio
import contextlib
import contextvars
import fcntl
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connection, connections, transaction
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .loops import of_this_loop

T = TypeVar("T")

# Errors that say the connection (or the database) is gone, as opposed to a statement's own error.
CONNECTION_ERRORS = (OperationalError, InterfaceError)

# The names of the database threads begin with this (proxy.prices reads on one directly when called from it).
THREAD_NAME_PREFIX = "proxy-db"

_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def is_postgresql() -> bool:
    return connections.settings[DEFAULT_DB_ALIAS]["ENGINE"] == "django.db.backends.postgresql"


def _direct_connection() -> None:
    """A database thread's connection: its own, not the pool's (see the module's doc); the settings give it a
    connect timeout (DATABASE_CONNECT_TIMEOUT)."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    if wrapper.vendor != "postgresql":
        return
    options = {name: value for name, value in wrapper.settings_dict["OPTIONS"].items() if name != "pool"}
    if settings.PROXY_PREPARED_STATEMENTS:
        options["prepare_threshold"] = 0  # for the statements the proxy runs on a server-side cursor (the batch insert)
    wrapper.settings_dict = {**wrapper.settings_dict, "OPTIONS": options}


def _pool() -> ThreadPoolExecutor:
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        # A waiting SQLite writer sleeps in steps of milliseconds: one thread per process queues statements instead.
        threads = 1 if connection.vendor == "sqlite" else settings.PROXY_DB_THREADS
        _executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=THREAD_NAME_PREFIX, initializer=_direct_connection
        )
        _executor_pid = os.getpid()
    return _executor


def call(fn: Callable[..., T], *args) -> T:
    """Run `fn` on this thread's connection; once more on a fresh connection if the connection was dead."""
    try:
        return fn(*args)
    except CONNECTION_ERRORS:
        connection.close()
    try:
        return fn(*args)
    except Exception:
        connection.close()  # whatever state it is in, the next call starts afresh
        raise


async def run(fn: Callable[..., T], *args) -> T:
    """`call` on a database thread, awaited (the caller's context variables go with it, as with sync_to_async,
    whose own bookkeeping per call this does without)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_pool(), context.run, call, fn, *args)


class _Group:
    """SQLite: work waiting for the database thread, run together in one transaction (see `run_grouped`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[Callable, tuple, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._runs = 0  # runs put on the thread and not finished

    @property
    def idle(self) -> bool:
        return self._runs == 0 and not self._waiting

    async def run(self, fn: Callable[..., T], *args) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._waiting.append((fn, args, future, loop))
            first = len(self._waiting) == 1
            self._runs += first
        if first:
            submit(self._run)
        return await future

    def _run(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        try:
            results = call(_in_one_transaction, [(fn, args) for fn, args, _, _ in waiting])
        except Exception as error:  # the transaction itself failed: every caller answers for it
            results = [error] * len(waiting)
        finally:
            with self._lock:
                self._runs -= 1
        answers = defaultdict(list)
        for (_, _, future, loop), result in zip(waiting, results, strict=True):
            answers[loop].append((future, result))
        for loop, pairs in answers.items():
            loop.call_soon_threadsafe(_answer, pairs)


def _sqlite_file() -> str | None:
    """SQLite: the database's file name (or `file:` URI), None for a database only in memory."""
    name = str(connections[DEFAULT_DB_ALIAS].settings_dict["NAME"])
    return None if name == ":memory:" or "mode=memory" in name else name


class _WriteLock:
    """SQLite: the queue the proxy's own writers wait in before they take SQLite's lock.

    SQLite lets one writer in at a time, and a writer that finds its lock held sleeps 1, 2, 5, 10 ms… before it
    tries again (its busy handler), while the lock is held for a fraction of a millisecond each time: two workers
    waiting on each other that way left a third of the machine idle at c=32. The proxy's writers (each process's
    database thread, and admission on an event loop) first take this lock instead: a thread lock within the process,
    then an exclusive `flock` on a file beside the database, which the kernel hands to the next waiting process as
    soon as it is released. SQLite's lock is then free when they begin; its busy handler only serves the other
    writers (the admin, commands), as before.
    """

    def __init__(self) -> None:
        self._pid = 0
        self._fd: int | None = None
        self._threads = threading.Lock()

    def _file(self) -> int | None:
        """This process's descriptor of the lock file (a forked child opens its own: flock is per open file), or
        None for a database only in memory or a file that cannot be made."""
        if self._pid != os.getpid():
            self._pid, self._fd, self._threads = os.getpid(), None, threading.Lock()
            if (name := _sqlite_file()) is not None:
                path = name.removeprefix("file:").partition("?")[0] + "-proxy.lock"
                # Without the file there is no queue, but SQLite's own lock still holds (and the database's own
                # failure to open is what gets reported).
                with contextlib.suppress(OSError):
                    self._fd = os.open(path, os.O_RDWR | os.O_CREAT)
        return self._fd

    @contextlib.contextmanager
    def held(self):
        """Wait for the lock (a database thread)."""
        fd = self._file()
        with self._threads:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def take_now(self) -> bool:
        """Take the lock if it is free this instant (the event loop, which must not wait); `release` gives it back."""
        fd = self._file()
        if not self._threads.acquire(blocking=False):
            return False
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._threads.release()
                return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


write_lock = _WriteLock()


def sqlite_writing():
    """The proxy's write transactions on SQLite take `write_lock` first (nothing to wait for on PostgreSQL)."""
    return write_lock.held() if connection.vendor == "sqlite" else contextlib.nullcontext()


class Together:
    """Statements of one transaction whose results are not read go with the next one that is: on PostgreSQL one
    round trip for them all, in the order given (one simple query, the values quoted by psycopg as Django's
    client-side cursor quotes them anyway); on SQLite each runs as it comes. A usage batch's per-day sums and
    charges cost one round trip instead of one each (every round trip a wait and a wake-up of the thread)."""

    def __init__(self, cursor) -> None:
        self.cursor = cursor
        self.pending: list[str] | None = [] if connection.vendor == "postgresql" else None

    def later(self, sql: str, params) -> None:
        if self.pending is None:
            self.cursor.execute(sql, params)
        else:
            self.pending.append(self.cursor.mogrify(sql, params))

    def now(self, sql: str, params):
        """Run the statements waiting and this one; the cursor, on this one's result."""
        if not self.pending:
            self.cursor.execute(sql, params)
            return self.cursor
        waiting = len(self.pending)
        self.pending.append(self.cursor.mogrify(sql, params))
        self.flush()
        for _ in range(waiting):
            self.cursor.nextset()
        return self.cursor

    def flush(self) -> None:
        if self.pending:
            text, self.pending = ";\n".join(self.pending), []
            self.cursor.execute(text)


def _in_one_transaction(work: list[tuple[Callable, tuple]]) -> list:
    """Each function's result, or the exception it raised (its own: a function that writes in a savepoint of its own
    takes nothing of the others with it); the connection's errors fail them all, to be run again (`call`)."""
    results = []
    with sqlite_writing(), transaction.atomic():
        for fn, args in work:
            try:
                results.append(fn(*args))
            except CONNECTION_ERRORS:
                raise
            except Exception as error:
                results.append(error)
    return results


def _answer(pairs: list[tuple[asyncio.Future, object]]) -> None:
    for future, result in pairs:
        if future.cancelled():  # its client went away; what it did stands, as if it had waited
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


_group = _Group()


async def run_grouped(fn: Callable[..., T], *args) -> T:
    """SQLite: `fn` on the database thread, inside one IMMEDIATE transaction with whatever else waits for the
    thread meanwhile (the first to arrive puts a run on the thread; the run takes all that waits by then, and answers
    them with one call into each event loop).

    SQLite lets one writer in at a time, across all processes, and a writer that finds the lock held sleeps 1, 2,
    5, 10 ms… before it tries again (its busy handler), while the holder takes it again and again: taken once per
    request, by admission, that limited two workers to one core's worth of requests together (445 req/s at c=32 on
    the shared benchmark). Taken once per group, a worker that waited runs everything that queued meanwhile in one
    go (1,010 req/s)."""
    return await _group.run(fn, *args)


def group_idle() -> bool:
    """Nothing waits for the database thread's grouped runs, and none is running (see `loop_sqlite`)."""
    return _group.idle


_loop_sqlite = threading.local()


def loop_sqlite() -> sqlite3.Connection | None:
    """SQLite: this thread's (the event loop's) own connection, for one quick write when the worker has nothing else
    for the database (proxy.admission), or None (a database only in memory, or one that cannot be opened now).

    A hop to the database thread and back costs more than admission's statements on an idle machine: each side of it
    wakes a sleeping thread (0.7 ms of the 0.85 ms an admission took at c=1, measured). This connection never waits
    for SQLite's lock (busy timeout 0): when the lock is held, the caller goes to the database thread as before."""
    found = getattr(_loop_sqlite, "connection", None)
    if found is None:
        if (name := _sqlite_file()) is None:
            return None
        try:
            found = sqlite3.connect(name, timeout=0, isolation_level=None, uri=name.startswith("file:"))
            found.execute("PRAGMA synchronous = NORMAL")
            found.execute("PRAGMA temp_store = MEMORY")  # as the settings' connections (llmproxy.settings)
            # Its commits never run a checkpoint (copying the write-ahead log into the database file, then fsync):
            # the database thread's commits do, off the event loop.
            found.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error:
            return None  # the database thread's own attempt says what is wrong
        _loop_sqlite.connection = found
    return found


def drop_loop_sqlite() -> None:
    """Close this thread's connection after a failure: the next use opens a fresh one."""
    found = getattr(_loop_sqlite, "connection", None)
    _loop_sqlite.connection = None
    if found is not None:
        with contextlib.suppress(sqlite3.Error):
            found.close()


def submit(fn: Callable[..., T], *args) -> Future:
    """The same, from a thread (not the event loop), without waiting for the result."""
    return _pool().submit(call, fn, *args)


def run_blocking(fn: Callable[..., T], *args) -> T:
    """The same, from a thread that may block (not the event loop)."""
    return submit(fn, *args).result()


_loop_pools: dict[asyncio.AbstractEventLoop, tuple[AsyncConnectionPool, asyncio.Task]] = {}


def _new_loop_pool() -> AsyncConnectionPool:
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)  # only to read its connection parameters
    params = wrapper.get_connection_params()
    params.pop("cursor_factory")  # Django's is a sync cursor; async connections use psycopg's own
    params["autocommit"] = True  # as Django runs statements outside atomic()
    # Django turns prepared statements off for poolers' sake; the proxy's statements are few and run per request, and
    # parsing and planning admission's took two thirds of the database's time for it (PROXY_PREPARED_STATEMENTS).
    params["prepare_threshold"] = 0 if settings.PROXY_PREPARED_STATEMENTS else None
    pool_options = wrapper.settings_dict["OPTIONS"].get("pool")
    pool_options = pool_options if isinstance(pool_options, dict) else {}
    size = settings.PROXY_ADMISSION_CONNECTIONS
    return AsyncConnectionPool(
        kwargs=params,
        min_size=size,
        max_size=size,
        timeout=pool_options.get("timeout", 30.0),
        reconnect_timeout=pool_options.get("reconnect_timeout", 5.0),  # as Django's pool (see the settings)
        open=False,
        name="proxy-admission",
    )


async def loop_pool() -> AsyncConnectionPool:
    """This event loop's pool of async PostgreSQL connections (made and opened on first use)."""

    def make() -> tuple[AsyncConnectionPool, asyncio.Task]:
        pool = _new_loop_pool()
        return pool, asyncio.get_running_loop().create_task(pool.open())

    pool, opened = of_this_loop(_loop_pools, make)
    await opened
    return pool


class _Kept:
    """One of the pool's connections kept out of it by this event loop, for the statements that find it free: most
    of them (a request's admission, most of all). Taking a connection from psycopg's pool and giving it back cost
    the event loop 50-70 µs per statement (asyncio locks, its checks and statistics), more than the statement."""

    conn: psycopg.AsyncConnection | None = None
    busy = False


_kept: dict[asyncio.AbstractEventLoop, _Kept] = {}


async def close_loop_connections() -> None:
    """Close this event loop's connections (a test's loop, whose connections would outlive it)."""
    kept = of_this_loop(_kept, _Kept)
    if kept.conn is not None:
        conn, kept.conn = kept.conn, None
        await conn.close()
    await (await loop_pool()).close()


async def on_loop_connection(statement: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
    """Run `statement` on one of this event loop's connections; if that connection was dead, check the whole pool
    (its dead connections are replaced) and run it once more."""
    pool = await loop_pool()
    kept = of_this_loop(_kept, _Kept)
    if not kept.busy:
        kept.busy = True
        dead = False
        try:
            if kept.conn is None:
                kept.conn = await pool.getconn()
            return await statement(kept.conn)
        except psycopg.OperationalError:
            dead = True  # given back to the pool below, and the statement run once more
        finally:
            kept.busy = False
            conn = kept.conn
            if conn is not None and (dead or conn.closed or conn.info.transaction_status != TransactionStatus.IDLE):
                kept.conn = None
                await pool.putconn(conn)  # the pool closes it (if need be) and makes a new one
        await pool.check()
        async with pool.connection() as conn:
            return await statement(conn)
    try:
        async with pool.connection() as conn:
            return await statement(conn)
    except PoolTimeout:
        raise  # no connection to be had: the database is away, not one connection
    except psycopg.OperationalError:
        await pool.check()
    async with pool.connection() as conn:
        return await statement(conn)
