"""Databases shaped like the Go LLM Proxy's, for the importer's tests: its schema as ../shared/reference/
original-llm-proxy.md §1 gives it (SQLite, PostgreSQL, and an older SQLite file from before its token IDs), its
tokens (`sk-` + the base64url of a UUIDv7) stored plain or as their SHA-256, and its upstream keys stored plain or
encrypted as it does (§3.6: AES-256-GCM, `enc:v1:` + base64 of a 12-byte nonce, the ciphertext and the tag).
"""

import base64
import hashlib
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENCRYPTION_KEY = base64.b64encode(bytes(range(1, 33))).decode()  # the original's ENCRYPTION_KEY: base64 of 32 bytes

SQLITE_SCHEMA = """
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    api_key TEXT NOT NULL,
    is_active BOOLEAN DEFAULT 1,
    deactivated_at DATETIME NULL,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_projects_name ON projects(name);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    expires_at DATETIME NULL,
    is_active BOOLEAN NOT NULL DEFAULT 1,
    deactivated_at DATETIME NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    max_requests INTEGER NULL,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used_at DATETIME NULL,
    cache_hit_count INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT tokens_token_unique UNIQUE (token)
);
CREATE INDEX idx_tokens_token ON tokens(token);
CREATE INDEX idx_tokens_project_id ON tokens(project_id);
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    timestamp DATETIME NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    project_id TEXT, request_id TEXT, correlation_id TEXT, client_ip TEXT, method TEXT, path TEXT, user_agent TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'denied', 'error')),
    reason TEXT, token_id TEXT, metadata TEXT
);
CREATE INDEX idx_audit_timestamp ON audit_events(timestamp);
"""

# Before its migrations 00002–00005: the token is the key, no deactivation or cache columns, `openai_api_key`.
SQLITE_OLD_SCHEMA = """
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    openai_api_key TEXT NOT NULL,
    is_active BOOLEAN DEFAULT 1,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE tokens (
    token TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    expires_at DATETIME NULL,
    is_active BOOLEAN NOT NULL DEFAULT 1,
    request_count INTEGER NOT NULL DEFAULT 0,
    max_requests INTEGER NULL,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used_at DATETIME NULL
);
"""

POSTGRES_SCHEMA = """
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    api_key TEXT NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    deactivated_at TIMESTAMP NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_projects_name ON projects(name);
CREATE TABLE tokens (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    token TEXT NOT NULL CONSTRAINT tokens_token_unique UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    expires_at TIMESTAMP NULL,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    deactivated_at TIMESTAMP NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    max_requests INTEGER NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used_at TIMESTAMP NULL,
    cache_hit_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_tokens_token ON tokens(token);
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    timestamp TIMESTAMP NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    project_id TEXT, request_id TEXT, correlation_id TEXT, client_ip TEXT, method TEXT, path TEXT, user_agent TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'denied', 'error')),
    reason TEXT, token_id TEXT, metadata TEXT
);
"""


def original_token() -> str:
    """A token as the original makes one: `sk-` + the 16 bytes of a UUIDv7 in unpadded base64url (25 characters)."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)  # version 7
    raw[8] = 0x80 | (raw[8] & 0x3F)  # RFC 4122 variant
    return "sk-" + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def encrypt(plaintext: str, key: str = ENCRYPTION_KEY) -> str:
    """An upstream key as the original stores it with ENCRYPTION_KEY set."""
    nonce = os.urandom(12)
    sealed = AESGCM(base64.b64decode(key)).encrypt(nonce, plaintext.encode(), None)
    return "enc:v1:" + base64.b64encode(nonce + sealed).decode()


def lookup_key(token: str) -> str:
    """A token as the original stores it with ENCRYPTION_KEY set: hex(SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()


def go_time(moment: datetime) -> str:
    """A time as its SQLite driver writes one (nanoseconds, offset)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f") + "123-00:00"


@dataclass
class Original:
    """The rows of an original database; `plaintext` keeps each token as its holder has it, by a name."""

    projects: list[dict] = field(default_factory=list)
    tokens: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    plaintext: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # name → the row's id

    def tables(self) -> list[tuple[str, list[dict]]]:
        return [("projects", self.projects), ("tokens", self.tokens), ("audit_events", self.events)]

    def project(self, name: str, api_key: str, *, active: bool = True, key: str | None = None, **fields) -> str:
        now = datetime.now(UTC)
        row = {
            "id": str(uuid.uuid4()),
            "name": name,
            "api_key": api_key,
            "is_active": active,
            "deactivated_at": None if active else now - timedelta(days=2),
            "created_at": now - timedelta(days=30),
            "updated_at": now - timedelta(days=2),
            **fields,
        }
        self.projects.append(row)
        self.ids[key or name] = row["id"]
        return row["id"]

    def token(self, name: str, project: str, *, hashed: bool = False, **fields) -> str:
        plaintext = original_token()
        now = datetime.now(UTC)
        row = {
            "id": str(uuid.uuid4()),
            "token": lookup_key(plaintext) if hashed else plaintext,
            "project_id": self.ids[project],
            "expires_at": now + timedelta(days=7),
            "is_active": True,
            "deactivated_at": None,
            "request_count": 0,
            "max_requests": None,
            "created_at": now - timedelta(days=3),
            "last_used_at": None,
            "cache_hit_count": 0,
            **fields,
        }
        self.tokens.append(row)
        self.plaintext[name] = plaintext
        self.ids[name] = row["id"]
        return plaintext

    def event(self, action: str, *, project: str | None = None, outcome: str = "success", **fields) -> str:
        row = {
            "id": str(uuid.uuid4()),
            "timestamp": datetime.now(UTC) - timedelta(days=1, minutes=len(self.events)),
            "action": action,
            "actor": "management_api",
            "project_id": self.ids.get(project, project),
            "request_id": str(uuid.uuid4()),
            "correlation_id": None,
            "client_ip": "203.0.113.7",
            "method": "POST",
            "path": "/manage/projects",
            "user_agent": "curl/8.5",
            "outcome": outcome,
            "reason": None,
            "token_id": None,
            "metadata": '{"http_method": "POST"}',
            **fields,
        }
        self.events.append(row)
        return row["id"]


OPENAI_KEY = "sk-proj-original-plain-key-0123456789abcdefghij"
ENCRYPTED_KEY = "sk-proj-original-encrypted-key-ABCDEFGHIJ0123456789"
RETIRED_KEY = "sk-proj-original-retired-key-zyxwvutsrqponmlkji"


def sample() -> Original:
    """What an operator of the original has: projects with plain and encrypted keys, one inactive; tokens plain and
    hashed, limited, revoked, expired, never expiring, of the inactive project; audit events."""
    original = Original()
    original.project("Web app", OPENAI_KEY)
    original.project("Batch jobs", encrypt(ENCRYPTED_KEY))
    original.project("Retired", encrypt(RETIRED_KEY), active=False)
    now = datetime.now(UTC)
    original.token("limited", "Web app", max_requests=5, request_count=4, cache_hit_count=7, last_used_at=now)
    original.token("hashed", "Batch jobs", hashed=True, request_count=10, max_requests=0)
    original.token("revoked", "Web app", is_active=False)
    original.token("expired", "Web app", expires_at=now - timedelta(hours=1))
    original.token("of retired", "Retired")
    original.token("never expires", "Batch jobs", hashed=True, expires_at=None)
    original.event("project.create", project="Web app", metadata='{"project_name": "Web app"}')
    original.event("token.revoke", project="Web app", token_id="550e8400...0000", method="DELETE")
    original.event("project.delete", project="Retired", outcome="failure", reason="project deletion is not permitted")
    original.event("audit.list", project=None, client_ip="not-an-address", method="GET", path="/manage/audit")
    return original


def _sqlite_value(value):
    if isinstance(value, datetime):
        return go_time(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _insert(execute, table: str, rows: list[dict], placeholder: str, convert=lambda v: v) -> None:
    for row in rows:
        names = ", ".join(f'"{name}"' for name in row)
        marks = ", ".join(placeholder for _ in row)
        execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", [convert(value) for value in row.values()])


def write_sqlite(path, original: Original, *, schema: str = SQLITE_SCHEMA) -> None:
    """The original's SQLite file (its columns as `schema` has them: a row's other fields are left out)."""
    connection = sqlite3.connect(path)
    connection.executescript(schema)
    for table, rows in original.tables():
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if not columns:
            continue
        renamed = [
            {("openai_api_key" if n == "api_key" and "api_key" not in columns else n): v for n, v in row.items()}
            for row in rows
        ]
        kept = [{n: v for n, v in row.items() if n in columns} for row in renamed]
        _insert(connection.execute, table, kept, "?", _sqlite_value)
    connection.commit()
    connection.close()


def write_postgres(connection, original: Original) -> None:
    """The original's tables in a PostgreSQL database (psycopg connection, autocommit)."""
    connection.execute(POSTGRES_SCHEMA)
    for table, rows in original.tables():
        naive = [{n: v.replace(tzinfo=None) if isinstance(v, datetime) else v for n, v in r.items()} for r in rows]
        _insert(connection.execute, table, naive, "%s")
