"""Usage: reading token counts from responses as they pass, and writing one record per request off the hot path.

Records go onto an in-process queue and a single writer thread inserts them in batches, so neither the request
nor the stream ever waits for the database; a batch is written within milliseconds of the request's end.
"""

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from functools import cache
from uuid import UUID

from django.db import connection, connections, transaction
from django.db.models.sql import Query

from . import access_log, db, metrics

logger = logging.getLogger(__name__)

_USAGE_KEY = b'"usage"'
_decoder = json.JSONDecoder()


@dataclass
class TokenCounts:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


def counts_from(usage: object) -> TokenCounts | None:
    """Chat/completions/embeddings name them prompt/completion; the Responses API input/output."""
    if not isinstance(usage, dict):
        return None

    def number(*keys: str) -> int | None:
        for key in keys:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    counts = TokenCounts(
        prompt_tokens=number("prompt_tokens", "input_tokens"),
        completion_tokens=number("completion_tokens", "output_tokens"),
        total_tokens=number("total_tokens"),
    )
    if counts == TokenCounts():
        return None
    return counts


def _usage_in(document: object) -> TokenCounts | None:
    if not isinstance(document, dict):
        return None
    found = counts_from(document.get("usage"))
    if found is None and isinstance(document.get("response"), dict):  # Responses API: response.completed
        found = counts_from(document["response"].get("usage"))
    return found


def counts_from_json_tail(tail: bytes) -> TokenCounts | None:
    """The `usage` object of a JSON body, from the body's last bytes (OpenAI puts it last, after the payload)."""
    position = len(tail)
    while (position := tail.rfind(_USAGE_KEY, 0, position)) > 0:
        if tail[position - 1 : position] != b"\\":  # a key, not an escaped quote inside some text
            rest = tail[position + len(_USAGE_KEY) :].lstrip()
            if rest.startswith(b":"):
                try:
                    value, _ = _decoder.raw_decode(rest[1:].lstrip().decode("utf-8", "replace"))
                except ValueError:
                    return None
                return counts_from(value)
    return None


def _event_boundary(buffer: bytes | bytearray) -> int:
    """The end of the last complete SSE event in the buffer (0 if none)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _split_events(block: bytes) -> list[bytes]:
    """Complete events (each with its terminating blank line) from a block that ends on an event boundary."""
    events, start = [], 0
    while start < len(block):
        lf = block.find(b"\n\n", start)
        crlf = block.find(b"\r\n\r\n", start)
        ends = [e + n for e, n in ((lf, 2), (crlf, 4)) if e >= 0]
        end = min(ends) if ends else len(block)
        events.append(block[start:end])
        start = end
    return events


def _event_usage(event: bytes) -> TokenCounts | None:
    data = b"".join(
        line[5:].lstrip(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
    )
    if not data or data == b"[DONE]":
        return None
    try:
        return _usage_in(json.loads(data))
    except ValueError:
        return None


class StreamUsage:
    """Finds the usage event of a server-sent-event stream as it passes, across any chunk boundaries.

    With `strip`, the usage event is also removed from what the client receives (it did not ask for it). Complete
    events are passed on as soon as their end arrives; only an incomplete event is held, and a client cannot use
    half an event anyway. Without `strip`, every chunk passes on at once, untouched.
    """

    MAX_PENDING = 1 << 20  # an "event" this long is no SSE event: stop looking

    def __init__(self, *, strip: bool) -> None:
        self.strip = strip
        self.counts: TokenCounts | None = None
        self._pending = bytearray()
        self._gave_up = False

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send on for this chunk."""
        if self._gave_up:
            return chunk
        self._pending += chunk
        end = _event_boundary(self._pending)
        complete = bytes(self._pending[:end])
        del self._pending[:end]
        kept = self._scan(complete) if _USAGE_KEY in complete else complete
        if len(self._pending) > self.MAX_PENDING:
            self._gave_up = True
            kept += bytes(self._pending)
            self._pending.clear()
        return kept if self.strip else chunk

    def finish(self) -> bytes:
        """What is still held when the stream ends (an unterminated last event)."""
        rest = bytes(self._pending)
        self._pending.clear()
        if rest and not self._gave_up and _USAGE_KEY in rest:
            counts = _event_usage(rest)
            if counts is not None:
                self.counts = counts
                return b"" if self.strip else rest
        return rest if self.strip else b""

    def _scan(self, complete: bytes) -> bytes:
        kept = []
        for event in _split_events(complete):
            counts = _event_usage(event) if _USAGE_KEY in event else None
            if counts is not None:
                self.counts = counts
                if self.strip:
                    continue
            kept.append(event)
        return b"".join(kept)


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
                db.run_blocking(self._write, batch, rows)

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

    def _write(self, batch: list[Record], rows: list[dict] | None = None) -> None:
        from .models import UsageRecord

        if rows is None:
            rows = [_row(record) for record in batch]
        try:
            with transaction.atomic():
                UsageRecord.objects.bulk_create([UsageRecord(**row) for row in rows])
                add_to_daily(rows)
        except Exception:
            connection.close()
            if len(rows) > 1:
                # One bad row (say, of a token deleted meanwhile) must not cost the others.
                for row in rows:
                    self._write_one(row)
            else:
                logger.exception("could not write a usage record")
        record_security_events(batch)

    @staticmethod
    def _write_one(row: dict) -> None:
        from .models import UsageRecord

        try:
            with transaction.atomic():
                UsageRecord(**row).save(force_insert=True)
                add_to_daily([row])
        except Exception:
            logger.exception("could not write a usage record")
            connection.close()


@cache
def _security_events() -> dict[str, tuple[str, str]]:
    """The refusals that are security events: (kind, reason) by refusal code."""
    from llmproxy.models import SecurityEventKind as Kind
    from llmproxy.models import SecurityEventReason as Reason

    return {
        "missing_token": (Kind.PROXY_AUTH_FAILED, Reason.MISSING),
        "invalid_token_format": (Kind.PROXY_AUTH_FAILED, Reason.MALFORMED),
        "invalid_token": (Kind.PROXY_AUTH_FAILED, Reason.UNKNOWN),
        "token_revoked": (Kind.PROXY_AUTH_FAILED, Reason.REVOKED),
        "token_expired": (Kind.PROXY_AUTH_FAILED, Reason.EXPIRED),
        "project_inactive": (Kind.PROJECT_INACTIVE, ""),
    }


def record_security_events(batch: Iterable[Record]) -> None:
    """Count the batch's refusals that are security events: identical ones by one upsert, in one transaction."""
    from llmproxy.security import record_security_event
    from projects.models import Project
    from tokens.models import Token

    kinds = _security_events()
    events: dict[tuple, list] = {}  # identity -> [count, last token prefix seen]
    for record in batch:
        if (kind := kinds.get(record.refusal_code)) is not None:
            identity = (*kind, record.client_ip, record.token_id, record.project_id)
            event = events.setdefault(identity, [0, ""])
            event[0] += 1
            event[1] = record.token_prefix
    if not events:
        return
    try:
        with transaction.atomic():
            for (kind, reason, client_ip, token_id, project_id), (count, prefix) in events.items():
                record_security_event(
                    kind=kind,
                    reason=reason,
                    client_ip=client_ip,
                    token=Token(pk=token_id, project_id=project_id) if token_id else None,
                    project=Project(pk=project_id) if project_id else None,
                    token_prefix=prefix,
                    count=count,
                )
    except Exception:
        logger.exception("could not record the security events of a usage batch")
        connection.close()


_RECORD_FIELDS = tuple(f.name for f in fields(Record) if f.name not in ("counts", "json_tail"))


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


DAILY_KEY = ("day", "project", "token", "model")
DAILY_SUMS = ("requests", "errors", "streamed", "prompt_tokens", "completion_tokens", "total_tokens")


def daily_sums(rows: Iterable[dict]) -> dict[tuple[date, UUID | None, UUID | None, str], list[int]]:
    """The rows of a batch summed per (UTC day, project, token, model), in the order of `DAILY_SUMS`."""
    groups: dict[tuple[date, UUID | None, UUID | None, str], list[int]] = {}
    for row in rows:
        key = (row["time"].astimezone(UTC).date(), row.get("project_id"), row.get("token_id"), row.get("model", ""))
        sums = groups.setdefault(key, [0] * len(DAILY_SUMS))
        sums[0] += 1
        sums[1] += row["status"] >= 400
        sums[2] += bool(row.get("streamed"))
        sums[3] += row.get("prompt_tokens") or 0
        sums[4] += row.get("completion_tokens") or 0
        sums[5] += row.get("total_tokens") or 0
    return groups


def add_to_daily(rows: Iterable[dict]) -> None:
    """Add usage rows to their days' aggregates: one upsert per chunk of groups, in the caller's transaction.

    Adding (`requests = requests + excluded.requests`, …) in the statement keeps the sums exact however many
    processes write at once. Groups go in key order, so two writers lock shared rows in the same order (no deadlock).
    """
    from .models import UsageDaily

    groups = daily_sums(rows)
    if not groups:
        return
    meta = UsageDaily._meta
    key_fields = [meta.get_field(name) for name in DAILY_KEY]
    per_row = len(DAILY_KEY) + len(DAILY_SUMS)
    chunk = max((connection.features.max_query_params or 60_000) // per_row, 1)
    ordered = sorted(groups.items(), key=lambda item: tuple("" if v is None else str(v) for v in item[0]))
    head, tail = _daily_upsert_sql(connection.alias)
    with connection.cursor() as cursor:
        for start in range(0, len(ordered), chunk):
            part = ordered[start : start + chunk]
            params = []
            for key, sums in part:
                params += [
                    field.get_db_prep_save(value, connection) for field, value in zip(key_fields, key, strict=True)
                ]
                params += sums
            values = ", ".join([f"({', '.join(['%s'] * per_row)})"] * len(part))
            cursor.execute(f"{head} {values} {tail}", params)


@cache
def _daily_upsert_sql(alias: str) -> tuple[str, str]:
    """`INSERT … VALUES` and `ON CONFLICT … DO UPDATE` around the values: the same statement on SQLite and PostgreSQL.

    The conflict target is compiled from the model's unique constraint (nil UUID in place of a NULL id), just as the
    migration compiled the index, so the two always match.
    """
    from .models import UsageDaily

    conn = connections[alias]
    qn = conn.ops.quote_name
    meta = UsageDaily._meta
    constraint = next(c for c in meta.constraints if c.name == "usagedaily_identity")
    query = Query(UsageDaily, alias_cols=False)
    compiler = query.get_compiler(connection=conn)
    conn.ensure_connection()
    quote_value = conn.schema_editor().quote_value
    target = []
    for expression in constraint.expressions:
        sql, params = compiler.compile(expression.resolve_expression(query))
        target.append(f"({sql % tuple(quote_value(p) for p in params)})")
    table = qn(meta.db_table)
    columns = [qn(meta.get_field(name).column) for name in (*DAILY_KEY, *DAILY_SUMS)]
    sums = [qn(meta.get_field(name).column) for name in DAILY_SUMS]
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
    tail = f"ON CONFLICT ({', '.join(target)}) DO UPDATE SET " + ", ".join(
        f"{c} = {table}.{c} + excluded.{c}" for c in sums
    )
    return head, tail


writer = UsageWriter()
