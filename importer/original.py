"""The Go LLM Proxy's database, read only: a SQLite file or a PostgreSQL database, of any of its schema versions.

Rows come back as dicts with the same keys whatever the version: a column an older version lacks is None there
(`tokens.id`, which came with its migration 00004, when the token itself stopped being the key; `deactivated_at`;
`cache_hit_count`), the upstream key is `api_key` whether the column is called that or, in older databases,
`openai_api_key`, and a database without `audit_events` has no events. Values are as the database driver gives
them; `as_time`, `as_bool` and `as_int` read them the way the original's drivers wrote them.
"""

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROJECT_COLUMNS = ("id", "name", "api_key", "is_active", "deactivated_at", "created_at", "updated_at")
TOKEN_COLUMNS = (
    "id",
    "token",
    "project_id",
    "expires_at",
    "is_active",
    "deactivated_at",
    "request_count",
    "max_requests",
    "created_at",
    "last_used_at",
    "cache_hit_count",
)
AUDIT_COLUMNS = (
    "id",
    "timestamp",
    "action",
    "actor",
    "project_id",
    "request_id",
    "correlation_id",
    "client_ip",
    "method",
    "path",
    "user_agent",
    "outcome",
    "reason",
    "token_id",
    "metadata",
)
# Which of its columns a table must have to be read at all (the rest may be missing in older versions).
REQUIRED = {
    "projects": ("id", "name", "is_active", "created_at", "updated_at"),
    "tokens": ("token", "project_id", "is_active", "request_count", "created_at"),
    "audit_events": ("id", "timestamp", "action", "actor", "outcome"),
}
KEY_COLUMNS = ("api_key", "openai_api_key")  # its migration 00005 renamed the second to the first


class SourceError(Exception):
    """The database cannot be opened or is not the Go LLM Proxy's: a one-line reason, never a credential."""


@dataclass
class OriginalDatabase:
    """An open connection to the original's database. `description` names it without any credential."""

    connection: Any
    description: str
    dialect: str  # "sqlite" or "postgresql"

    def _columns(self, table: str) -> set[str] | None:
        """The table's columns, or None when there is no such table."""
        if self.dialect == "sqlite":
            rows = self.connection.execute(f'PRAGMA table_info("{table}")').fetchall()
            names = {row[1] for row in rows}
        else:
            rows = self.connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            ).fetchall()
            names = {row[0] for row in rows}
        return names or None

    def _read(self, table: str, columns: tuple[str, ...], *, renamed: dict[str, str] | None = None) -> list[dict]:
        present = self._columns(table)
        if present is None:
            return []
        missing = [name for name in REQUIRED[table] if name not in present]
        if missing:
            raise SourceError(
                f"{self.description}: table {table} has no column {', '.join(missing)}: not the Go LLM Proxy's schema"
            )
        selected = []
        for name in columns:
            source = (renamed or {}).get(name, name)
            selected.append(f'"{source}"' if source in present else "NULL")
        rows = self.connection.execute(f'SELECT {", ".join(selected)} FROM "{table}"').fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def projects(self) -> list[dict]:
        present = self._columns("projects")
        if present is None:
            raise SourceError(f"{self.description} has no projects table: not the Go LLM Proxy's database")
        key = next((name for name in KEY_COLUMNS if name in present), None)
        if key is None:
            raise SourceError(f"{self.description}: table projects has neither api_key nor openai_api_key")
        return self._read("projects", PROJECT_COLUMNS, renamed={"api_key": key})

    def tokens(self) -> list[dict]:
        if self._columns("tokens") is None:
            raise SourceError(f"{self.description} has no tokens table: not the Go LLM Proxy's database")
        return self._read("tokens", TOKEN_COLUMNS)

    def audit_events(self) -> list[dict]:
        return self._read("audit_events", AUDIT_COLUMNS)

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class OriginalRows:
    """Everything the import reads from the original's database."""

    source: str  # the database, named without credentials
    projects: list[dict]
    tokens: list[dict]
    audit_events: list[dict]


def _read_all(database: OriginalDatabase, errors: type[Exception] | tuple) -> OriginalRows:
    try:
        return OriginalRows(database.description, database.projects(), database.tokens(), database.audit_events())
    except errors as exc:
        raise SourceError(f"{database.description} cannot be read: {str(exc).strip()}") from None
    finally:
        database.close()


def read_sqlite(path: str) -> OriginalRows:
    """The original's SQLite file, opened read-only (its WAL, if any, is read too)."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise SourceError(f"no such file: {file}")
    description = f"SQLite file {file}"
    try:
        connection = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SourceError(f"{description} cannot be opened: {exc}") from None
    return _read_all(OriginalDatabase(connection, description, "sqlite"), sqlite3.Error)


def describe_url(url: str) -> str:
    """A PostgreSQL URL without its user name and password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL database {parts.path.lstrip('/') or '(default)'} on {host}{port}"


def read_postgresql(url: str) -> OriginalRows:
    """The original's PostgreSQL database (its tables in the connection's current schema), in a read-only session."""
    import psycopg

    if urlsplit(url).scheme not in ("postgres", "postgresql"):
        raise SourceError("--database-url must be a postgres:// or postgresql:// URL")
    description = describe_url(url)
    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=10)
        connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    except psycopg.Error as exc:
        # psycopg's messages name the host and user, never the password.
        raise SourceError(f"{description} cannot be opened: {str(exc).strip()}") from None
    return _read_all(OriginalDatabase(connection, description, "postgresql"), psycopg.Error)


# --- values, as the original's drivers wrote them -------------------------------------------------------------

# Go's time.Time.String(), which some rows may hold: `2026-01-02 03:04:05.123456789 +0000 UTC`.
_GO_TIME_RE = re.compile(r"(\S+ \S+) ([+-]\d{2})(\d{2})(?: \S+)?")
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


def as_time(value: Any) -> datetime | None:
    """An aware UTC datetime. SQLite holds text (the Go driver's `2006-01-02 15:04:05.999999999-07:00`, or
    `CURRENT_TIMESTAMP`'s `2006-01-02 15:04:05`); PostgreSQL's TIMESTAMP columns have no zone. A time without an
    offset is read as UTC. ValueError for anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        text = value.strip()
        if match := _GO_TIME_RE.fullmatch(text):
            text = f"{match[1]}{match[2]}:{match[3]}"
        text = _FRACTION_RE.sub(r"\1", text)  # nanoseconds to microseconds
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    else:
        raise ValueError(f"not a time: {type(value).__name__}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def as_bool(value: Any) -> bool:
    """SQLite holds 1/0 (or, written by hand, true/false); PostgreSQL a boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("1", "t", "true", "0", "f", "false"):
        return value.strip().lower() in ("1", "t", "true")
    raise ValueError(f"not a boolean: {value!r}")


def as_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("not an integer: a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"not an integer: {value!r}")


def as_text(value: Any) -> str:
    """An ID or a text column: PostgreSQL gives UUIDs as uuid.UUID."""
    return "" if value is None else str(value)
