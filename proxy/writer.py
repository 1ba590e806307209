"""The usage writer: one record per request, written off the hot path, and not lost when the database is away.

Records go onto an in-process queue; one writer thread per process turns them into rows, counts their metrics and
writes their access log line at once, then has them written to the database in batches on a database thread
(`proxy.db`), so neither the request nor the stream ever waits for the database, and a slow database delays no log
line. A batch is written within milliseconds of the request's end.

When a write fails because the database is unreachable, the batch, and everything that arrives until the database
answers again, goes to a local spill file (`proxy.spill`), flushed to disk; the writer tries again after 0.1, 0.25,
0.5, then every 1 s, and once a write succeeds it replays the spill file in batches beside the live traffic. Spill
files of processes that died (a crash, a `kill -9`) are replayed by the next worker that starts and after each
recovery. Every row has a key of its own (`uid`) and the insert skips keys already written, so a retried or
replayed batch is counted once, in the records, the per-day sums and the security events alike.

What a crash can still lose is what sat in memory: the records of the last moments before it that were neither
written nor spilled (normally the 20 ms batch interval plus one batch being written; while the database is away,
the records that arrived since the last turn of the loop). The README states the window measured by
`bench/faults.py`.
"""

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from llmproxy.security.events import Occurrence, record_security_events
from llmproxy.security.scrub import scrub_secrets

from . import access_log, db, metrics, spill
from .alerts import announce, check_budgets
from .counting import TokenCounts, counts_from_json_tail
from .models import UsageDaily, UsageRecord
from .prices import price_table_sync
from .settlement import Charge, charge

logger = logging.getLogger(__name__)


@dataclass
class Record:
    """What one request leaves behind; becomes a UsageRecord row in the writer thread."""

    time: datetime
    method: str
    path: str
    status: int
    duration_ms: float
    request_id: str
    client_ip: str | None
    project_id: UUID | None = None
    token_id: UUID | None = None
    token_prefix: str = ""
    model: str = ""
    streamed: bool = False
    ttfb_ms: float | None = None
    upstream_ms: float | None = None
    refusal_code: str = ""
    client_aborted: bool = False
    upstream_aborted: bool = False
    counts: TokenCounts | None = None
    json_tail: bytes | None = None  # parsed in the writer thread, not on the event loop
    security_event: tuple[str, str] | None = None  # (kind, reason) when the refusal is a security event
    cost_usd: Decimal | None = None  # known when the relay charged it; else the writer prices it
    charged: bool = False  # the relay charged the token and project already (see proxy.settlement)
    cached: bool = False  # answered from the response cache: costs nothing, saves what it would have cost
    cache: str = ""  # X-Cache (proxy.cache.Result), for the metrics
    count_later: bool = False  # admission did not count the request: written, it adds to its token's request count


_COPIED = tuple(f.name for f in fields(Record) if f.name not in ("counts", "json_tail"))


def _row(record: Record) -> dict:
    """The record as a row: its columns, a fresh `uid`, and its security event (not a column)."""
    counts = record.counts
    if counts is None and record.json_tail:
        counts = counts_from_json_tail(record.json_tail)
    # A shallow copy: `asdict` deep-copies every field, a cost paid per request for nothing here.
    row = {name: getattr(record, name) for name in _COPIED}
    # Text a client chose: a key pasted as a model name or into a path is not stored (nor logged, nor a label).
    row["path"] = scrub_secrets(row["path"]).replace("\x00", "\ufffd")[:500]  # `%00` decodes to a NUL: no text
    row["model"] = scrub_secrets(row["model"])[:200]
    row["uid"] = uuid.uuid4()
    if counts is not None:
        row.update(vars(counts))
    if record.cached:
        row["cost_usd"] = Decimal(0)
    return row


def _price(rows: list[dict]) -> None:
    """Rows with counts the relay did not price get their cost (or, answered from the cache, their saving) at the
    models' prices. Done where the rows are written, on a database thread: a price table that cannot be read then
    fails the write, which spills the rows to be priced when they are written back, instead of holding up the
    writer thread while the database is away."""
    table = None
    for row in rows:
        if "prompt_tokens" not in row:
            continue
        # A cache hit cost nothing (cost_usd 0); what it would have cost is what it saved.
        into = "saved_usd" if row.get("cached") else "cost_usd"
        if row.get(into) is None:
            table = table or price_table_sync()
            if (price := table.lookup(row["model"])) is not None:
                row[into] = price.cost(
                    input_tokens=row["prompt_tokens"] or 0,
                    cached_input_tokens=row["cached_tokens"] or 0,
                    output_tokens=row["completion_tokens"] or 0,
                )


def _charges(rows: list[dict]) -> list[Charge]:
    """What rows add to their tokens and projects, one charge per token: what the relay did not charge, and the
    requests admission did not count."""
    summed: dict[tuple, list] = {}
    for row in rows:
        if row["token_id"] is None:
            continue
        cost, used = Decimal(0), 0
        if not row.get("charged"):
            cost = row.get("cost_usd") or Decimal(0)
            used = TokenCounts(row.get("prompt_tokens"), row.get("completion_tokens"), row.get("total_tokens")).used
        counted = row.get("count_later", False)
        if cost or used or counted:
            entry = summed.setdefault((row["token_id"], row["project_id"]), [Decimal(0), 0, 0, None])
            entry[0] += cost
            entry[1] += used
            if counted:
                entry[2] += 1
                entry[3] = row["time"] if entry[3] is None else max(entry[3], row["time"])
    return [Charge(token, project, *sums) for (token, project), sums in summed.items()]


def store(rows: list[dict]) -> int:
    """Write rows not written yet: the records, their per-day sums, the charges the relay did not make (and the
    request counts admission left to them), the budget alerts they cause and their security events, in one
    transaction. Returns how many were new. Runs on a database
    thread (or a test's own)."""
    with db.sqlite_writing(), transaction.atomic():
        _price(rows)
        new_uids = UsageRecord.objects.insert_new(rows)
        new = [row for row in rows if row["uid"] in new_uids]
        with connection.cursor() as cursor:
            together = db.Together(cursor)  # PostgreSQL: the sums and charges in one round trip
            UsageDaily.objects.add(new, together)
            budgeted = charge(charges, together=together) if (charges := _charges(new)) else set()
            together.flush()
        # And those the relay charged before the response's end (a budget or a token limit applies to them).
        relay_charged = {row["project_id"] for row in new if row.get("charged") and row.get("cost_usd")}
        budgeted |= relay_charged - {None}
        alerts = check_budgets(budgeted) if budgeted else []
        record_security_events(
            Occurrence(
                *row["security_event"], row["client_ip"], row["token_id"], row["project_id"], row["token_prefix"]
            )
            for row in new
            if row.get("security_event")
        )
    announce(alerts)
    metrics.count_costs(new)
    return len(new)


def store_each(rows: list[dict]) -> list[dict]:
    """After a batch failed for a reason of its own: each row on its own, so one bad row does not cost the others.
    Returns the rows that failed for want of the database (to keep); a row the database refuses is logged and
    dropped."""
    kept = []
    for row in rows:
        try:
            store([row])
        except db.CONNECTION_ERRORS:
            kept.append(row)
        except Exception:
            logger.exception("dropping a usage record the database refuses (request %s)", row["request_id"])
            metrics.USAGE_DROPPED.inc()
    return kept


class UsageWriter:
    """One per process: a queue and a thread that writes what is queued, in batches, or spills it."""

    BATCH = 500
    MIN_INTERVAL = 0.02  # seconds between the starts of two batch writes
    RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0)  # then every 1 s: written again within a second of the database's return
    ORPHAN_SCAN_INTERVAL = 30.0  # seconds: how often a healthy writer looks for spill files of dead processes
    MAX_QUEUED = 100_000  # only if this thread itself is stuck: drop (and count) rather than exhaust memory

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._dropped = 0

    # --- the request side (event loop) --------------------------------------------------------------------------

    def put(self, record: Record) -> None:
        if self._pid != os.getpid():
            self.start()
        if self._queue.qsize() >= self.MAX_QUEUED:
            self._dropped += 1
            metrics.USAGE_DROPPED.inc()
            if self._dropped % 1000 == 1:
                logger.error("usage queue full: %d usage records dropped so far", self._dropped)
            return
        self._queue.put(record)

    def start(self) -> None:
        """Start this process's writer thread (at the worker's start, or with the first record); it first replays
        the spill files of processes that are gone."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.SimpleQueue()  # a forked child must not share its parent's queue
            self._thread = threading.Thread(target=_Loop(self._queue).run, name="usage-writer", daemon=True)
            self._thread.start()
            self._pid = os.getpid()
            atexit.register(self.flush)

    def flush(self, timeout: float = 10.0) -> None:
        """Write (or spill) what is queued and stop the thread (at the worker's end)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            self._queue.put(None)
            self._thread.join(timeout)

    def write(self, records: list[Record]) -> int:
        """Write records now, in this thread (for tests and tools; the proxy's requests go through `put`)."""
        return store([_row(record) for record in records])


NAMES_TIMEOUT = 0.5  # seconds the metrics wait for project names, before they go on with what they know
_WAKE = object()  # put on the queue when a write is done, so the loop looks at it at once


class _Loop:
    """The writer thread's state: rows waiting, the write in flight, the spill files, the retry clock."""

    def __init__(self, source: queue.SimpleQueue) -> None:
        self.source = source
        self.directory = Path(settings.USAGE_SPILL_DIR)
        self.pending: list[dict] = []  # rows turned from records, not yet handed to a write
        self.inflight: Future | None = None
        self.inflight_live: list[dict] = []  # of the write in flight: rows from `pending`…
        self.inflight_replay: tuple[spill.Segment, int, list[dict]] | None = None  # …and (segment, position, rows)
        self.spilling: spill.Segment | None = None  # this process's segment while the database is away
        self.replaying: list[spill.Segment] = []  # segments to write back, oldest first
        self.failures = 0  # writes failed in a row (0: healthy)
        self.failing_since = 0.0
        self.retry_at = 0.0
        self.last_write = 0.0
        self.next_orphan_scan = 0.0  # at once: what dead processes left is written back first

    def run(self) -> None:
        running = True
        while running:
            items = self._take()
            if None in items:
                running = False
            records = [item for item in items if isinstance(item, Record)]
            if records:
                rows = [_row(record) for record in records]
                _observe(rows)
                self.pending.extend(rows)
            self._settle()
            if self.failures:
                self._spill(self.pending)  # nothing waits in memory while the database is away
                self.pending = []
            if running:
                self._maybe_write()
            metrics.USAGE_BACKLOG.set(self._backlog())
        self._finish()

    def _take(self) -> list:
        """What the queue holds, once there is something to do. While the database answers, the thread wakes once
        per batch interval (or when the write in flight ends), not at each record: a wake per record cost the event
        loop a system call for each request and took the GIL from it between requests. While it is away, each record
        is taken (and spilled) as it comes."""
        now = time.monotonic()
        if self.failures:
            timeout = None if self.inflight is not None else self.retry_at - now  # the write's end puts _WAKE
        elif self.inflight is not None:
            futures.wait([self.inflight], timeout=UsageWriter.MIN_INTERVAL)
            return self._drain()
        elif self.pending or self.replaying:
            # Under load, gather what comes in for a moment: one transaction per batch is what a write costs.
            time.sleep(max(self.last_write + UsageWriter.MIN_INTERVAL - now, 0.0))
            return self._drain()
        else:
            timeout = self.next_orphan_scan - now
        try:
            first = self.source.get(timeout=timeout) if timeout is None or timeout > 0 else self.source.get_nowait()
        except queue.Empty:
            return []
        if isinstance(first, Record) and not self.pending and self.inflight is None:
            # The first record after a quiet spell (a response just ended) waits for the batch interval too, so its
            # log line, metrics and write (on SQLite, its write lock) are not in the way of the next request, which
            # typically follows at once (a client's next call, the next of a CI job's requests).
            time.sleep(UsageWriter.MIN_INTERVAL)
        return [first] if first is None else [first, *self._drain()]

    def _drain(self) -> list:
        """What the queue holds now, up to a batch, and nothing after the stop marker (None)."""
        items = []
        while len(items) < UsageWriter.BATCH:
            try:
                item = self.source.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            if item is None:
                break
        return items

    def _maybe_write(self) -> None:
        now = time.monotonic()
        if self.inflight is not None or now < self.retry_at:
            return
        if self.failures == 0 and now >= self.next_orphan_scan:
            self.replaying.extend(spill.orphans(self.directory))
            self.next_orphan_scan = now + UsageWriter.ORPHAN_SCAN_INTERVAL
        if not self.failures and self.pending and now < self.last_write + UsageWriter.MIN_INTERVAL:
            return
        live = self.pending[: UsageWriter.BATCH]
        self.pending = self.pending[len(live) :]
        replay, replayed = None, []
        # The oldest rows first: what other processes left, then what this one spilled (a retry while the database
        # is away tries those, and the segment keeps growing behind the read).
        segment = self.replaying[0] if self.replaying else self.spilling
        if segment is not None:
            replayed, position = segment.read(UsageWriter.BATCH)
            replay = (segment, position, replayed)
        if not live and replay is None:
            return
        self.inflight_live, self.inflight_replay = live, replay
        self.inflight = db.submit(store, live + replayed)
        self.inflight.add_done_callback(lambda _: self.source.put(_WAKE))
        self.last_write = now

    def _settle(self) -> None:
        """Take the result of the write in flight, if it is done."""
        if self.inflight is None or not self.inflight.done():
            return
        future, live, replay = self.inflight, self.inflight_live, self.inflight_replay
        self.inflight, self.inflight_live, self.inflight_replay = None, [], None
        try:
            future.result()
        except db.CONNECTION_ERRORS as error:
            self._failed(live, type(error).__name__)
            return
        except Exception:
            # The database answers, but a row is at fault: each row alone, so it costs no other.
            logger.warning("a usage batch failed; writing its records one by one", exc_info=True)
            kept = {row["uid"] for row in db.run_blocking(store_each, live + (replay[2] if replay else []))}
            if kept:
                self._failed([row for row in live if row["uid"] in kept], "the database went away")
                return
        if replay is not None:
            segment, position, replayed = replay
            segment.done_to(position, len(replayed))
            metrics.USAGE_REPLAYED.inc(len(replayed))
            if segment.exhausted:
                segment.delete()
                if segment is self.spilling:
                    self.spilling = None
                else:
                    self.replaying.remove(segment)
                logger.info("usage records of %s written to the database", segment.path.name)
        if self.failures:
            logger.warning(
                "usage records are written again after %.1f s; what was kept meanwhile follows",
                time.monotonic() - self.failing_since,
            )
            self.failures = 0
            self.retry_at = 0.0
            self.next_orphan_scan = 0.0  # and what other processes left, if any

    def _failed(self, live: list[dict], why: str) -> None:
        """Rows that could not be written: the live ones go to the spill file (replayed ones are still in theirs)."""
        metrics.USAGE_WRITE_FAILURES.inc()
        self._spill(live)
        if not self.failures:
            self.failing_since = time.monotonic()
            logger.error("usage records cannot be written (%s); kept in %s until they can", why, self.directory)
        delays = UsageWriter.RETRY_DELAYS
        self.retry_at = time.monotonic() + delays[min(self.failures, len(delays) - 1)]
        self.failures += 1

    def _spill(self, rows: list[dict]) -> None:
        if not rows:
            return
        try:
            if self.spilling is None:
                self.spilling = spill.Segment.create(self.directory)
            self.spilling.append(rows)
            metrics.USAGE_SPILLED.inc(len(rows))
        except OSError:
            # The disk too: nothing is left to keep them in. Said loudly, and counted.
            logger.exception("cannot write %d usage records to the spill file; they are lost", len(rows))
            metrics.USAGE_DROPPED.inc(len(rows))

    def _backlog(self) -> int:
        spilled = sum(s.rows for s in self.replaying) + (self.spilling.rows if self.spilling else 0)
        return len(self.pending) + len(self.inflight_live) + spilled

    def _finish(self) -> None:
        """At the worker's end: the write in flight and one more are waited for (a few seconds at most); what is
        still not written is spilled, for the next start to write."""
        deadline = time.monotonic() + 5.0
        for _ in range(2):  # the write in flight, then one of what is pending
            if self.inflight is not None:
                with contextlib.suppress(Exception):
                    self.inflight.result(timeout=max(deadline - time.monotonic(), 0.0))
                self._settle()
            if self.inflight is None and not self.failures and self.pending:
                self.last_write = 0.0
                self._maybe_write()
        self._spill(self.pending + self.inflight_live)
        self.pending = []


def _observe(rows: list[dict]) -> None:
    """Metrics and the access log line of each request: in the writer thread, before any write, so a slow or absent
    database delays neither."""
    if stale := metrics.project_names.stale(row["project_id"] for row in rows):
        try:
            db.submit(metrics.project_names.load, stale).result(timeout=NAMES_TIMEOUT)
        except Exception:
            metrics.project_names.postpone(stale)
    try:
        for row in rows:
            project = metrics.project_names.label(row["project_id"])
            metrics.count(row, project)
            access_log.log_request(row, project)
    except Exception:
        logger.exception("could not count or log a request")


writer = UsageWriter()
