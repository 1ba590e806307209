"""Importing the Go LLM Proxy's database: its projects, tokens and audit events, mapped onto ours.

Two steps. `plan_import` maps every row read from the original (importer.original), checks it by our rules and
against what is here, and says what would be imported and what cannot be, and why; `apply_import` writes a plan in
one transaction, with one audit entry for the whole run (the `Import` it creates). `--dry-run` stops after the plan.

What is here already (a project or token by its ID, an audit event by its ID in the original) is left as it is: a
second run imports nothing and says so, and a run after mending a problem (a name taken here, a missing
ENCRYPTION_KEY) imports what was left out. Nothing here ever holds a key or a token in a message.
"""

import ipaddress
import json
import uuid
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils import timezone

from llmproxy.audit import Actor, audited
from llmproxy.errors import ServiceError
from projects.models import Project
from projects.services import project_for_import, projects_import
from projects.upstreams import key_rule
from tokens import secret
from tokens.models import Token
from tokens.services import tokens_import

from . import keys
from .models import Import
from .original import OriginalRows, as_bool, as_int, as_text, as_time

IMPORTED_BY = "LLM Proxy import"  # who created (and, for tokens revoked there, revoked) what the import brings
VIA = "import"  # the audit trail's "via" of the original's events
EVENT_ID_KEY = "llm_proxy_event_id"  # in an imported event's additional_data: its ID in the original
# IDs the original made up by hand (not UUIDs) become name-based UUIDs in this namespace, the same at every run.
ID_NAMESPACE = uuid.UUID("6f0c7a52-3d1e-4c59-9a43-2b8d1f0e7c11")
CHUNK = 500  # values per `IN (…)`: within every SQLite's limit on parameters

# The original's actions end in the verb; the audit trail has four kinds of entry.
ACTIONS = {
    "create": LogEntry.Action.CREATE,
    "update": LogEntry.Action.UPDATE,
    "revoke": LogEntry.Action.UPDATE,
    "revoke_batch": LogEntry.Action.UPDATE,
    "delete": LogEntry.Action.DELETE,
}


@dataclass(frozen=True)
class Problem:
    """A row that cannot be imported, and why (never its key or token)."""

    kind: str  # "project", "token", "audit event"
    reference: str  # its ID in the original (a token without one: its display prefix)
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.reference}: {self.reason}"


@dataclass
class ImportPlan:
    source: str
    projects: list[Project] = field(default_factory=list)  # to import: built, checked, not saved
    tokens: list[Token] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # LogEntry fields; `project` (ours, or None) to hang them on
    already: dict[str, int] = field(default_factory=lambda: {"project": 0, "token": 0, "audit event": 0})
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.projects or self.tokens or self.events)

    def counts(self, kind: str) -> tuple[int, int, int]:
        """(to import, already here, not imported) of one kind of row."""
        new = {"project": self.projects, "token": self.tokens, "audit event": self.events}[kind]
        return len(new), self.already[kind], sum(1 for p in self.problems if p.kind == kind)


def _our_id(original: str, kind: str) -> uuid.UUID:
    """The original's ID where it is a UUID (as its server made them), else one derived from it."""
    try:
        return uuid.UUID(original)
    except ValueError:
        return uuid.uuid5(ID_NAMESPACE, f"{kind}:{original}")


def _note_derived(plan: ImportPlan, kind: str, original: str, our_id: uuid.UUID) -> None:
    if original and str(our_id) != original.lower():
        plan.notes.append(f"{kind} {original}: its ID is not a UUID; here it is {our_id}")


def _existing(model, field_name: str, values: Iterable) -> set:
    """Which of `values` some row of `model` has in `field_name`."""
    values, found = list(values), set()
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK]
        found.update(model.objects.filter(**{f"{field_name}__in": chunk}).values_list(field_name, flat=True))
    return found


def plan_import(
    rows: OriginalRows,
    *,
    encryption_key: bytes | None,
    upstream_url: str = "",
    upstream_auth: str = "bearer",
) -> ImportPlan:
    """What importing these rows would do. The upstream (cleaned already) is given to every imported project, as the
    original served one upstream per process."""
    plan = ImportPlan(source=rows.source)
    now = timezone.now()
    project_ids = _plan_projects(plan, rows.projects, encryption_key, upstream_url, upstream_auth, now)
    _plan_tokens(plan, rows.tokens, project_ids, {as_text(r["id"]) for r in rows.projects}, now)
    _plan_events(plan, rows.audit_events, project_ids)
    return plan


def _plan_projects(
    plan: ImportPlan, rows: list[dict], encryption_key, upstream_url: str, upstream_auth: str, now: datetime
) -> dict[str, uuid.UUID]:
    """Plans the projects; returns the original ID → our ID of every project that is or will be here."""
    ours = {as_text(row["id"]): _our_id(as_text(row["id"]), "project") for row in rows}
    here = _existing(Project, "id", ours.values())
    names = {name.lower(): pk for pk, name in Project.objects.values_list("id", "name")}
    imported: dict[str, uuid.UUID] = {}
    inactive = []
    for row in rows:
        original = as_text(row["id"])
        our_id = ours[original]
        if our_id in here:
            plan.already["project"] += 1
            imported[original] = our_id
            continue
        name = as_text(row["name"])
        taken_by = names.get(name.strip().lower())
        if taken_by is not None:
            reason = (
                f"its name {name!r} is taken here (names are unique regardless of case) by project {taken_by}: "
                "rename one of them, then run the import again"
            )
            plan.problems.append(Problem("project", original, reason))
            continue
        try:
            created_at = as_time(row["created_at"]) or now
            project = project_for_import(
                id=our_id,
                name=name,
                api_key=keys.decrypt(as_text(row["api_key"]), encryption_key),
                is_active=as_bool(row["is_active"]),
                deactivated_at=as_time(row["deactivated_at"]),
                created_at=created_at,
                updated_at=as_time(row["updated_at"]) or created_at,
                upstream_url=upstream_url,
                upstream_auth=upstream_auth,
            )
        except ServiceError as error:
            plan.problems.append(Problem("project", original, _project_refusal(error, upstream_url)))
            continue
        except (keys.UndecryptableKey, ValueError) as error:
            plan.problems.append(Problem("project", original, str(error)))
            continue
        names[project.name.lower()] = our_id
        imported[original] = our_id
        plan.projects.append(project)
        _note_derived(plan, "project", original, our_id)
        if not project.is_active:
            inactive.append(original)
    if inactive:
        plan.notes.append(
            f"{len(inactive)} inactive project(s): their tokens are refused here (403 project_inactive), which the "
            "original, whatever its documentation said, did not do"
        )
    return imported


def _project_refusal(error: ServiceError, upstream_url: str) -> str:
    if error.field == "api_key":
        return (
            f"its upstream key does not fit the key rule of its upstream here ({key_rule(upstream_url)}): "
            "give --upstream-url for the upstream it was used with"
        )
    return error.text


def _plan_tokens(
    plan: ImportPlan, rows: list[dict], project_ids: dict[str, uuid.UUID], in_source: set[str], now: datetime
) -> None:
    secrets_ = [secret.imported_secret(as_text(row["token"])) for row in rows]
    here_digests = _existing(Token, "digest", {found[0] for found in secrets_ if found})
    ids = {}
    for row, found in zip(rows, secrets_, strict=True):
        if found and row["id"] is not None:
            ids[as_text(row["id"])] = _our_id(as_text(row["id"]), "token")
    here_ids = _existing(Token, "id", ids.values())
    never_expired, hashed = 0, 0
    seen: set[str] = set()
    longest = timedelta(hours=settings.TOKEN_MAX_DURATION_HOURS)
    for row, found in zip(rows, secrets_, strict=True):
        original = as_text(row["id"])
        if found is None:
            reason = "its token is neither the original's shape (sk- and 22 characters) nor its SHA-256"
            plan.problems.append(Problem("token", original or "(without an ID)", reason))
            continue
        digest, prefix = found
        reference = original or f"{prefix}…"
        # Before the original's migration 00004 a token had no ID: one is derived from its digest, the same each run.
        our_id = ids[original] if original else uuid.uuid5(ID_NAMESPACE, f"token digest:{digest}")
        if our_id in here_ids or (not original and digest in here_digests):
            plan.already["token"] += 1
            continue
        try:
            if digest in here_digests:
                raise ValueError("the same token is here already, under another ID")
            if digest in seen:
                raise ValueError("the same token is in the original twice")
            project_original = as_text(row["project_id"])
            if project_original not in project_ids:
                if project_original in in_source:
                    raise ValueError(f"its project {project_original} was not imported (see that project)")
                raise ValueError(f"dangling: its project {project_original} is not in the original's database")
            expires_at = as_time(row["expires_at"])
            if expires_at is None:
                never_expired += 1
                expires_at = now + longest
            active = as_bool(row["is_active"])
            max_requests = as_int(row["max_requests"])
            token = Token(
                id=our_id,
                project_id=project_ids[project_original],
                digest=digest,
                prefix=prefix,
                expires_at=expires_at,
                max_requests=max_requests if max_requests and max_requests > 0 else None,  # 0 or less: unlimited
                request_count=max(as_int(row["request_count"]) or 0, 0),
                cache_hit_count=max(as_int(row["cache_hit_count"]) or 0, 0),
                last_used_at=as_time(row["last_used_at"]),
                created_at=as_time(row["created_at"]) or now,
                created_by_label=IMPORTED_BY,
            )
            if not active:
                # Its revocations never wrote deactivated_at: then the import's time stands for when.
                token.revoked_at = as_time(row["deactivated_at"]) or now
                token.revoked_by_label = IMPORTED_BY
        except ValueError as error:
            plan.problems.append(Problem("token", reference, str(error)))
            continue
        seen.add(digest)
        if prefix == secret.ORIGINAL_TOKEN.prefix:
            hashed += 1
        plan.tokens.append(token)
        _note_derived(plan, "token", original, our_id)
    if never_expired:
        plan.notes.append(
            f"{never_expired} token(s) never expired there: here they expire in TOKEN_MAX_DURATION_HOURS "
            f"({settings.TOKEN_MAX_DURATION_HOURS} h), at {(now + longest).isoformat(timespec='minutes')}"
        )
    if hashed:
        plan.notes.append(
            f"{hashed} token(s) were stored as their SHA-256 there: they work as they are, but only `sk-` of them "
            "can be shown"
        )


def _plan_events(plan: ImportPlan, rows: list[dict], project_ids: dict[str, uuid.UUID]) -> None:
    if not rows:
        return
    done = set(
        LogEntry.objects.filter(additional_data__has_key=EVENT_ID_KEY).values_list(
            f"additional_data__{EVENT_ID_KEY}", flat=True
        )
    )
    seen: set[str] = set()
    for row in rows:
        original = as_text(row["id"])
        if original in done:
            plan.already["audit event"] += 1
            continue
        try:
            if original in seen or not original:
                raise ValueError("its ID is missing or repeated")
            timestamp = as_time(row["timestamp"])
            if timestamp is None:
                raise ValueError("it has no time")
        except ValueError as error:
            plan.problems.append(Problem("audit event", original or "(without an ID)", str(error)))
            continue
        seen.add(original)
        plan.events.append(_event(row, original, timestamp, project_ids.get(as_text(row["project_id"]))))


def _event(row: dict, original: str, timestamp: datetime, project: uuid.UUID | None) -> dict:
    """An audit entry (LogEntry's fields) telling who did what, when, with what outcome, as the original recorded
    it. The original's own record stays whole in `additional_data`."""
    text = {name: as_text(value) for name, value in row.items()}
    action = text["action"]
    changes = {"original action": action, "outcome": text["outcome"]}
    for label, name in (
        ("reason", "reason"),
        ("token", "token_id"),  # as the original recorded it: already masked
        ("request id", "request_id"),
        ("method", "method"),
        ("path", "path"),
    ):
        if text[name]:
            changes[label] = text[name]
    if project is None and text["project_id"]:
        changes["original project"] = text["project_id"]
    try:
        remote_addr = str(ipaddress.ip_address(text["client_ip"])) if text["client_ip"] else None
    except ValueError:
        remote_addr = None  # the original trusted any X-Forwarded-For: kept as text, not as an address
        changes["client address"] = text["client_ip"]
    return {
        "project": project,
        "timestamp": timestamp,
        "action": ACTIONS.get(action.rpartition(".")[2], LogEntry.Action.ACCESS),
        "changes": {label: ["", value] for label, value in changes.items()},
        "actor_email": f"LLM Proxy: {text['actor'] or 'unknown'}"[:254],
        "remote_addr": remote_addr,
        "additional_data": {"via": VIA, EVENT_ID_KEY: original, "original": _original_record(text)},
    }


def _original_record(text: dict[str, str]) -> dict:
    record = {name: value for name, value in text.items() if value}
    if record.get("metadata"):
        with suppress(ValueError):  # else kept as the text it was
            record["metadata"] = json.loads(record["metadata"])
    return record


def apply_import(plan: ImportPlan, *, actor: Actor) -> Import | None:
    """Write the plan in one transaction: its projects, tokens and audit events, and one audit entry for the
    whole run. Nothing (not even that entry) when there is nothing to import."""
    if plan.is_empty:
        return None
    with transaction.atomic(), audited(actor):
        record = Import.objects.create(
            source=plan.source[: Import._meta.get_field("source").max_length],
            projects=len(plan.projects),
            tokens=len(plan.tokens),
            audit_events=len(plan.events),
            not_imported=len(plan.problems),
        )
        projects_import(plan.projects)
        tokens_import(plan.tokens)
        _write_events(plan.events, record)
    return record


def _write_events(events: list[dict], record: Import) -> None:
    """The original's events, each under its project when that is here, else under the import itself."""
    project_type = ContentType.objects.get_for_model(Project)
    import_type = ContentType.objects.get_for_model(Import)
    names = dict(Project.objects.values_list("id", "name"))
    LogEntry.objects.bulk_create(
        [
            LogEntry(
                content_type=project_type if event["project"] else import_type,
                object_pk=str(event["project"] or record.pk),
                object_repr=names[event["project"]] if event["project"] else str(record),
                changes_text="",
                **{name: value for name, value in event.items() if name != "project"},
            )
            for event in events
        ],
        batch_size=CHUNK,
    )
