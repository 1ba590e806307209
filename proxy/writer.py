"""The usage writer: one record per request, written off the hot path.

Records go onto an in-process queue and a single writer thread inserts them in batches, so neither the request
nor the stream ever waits for the database; a batch is written within milliseconds of the request's end. The same
thread counts the metrics, writes the access log line and records the security events of each batch.
"""

import atexit
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, fields
from datetime import datetime
from uuid import UUID

from django.db import connection, transaction

from llmproxy.security.events import Occurrence, record_security_events

from . import access_log, db, metrics
from .counting import TokenCounts, counts_from_json_tail
from .models import UsageDaily, UsageRecord

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
    counts: TokenCounts | None = None
    json_tail: bytes | None = None  # parsed in the writer thread, not on the event loop
    security_event: tuple[str, str] | None = None  # (kind, reason) when the refusal is a security event


_NOT_COLUMNS = ("counts", "json_tail", "security_event")
_RECORD_FIELDS = tuple(f.name for f in fields(Record) if f.name not in _NOT_COLUMNS)


def _row(record: Record) -> dict:
    counts = record.counts
    if counts is None and record.json_tail:
        counts = counts_from_json_tail(record.json_tail)
    # A shallow copy: `asdict` deep-copies every field, a cost paid per request for nothing here.
    row = {name: getattr(record, name) for name in _RECORD_FIELDS}
    row["path"] = row["path"][:500]
    row["model"] = row["model"][:200]
    if counts is not None:
        row.update(vars(counts))
    return row


class UsageWriter:
    """One per process: a queue and a thread that writes what is queued, in batches."""

    BATCH = 500
    MIN_INTERVAL = 0.02  # seconds between the starts of two batch writes
    MAX_QUEUED = 100_000  # when the database is down for long, drop (and log) rather than grow without bound

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._dropped = 0

    def put(self, record: Record) -> None:
        if self._pid != os.getpid():
            self._start()
        if self._queue.qsize() >= self.MAX_QUEUED:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                logger.error("usage queue full: %d usage records dropped so far", self._dropped)
            return
        self._queue.put(record)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.SimpleQueue()  # a forked child must not share its parent's queue
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()
            self._pid = os.getpid()
            atexit.register(self.flush)

    def flush(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the thread (at process exit)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        running = True
        last_write = 0.0
        while running:
            batch = [self._queue.get()]
            # Under load, gather what comes in for a moment: one transaction per batch is what a write costs.
            # When idle, a record is written at once.
            if (wait := last_write + self.MIN_INTERVAL - time.monotonic()) > 0:
                time.sleep(wait)
            last_write = time.monotonic()
            while len(batch) < self.BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                running = False
                batch = [r for r in batch if r is not None]
            if batch:
                rows = [_row(record) for record in batch]  # here, not on a database thread
                self._observe(rows)
                # On the proxy's database threads and their connections (with SQLite, its one thread: the batch
                # queues behind admissions instead of making them sleep on the database lock).
                db.run_blocking(self.write, batch, rows)

    @staticmethod
    def _observe(rows: list[dict]) -> None:
        """Metrics and the access log line of each request: in this thread, before the write, so a slow database
        delays neither."""
        try:
            if stale := metrics.project_names.stale(row["project_id"] for row in rows):
                db.run_blocking(metrics.project_names.load, stale)
        except Exception:
            logger.warning("could not read project names for the metrics", exc_info=True)
        try:
            for row in rows:
                project = metrics.project_names.label(row["project_id"])
                metrics.count(row, project)
                access_log.log_request(row, project)
        except Exception:
            logger.exception("could not count or log a request")

    def write(self, batch: list[Record], rows: list[dict] | None = None) -> None:
        """Insert the batch's records and add them to the per-day sums, in one transaction; then its security
        events. A failed batch is written again row by row, so one bad row does not cost the others."""
        if rows is None:
            rows = [_row(record) for record in batch]
        try:
            with transaction.atomic():
                UsageRecord.objects.bulk_create([UsageRecord(**row) for row in rows])
                UsageDaily.objects.add(rows)
        except Exception:
            connection.close()
            if len(rows) > 1:
                for row in rows:
                    self._write_one(row)
            else:
                logger.exception("could not write a usage record")
        record_security_events(
            Occurrence(
                *record.security_event, record.client_ip, record.token_id, record.project_id, record.token_prefix
            )
            for record in batch
            if record.security_event is not None
        )

    @staticmethod
    def _write_one(row: dict) -> None:
        try:
            with transaction.atomic():
                UsageRecord(**row).save(force_insert=True)
                UsageDaily.objects.add([row])
        except Exception:
            logger.exception("could not write a usage record")
            connection.close()


writer = UsageWriter()
