"""Usage rows kept on local disk while the database cannot take them: append-only files, replayed later.

Each file (a segment) is written by one process and locked (`flock`) by it for as long as it holds the file, so a
segment that no process has locked belongs to a process that is gone (a crash, a `kill -9`, a restart) and any
worker of the instance may replay it. Rows carry their own key (`uid`), and the database insert skips keys it
already has, so a segment replayed twice (the process died after writing its rows, before deleting it) writes each
row once.

A line is one JSON object; a last line cut short by a crash is skipped when read.
"""

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

logger = logging.getLogger(__name__)

_DATETIMES = frozenset({"time"})
_UUIDS = frozenset({"uid", "project_id", "token_id"})
_DECIMALS = frozenset({"cost_usd"})


def _encode(row: dict) -> str:
    return json.dumps(
        {name: str(value) if isinstance(value, UUID | datetime | Decimal) else value for name, value in row.items()},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _decode(line: str) -> dict:
    row = json.loads(line)
    for name in _DATETIMES & row.keys():
        row[name] = datetime.fromisoformat(row[name])
    for name in _UUIDS & row.keys():
        if row[name] is not None:
            row[name] = UUID(row[name])
    for name in _DECIMALS & row.keys():
        if row[name] is not None:
            row[name] = Decimal(row[name])
    if row.get("security_event") is not None:
        row["security_event"] = tuple(row["security_event"])
    return row


def _lock(path: Path) -> int | None:
    """An open descriptor holding `path`'s lock, or None when another process holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Segment:
    """One locked spill file: appended to by its writer, then read back in chunks and deleted once written."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.position = 0  # where the next read starts
        self.rows = 0  # rows in it not written yet, as far as this process knows (those it appended, less written)

    @classmethod
    def create(cls, directory: Path) -> "Segment":
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"usage-{os.getpid()}-{datetime.now().strftime('%Y%m%dT%H%M%S%f')}.jsonl"
        # Locked under another name first, so no other process can take it for an orphan before it is locked.
        making = path.with_suffix(".new")
        fd = os.open(making, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        making.rename(path)
        return cls(path, fd)

    def append(self, rows: list[dict]) -> None:
        """Write the rows and flush them to disk (a spill happens when the database is in trouble: rare)."""
        data = "".join(_encode(row) + "\n" for row in rows).encode()
        written = 0
        while written < len(data):
            written += os.write(self.fd, data[written:])
        os.fsync(self.fd)
        self.rows += len(rows)

    def read(self, limit: int) -> tuple[list[dict], int]:
        """Up to `limit` rows from the read position, and the position after them (advance with `done_to`)."""
        rows, position = [], self.position
        with os.fdopen(os.dup(self.fd), "rb") as file:
            file.seek(position)
            while len(rows) < limit:
                line = file.readline()
                if not line.endswith(b"\n"):
                    break  # the end, or a last line a crash cut short
                position += len(line)
                try:
                    rows.append(_decode(line.decode()))
                except (ValueError, TypeError):
                    logger.error("skipping an unreadable line in %s", self.path)
        return rows, position

    def done_to(self, position: int, rows: int) -> None:
        """The rows read up to `position` are written."""
        self.position = position
        self.rows = max(self.rows - rows, 0)

    @property
    def exhausted(self) -> bool:
        return self.position >= os.fstat(self.fd).st_size

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def orphans(directory: Path) -> Iterator[Segment]:
    """Segments no living process holds, locked now by this one (oldest first)."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("usage-*.jsonl"), key=lambda p: p.stat().st_mtime if p.exists() else 0):
        fd = _lock(path)
        if fd is not None:
            yield Segment(path, fd)


def pending_files(directory: Path | str) -> int:
    """How many segments wait to be written (any process's): the instance's usage is not all in the database."""
    directory = Path(directory)
    return len(list(directory.glob("usage-*.jsonl"))) if directory.is_dir() else 0
